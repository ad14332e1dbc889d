"""Finding a TensorRT builder module and the few objects every engine job shares.

Two modules build engines: ``tensorrt`` (datacenter TensorRT 10/11, needs a GPU to build)
and ``tensorrt_rtx`` (TensorRT-RTX, builds ahead of time on a CPU-only machine). They share
one API shape, so the rest of the package takes the module as a value and asks it what it
can do (``hasattr``); the module's name only decides which one to import.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType
from typing import Any

from optimizer.errors import BuildError, ConfigError

log = logging.getLogger("trtforge.engine")

# flavour -> (module name, how to install it). Datacenter first: when both are installed on
# a GPU machine, its engines are the ones that run there.
FLAVOURS: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "pip install 'trtforge[gpu]' on a machine with an NVIDIA GPU"),
    "tensorrt-rtx": ("tensorrt_rtx", "pip install 'trtforge[rtx]' (builds engines without a GPU)"),
}

DISPLAY_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


def _module_present(module_name: str) -> bool:
    # Looked up through the module attribute (not imported by name) so tests can simulate
    # a machine without TensorRT by patching importlib.util.find_spec.
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a broken parent package or a half-installed module
        return False


def available_builders() -> list[str]:
    """Builder flavours whose module is installed, datacenter first. Cheap: imports nothing."""
    return [flavour for flavour, (module, _) in FLAVOURS.items() if _module_present(module)]


def load_tensorrt(builder: str | None = None) -> tuple[ModuleType, str]:
    """Import a builder module lazily and return ``(module, flavour)``.

    ``builder`` is ``"tensorrt"``, ``"tensorrt-rtx"`` or ``None`` for the first one that
    imports (datacenter first).
    """
    if builder is not None and builder not in FLAVOURS:
        raise ConfigError(
            f"unknown builder {builder!r}: use one of {', '.join(FLAVOURS)} "
            f"(or leave it unset for whichever is installed)"
        )
    wanted = [builder] if builder else list(FLAVOURS)
    problems = []
    for flavour in wanted:
        module_name, hint = FLAVOURS[flavour]
        if not _module_present(module_name):
            problems.append(f"{module_name} is not installed")
            continue
        try:
            return importlib.import_module(module_name), flavour
        except Exception as exc:  # noqa: BLE001 - a wheel without its native libraries raises anything
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.debug("cannot import %s: %s", module_name, first)
            problems.append(f"{module_name} does not import ({first})")
    hints = "; or ".join(FLAVOURS[f][1] for f in wanted)
    raise BuildError(f"no TensorRT builder available ({'; '.join(problems)}): {hints}")


def version_of(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def display_name(flavour: str, trt: ModuleType) -> str:
    return f"{DISPLAY_NAMES.get(flavour, flavour)} {version_of(trt)}"


# --- logging ---------------------------------------------------------------------------

_LOGGERS: dict[str, Any] = {}


def get_logger(trt: ModuleType) -> Any:
    """One collecting logger per module for the whole process.

    TensorRT keeps the first logger it sees as its global one and warns when later builders
    bring another, so every builder and parser here shares this instance. It remembers
    warnings and errors so a failed build can say why in its error message and a good one
    can list its warnings in the report; Python logging gets them at DEBUG only, because
    they reach the user through those two places already.
    """
    key = trt.__name__
    if key in _LOGGERS:
        return _LOGGERS[key]
    warning = int(trt.ILogger.Severity.WARNING)
    error = int(trt.ILogger.Severity.ERROR)

    class CollectingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[int, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level > warning:  # INFO and VERBOSE: too chatty to keep
                return
            self.messages.append((level, msg))
            log.debug("[%s] %s", key, msg)

        def take(self) -> tuple[list[str], list[str]]:
            """Return and forget (errors, warnings) logged since the last call."""
            errors = [m for lvl, m in self.messages if lvl <= error]
            warnings = [m for lvl, m in self.messages if lvl > error]
            self.messages.clear()
            return errors, warnings

    _LOGGERS[key] = CollectingLogger()
    return _LOGGERS[key]


# --- capabilities ----------------------------------------------------------------------


def has_precision_flags(trt: ModuleType) -> bool:
    """TensorRT 10 has FP16/INT8 builder flags; TensorRT 11 and TensorRT-RTX removed them."""
    return hasattr(trt.BuilderFlag, "FP16")


def create_network(trt: ModuleType, builder: Any, strongly_typed: bool = True) -> Any:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = (1 << int(flag)) if (strongly_typed and flag is not None) else 0
    return builder.create_network(flags)


def is_strongly_typed(trt: ModuleType, network: Any) -> bool:
    """True when tensor types come from the graph, not from builder flags."""
    if not has_precision_flags(trt):
        return True
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return flag is not None and hasattr(network, "get_flag") and bool(network.get_flag(flag))


def one_line(text: str, limit: int = 300) -> str:
    """TensorRT messages span lines and carry long source paths; errors here are one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
