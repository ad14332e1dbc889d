"""Loading a user's Python file: task metrics (``metric.py:cer``) and export factories
(``net.py:build``). Executing that file is always the user's explicit choice."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from optimizer.errors import ConfigError, first_line


def load_callable(spec: str, *, what: str, kind: str = "function", base_dir: Path | None = None) -> tuple[ModuleType, Callable]:
    """Import ``FILE.py`` of ``FILE.py:NAME`` and return (the module, its callable NAME).

    ``what`` names the option in messages ("metric", "factory"); a relative FILE is taken from
    ``base_dir`` (a recipe's folder) when given. The file may import modules beside it, as it
    would when run as a script. Every failure is one ConfigError line.
    """
    path_text, sep, name = str(spec).rpartition(":")
    if not sep or not path_text or not name.isidentifier():
        raise ConfigError(f"{what} '{spec}': expected 'path/to/file.py:{kind}'")
    path = Path(path_text)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"{what} '{spec}': file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"trtforge_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{what} '{spec}': {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"{what} '{spec}': importing {path} failed: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        sys.path.remove(folder)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{what} '{spec}': {path} has no {'callable' if kind != 'function' else 'function'} '{name}'")
    return module, fn
