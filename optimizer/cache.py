"""Content-addressed stage cache.

A stage's result is keyed by ``sha256(stage name + input artifact hash + stage config +
data fingerprints + tool versions)``. An entry is a folder holding the stage's artifact
files and its report record; it is written under a temporary name and renamed into place,
so a crashed or concurrent run never leaves a half entry, and two runs racing on one key
both end with one complete entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

_VERSIONED = ("trtforge", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy")


@functools.cache
def code_fingerprint() -> str:
    """sha256 of trtforge's own source files.

    The package version does not change between development commits, yet a changed pass or
    quantizer must not be answered from the cache with an old result.
    """
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in ("optimizer", "graph_passes", "calibration"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"trtforge-code": code_fingerprint()}
    for dist in _VERSIONED + extra:
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def default_cache_dir() -> Path:
    if env := os.environ.get("TRTFORGE_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trtforge"


def cache_key(stage: str, parts: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class StageCache:
    """Folders of cached stage results under ``root/<stage>/<key>/``."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else default_cache_dir() / "stages"
        self.enabled = enabled

    def _entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> tuple[Path, dict] | None:
        """The entry folder and its record, or None on a miss (or a damaged entry)."""
        if not self.enabled:
            return None
        entry = self._entry(stage, key)
        try:
            record = json.loads((entry / "record.json").read_text())
        except (OSError, ValueError):
            return None
        if not all((entry / name).exists() for name in record.get("_files", [])):
            return None
        return entry, record

    def put(self, stage: str, key: str, files: list[Path], record: dict) -> Path:
        """Store copies of ``files`` and ``record``; return the entry folder."""
        entry = self._entry(stage, key)
        if not self.enabled:
            return entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=entry.parent))
        try:
            for f in files:
                # A copy, not a hard link: onnx-ir refuses external data files with
                # several links (a guard against linked-in files), so links would break loads.
                shutil.copyfile(f, tmp / f.name)
            stored = dict(record, _files=[f.name for f in files])
            (tmp / "record.json").write_text(json.dumps(stored, indent=1, default=str))
            try:
                os.rename(tmp, entry)
            except OSError:
                # Another run stored the same key first; its entry is equivalent.
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def clear(self) -> int:
        """Remove every entry; return how many were removed."""
        if not self.root.exists():
            return 0
        count = sum(1 for stage in self.root.iterdir() if stage.is_dir() for _ in stage.iterdir())
        shutil.rmtree(self.root, ignore_errors=True)
        return count


def restore(entry: Path, names: list[str], out_dir: Path) -> list[Path]:
    """Copy cached artifact files into ``out_dir`` (atomically per file)."""
    from optimizer.model import atomic_output

    restored = []
    for name in names:
        with atomic_output(out_dir / name) as tmp:
            shutil.copyfile(entry / name, tmp)
        restored.append(out_dir / name)
    return restored
