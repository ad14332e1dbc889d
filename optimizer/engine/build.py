"""Building a serialized engine from an ONNX file, with its record next to it.

Outputs appear complete or not at all: the engine, its ``<engine>.json`` sidecar and the
timing cache are each written to a temporary file in the destination folder and renamed
into place, so a failed or interrupted build leaves any previous files untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from optimizer.engine.cuda import device_compute_capability
from optimizer.engine.loader import (
    display_name,
    get_logger,
    has_precision_flags,
    is_strongly_typed,
    load_tensorrt,
    one_line,
    version_of,
)
from optimizer.engine.parse import check_model_file, is_unreadable, parse_network
from optimizer.engine.precision import LayerPrecisionSummary, dtype_name, network_precision
from optimizer.engine.sparsity import two_four_sparse_weights
from optimizer.engine.shapes import ShapeProfile, network_inputs, require_profiles
from optimizer.errors import BuildError, ConfigError, InputError, UnparsableModel
from optimizer.model import content_hash, write_files_atomic

SIDECAR_SCHEMA = "trtforge.engine/1"
EXPECTABLE = ("int8", "fp16", "bf16", "fp8", "fp32")
# TensorRT 10 weak-typing flags a user may still ask for; TensorRT 11 and RTX have none.
PRECISION_FLAGS = ("fp16", "bf16", "int8", "fp8")
MAX_OPTIMIZATION_LEVEL = 5
# BuildConfig.hardware_compatibility -> TensorRT's HardwareCompatibilityLevel member.
HARDWARE_COMPATIBILITY = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


@dataclass
class BuildConfig:
    profiles: list[ShapeProfile] = field(default_factory=list)  # required for dynamic inputs
    workspace_mib: int | None = None
    optimization_level: int | None = None  # builder_optimization_level, 0..5
    timing_cache: str | None = None  # a path; loaded if present, saved after the build (str keeps asdict JSON-safe)
    sparse_weights: bool = False
    expect: str | None = None  # "int8" | "fp16" | "bf16" | "fp8" | "fp32": fail unless the network carries it
    precision_flags: tuple[str, ...] = ()  # TensorRT 10 weak typing only; strongly typed builders refuse them
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("SM86", "SM89"); () = its default set
    hardware_compatibility: str | None = None  # "ampere_plus" | "same_compute_capability"; None: this GPU only
    refit: bool = False  # weights can be replaced in the built engine (REFIT)
    strip_weights: bool = False  # the plan leaves weights out; refit them from the ONNX at deployment (STRIP_PLAN)

    def __post_init__(self) -> None:
        if self.timing_cache is not None:
            self.timing_cache = os.fspath(self.timing_cache)
        self.precision_flags = tuple(f.lower() for f in self.precision_flags)
        self.compute_capabilities = tuple(c.upper() for c in self.compute_capabilities)
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ConfigError(
                f"workspace_mib must be >= 1 (MiB), got {self.workspace_mib}; leave it unset for the builder's default"
            )
        if self.optimization_level is not None and not 0 <= self.optimization_level <= MAX_OPTIMIZATION_LEVEL:
            raise ConfigError(
                f"optimization_level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {self.optimization_level} "
                f"(3 is TensorRT's default)"
            )
        if self.expect is not None and self.expect not in EXPECTABLE:
            raise ConfigError(f"expect must be one of {', '.join(EXPECTABLE)}, got {self.expect!r}")
        unknown = [f for f in self.precision_flags if f not in PRECISION_FLAGS]
        if unknown:
            raise ConfigError(f"unknown precision flag(s) {', '.join(unknown)}: use {', '.join(PRECISION_FLAGS)}")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ConfigError(
                f"hardware_compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                f"got {self.hardware_compatibility!r}"
            )
        if not all(isinstance(p, ShapeProfile) for p in self.profiles):
            raise ConfigError("profiles must be ShapeProfile objects; build them with parse_shapes('x:min,opt,max')")


@dataclass
class BuildResult:
    engine_path: str
    builder: str  # "tensorrt" | "tensorrt-rtx"
    version: str
    seconds: float  # wall time of the builder call itself (parse and writing excluded)
    engine_bytes: int
    precision: LayerPrecisionSummary
    timing_cache: str | None  # where the cache was saved
    timing_cache_hit: bool | None  # an existing cache file was loaded and accepted; None: no cache asked for
    sidecar_path: str = ""
    model_sha256: str = ""
    engine_sha256: str = ""
    strongly_typed: bool = True
    # Entries in the cache after the build: 0 means this builder ignores timing caches
    # (TensorRT-RTX: the API is a no-op there). None when not asked for or not queryable.
    timing_cache_entries: int | None = None
    notes: list[str] = field(default_factory=list)  # warnings worth showing in the summary and report
    # What the engine runs on: RTX compute-capability targets, or the building GPU (see build_target).
    target: str = ""
    build_device: str | None = None  # compute capability of the GPU that built it; None: built without one
    store_key: str | None = None  # the engine store entry this engine is in (None: the store was not used)
    store_hit: bool | None = None  # True: copied from the store, no build ran; None: the store was not used
    sparse_2_4_weights: int = 0  # Conv/MatMul/Gemm weights that are 2:4 sparse (what sparse_weights can use)
    profiles: list[str] = field(default_factory=list)  # the optimization profiles, in the shape language


# --- files -------------------------------------------------------------------------------


# --- configuration ------------------------------------------------------------------------


def _check_precision_flags(trt: ModuleType, flavour: str, config: BuildConfig) -> None:
    if not config.precision_flags:
        return
    missing = [f for f in config.precision_flags if not hasattr(trt.BuilderFlag, f.upper())]
    if not has_precision_flags(trt) or missing:
        raise ConfigError(
            f"{display_name(flavour, trt)} builds strongly typed networks, so there is no "
            f"{'/'.join(config.precision_flags)} builder flag: precision comes from the ONNX graph. "
            f"Make an INT8 model with `trtforge quantize` or an FP16 one with the precision stage "
            f"(`trtforge optimize --precision fp16`), then build that model without precision flags"
        )


def _check_gpu_only_options(trt: ModuleType, flavour: str, config: BuildConfig) -> None:
    # TensorRT-RTX compiles refittable and weight-stripped engines with its JIT, which needs a
    # CUDA device: without one the builder fails deep inside (CUDA_SUCCESS check) and prints
    # to stderr. Say it before any work.
    from optimizer.engine.cuda import cuda_available

    asked = {kind: option for kind, option, on in (
        ("refittable", "refit", config.refit), ("weight-stripped", "strip_weights", config.strip_weights)) if on}
    if asked and flavour == "tensorrt-rtx" and not cuda_available():
        raise ConfigError(
            f"{display_name(flavour, trt)} cannot build {' or '.join(asked)} engines without a GPU (no CUDA device here); "
            f"build them on a GPU machine, or drop {' and '.join(asked.values())}"
        )


def _configure(trt: ModuleType, flavour: str, builder: Any, network: Any, config: BuildConfig, model_name: str) -> Any:
    cfg = builder.create_builder_config()
    require_profiles(config.profiles, network, model_name)
    dynamic = {n for n, s in network_inputs(network).items() if -1 in s}
    for index, profile in enumerate(config.profiles):
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            if name in dynamic:  # static inputs were checked to match; TensorRT needs no range for them
                prof.set_shape(name, lo, opt, hi)
        if cfg.add_optimization_profile(prof) < 0:
            raise ConfigError(
                f"TensorRT rejected shape profile {index} ({profile.spec()}) for {model_name}; check its ranges"
            )
    if config.workspace_mib is not None:
        cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.optimization_level is not None:
        cfg.builder_optimization_level = config.optimization_level
    if config.sparse_weights:
        if not hasattr(trt.BuilderFlag, "SPARSE_WEIGHTS"):
            raise ConfigError(f"{display_name(flavour, trt)} has no sparse-weights flag; drop sparse_weights")
        cfg.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    for wanted, flag in ((config.refit, "REFIT"), (config.strip_weights, "STRIP_PLAN")):
        if wanted:
            if not hasattr(trt.BuilderFlag, flag):
                raise ConfigError(f"{display_name(flavour, trt)} has no {flag} flag; drop {flag.lower()}")
            cfg.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in config.precision_flags:  # only reached on a weakly typed TensorRT 10 network
        cfg.set_flag(getattr(trt.BuilderFlag, flag.upper()))
    if config.compute_capabilities:
        _set_compute_capabilities(trt, flavour, cfg, config.compute_capabilities)
    if config.hardware_compatibility:
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_COMPATIBILITY[config.hardware_compatibility], None)
        if level is None or not hasattr(cfg, "hardware_compatibility_level"):
            raise ConfigError(f"{display_name(flavour, trt)} has no hardware compatibility levels; drop hardware_compatibility")
        cfg.hardware_compatibility_level = level
    return cfg


def build_target(trt: ModuleType, flavour: str, config: BuildConfig) -> str:
    """The hardware an engine is built for, as one stable string (part of the engine store key).

    TensorRT-RTX compiles for the compute capabilities it is told (or its default set);
    datacenter TensorRT builds for the GPU it runs on, unless a hardware compatibility level
    widens that.
    """
    from optimizer.engine.cuda import device_compute_capability

    if flavour == "tensorrt-rtx" or config.compute_capabilities:
        target = "+".join(config.compute_capabilities) or "rtx-default"
    else:
        target = device_compute_capability() or "no-gpu"
    if config.hardware_compatibility:
        target += f"/{config.hardware_compatibility}"
    return target


def _set_compute_capabilities(trt: ModuleType, flavour: str, cfg: Any, wanted: tuple[str, ...]) -> None:
    known = getattr(trt, "ComputeCapability", None)
    if known is None or not hasattr(cfg, "set_compute_capability"):
        raise ConfigError(
            f"{display_name(flavour, trt)} cannot target chosen compute capabilities (a TensorRT-RTX feature); "
            f"drop compute_capabilities or use --builder tensorrt-rtx"
        )
    names = [n for n in known.__members__ if n.startswith("SM")]
    bad = [c for c in wanted if c not in names]
    if bad:
        raise ConfigError(
            f"unknown compute capability {', '.join(bad)}: {display_name(flavour, trt)} knows {', '.join(names)}"
        )
    cfg.num_compute_capabilities = len(wanted)
    for i, name in enumerate(wanted):
        cfg.set_compute_capability(getattr(known, name), i)


def _load_timing_cache(cfg: Any, path: Path, logger: Any) -> tuple[bool, str | None]:
    """Attach a timing cache to the config.

    Returns (an existing file was loaded and accepted, why it was not when it existed).
    """
    blob = path.read_bytes() if path.is_file() else b""
    # TensorRT-RTX marks these calls deprecated (they do nothing there); the warning would
    # only repeat what timing_cache_entries == 0 and the build notes already say.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        logger.take()
        cache = cfg.create_timing_cache(blob)
        accepted = bool(cfg.set_timing_cache(cache, False))
    errors, warns = logger.take()
    if blob and (errors or warns or not accepted):
        # TensorRT logs the reason (version mismatch, corrupt file) and goes on with an empty cache.
        return False, one_line((errors + warns + ["rejected by the builder"])[0], 160)
    return bool(blob), None


def _save_timing_cache(cfg: Any, path: Path) -> tuple[bytes | None, int | None]:
    """Return (bytes to write beside the engine, entries), or (None, entries) when written here.

    A cache with entries is merged into the file under a lock and written at once: builds of
    other models that share this (version, GPU) cache may have saved since this one loaded
    it, and a plain overwrite would drop their entries.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = cfg.get_timing_cache()
        entries = len(cache.queryKeys()) if hasattr(cache, "queryKeys") else None
        if not entries:
            return bytes(cache.serialize()), entries
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock", timeout=600):
            if path.is_file() and hasattr(cache, "combine"):
                cache.combine(cfg.create_timing_cache(path.read_bytes()), True)  # True: skip mismatching entries
            write_files_atomic([(path, bytes(cache.serialize()))])
        return None, len(cache.queryKeys())


