"""Content-addressed engine store: a build that was done once is never done again.

An entry is keyed by ``sha256(model content + build config + TensorRT flavour and version +
target hardware)`` and holds the engine and its sidecar. Builders of one key take a file
lock, so two processes asking for the same engine build it once: the second waits and then
finds the entry. Entries appear by renaming a finished folder into place, so a reader never
sees half an entry, and a crashed build leaves nothing behind but an ignored temp folder.

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
import tempfile
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
from optimizer.errors import ConfigError
from optimizer.model import content_hash, file_sha256

STORE_SCHEMA = "trtforge.engine-store/1"
ENGINE_FILE = "model.engine"
# BuildConfig fields that do not change the engine: a timing cache only changes how fast
# the builder gets there, and ``expect`` is a check, made again on every hit.
_NOT_IN_KEY = ("timing_cache", "expect")
# How long a builder waits for another process building the same key (builds take minutes).
LOCK_TIMEOUT_S = 3600


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


class EngineStore:
    """Entries under ``root/<key>/`` (engine + sidecar), locks under ``root/.locks/``."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_store_dir()

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str):
        from filelock import FileLock

        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"), timeout=LOCK_TIMEOUT_S)

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored sidecar record when the entry is complete and its engine intact, else None."""
        entry = self.entry_path(key)
        engine = entry / ENGINE_FILE
        try:
            record = json.loads((entry / f"{ENGINE_FILE}.json").read_text())
            size = engine.stat().st_size
        except (OSError, ValueError):
            return None
        if record.get("engine_bytes") != size or record.get("engine_sha256") != file_sha256(engine):
            return None  # damaged: treated as a miss and rebuilt over
        return record

    def put(self, key: str, engine: Path, sidecar: Path) -> Path:
        """Store copies of ``engine`` and ``sidecar`` under ``key``, replacing an older entry."""
        entry = self.entry_path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        try:
            shutil.copyfile(engine, staging / ENGINE_FILE)
            record = json.loads(sidecar.read_text())
            record.update(engine=ENGINE_FILE, store_key=key, store_hit=None)
            (staging / f"{ENGINE_FILE}.json").write_text(json.dumps(record, indent=2) + "\n")
            if entry.exists():  # a rebuild: move the old one aside first so the rename cannot fail
                old = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.old.", dir=self.root))
                os.replace(entry, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return entry

    def entries(self) -> list[StoreEntry]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
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

    def remove(self, key: str) -> bool:
        entry = self.entry_path(key)
        if not entry.is_dir():
            return False
        with self.lock(key):
            shutil.rmtree(entry)
        return True

    def clear(self) -> int:
        """Remove every entry (and stale temp folders); return how many entries were removed."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if folder.name == ".locks" or not folder.is_dir():
                continue
            if folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)
            elif self.remove(folder.name):
                removed += 1
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
