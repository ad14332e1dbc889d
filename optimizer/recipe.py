"""The recipe: what ``trtforge optimize`` does, as a typed, validated YAML document.

Every section is a dataclass; the loader walks the YAML against the dataclass fields and
rejects unknown keys with the key's path, the valid keys and a likely intended one, so a
typo never silently falls back to a default. Relative paths in a recipe file are relative
to that file; paths given on the command line are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optimizer.errors import ConfigError

RECIPE_VERSION = 1


@dataclass
class PassesConfig:
    enabled: bool = True
    names: list[str] | None = None  # None: graph_passes.DEFAULT_PASSES
    skip: list[str] = field(default_factory=list)
    verify: bool = True  # check outputs against the original after every pass
    explain: bool = True  # record in the report, per pass, each node it matched but refused, and why
    opset: int | None = None  # upgrade the default-domain opset first (onnx version converter)
    strict: bool = False  # a pass that fails is an error (default: rolled back, named in the report, skipped)


@dataclass
class PruneConfig:
    """The prune stage (``optimizer.pruning``); off unless the recipe turns it on."""

    enabled: bool = False
    sparsity: str | None = None  # "2:4": TensorRT's structured sparsity on eligible Conv/Gemm/MatMul weights
    channels: float | None = None  # fraction of each prunable channel group to remove
    flops_target: float | None = None  # or: fraction of Conv/Gemm/MatMul FLOPs to remove
    max_error: float | None = None  # or: largest FLOPs cut with relative output error <= this on the validation data
    method: str = "auto"  # 2:4 mask: "magnitude" | "activation" | "obs"; auto: obs with data, else magnitude
    criterion: str = "auto"  # channels: "l1" | "l2" | "activation"; auto: activation with data, else l2
    reconstruct: bool = True  # least-squares repair from calibration data (uses precision.calib)
    exclude: list[str] = field(default_factory=list)  # node-name globs left dense
    max_samples: int | None = 32  # calibration samples used for statistics
    force: bool = False  # keep a pruned model whose output error is beyond the tolerance (default: stop, exit 1)


@dataclass
class PrecisionConfig:
    mode: str = "int8"  # "none" | "int8" | "fp8" (Q/DQ) | "int4-weight" (INT4 weights) | "fp16" | "bf16" (Casts)
    block_size: int = 128  # mode int4-weight: input channels per scale
    int4_method: str = "awq"  # mode int4-weight: "awq" (activation-aware clip search) | "rtn"
    target: str = "tensorrt"  # "tensorrt" | "onnxruntime-cpu"
    method: str = "max"
    per_channel: bool = True  # False: one scale per weight tensor (per-tensor)
    percentile: float = 99.99  # method "percentile": share of values kept inside the range
    # e.g. "cer_increase<=0.1" (task metric, validate.metric) or "output_nrmse<=0.02": the most
    # sensitive layers stay FP32 until the validation data meets it
    budget: str | None = None
    calib: str | None = None  # folder of .npz/.npy samples
    max_samples: int | None = None
    synthetic: bool = False  # random calibration data, only when asked for by name
    exclude: list[str] = field(default_factory=list)


@dataclass
class BuildConfigSection:
    enabled: str = "auto"  # "auto": when a TensorRT module is installed; "yes": required; "no": skip
    builder: str | None = None  # "tensorrt" | "tensorrt-rtx"; None: whichever is installed
    shapes: list[str] = field(default_factory=list)  # the first profile: "input:min,opt,max" per input, dims joined by x
    profiles: list[str] = field(default_factory=list)  # more profiles, each "a:min,opt,max;b:min,opt,max"
    dims: list[str] = field(default_factory=list)  # named dynamic dims, each "batch=1" or "seq=16,128,512" (min,opt,max)
    workspace_mib: int | None = None
    optimization_level: int | None = None
    expect: str | None = None  # "int8" | "fp16" | "bf16" | "fp8" | "fp32": fail when the network does not carry it
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX targets, e.g. [SM86, SM89]
    hardware_compatibility: str | None = None  # "ampere_plus" | "same_compute_capability"
    sparse_weights: bool = False  # let TensorRT use 2:4 sparse kernels
    refit: bool = False  # weights can be replaced in the built engine
    strip_weights: bool = False  # weights left out of the plan, refit from the ONNX at deployment
    engine_store: bool = True  # reuse an identical earlier build from the engine store


@dataclass
class LatencyConfig:
    enabled: bool = True
    threads: int = 1
    warmup: int = 3
    iterations: int = 30
    samples: int = 4  # distinct inputs cycled through while timing
    ort_level: str = "all"  # ONNX Runtime graph optimisation level while timing (its default)


@dataclass
class ValidateConfig:
    data: str | None = None
    max_samples: int | None = None
    metric: str | None = None  # "path/to/file.py:function" (executes that file: the recipe's explicit choice)
    gates: list[str] = field(default_factory=list)
    # With no gates given, check the documented default gates (finite, cosine, SNR, top-1, task bound).
    default_gates: bool = True
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    baseline: str | None = None  # a previous release's report.json: enables the *_regression gate metrics
    # The reference against itself under a second ORT configuration (2 threads, level "all"):
    # its spread is the noise floor behind the error_to_noise gate metric. 0 turns it off.
    noise_samples: int = 8
    divergence: str = "on-failure"  # first-divergent-layer search: "never" | "on-failure" | "always"
    divergence_samples: int = 2  # inputs the search runs, each once per chunk; 2 fix the sample (benchmarks/divergence_sample.py)
    divergence_chunk: int = 32  # intermediate tensors exposed per ORT session: bounds memory

    def __post_init__(self) -> None:
        if self.divergence not in choices("validate.divergence"):
            raise ConfigError(f"recipe: 'validate.divergence' is {self.divergence!r}; choose one of: {', '.join(choices('validate.divergence'))}")
        if self.divergence_chunk < 1 or self.divergence_samples < 1:
            raise ConfigError("recipe: 'validate.divergence_chunk' and 'validate.divergence_samples' must be >= 1")


@dataclass
class Recipe:
    version: int = RECIPE_VERSION
    name: str | None = None
    passes: PassesConfig = field(default_factory=PassesConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    build: BuildConfigSection = field(default_factory=BuildConfigSection)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, value: str | None) -> Path | None:
        """A recipe path, relative to the recipe file's folder."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data