# --- the build ----------------------------------------------------------------------------


def _parse_failure(trt: ModuleType, flavour: str, model: Path, issues: list[Any]) -> Exception:
    shown = "; ".join(i.describe() for i in issues[:5])
    more = f"; and {len(issues) - 5} more" if len(issues) > 5 else ""
    if is_unreadable(issues):
        return InputError(f"{model} is not a readable ONNX model ({shown}); re-export or re-download it")
    return UnparsableModel(
        f"{display_name(flavour, trt)} cannot parse {model}: {shown}{more}; replace these ops with standard ONNX ops "
        f"(see `trtforge inspect`) or provide a TensorRT plugin for them"
    )


def _check_expect(config: BuildConfig, summary: LayerPrecisionSummary, model: Path) -> None:
    if config.expect is None or config.expect in summary.carries:
        return
    runs = ", ".join(f"{n} {p}" for p, n in summary.compute_by_precision.items()) or "no compute layers"
    fix = {
        "int8": "insert Q/DQ with `trtforge quantize` first",
        "fp8": "insert FP8 Q/DQ first (trtforge quantize --mode fp8)",
        "int4": "insert INT4 weight-only DQ first (trtforge quantize --mode int4-weight)",
        "fp16": "convert it with the precision stage (`trtforge optimize --precision fp16`) first",
        "bf16": "cast it to BF16 with the precision stage first",
        "fp32": "build the FP32 model instead",
    }[config.expect]
    raise BuildError(
        f"{model} does not carry {config.expect}: its compute layers run in {', '.join(summary.carries) or 'nothing'} "
        f"({runs}; {summary.quantize_layers} Q and {summary.dequantize_layers} DQ layers); {fix}"
    )


