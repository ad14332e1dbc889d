"""Content-addressed engine store: a build that was done once is never done again.

An entry is keyed by ``sha256(model content + build config + TensorRT flavour and version +
target hardware)`` and holds the engine and its sidecar. Builders of one key take a file
lock, so two processes asking for the same engine build it once: the second waits and then
finds the entry. Entries appear by renaming a finished folder into place, so a reader never
sees half an entry; a temp folder left by a killed build is removed by the next store write.

The store is capped (``TRTFORGE_ENGINE_STORE_LIMIT``, default 20G, or ``EngineStore(max_bytes=)``):
after each store, the least recently used entries (a hit counts as a use) are evicted until
it fits, skipping entries another process holds; lock files nobody holds are removed with them.

Timing caches live beside the store, one file per (flavour, version, target): a cache from
another TensorRT version or GPU is useless to the builder, so they never share a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optimizer.engine.build import (
    BuildConfig,
    BuildResult,
    _check_expect,
    _check_gpu_only_options,
    _check_precision_flags,
    build_engine,
    build_target,
)
from optimizer.engine.loader import load_tensorrt, version_of
from optimizer.engine.parse import check_model_file
from optimizer.engine.precision import LayerPrecisionSummary
from optimizer.cache import evict_lru, folder_bytes, remove_entry_folder, size_limit, touch
from optimizer.errors import BuildError, ConfigError
from optimizer.model import content_hash, file_sha256, remove_stale_temps, temp_dir_beside

STORE_SCHEMA = "trtforge.engine-store/1"
ENGINE_FILE = "model.engine"
# BuildConfig fields that do not change the engine: a timing cache only changes how fast
# the builder gets there, and ``expect`` is a check, made again on every hit.
_NOT_IN_KEY = ("timing_cache", "expect")
# How long a builder waits for another process building the same key (builds take minutes).
LOCK_TIMEOUT_S = 3600
STORE_LIMIT_ENV = "TRTFORGE_ENGINE_STORE_LIMIT"
DEFAULT_STORE_LIMIT = "20G"


def default_store_dir() -> Path:
    from optimizer.cache import default_cache_dir

    return default_cache_dir() / "engines"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "default"


def timing_cache_path(root: Path, flavour: str, version: str, target: str) -> Path:
    """One timing cache per (flavour, TensorRT version, target hardware)."""
    return Path(root) / "timing" / f"{_slug(flavour)}-{_slug(version)}-{_slug(target)}.cache"


def store_key(model_sha256: str, config: BuildConfig, flavour: str, version: str, target: str) -> str:
    engine_config = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_KEY}
    payload = {
        "schema": STORE_SCHEMA,
        "model_sha256": model_sha256,
        "config": engine_config,
        "builder": flavour,
        "version": version,
        "target": target,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def with_default_timing_cache(config: BuildConfig, flavour: str, version: str, target: str, root: Path | None = None) -> BuildConfig:
    """``config`` with the store's timing cache for (flavour, version, target) unless it names one.

    Only datacenter TensorRT gets one: TensorRT-RTX's timing cache API is a no-op that
    records nothing, and without a GPU it cannot even reload a cache file.
    """
    if config.timing_cache is not None or flavour != "tensorrt":
        return config
    path = timing_cache_path(root or default_store_dir(), flavour, version, target)
    return dataclasses.replace(config, timing_cache=str(path))


def add_timing_cache(config: BuildConfig, builder: str | None = None, root: Path | None = None) -> BuildConfig:
    """``with_default_timing_cache`` for builds that skip the store (looks the builder up itself)."""
    trt, flavour = load_tensorrt(builder)
    return with_default_timing_cache(config, flavour, version_of(trt), build_target(trt, flavour, config), root)


@dataclass
class StoreEntry:
    key: str
    path: Path
    builder: str
    version: str
    target: str
    model: str
    engine_bytes: int


def _copy_atomic(src: Path, dst: Path) -> None:
    from optimizer.model import atomic_output

    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


class KeyLock:
    """An exclusive lock on one store key, held through ``flock`` on ``.locks/<key>.lock``.

    The kernel drops the lock of a killed process, so no lock outlives its holder; the file
    itself stays until ``EngineStore.clean_locks`` removes it. Removal is safe against
    waiters: whoever gets a lock checks that its file is still the one on disk, and retries
    on a fresh file otherwise. Without ``fcntl`` (Windows) ``filelock`` does the locking and
    lock files are kept.
    """

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path, self.timeout = Path(path), timeout
        self._fd: int | None = None
        self._fallback = None

    def acquire(self, blocking: bool = True) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            from filelock import FileLock, Timeout

            self._fallback = FileLock(str(self.path), timeout=self.timeout if blocking else 0)
            try:
                self._fallback.acquire()
            except Timeout:
                return False
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not blocking:
                            os.close(fd)
                            return False
                        if time.monotonic() > deadline:
                            raise BuildError(
                                f"another process has held the engine store lock {self.path} for {self.timeout:.0f}s; "
                                "wait for its build to finish"
                            ) from None
                        time.sleep(0.05)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the file was removed while we waited: lock the new one

    def release(self, unlink: bool = False) -> None:
        """Release; with ``unlink`` remove the lock file first (only while holding it)."""
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
            return
        if self._fd is None:
            return
        if unlink:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "KeyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class EngineStore:
    """Entries under ``root/<key>/`` (engine + sidecar), locks under ``root/.locks/``; capped at ``max_bytes``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root else default_store_dir()
        self.max_bytes = max_bytes if max_bytes is not None else size_limit(STORE_LIMIT_ENV, DEFAULT_STORE_LIMIT)

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> KeyLock:
        return KeyLock(self.root / ".locks" / f"{key}.lock")

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored sidecar record when the entry is complete and its engine intact, else None."""
        entry = self.entry_path(key)
        engine = entry / ENGINE_FILE
        try:
            record = json.loads((entry / f"{ENGINE_FILE}.json").read_text())
            size = engine.stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        if record.get("engine_bytes") != size or record.get("engine_sha256") != file_sha256(engine):
            return None  # damaged: treated as a miss and rebuilt over
        return record

    def mark_used(self, key: str) -> None:
        """Record a hit: least-recently-used eviction goes by the sidecar's mtime."""
        touch(self.entry_path(key) / f"{ENGINE_FILE}.json")

    def put(self, key: str, engine: Path, sidecar: Path) -> Path:
        """Store copies of ``engine`` and ``sidecar`` under ``key``, replacing an older entry.

        Then evicts least recently used entries over the cap (never this one). The caller
        holds the key's lock.
        """
        entry = self.entry_path(key)
        staging = temp_dir_beside(entry)
        try:
            shutil.copyfile(engine, staging / ENGINE_FILE)
            record = json.loads(sidecar.read_text())
            record.update(engine=ENGINE_FILE, store_key=key, store_hit=None)
            (staging / f"{ENGINE_FILE}.json").write_text(json.dumps(record, indent=2) + "\n")
            if entry.exists():  # a rebuild: move the old one aside first so the rename cannot fail
                remove_entry_folder(entry)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=key)
        return entry

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def entries(self) -> list[StoreEntry]:
        found = []
        for folder in self._folders():
            record = self.lookup(folder.name)
            if record is None:
                continue
            found.append(
                StoreEntry(
                    key=folder.name,
                    path=folder,
                    builder=record.get("builder", "?"),
                    version=record.get("version", "?"),
                    target=record.get("target", "?"),
                    model=record.get("model", "?"),
                    engine_bytes=record.get("engine_bytes", 0),
                )
            )
        return found

    def size(self) -> int:
        """Bytes of every entry folder (complete or not)."""
        return sum(folder_bytes(f) for f in self._folders())

    def evict(self, limit: int | None = None, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the store fits ``limit`` (default: its cap),
        then unheld lock files and temp folders of dead builds. Entries another process holds
        and ``keep`` stay. Returns the removed keys."""
        ranked = []
        for folder in self._folders():
            try:
                used = (folder / f"{ENGINE_FILE}.json").stat().st_mtime
            except OSError:
                used = 0.0  # incomplete or damaged: first to go
            if folder.name == keep:
                used = float("inf")  # sorts last: evict_lru never removes the newest
            ranked.append((used, folder_bytes(folder), folder))
        removed = evict_lru(ranked, self.max_bytes if limit is None else limit, lambda f: self._remove_unheld(f.name))
        self.clean_locks()
        remove_stale_temps(self.root)
        return [p.name for p in removed]

    def _remove_unheld(self, key: str) -> bool:
        lock = self.lock(key)
        if not lock.acquire(blocking=False):
            return False  # being built or copied right now
        try:
            return remove_entry_folder(self.entry_path(key))
        finally:
            lock.release(unlink=True)

    def clean_locks(self) -> int:
        """Remove lock files nobody holds (a held one is skipped); return how many were removed."""
        removed = 0
        folder = self.root / ".locks"
        if not folder.is_dir():
            return 0
        for path in folder.glob("*.lock"):
            lock = KeyLock(path, timeout=0)
            if lock.acquire(blocking=False):
                lock.release(unlink=True)
                removed += 1
        return removed

    def remove(self, key: str) -> bool:
        entry = self.entry_path(key)
        if not entry.is_dir():
            return False
        lock = self.lock(key)
        lock.acquire()
        try:
            return remove_entry_folder(entry)
        finally:
            lock.release(unlink=True)

    def clear(self) -> int:
        """Remove every entry, temp folders of dead builds and unheld locks; return how many entries were removed."""
        removed = sum(1 for folder in self._folders() if self.remove(folder.name))
        self.clean_locks()
        remove_stale_temps(self.root)
        return removed


def _result_from_record(record: dict[str, Any], engine: Path, key: str) -> BuildResult:
    fields = {f.name for f in dataclasses.fields(BuildResult)}
    values = {k: v for k, v in record.items() if k in fields}
    values["precision"] = LayerPrecisionSummary(**record["precision"])
    values.update(engine_path=str(engine), sidecar_path=f"{engine}.json", store_key=key, store_hit=True)
    values["notes"] = [f"reused from the engine store (entry {key[:12]}); no build ran"]
    return BuildResult(**values)


def build_or_reuse(
    model_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    config: BuildConfig | None = None,
    builder: str | None = None,
    store: EngineStore | None = None,
    rebuild: bool = False,
) -> BuildResult:
    """``build_engine`` through the engine store: copy a stored engine when one matches, else
    build, store and copy. ``rebuild`` ignores (and replaces) a stored entry.

    Without an explicit ``config.timing_cache``, datacenter TensorRT gets the store's timing
    cache for its (version, GPU); TensorRT-RTX gets none, because its timing cache API is a
    no-op that records nothing.
    """
    from optimizer.model import write_text_atomic

    config = config or BuildConfig()
    store = store or EngineStore()
    model = check_model_file(model_path)
    engine = Path(engine_path)
    if engine.is_dir():
        raise ConfigError(f"engine path {engine} is a folder; give a file name like {engine / (model.stem + '.engine')}")
    trt, flavour = load_tensorrt(builder)
    _check_precision_flags(trt, flavour, config)
    _check_gpu_only_options(trt, flavour, config)
    version = version_of(trt)
    target = build_target(trt, flavour, config)
    key = store_key(content_hash(model), config, flavour, version, target)
    config = with_default_timing_cache(config, flavour, version, target, store.root)

    with store.lock(key):
        record = None if rebuild else store.lookup(key)
        if record is not None:
            store.mark_used(key)
            result = _result_from_record(record, engine, key)
            _check_expect(config, result.precision, model)
            start = time.perf_counter()
            record.update(engine=engine.name, model=str(model), store_key=key, store_hit=True, notes=result.notes)
            # Sidecar first, engine last, as a fresh build does: whoever sees the new engine sees its sidecar.
            write_text_atomic(Path(result.sidecar_path), json.dumps(record, indent=2) + "\n")
            _copy_atomic(store.entry_path(key) / ENGINE_FILE, engine)
            result.notes.append(f"copied in {time.perf_counter() - start:.2f}s (the original build took {result.seconds:.1f}s)")
            return result
        result = build_engine(model, engine, config, builder=flavour)
        store.put(key, engine, Path(result.sidecar_path))
        result.store_key, result.store_hit = key, False
        # The sidecar beside the engine says where it is stored too.
        sidecar = json.loads(Path(result.sidecar_path).read_text())
        sidecar.update(store_key=key, store_hit=False)
        write_text_atomic(Path(result.sidecar_path), json.dumps(sidecar, indent=2) + "\n")
        return result