# The modes ``calibration.quantize`` writes (its ``MODES``); fp16/bf16 are Casts (``calibration.autocast``).
QUANTIZE_MODES = ("int8", "fp8", "int4-weight")

# Every recipe key with a closed set of values (None: the key may stay unset). The CLI's options
# offer the same values (``choices``), so a mode or target is added here once.
_CHOICES = {
    "precision.mode": ("none", *QUANTIZE_MODES, "fp16", "bf16"),
    "precision.target": ("tensorrt", "onnxruntime-cpu"),
    "precision.method": ("max", "percentile", "entropy", "mse"),
    "precision.int4_method": ("awq", "rtn"),
    "prune.sparsity": (None, "2:4"),
    "prune.method": ("auto", "magnitude", "activation", "obs"),
    "prune.criterion": ("auto", "l1", "l2", "activation"),
    "build.enabled": ("auto", "yes", "no"),
    "validate.latency.ort_level": ("disable", "basic", "extended", "all"),
    "build.builder": (None, "tensorrt", "tensorrt-rtx"),
    "build.expect": (None, "int8", "fp16", "bf16", "fp8", "int4", "fp32"),
    "build.hardware_compatibility": (None, "ampere_plus", "same_compute_capability"),
    "validate.divergence": ("never", "on-failure", "always"),
}


def choices(path: str) -> tuple[str, ...]:
    """The values recipe key ``path`` accepts besides unset: what the matching CLI option offers."""
    return tuple(c for c in _CHOICES[path] if c is not None)


# Inclusive numeric bounds (None: unbounded on that side). Checked where the recipe is read,
# so a zero iteration count or a negative sample limit never reaches the pipeline.
_RANGES = {
    "passes.opset": (7, None),
    "prune.channels": (0.0, 0.95),
    "prune.flops_target": (0.0, 0.95),
    "prune.max_error": (0.0, None),
    "prune.max_samples": (1, None),
    "precision.percentile": (50.0, 100.0),
    "precision.max_samples": (1, None),
    "build.workspace_mib": (1, None),
    "build.optimization_level": (0, 5),
    "validate.max_samples": (1, None),
    "validate.noise_samples": (0, None),
    "validate.divergence_samples": (1, None),
    "validate.divergence_chunk": (1, None),
    "validate.latency.threads": (1, None),
    "validate.latency.warmup": (0, None),
    "validate.latency.iterations": (1, None),
    "validate.latency.samples": (1, None),
}


def _check_range(path: str, value: Any) -> None:
    low, high = _RANGES[path]
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"recipe: '{path}' is {value!r}; it must be {bounds}")


def _public_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _convert(value: Any, annotation: Any, where: str) -> Any:
    hints_origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    if hints_origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"recipe: '{where}' has the wrong type ({type(value).__name__}: {value!r})")
    if hints_origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"recipe: '{where}' must be a list, found {type(value).__name__}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"recipe: '{where}' must be true or false, found {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"recipe: '{where}' must be an integer, found {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"recipe: '{where}' must be a number, found {value!r}")
    if annotation is str:
        if isinstance(value, bool):  # YAML turns yes/no into booleans
            return "yes" if value else "no"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"recipe: '{where}' must be a string, found {type(value).__name__}")
    return value


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: '{where or 'top level'}' must be a mapping, found {type(data).__name__}")
    fields = _public_fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            guess = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise ConfigError(f"recipe: unknown key '{path}'{hint}; valid keys here: {', '.join(fields)}")
        converted = _convert(value, hints[key], path)
        if path in _RANGES:
            _check_range(path, converted)
        if path in _CHOICES and converted not in _CHOICES[path]:
            raise ConfigError(f"recipe: '{path}' is {converted!r}; choose one of: {', '.join(choices(path))}")
        kwargs[key] = converted
    return cls(**kwargs)


def recipe_from_dict(data: Any, base_dir: Path = Path(".")) -> Recipe:
    recipe = _build(Recipe, data, "")
    if recipe.version != RECIPE_VERSION:
        raise ConfigError(f"recipe: version {recipe.version} is not supported; this trtforge reads version {RECIPE_VERSION}")
    recipe.base_dir = base_dir
    return recipe


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and validate a recipe file; ``None`` gives the defaults."""
    if path is None:
        return Recipe()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    try:
        return recipe_from_dict(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
