"""Does an engine fit this machine? Its ``<engine>.json`` sidecar against what is installed here.

A serialized engine only deserializes in the TensorRT flavour and version that built it,
and only runs on the compute capabilities it was built for. TensorRT's own refusal comes
late (at deserialization, on the GPU) and in words about plan magic tags; the sidecar lets
us say it early, in one line, with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from optimizer.model import file_sha256
from optimizer.engine.cuda import device_compute_capability, sm_number
from optimizer.engine.loader import DISPLAY_NAMES, FLAVOURS, load_tensorrt, version_of
from optimizer.errors import InputError, TrtforgeError

SIDECAR_SCHEMAS = ("trtforge.engine/1",)


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(f"{engine_path}.json")


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar's record; InputError when it is missing or not ours."""
    path = sidecar_path(engine_path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{path} is missing: without it nothing says which TensorRT built {Path(engine_path).name}; "
            f"rebuild the engine with `trtforge build`"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable sidecar ({exc}); rebuild the engine with `trtforge build`") from None
    if not isinstance(record, dict) or record.get("schema") not in SIDECAR_SCHEMAS:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise InputError(
            f"{path} has schema {found!r}, expected one of {', '.join(SIDECAR_SCHEMAS)}; rebuild the engine with `trtforge build`"
        )
    return record


def _name(flavour: str, version: str) -> str:
    return f"{DISPLAY_NAMES.get(flavour, flavour)} {version}"


def _target_problem(record: dict[str, Any], device: str) -> str | None:
    """Why an engine built for ``record['target']`` cannot run on ``device``, or None."""
    config = record.get("config") or {}
    level = config.get("hardware_compatibility")
    targets = [str(c).upper() for c in config.get("compute_capabilities") or []]
    if level == "ampere_plus":
        if sm_number(device) < 80:
            return f"it was built for Ampere and newer (SM80+) but this GPU is {device}"
        return None
    if targets:
        return None if device in targets else f"it was built for {', '.join(targets)} but this GPU is {device}"
    built_on = record.get("build_device")
    if record.get("builder") == "tensorrt" and built_on and built_on != device:
        return f"it was built on a {built_on} GPU but this GPU is {device} (build with hardware_compatibility to share engines)"
    return None


def check_sidecar(engine_path: str | Path, trt_module: ModuleType | None = None) -> list[str]:
    """Every reason the engine at ``engine_path`` cannot be loaded or run here; [] when it fits.

    ``trt_module`` is the TensorRT module that would load it; by default the flavour the
    sidecar names, imported if installed. The compute capability is compared only where a
    GPU is present (without one nothing runs anyway, and the runner says so).
    """
    engine = Path(engine_path)
    if not engine.is_file():
        return [f"engine file {engine} does not exist"]
    try:
        record = read_sidecar(engine)
    except InputError as exc:
        return [str(exc)]
    problems: list[str] = []
    flavour, version = str(record.get("builder", "?")), str(record.get("version", "?"))
    built_with = _name(flavour, version)
    if record.get("engine_bytes") is not None and engine.stat().st_size != record["engine_bytes"]:
        problems.append(f"{engine.name} is {engine.stat().st_size} bytes but its sidecar records {record['engine_bytes']}")
    elif record.get("engine_sha256") and file_sha256(engine) != record["engine_sha256"]:
        problems.append(f"{engine.name} does not match the sha256 in its sidecar (the engine was replaced or damaged)")

    if trt_module is None:
        if flavour not in FLAVOURS:
            return problems + [f"its sidecar names an unknown builder {flavour!r}"]
        try:
            trt_module, _ = load_tensorrt(flavour)
        except TrtforgeError:
            return problems + [f"it was built with {built_with}, which is not installed here ({FLAVOURS[flavour][1]})"]
    here_flavour = "tensorrt-rtx" if trt_module.__name__.startswith("tensorrt_rtx") else "tensorrt"
    here = _name(here_flavour, version_of(trt_module))
    if here_flavour != flavour:
        problems.append(f"it was built with {built_with} but would be loaded by {here}")
    elif version_of(trt_module) != version:
        problems.append(f"it was built with {built_with} but this machine has {here} (engines only load in the version that built them)")

    device = device_compute_capability()
    if device is not None:
        mismatch = _target_problem(record, device)
        if mismatch:
            problems.append(mismatch)
    return problems


def require_compatible(engine_path: str | Path, trt_module: ModuleType | None = None) -> dict[str, Any]:
    """Raise InputError (one line, exit 2) unless the engine fits this machine; return its sidecar."""
    problems = check_sidecar(engine_path, trt_module)
    if problems:
        raise InputError(
            f"engine {engine_path} cannot run here: {'; '.join(problems)}; rebuild it on this machine "
            f"(`trtforge build MODEL -o {Path(engine_path).name} --rebuild`)"
        )
    return read_sidecar(engine_path)
