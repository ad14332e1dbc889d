"""PyTorch -> ONNX: export, verify against eager PyTorch in ONNX Runtime, store the shape ranges.

``export(module, example_inputs, out, shapes=...)`` (and ``trtforge export FILE.py:FACTORY``)

1. names the inputs after ``forward``'s parameters (or ``input_names``) and takes each input's
   min/opt/max from ``shapes`` (the one shape language, ``optimizer.shapes``), the example
   inputs, or the samples in ``data``; a dim whose min and max differ is exported dynamic,
   as a ``torch.export.Dim`` with those bounds (``--dim NAME=min,opt,max`` names the dims with
   that range, and every input axis with it shares one Dim);
2. runs eager PyTorch at min, opt, max and one random shape inside the range first, so shapes
   that ``forward`` does not accept fail before anything is exported;
3. exports with torch's dynamo-based exporter, and falls back to the TorchScript exporter when
   dynamo fails or its model does not verify (the record says which ran and why);
4. verifies ONNX Runtime against those eager outputs (per-output max abs/rel error);
5. stores the ranges in the model's metadata under ``SHAPES_METADATA_KEY`` ("trtforge.shapes"),
   where ``optimize`` and ``build`` find them when no shapes are given, and writes the model
   atomically (external data above 2 GB). Nothing is written when any step fails.

torch is imported lazily: ``import optimizer`` and ``trtforge --help`` do not need it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.errors import ConfigError, InputError, TrtforgeError, VerificationError, first_line
from optimizer.feeds import random_feeds
from optimizer.model import TensorSpec, load_model, opset_of, save_model
from optimizer.shapes import (
    SHAPES_METADATA_KEY,
    Range,
    Shape,
    ShapeProfile,
    format_shape,
    parse_dims,
    parse_shapes,
    ranges_from_data,
    shapes_metadata,
)

EXPORTERS = ("auto", "dynamo", "torchscript")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
#: Data samples verified at most (besides the min/opt/max/random shapes).
MAX_DATA_SAMPLES = 16
TORCH_HINT = "pip install 'trtforge[torch]' (torch==2.13.0, the CPU wheel; newer versions pull GBs of CUDA packages)"


@dataclass
class ShapeCheck:
    """ORT against eager at one set of input shapes: per-output max abs and (normwise) rel error."""

    label: str
    shapes: dict[str, list[int]]
    max_abs: dict[str, float] = field(default_factory=dict)
    max_rel: dict[str, float] = field(default_factory=dict)
    passed: bool = True
    problem: str = ""


@dataclass
class ExportRecord:
    """What ``export`` did, for the summary, ``--json`` and the closing report."""

    path: str
    exporter: str = ""
    fallback_reason: str = ""
    opset: int | None = None
    torch_version: str = ""
    inputs: dict[str, dict] = field(default_factory=dict)  # name -> {dtype, min, opt, max, dynamic: {axis: dim}}
    outputs: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    checks: list[ShapeCheck] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-5
    export_seconds: float = 0.0
    export_cpu_seconds: float = 0.0  # process CPU time (all threads): steadier than wall time on a shared machine
    verify_seconds: float = 0.0
    external_data: bool = False
    optimized_path: str = ""
    passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "metadata_key": SHAPES_METADATA_KEY}


# ---------------------------------------------------------------- user code


def _torch():
    try:
        import torch
    except ImportError:
        raise ConfigError(f"trtforge export needs PyTorch: {TORCH_HINT}") from None
    return torch


def load_factory(spec: str) -> tuple[Any, tuple | None]:
    """Run ``FILE.py:FACTORY`` (executing that file is the caller's explicit choice).

    Returns ``(module, example_inputs or None)``; the factory may return a module or a
    ``(module, example_inputs)`` pair.
    """
    _torch()  # first: without torch the user's file fails on its own import with a less useful message
    from optimizer.user_code import load_callable

    _, factory = load_callable(spec, what="factory", kind="FACTORY")
    try:
        made = factory()
    except Exception as exc:
        raise InputError(f"'{spec}': the factory raised {_short(exc)}; fix it so it returns a torch.nn.Module") from None
    if isinstance(made, (tuple, list)) and len(made) == 2 and _is_module(made[0]):
        return made[0], _as_tuple(made[1])
    return made, None


def _is_module(obj: Any) -> bool:
    torch = _torch()
    return isinstance(obj, torch.nn.Module)


def _as_tuple(inputs: Any) -> tuple:
    if inputs is None:
        return ()
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _short(exc: BaseException, limit: int = 220) -> str:
    """``Type: first line`` of the root cause: torch wraps the useful message in paragraphs of advice."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- inputs and ranges


def forward_input_names(module: Any, count: int | None = None, wanted: Sequence[str] = ()) -> list[str]:
    """``forward``'s parameter names: the first ``count``, else those without defaults plus any in ``wanted``.

    Inputs are passed by position, so an optional parameter before a wanted one is included too.
    """
    signature = inspect.signature(module.forward).parameters.values()
    params = [p for p in signature if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if count is not None and any(p.kind == p.VAR_POSITIONAL for p in signature) and count > len(params):
        return [p.name for p in params] + [f"input_{i}" for i in range(len(params), count)]
    if count is not None:
        if count > len(params):
            raise ConfigError(
                f"forward({', '.join(p.name for p in params)}) takes {len(params)} inputs but {count} are given; "
                f"name them with --input-names"
            )
        return [p.name for p in params[:count]]
    last = max((i for i, p in enumerate(params) if p.default is p.empty or p.name in wanted), default=-1)
    return [p.name for p in params[: last + 1]]


def parse_dtypes(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``ids:int64,mask:int64`` (or a mapping) -> {input: numpy dtype name}."""
    items = text.items() if isinstance(text, Mapping) else [p.rpartition(":")[::2] for p in (text or "").split(",") if p.strip()]
    dtypes = {}
    for name, dtype in items:
        name, dtype = str(name).strip(), str(dtype).strip().lower()
        if not name or dtype not in DTYPES:
            raise ConfigError(f"bad --dtypes entry '{name}:{dtype}': write input:dtype with dtype one of {', '.join(DTYPES)}")
        dtypes[name] = dtype
    return dtypes


@dataclass
class _Plan:
    """Everything decided before exporting: names, dtypes, ranges, dynamic dims."""

    names: list[str]
    dtypes: dict[str, str]
    profiles: list[ShapeProfile]
    bounds: dict[str, Range]  # per input: (min over profiles, first profile's opt, max over profiles)
    dynamic: dict[str, dict[int, str | None]]  # per input: {axis: --dim name or None}
    dim_ranges: dict[str, tuple[int, int]]  # --dim name -> (min, max)


def plan_inputs(
    module: Any,
    example_inputs: Sequence[Any] | None,
    profiles: Sequence[ShapeProfile],
    dims: Mapping[str, tuple[int, int, int]],
    dtypes: Mapping[str, str],
    input_names: Sequence[str] | None,
    data_ranges: Mapping[str, Range] | None = None,
) -> _Plan:
    """Decide every input's name, dtype and range; ConfigError names what is missing or wrong."""
    examples = list(example_inputs or ())
    count = len(input_names) if input_names else (len(examples) or None)
    forward_names = forward_input_names(module, count, wanted=list(profiles[0].shapes) if profiles else ())
    names = list(input_names) if input_names else forward_names
    if len(set(names)) != len(names):
        raise ConfigError(f"input names must be unique, got {names}")
    profiles = list(profiles)
    if not profiles:
        ranges = dict(data_ranges or {})
        for name, tensor in zip(names, examples):
            if name not in ranges and hasattr(tensor, "shape"):
                shape = tuple(int(d) for d in tensor.shape)
                ranges[name] = (shape, shape, shape)
        profiles = [ShapeProfile(ranges)] if ranges else []
    signature = f"forward({', '.join(forward_names)})"
    for profile in profiles:
        unknown = [n for n in profile.shapes if n not in names]
        if unknown:
            raise ConfigError(f"--shapes names input '{unknown[0]}' but {signature} takes {', '.join(names)}; fix the name")
    missing = [(n, i) for i, p in enumerate(profiles or [ShapeProfile()]) for n in names if n not in p.shapes]
    if missing:
        name, index = missing[0]
        where = f" in profile {index} (each --shapes names every input)" if len(profiles) > 1 else ""
        raise ConfigError(
            f"input '{name}' of {signature} has no shape{where}; give it with --shapes '{name}:min,opt,max' "
            f"(dims joined by x, like {name}:1x3x32x32,4x3x32x128,8x3x32x256)"
        )
    bounds = _bounds(names, profiles)
    unknown_dtypes = [n for n in dtypes if n not in names]
    if unknown_dtypes:
        raise ConfigError(f"--dtypes names input '{unknown_dtypes[0]}' but {signature} takes {', '.join(names)}")
    resolved_dtypes = {n: dtypes.get(n) or _example_dtype(examples, i) or "float32" for i, n in enumerate(names)}
    dynamic, dim_ranges = _dynamic_dims(bounds, dims)
    return _Plan(names, resolved_dtypes, profiles, bounds, dynamic, dim_ranges)


def _example_dtype(examples: list, index: int) -> str | None:
    if index >= len(examples) or not hasattr(examples[index], "dtype"):
        return None
    name = str(examples[index].dtype).replace("torch.", "")
    return name if name in DTYPES else None


def _bounds(names: list[str], profiles: list[ShapeProfile]) -> dict[str, Range]:
    bounds = {}
    for name in names:
        ranges = [p.shapes[name] for p in profiles if name in p.shapes]
        ranks = {len(r[0]) for r in ranges}
        if len(ranks) != 1:
            raise ConfigError(f"--shapes gives input '{name}' different ranks in different profiles; give it one rank")
        lo = tuple(min(r[0][a] for r in ranges) for a in range(len(ranges[0][0])))
        hi = tuple(max(r[2][a] for r in ranges) for a in range(len(ranges[0][0])))
        bounds[name] = (lo, ranges[0][1], hi)
    return bounds


def _dynamic_dims(bounds: Mapping[str, Range], dims: Mapping[str, tuple[int, int, int]]):
    """Axes whose min and max differ; an axis whose range equals a ``--dim``'s takes that name."""
    by_range: dict[tuple[int, int], str] = {}
    for name, (lo, _opt, hi) in dims.items():
        if lo == hi:
            raise ConfigError(f"--dim {name}={lo}: a fixed size is not a dynamic dim; give min,opt,max, like --dim {name}=1,4,8")
        if (lo, hi) in by_range:
            raise ConfigError(f"--dim {by_range[(lo, hi)]} and --dim {name} have the same range {lo}..{hi}; merge them into one name")
        by_range[(lo, hi)] = name
    dynamic: dict[str, dict[int, str | None]] = {}
    used = set()
    for name, (lo, _opt, hi) in bounds.items():
        axes = {a: by_range.get((lo[a], hi[a])) for a in range(len(lo)) if lo[a] != hi[a]}
        used.update(v for v in axes.values() if v)
        dynamic[name] = axes
    unused = [n for n in dims if n not in used]
    if unused:
        lo, _opt, hi = dims[unused[0]]
        raise ConfigError(
            f"--dim {unused[0]}={lo},{_opt},{hi} matches no dynamic dim of --shapes (a dim takes the name whose min and "
            f"max it has); give an input that dim in --shapes"
        )
    return dynamic, {name: (r[0], r[2]) for name, r in dims.items()}


def check_shapes(plan: _Plan, seed: int = 0) -> list[tuple[str, dict[str, Shape]]]:
    """(label, shapes) to verify at: every profile's min, opt and max, and one random shape inside the range."""
    checks: list[tuple[str, dict[str, Shape]]] = []
    for index, profile in enumerate(plan.profiles):
        suffix = f" (profile {index})" if len(plan.profiles) > 1 else ""
        for k, label in enumerate(("min", "opt", "max")):
            shapes = {n: profile.shapes[n][k] for n in plan.names}
            if all(shapes != s for _, s in checks):
                checks.append((label + suffix, shapes))
    # One size per --dim name, and one per range for unnamed dims: dims torch found equal stay equal.
    rng = np.random.default_rng(seed)
    sizes: dict[Any, int] = {}
    random_shapes = {}
    for name in plan.names:
        lo, opt, hi = plan.bounds[name]
        dims = list(opt)
        for axis, dim_name in plan.dynamic[name].items():
            key = dim_name or (lo[axis], hi[axis])
            if key not in sizes:
                sizes[key] = int(rng.integers(lo[axis], hi[axis] + 1))
            dims[axis] = sizes[key]
        random_shapes[name] = tuple(dims)
    if any(plan.dynamic.values()) and all(random_shapes != s for _, s in checks):
        checks.append(("random", random_shapes))
    return checks


# ---------------------------------------------------------------- eager reference


def _random_feeds(plan: _Plan, shapes: Mapping[str, Shape], seed: int) -> dict[str, np.ndarray]:
    specs = [TensorSpec(n, plan.dtypes[n], None) for n in plan.names]
    return random_feeds(specs, shapes, seed)  # refuses, in one line, feeds too large to allocate


def _leaves(output: Any) -> list[tuple[str, Any]]:
    """The tensors of a forward result with derived names: output, output_0.., dict keys, namedtuple fields."""
    torch = _torch()
    from torch.utils import _pytree

    leaves, _ = _pytree.tree_flatten_with_path(output)
    named = []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if not parts:
            name = "output"
        elif all(p.isdigit() for p in parts):
            name = "output_" + "_".join(parts)
        else:
            name = "_".join(parts)
        named.append((name, leaf))
    return named


def run_eager(module: Any, plan: _Plan, feeds: Mapping[str, np.ndarray], label: str) -> list[tuple[str, np.ndarray]]:
    """Eager outputs at ``feeds``; InputError when forward does not accept these shapes."""
    torch = _torch()
    args = tuple(torch.from_numpy(np.array(feeds[n])) for n in plan.names)
    try:
        with torch.no_grad():
            out = module(*args)
    except Exception as exc:
        shapes = ";".join(f"{n}:{format_shape(feeds[n].shape)}" for n in plan.names)
        raise InputError(
            f"forward fails at the {label} shapes {shapes} ({_short(exc)}); fix --shapes/--dtypes to what forward accepts"
        ) from None
    leaves = _leaves(out)
    if not leaves:
        raise InputError("forward returns no tensor; export needs a module whose outputs are tensors")
    return [(name, t.detach().cpu().numpy()) for name, t in leaves]


# ---------------------------------------------------------------- exporters


@contextlib.contextmanager
def quiet_torch():
    """The exporters print progress, deprecation and 'torchvision is not installed' chatter: keep it out of our output."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _trace_inputs(plan: _Plan, seed: int) -> tuple:
    """Example inputs at opt, with dynamic dims of size 0/1 raised to 2: torch.export specialises 0 and 1."""
    torch = _torch()
    shapes = {}
    for name in plan.names:
        lo, opt, hi = plan.bounds[name]
        shapes[name] = tuple(min(max(d, 2), hi[a]) if a in plan.dynamic[name] else d for a, d in enumerate(opt))
    feeds = _random_feeds(plan, shapes, seed)
    return tuple(torch.from_numpy(feeds[n]) for n in plan.names)


def _dynamo_export(module, plan: _Plan, args: tuple, output_names: list[str], opset: int | None, path: Path) -> None:
    torch = _torch()
    from torch.export import Dim

    named = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in plan.dim_ranges.items()}
    dynamic_shapes = tuple(
        {a: named[d] if d else Dim.DYNAMIC(min=plan.bounds[n][0][a], max=plan.bounds[n][2][a]) for a, d in plan.dynamic[n].items()}
        or None
        for n in plan.names
    )
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=plan.names,
        output_names=output_names,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes if any(dynamic_shapes) else None,
        optimize=True,
        verbose=False,
    )
    model = program.model
    model.metadata_props[SHAPES_METADATA_KEY] = shapes_metadata(plan.profiles)
    save_model(model, path)


def _torchscript_export(module, plan: _Plan, args: tuple, output_names: list[str], opset: int | None, path: Path) -> None:
    torch = _torch()
    dynamic_axes = {n: {a: d or f"{n}_{a}" for a, d in plan.dynamic[n].items()} for n in plan.names if plan.dynamic[n]}
    # Its own folder: above 2 GB the TorchScript exporter writes one external file per tensor.
    raw = path.parent / "torchscript" / path.name
    raw.parent.mkdir(exist_ok=True)
    torch.onnx.export(
        module,
        args,
        str(raw),
        dynamo=False,
        input_names=plan.names,
        output_names=output_names,
        opset_version=opset,
        dynamic_axes=dynamic_axes or None,
        do_constant_folding=True,
    )
    model = load_model(raw)
    model.metadata_props[SHAPES_METADATA_KEY] = shapes_metadata(plan.profiles)
    save_model(model, path)


_EXPORT_FUNCTIONS = {"dynamo": _dynamo_export, "torchscript": _torchscript_export}


# ---------------------------------------------------------------- verification


def verify_export(
    path: Path, references: list[tuple[str, dict[str, np.ndarray], list[tuple[str, np.ndarray]]]], rtol: float, atol: float
) -> list[ShapeCheck]:
    """ORT (BASIC level: our graph as it is) against the eager outputs, per check; never raises on a mismatch."""
    from graph_passes.verify import compare
    from optimizer.runners import OrtRunner

    import onnxruntime as ort

    runner = OrtRunner(path)
    # Errors come back as exceptions; without this ORT also prints them to stderr.
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    checks = []
    for label, feeds, expected in references:
        check = ShapeCheck(label, {n: list(a.shape) for n, a in feeds.items()})
        names = runner.output_names
        if len(names) != len(expected):
            check.passed, check.problem = False, f"the ONNX model has {len(names)} outputs, forward returns {len(expected)} tensors"
            checks.append(check)
            continue
        try:
            got = dict(zip(names, runner.session.run(names, dict(feeds), quiet)))
        except Exception as exc:  # a wrong export often fails to run at other shapes: that is a finding, not a crash
            check.passed, check.problem = False, f"ONNX Runtime cannot run it ({first_line(exc, 160)})"
            checks.append(check)
            continue
        reference = {onnx_name: array for onnx_name, (_, array) in zip(names, expected)}
        for diff in compare(reference, got, rtol, atol):
            check.max_abs[diff.name] = float(diff.max_abs)
            check.max_rel[diff.name] = float(diff.max_rel)
            if not diff.ok:
                check.passed = False
                check.problem = check.problem or diff.describe()
        checks.append(check)
    return checks


def _failure(checks: list[ShapeCheck], rtol: float, atol: float) -> str:
    bad = next(c for c in checks if not c.passed)
    shapes = ";".join(f"{n}:{format_shape(s)}" for n, s in bad.shapes.items())
    more = sum(1 for c in checks if not c.passed) - 1
    return f"at the {bad.label} shapes {shapes}: {bad.problem} (tolerance rtol={rtol:g}, atol={atol:g})" + (
        f"; {more} more shape(s) fail" if more > 0 else ""
    )


# ---------------------------------------------------------------- the API


def export(
    module: Any,
    example_inputs: Sequence[Any] | Any | None = None,
    *,
    out: str | Path,
    shapes: str | Sequence[str] | Sequence[ShapeProfile] | None = None,
    dims: Sequence[str] | Mapping[str, Any] | None = None,
    dtypes: str | Mapping[str, str] | None = None,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    exporter: str = "auto",
    data: str | Path | None = None,
    passes: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
) -> ExportRecord:
    """Export ``module`` to ``out`` verified against eager PyTorch; return the record.

    ``shapes`` is the ``--shapes`` language (a string, a list of profile strings, or
    ``ShapeProfile``s); without it the shapes come from ``data`` or ``example_inputs``.
    ``exporter``: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".
    Raises InputError/ConfigError (exit 2, nothing written) on bad input or an unexportable
    module, VerificationError (exit 1, nothing written) when ORT disagrees with eager beyond
    ``atol + rtol * max|eager output|``. With ``passes`` the default graph passes also write
    ``<out stem>.opt.onnx`` (verified); ``out`` stays the raw export.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter}: choose one of {', '.join(EXPORTERS)}")
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"expected a torch.nn.Module (or a (module, example_inputs) pair), got {type(module).__name__}; "
            "return the model from the factory"
        )
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"-o {out}: the output must be an .onnx file")
    record = ExportRecord(path=str(out), rtol=rtol, atol=atol, torch_version=torch.__version__)
    if module.training:
        record.notes.append("the module was in training mode; exported in eval mode (module.eval())")
    module.eval()
    plan, samples = _plan_from_options(module, _as_tuple(example_inputs) if example_inputs is not None else None,
                                       shapes, dims, dtypes, input_names, data)
    references = _references(module, plan, samples, seed)
    derived = [name for name, _ in references[0][2]]
    names_out = _output_names(output_names, derived)
    record.outputs, record.profiles = names_out, [p.spec() for p in plan.profiles]
    record.inputs = {
        n: {"dtype": plan.dtypes[n], "min": list(plan.bounds[n][0]), "opt": list(plan.bounds[n][1]),
            "max": list(plan.bounds[n][2]), "dynamic": {str(a): d or f"{n}[{a}]" for a, d in plan.dynamic[n].items()}}
        for n in plan.names
    }
    with tempfile.TemporaryDirectory(prefix="trtforge-export-") as tmp:
        tmp_path = Path(tmp) / out.name
        _export_and_verify(module, plan, references, names_out, opset, exporter, tmp_path, record, seed)
        model = load_model(tmp_path)
        record.opset = opset_of(model) or None
        record.external_data = tmp_path.with_name(out.name + ".data").exists()
        optimized = _run_default_passes(model, references, record) if passes else None
        save_model(model, out, external_data=record.external_data)
        if optimized is not None:
            record.optimized_path = str(save_model(optimized, out.with_name(out.stem + ".opt.onnx")))
    return record