def _io_record(network: Any) -> dict[str, list[dict[str, Any]]]:
    def describe(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}

    return {
        "inputs": [describe(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [describe(network.get_output(i)) for i in range(network.num_outputs)],
    }


def _timing_cache_output(trt, flavour, cfg, cache_path: Path, cache_problem, notes: list[str], outputs: list) -> int | None:
    """Queue the timing cache for the atomic write and note what it is worth; return its entry count."""
    blob, entries = _save_timing_cache(cfg, cache_path)
    if entries == 0:
        # TensorRT-RTX: the timing cache API is a no-op, and reloading a cache file makes it
        # look for a GPU, so without one it is always rejected. One clear note, not CUDA noise.
        notes.append(
            f"{display_name(flavour, trt)} does not use timing caches (it records no entries"
            f"{' and could not reload ' + str(cache_path) if cache_problem else ''}); "
            f"the file is kept but will not speed up builds"
        )
    elif cache_problem:
        notes.append(f"timing cache {cache_path} was not usable ({cache_problem}); it has been rewritten")
    if blob is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        outputs.append((cache_path, blob))
    return entries


def build_engine(
    model_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    config: BuildConfig | None = None,
    builder: str | None = None,
) -> BuildResult:
    """Parse ``model_path``, build it and write ``engine_path`` plus ``<engine_path>.json``."""
    config = config or BuildConfig()
    model = check_model_file(model_path)
    engine = Path(engine_path)
    if engine.is_dir():
        example = engine / (model.stem + ".engine")
        raise ConfigError(f"engine path {engine} is a folder; give a file name like {example}")
    trt, flavour = load_tensorrt(builder)
    _check_precision_flags(trt, flavour, config)  # before parsing: a config mistake needs no model work
    _check_gpu_only_options(trt, flavour, config)

    # Hash first: optimizer.model's content_hash also refuses external data that escapes the
    # model's folder, is missing or is truncated, before TensorRT reads any of it.
    model_sha256 = content_hash(model)
    # Weak typing only when precision flags were asked for (and exist, checked above).
    parsed = parse_network(trt, model, strongly_typed=not config.precision_flags)
    if parsed.issues:
        raise _parse_failure(trt, flavour, model, parsed.issues)
    network = parsed.network
    summary = network_precision(network, trt)
    _check_expect(config, summary, model)

    sparse = two_four_sparse_weights(model)
    logger = get_logger(trt)
    cfg = _configure(trt, flavour, parsed.builder, network, config, model.name)
    notes: list[str] = []
    cache_path = Path(config.timing_cache) if config.timing_cache else None
    cache_hit, cache_problem = _load_timing_cache(cfg, cache_path, logger) if cache_path else (None, None)

    logger.take()
    start = time.perf_counter()
    serialized = parsed.builder.build_serialized_network(network, cfg)
    seconds = time.perf_counter() - start
    errors, warns = logger.take()
    if serialized is None:
        reason = "; ".join(dict.fromkeys(one_line(e, 240) for e in errors[:2])) or "no reason logged"
        if "workspace" in reason.lower() or "OutOfMemory" in reason:
            hint = "raise workspace_mib (or leave it unset)"
        else:
            hint = "change what it names (an op, a shape range, a build option) and rebuild"
        raise BuildError(f"{display_name(flavour, trt)} failed to build {model}: {reason}; {hint}")
    notes.extend(dict.fromkeys(one_line(w, 240) for w in warns))  # de-duplicated, in order
    if config.sparse_weights and not sparse:
        notes.append("sparse_weights is on but no Conv/MatMul/Gemm weight is 2:4 sparse, so TensorRT has nothing to use it on")
    elif sparse and not config.sparse_weights:
        notes.append(f"{len(sparse)} weight(s) are 2:4 sparse (e.g. {sparse[0]}): build with --sparse-weights to use sparse kernels")

    entries = None
    outputs: list[tuple[Path, bytes | memoryview]] = []
    engine.parent.mkdir(parents=True, exist_ok=True)
    data = memoryview(serialized)
    if cache_path:
        entries = _timing_cache_output(trt, flavour, cfg, cache_path, cache_problem, notes, outputs)

    result = BuildResult(
        engine_path=str(engine),
        builder=flavour,
        version=version_of(trt),
        seconds=round(seconds, 3),
        engine_bytes=data.nbytes,
        precision=summary,
        timing_cache=str(cache_path) if cache_path else None,
        timing_cache_hit=cache_hit,
        sidecar_path=str(engine) + ".json",
        model_sha256=model_sha256,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        strongly_typed=is_strongly_typed(trt, network),
        timing_cache_entries=entries,
        notes=notes,
        target=build_target(trt, flavour, config),
        build_device=device_compute_capability(),
        sparse_2_4_weights=len(sparse),
        profiles=[p.spec() for p in config.profiles],
    )
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "engine": engine.name,
        "model": str(model),
        "network": _io_record(network),
        "config": asdict(config),
        "profiles": [p.spec() for p in config.profiles],
        **{k: v for k, v in asdict(result).items() if k not in {"engine_path", "sidecar_path"}},
    }
    # The engine goes last so that a reader who sees a new engine also sees its new record.
    outputs += [(Path(result.sidecar_path), (json.dumps(sidecar, indent=2) + "\n").encode()), (engine, data)]
    write_files_atomic(outputs)
    return result
