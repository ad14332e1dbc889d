"""Content-addressed stage cache.

A stage's result is keyed by ``sha256(stage name + input artifact hash + stage config +
data fingerprints + tool versions)``. An entry is a folder holding the stage's artifact
files and its report record; it is written under a temporary name and renamed into place,
so a crashed or concurrent run never leaves a half entry, and two runs racing on one key
both end with one complete entry.

The cache is capped (``TRTFORGE_STAGE_CACHE_LIMIT``, default 10G): after each store the
least recently used entries are evicted until it fits, and temp folders of dead runs are
removed. The engine store (``optimizer.engine.store``) is capped the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

_VERSIONED = ("trtforge", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy")
STAGE_CACHE_LIMIT_ENV = "TRTFORGE_STAGE_CACHE_LIMIT"
DEFAULT_STAGE_CACHE_LIMIT = "10G"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


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


def parse_size(text: str, what: str) -> int:
    """Bytes from '10G', '512M', '2.5G' or a plain byte count; ConfigError naming ``what`` otherwise."""
    from optimizer.errors import ConfigError

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{what} is {text!r}; give a size like 10G, 512M or a number of bytes")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def size_limit(env: str, default: str) -> int:
    """The size cap set by environment variable ``env`` (default ``default``)."""
    return parse_size(os.environ.get(env) or default, env)


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (0 when it vanished meanwhile)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def touch(path: Path) -> None:
    """Mark an entry as just used (its mtime orders least-recently-used eviction)."""
    try:
        os.utime(path)
    except OSError:
        pass


def evict_lru(entries: list[tuple[float, int, Path]], limit: int, remove) -> list[Path]:
    """Remove entries (last used, bytes, path), oldest first, until the rest fit ``limit``.

    ``remove(path) -> bool`` may refuse (an entry in use); the newest entry is never removed,
    so the result of the run that just stored it survives even when it alone exceeds the cap.
    """
    entries = sorted(entries)
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in entries[:-1]:
        if total <= limit:
            break
        if remove(path):
            total -= size
            removed.append(path)
    return removed


def cache_key(stage: str, parts: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class StageCache:
    """Folders of cached stage results under ``root/<stage>/<key>/``, capped at ``max_bytes``."""

    def __init__(self, root: Path | None = None, enabled: bool = True, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "stages"
        self.enabled = enabled
        self.max_bytes = max_bytes if max_bytes is not None else size_limit(STAGE_CACHE_LIMIT_ENV, DEFAULT_STAGE_CACHE_LIMIT)

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
        if not isinstance(record, dict) or not all((entry / name).exists() for name in record.get("_files", [])):
            return None
        touch(entry / "record.json")
        return entry, record

    def put(self, stage: str, key: str, files: list[Path], record: dict) -> Path:
        """Store copies of ``files`` and ``record``; return the entry folder. Evicts LRU entries over the cap."""
        from optimizer.model import temp_dir_beside

        entry = self._entry(stage, key)
        if not self.enabled:
            return entry
        tmp = temp_dir_beside(entry)
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
        self.evict()
        return entry

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, folder) of every complete entry."""
        found = []
        if not self.root.is_dir():
            return found
        for stage in self.root.iterdir():
            if not stage.is_dir() or stage.name.startswith("."):
                continue
            for entry in stage.iterdir():
                if entry.name.startswith("."):
                    continue
                try:
                    used = (entry / "record.json").stat().st_mtime
                except OSError:
                    used = 0.0  # damaged: first to go
                found.append((used, folder_bytes(entry), entry))
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self, limit: int | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits ``limit`` (default: its cap),
        and temp folders of dead runs. Returns the removed entries."""
        from optimizer.model import remove_stale_temps

        if self.root.is_dir():
            for stage in self.root.iterdir():
                if stage.is_dir():
                    remove_stale_temps(stage)
        return evict_lru(self._entries(), self.max_bytes if limit is None else limit, remove_entry_folder)

    def clear(self) -> int:
        """Remove every entry; return how many were removed."""
        if not self.root.exists():
            return 0
        count = sum(1 for stage in self.root.iterdir() if stage.is_dir() for _ in stage.iterdir())
        shutil.rmtree(self.root, ignore_errors=True)
        return count


def remove_entry_folder(path: Path) -> bool:
    """Remove a cache or store entry: renamed into a temp folder first (atomic: nobody finds it
    half deleted), then deleted. False when it is already gone."""
    from optimizer.model import temp_dir_beside

    try:
        aside = temp_dir_beside(path)
        os.replace(path, aside / "entry")
    except OSError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def restore(entry: Path, names: list[str], out_dir: Path) -> list[Path]:
    """Copy cached artifact files into ``out_dir`` (atomically per file)."""
    from optimizer.model import atomic_output

    restored = []
    for name in names:
        with atomic_output(out_dir / name) as tmp:
            shutil.copyfile(entry / name, tmp)
        restored.append(out_dir / name)
    return restored