def _plan_from_options(module, examples, shapes, dims, dtypes, input_names, data):
    """The plan, plus the data samples (when ``data`` is given) to verify on."""
    items = [shapes] if isinstance(shapes, str) else list(shapes or ())
    profiles = [p if isinstance(p, ShapeProfile) else parse_shapes(p) for p in items if isinstance(p, ShapeProfile) or str(p).strip()]
    dim_table = parse_dims(dims)
    samples: list[dict[str, np.ndarray]] = []
    from_data = None
    if data is not None:
        from calibration.data import open_folder

        count = len(input_names) if input_names else (len(examples) if examples else None)
        names = list(input_names) if input_names else forward_input_names(module, count, [n for p in profiles for n in p.shapes])
        want = parse_dtypes(dtypes)
        specs = [TensorSpec(n, want.get(n, "unknown"), None) for n in names]
        source, fingerprint = open_folder(data, specs, limit=MAX_DATA_SAMPLES)
        samples = [dict(f) for f in source]
        from_data = ranges_from_data(fingerprint)
        if not parse_dtypes(dtypes):
            dtypes = {n: samples[0][n].dtype.name for n in names}
    plan = plan_inputs(module, examples, profiles, dim_table, parse_dtypes(dtypes), input_names, from_data)
    for index, sample in enumerate(samples):
        for name, array in sample.items():
            lo, _opt, hi = plan.bounds[name]
            if array.ndim != len(lo) or any(not a <= d <= b for d, a, b in zip(array.shape, lo, hi)):
                raise ConfigError(
                    f"--data sample {index}: input '{name}' has shape {format_shape(array.shape)}, outside the range "
                    f"{format_shape(lo)}..{format_shape(hi)}; widen --shapes or drop it to take the range from the data"
                )
    return plan, samples


def _references(module, plan: _Plan, samples: list[dict[str, np.ndarray]], seed: int):
    """(label, feeds, eager outputs) for every check shape and data sample: forward must accept them all."""
    references = []
    for index, (label, shapes) in enumerate(check_shapes(plan, seed)):
        feeds = _random_feeds(plan, shapes, seed + index)
        references.append((label, feeds, run_eager(module, plan, feeds, label)))
    for index, sample in enumerate(samples):
        feeds = {n: np.ascontiguousarray(sample[n]) for n in plan.names}
        references.append((f"data sample {index}", feeds, run_eager(module, plan, feeds, f"data sample {index}")))
    return references


def _output_names(given: Sequence[str] | None, derived: list[str]) -> list[str]:
    if not given:
        return derived
    given = list(given)
    if len(given) != len(derived) or len(set(given)) != len(given):
        raise ConfigError(
            f"--output-names gives {len(given)} unique names but forward returns {len(derived)} tensors ({', '.join(derived)})"
        )
    return given


def _export_and_verify(module, plan, references, output_names, opset, exporter, path, record, seed) -> None:
    """Try the exporters in order; the first whose model verifies wins. Raises when none does."""
    order, reasons = _exporter_order(module, plan, exporter)
    failed_checks: dict[str, list[ShapeCheck]] = {}
    args = _trace_inputs(plan, seed)
    for name in order:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            with quiet_torch():
                _EXPORT_FUNCTIONS[name](module, plan, args, output_names, opset, path)
        except TrtforgeError:
            raise
        except Exception as exc:
            reasons[name] = f"export failed ({_short(exc)})"
            continue
        finally:
            record.export_seconds = round(time.perf_counter() - start, 3)
            record.export_cpu_seconds = round(time.process_time() - cpu_start, 3)
        start = time.perf_counter()
        try:
            checks = verify_export(path, references, record.rtol, record.atol)
        except InputError as exc:  # ORT cannot load the model
            reasons[name] = f"ONNX Runtime cannot load its model ({exc})"
            continue
        finally:
            record.verify_seconds = round(time.perf_counter() - start, 3)
        if all(c.passed for c in checks):
            record.exporter, record.checks = name, checks
            record.fallback_reason = "; ".join(f"{k}: {v}" for k, v in reasons.items())
            return
        failed_checks[name] = checks
        reasons[name] = "ONNX Runtime disagrees with eager PyTorch " + _failure(checks, record.rtol, record.atol)
    _raise_export_failure(order, reasons, failed_checks, record)


def _exporter_order(module, plan: _Plan, exporter: str) -> tuple[list[str], dict[str, str]]:
    """Dynamo first, except for RNNs with dynamic dims: dynamo specialises their sequence length.

    Measured with torch 2.13 on samples/torch_export/gru_attention.py: dynamo's ONNX model of an
    ``nn.GRU`` declares the sequence dim dynamic but hard-codes the traced length downstream, so
    it runs only at that width (and its export takes minutes); TorchScript emits an ONNX GRU
    that runs at every width. Dynamo stays the fallback.
    """
    if exporter != "auto":
        return [exporter], {}
    torch = _torch()
    rnns = sorted({type(m).__name__ for m in module.modules() if isinstance(m, torch.nn.RNNBase)})
    if rnns and any(plan.dynamic.values()):
        reason = f"{', '.join(rnns)} with dynamic dims: dynamo's export of an RNN fixes its sequence length, so TorchScript went first"
        return ["torchscript", "dynamo"], {"dynamo": reason}
    return ["dynamo", "torchscript"], {}


def _raise_export_failure(order, reasons, failed_checks, record) -> None:
    summary = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    if failed_checks:
        # Something exported, but wrong: a verification failure (exit 1), naming output and shape.
        name = next(iter(failed_checks))
        record.exporter, record.checks = name, failed_checks[name]
        raise VerificationError(f"the export did not verify: {summary}; nothing was written")
    other = {"dynamo": "--exporter torchscript", "torchscript": "--exporter dynamo"}
    hint = f"try {other[order[0]]}" if len(order) == 1 else "both exporters were tried; rewrite or replace the op they name"
    raise InputError(f"cannot export the module: {summary}; {hint}")


def _run_default_passes(model, references, record: ExportRecord):
    """The default graph passes on a copy, verified on the export's check inputs (the raw export stays as it is)."""
    import graph_passes

    optimized = model.clone()
    verifier = graph_passes.Verifier(optimized, feeds=[feeds for _, feeds, _ in references], rtol=record.rtol, atol=record.atol)
    pass_records = graph_passes.run_passes(optimized, verifier=verifier)
    record.passes = [r.name for r in pass_records if r.modified]
    return optimized
