"""One shape language for every command and the recipe, and where each input's shape comes from.

The language (``--shapes``, recipe ``build.shapes``/``build.profiles``, model metadata)::

    x:1x3x48x320                                   fixed: min = opt = max
    x:1x3x48x32,1x3x48x320,1x3x48x1600             min,opt,max
    ids:1x16,4x128,8x512;mask:1x16,4x128,8x512     ';' between inputs
    --shapes A --shapes B                          a repeated option: another profile

    --dim batch=1 --dim seq=16,128,512             a symbolic dim, set once for every input that names it

The name is everything before the last ``:`` so TensorFlow-style names (``input:0``) work.

Resolution (``resolve_shapes``): each input takes its min/opt/max from the first of
1. explicit ``--shapes``/``--dim`` or the recipe;
2. the data: min/max over the calibration and validation samples, opt = the most common shape;
3. the profile hints ``trtforge export`` stores in the model's metadata (``trtforge.shapes``);
4. the default: batch-like dims (axis 0 of a rank >= 2 input, or a dim named like a batch) are 1,
   every other dynamic dim is tried from ``DEFAULT_LADDER`` until ONNX Runtime runs the model on
   random inputs. Never a silent wrong shape: when nothing runs, one line names the input, the dim
   and the flag to set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optimizer.errors import ConfigError, InputError

Shape = tuple[int, ...]
Range = tuple[Shape, Shape, Shape]
DimRange = tuple[int, int, int]

#: Model metadata key holding the profiles ``trtforge export`` verified: JSON ``{"profiles": [spec, ...]}``.
SHAPES_METADATA_KEY = "trtforge.shapes"
#: Sizes tried, in order, for a dynamic non-batch dim that nothing else sizes.
DEFAULT_LADDER = (32, 64, 128, 16, 224, 256, 320, 8, 512, 1024, 4, 2, 1, 1600, 4000, 16000)
_BATCH_NAMES = re.compile(r"^(n|b|bs|batch.*|.*_batch|.*batch_size|num_.*)$", re.IGNORECASE)

SOURCES = ("--shapes", "--dim", "recipe", "data", "metadata", "default", "static")


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass
class ShapeProfile:
    """One optimization profile: ``shapes[input] = (min, opt, max)``."""

    shapes: dict[str, Range] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validated here too (not only in parse_shapes) because recipes and the Python API build profiles.
        self.shapes = {name: _check_range(name, rng) for name, rng in self.shapes.items()}

    def spec(self) -> str:
        return ";".join(f"{n}:{','.join(format_shape(s) for s in r)}" for n, r in self.shapes.items())


def _check_range(name: str, rng: Any) -> Range:
    if len(rng) != 3:
        raise ConfigError(f"shape profile for input {name!r} needs 3 shapes (min, opt, max), got {len(rng)}")
    lo, opt, hi = (tuple(int(d) for d in s) for s in rng)
    if not len(lo) == len(opt) == len(hi):
        raise ConfigError(
            f"shape profile for input {name!r}: min, opt and max have different ranks "
            f"({format_shape(lo)}, {format_shape(opt)}, {format_shape(hi)}); give each the input's full shape"
        )
    # min may hold a 0: a decoder's first step runs with an empty KV cache (past = 0), and TensorRT
    # takes such a profile; the opt shape is what synthetic data and the builder tune for.
    if any(d < 0 for d in lo) or any(d < 1 for d in opt + hi):
        raise ConfigError(f"shape profile for input {name!r}: min dims must be >= 0 and opt/max dims >= 1")
    for axis, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not a <= b <= c:
            raise ConfigError(
                f"shape profile for input {name!r}, dim {axis}: need min <= opt <= max, got {a}, {b}, {c}; "
                f"reorder the shapes as min,opt,max"
            )
    return lo, opt, hi


def _parse_dims(text: str, where: str) -> Shape:
    text = text.strip().lower()
    if text == "scalar":
        return ()
    try:
        return tuple(int(d) for d in text.split("x"))
    except ValueError:
        raise ConfigError(f"bad shape {text!r} in {where!r}: write dims joined by x, like 1x3x48x320") from None


def parse_shapes(spec: str | Sequence[str]) -> ShapeProfile:
    """One profile from ``--shapes`` text; a list holds the parts of one profile (recipe ``build.shapes``)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    shapes: dict[str, Range] = {}
    for item in items:
        for part in str(item).split(";"):
            part = part.strip()
            if not part:
                continue
            name, sep, ranges = part.rpartition(":")
            name = name.strip()
            if not sep or not name or not ranges.strip():
                raise ConfigError(
                    f"bad shape spec {part!r}: write input:min,opt,max with dims joined by x, "
                    f"like x:1x3x48x80,1x3x48x320,4x3x48x960 (or x:1x3x48x320 for one shape)"
                )
            dims = [_parse_dims(s, part) for s in ranges.split(",")]
            if len(dims) == 1:
                dims = dims * 3  # a fixed shape
            if len(dims) != 3:
                raise ConfigError(f"bad shape spec {part!r}: give 1 shape or 3 (min,opt,max), got {len(dims)}")
            if name in shapes:
                raise ConfigError(f"input {name!r} appears twice in the shape spec; give it once per profile")
            shapes[name] = (dims[0], dims[1], dims[2])
    if not shapes:
        raise ConfigError("empty shape spec: write input:min,opt,max, like x:1x3x48x80,1x3x48x320,4x3x48x960")
    return ShapeProfile(shapes)


def parse_profiles(options: Sequence[str] | None) -> list[ShapeProfile]:
    """A repeated ``--shapes`` option: one profile each."""
    return [parse_shapes(o) for o in options or () if str(o).strip()]


def parse_dims(options: Sequence[str] | Mapping[str, Any] | None) -> dict[str, DimRange]:
    """``--dim name=v`` / ``--dim name=min,opt,max`` (repeatable), or a recipe mapping {name: value}."""
    items = list(options.items()) if isinstance(options, Mapping) else [o.partition("=")[::2] for o in options or ()]
    dims: dict[str, DimRange] = {}
    for name, value in items:
        name = str(name).strip()
        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        try:
            sizes = tuple(int(v) for v in text.split(","))
        except ValueError:
            sizes = ()
        if not name or len(sizes) not in (1, 3) or any(v < 0 for v in sizes):
            raise ConfigError(f"bad --dim {name}={text}: write name=size or name=min,opt,max, like --dim seq=16,128,512")
        lo, opt, hi = sizes * 3 if len(sizes) == 1 else sizes
        if not lo <= opt <= hi:
            raise ConfigError(f"--dim {name}={text}: need min <= opt <= max; reorder as min,opt,max")
        if name in dims:
            raise ConfigError(f"--dim {name} is given twice; give each dim once")
        dims[name] = (lo, opt, hi)
    return dims


def shapes_metadata(profiles: Sequence[ShapeProfile]) -> str:
    """The metadata value ``trtforge export`` stores under ``SHAPES_METADATA_KEY``."""
    return json.dumps({"version": 1, "profiles": [p.spec() for p in profiles]})


def profiles_from_metadata(metadata: Mapping[str, str]) -> list[ShapeProfile]:
    """Profiles stored in a model's metadata; a malformed entry is named, never ignored silently."""
    text = metadata.get(SHAPES_METADATA_KEY)
    if not text:
        return []
    try:
        specs = json.loads(text)["profiles"]
        return [parse_shapes(s) for s in specs]
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise InputError(
            f"the model's metadata '{SHAPES_METADATA_KEY}' is malformed ({exc}); re-export it or give --shapes"
        ) from None


# ---------------------------------------------------------------- resolution


@dataclass
class InputShape:
    """One input's resolved range and where it came from (one of ``SOURCES``)."""

    name: str
    min: Shape
    opt: Shape
    max: Shape
    source: str

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "source": self.source}


@dataclass
class ResolvedShapes:
    """Every input's range; ``unresolved`` names inputs no source could size (with the reason)."""

    inputs: dict[str, InputShape] = field(default_factory=dict)
    extra_profiles: list[ShapeProfile] = field(default_factory=list)  # further explicit profiles
    unresolved: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Further default sizings ONNX Runtime also ran (ladder order), for a builder that refuses the first.
    alternatives: list[dict[str, Range]] = field(default_factory=list)

    def opt(self) -> dict[str, Shape]:
        return {n: s.opt for n, s in self.inputs.items()}

    def sources(self) -> dict[str, str]:
        return {n: s.source for n, s in self.inputs.items()}

    def profiles(self) -> list[ShapeProfile]:
        """Engine profiles: the resolved one first, then any further explicit ones."""
        if not self.inputs:
            return list(self.extra_profiles)
        # Static inputs need no profile entry (and shape-tensor inputs must not get one).
        first = ShapeProfile({n: (s.min, s.opt, s.max) for n, s in self.inputs.items() if s.source != "static"})
        return [first, *self.extra_profiles] if first.shapes else list(self.extra_profiles)

    def with_ranges(self, ranges: Mapping[str, Range], note: str) -> ResolvedShapes:
        """A copy with ``ranges`` replacing those inputs' ranges (still marked default), and a note."""
        inputs = dict(self.inputs)
        for name, (lo, opt, hi) in ranges.items():
            inputs[name] = InputShape(name, lo, opt, hi, inputs[name].source if name in inputs else "default")
        return ResolvedShapes(inputs, list(self.extra_profiles), dict(self.unresolved), [*self.notes, note])

    def require(self) -> ResolvedShapes:
        """ConfigError (one line: input, dim, flag) when an input has no shape."""
        if self.unresolved:
            raise ConfigError(next(iter(self.unresolved.values())))
        return self

    def to_dict(self) -> dict:
        return {
            "inputs": {n: s.to_dict() for n, s in self.inputs.items()},
            "profiles": [p.spec() for p in self.profiles()],
            "unresolved": dict(self.unresolved),
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        return describe_inputs({n: s.to_dict() for n, s in self.inputs.items()})


def describe_inputs(inputs: Mapping[str, Mapping[str, Any]]) -> str:
    """One line for a summary, from ``ResolvedShapes.to_dict()["inputs"]`` (also as saved in a
    report): ``x 1x3x48x320 (data), ids 1x16..8x512 (--dim)``."""
    parts = []
    for name, s in inputs.items():
        lo, hi = format_shape(s["min"]), format_shape(s["max"])
        parts.append(f"{name} {lo if lo == hi else lo + '..' + hi} ({s['source']})")
    return ", ".join(parts)


def _is_dynamic(dim: Any) -> bool:
    return not isinstance(dim, int) or dim < 0


def _dim_key(input_name: str, axis: int, dim: Any) -> str:
    """Dims named alike share one size; unnamed (and "?") dims are independent."""
    if isinstance(dim, str) and dim and dim not in ("?", "unk", "unknown") and not dim.startswith("unk__"):
        return dim
    return f"{input_name}[{axis}]"


def _batch_like(spec, axis: int, dim: Any) -> bool:
    if isinstance(dim, str) and _BATCH_NAMES.match(dim):
        return True
    return axis == 0 and len(spec.shape) >= 2


def _example_flag(spec, key: str, axis: int) -> str:
    """The exact flag that would size this dim."""
    if "[" not in key:
        return f"--dim {key}=N"
    dims = ["N" if i == axis else (str(d) if not _is_dynamic(d) else "1") for i, d in enumerate(spec.shape)]
    return f"--shapes '{spec.name}:{'x'.join(dims)}'"


def _check_against_model(spec, rng: Range, where: str) -> None:
    if spec.shape is None:
        return
    for shape in rng:
        if len(shape) != len(spec.shape):
            raise ConfigError(
                f"{where}: input '{spec.name}' is given rank {len(shape)} ({format_shape(shape)}) but the model "
                f"declares rank {len(spec.shape)} ({_pattern(spec.shape)}); give {len(spec.shape)} dims"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if not _is_dynamic(want) and want != got:
                raise ConfigError(
                    f"{where}: input '{spec.name}' dim {axis} is fixed at {want} by the model but is given as {got}; "
                    f"use {want} there ({_pattern(spec.shape)})"
                )


def _pattern(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "unknown rank"
    return "x".join(str(d) if not _is_dynamic(d) else (d if isinstance(d, str) and d else "?") for d in shape)


def ranges_from_data(*fingerprints: Any) -> dict[str, Range]:
    """Per input, from data fingerprints (``calibration.data.DataFingerprint`` or its dict): the
    element-wise min and max shape over every sample, opt = the most common shape of the first."""
    ranges: dict[str, Range] = {}
    for fp in fingerprints:
        if fp is None:
            continue
        inputs = fp["inputs"] if isinstance(fp, Mapping) else fp.inputs
        for name, stats in inputs.items():
            get = stats.get if isinstance(stats, Mapping) else (lambda k, _s=stats: getattr(_s, k, None))
            lo, opt, hi = get("min_shape"), get("opt_shape"), get("max_shape")
            if lo is None or hi is None or opt is None:
                continue
            lo, opt, hi = tuple(lo), tuple(opt), tuple(hi)
            if name in ranges:
                old = ranges[name]
                if len(old[0]) != len(lo):
                    continue
                lo = tuple(map(min, old[0], lo))
                hi = tuple(map(max, old[2], hi))
                opt = old[1]
            ranges[name] = (lo, opt, hi)
    return ranges


def resolve_shapes(
    specs: Sequence[Any],
    *,
    profiles: Sequence[ShapeProfile] = (),
    dims: Mapping[str, DimRange] | None = None,
    explicit_source: str = "--shapes",
    data: Mapping[str, Range] | None = None,
    metadata: Mapping[str, str] | None = None,
    probe: Callable[[dict[str, Shape]], str | None] | None = None,
    alternatives: int = 0,
) -> ResolvedShapes:
    """Resolve every input's min/opt/max (see the module doc for the order).

    ``alternatives``: also find up to this many further default sizings that ``probe`` runs.

    ``specs`` are the model's input ``TensorSpec``s; ``data`` the range of shapes per input in the
    data (``ranges_from_data``); ``probe(shapes)`` runs the model on random inputs of those shapes and returns None
    when it ran, else the reason. Contradictions with the model (a static dim given another size,
    a wrong rank, an unknown input or dim name, data outside an explicit range) raise ConfigError.
    """
    dims = dict(dims or {})
    by_name = {s.name: s for s in specs}
    first, extra = (profiles[0], list(profiles[1:])) if profiles else (None, [])
    for profile in profiles:
        for name, rng in profile.shapes.items():
            if name not in by_name:
                raise ConfigError(
                    f"{explicit_source} names input '{name}' but the model's inputs are {', '.join(by_name) or 'none'}; fix the name"
                )
            _check_against_model(by_name[name], rng, explicit_source)
    _check_dim_names(specs, dims)
    resolved = ResolvedShapes(extra_profiles=extra)
    from_data = dict(data or {})
    hints = _metadata_ranges(metadata or {}, by_name)
    pending: list[Any] = []
    for spec in specs:
        chosen = _explicit(spec, first, dims, explicit_source)
        if chosen is None and spec.name in from_data:
            chosen = InputShape(spec.name, *from_data[spec.name], "data")
        if chosen is None and spec.name in hints:
            chosen = InputShape(spec.name, *hints[spec.name], "metadata")
        if chosen is None and spec.shape is not None and not any(_is_dynamic(d) for d in spec.shape):
            static = tuple(spec.shape)
            chosen = InputShape(spec.name, static, static, static, "static")
        if chosen is None:
            pending.append(spec)
            continue
        chosen = _overlay_dims(spec, chosen, dims)
        _check_against_model(spec, (chosen.min, chosen.opt, chosen.max), chosen.source)
        resolved.inputs[spec.name] = chosen
    if pending:
        _resolve_defaults(pending, resolved, probe, dims, alternatives)
    _check_data_inside(specs, resolved, from_data, dims)
    resolved.inputs = {s.name: resolved.inputs[s.name] for s in specs if s.name in resolved.inputs}
    return resolved


def _check_dim_names(specs: Sequence[Any], dims: Mapping[str, DimRange]) -> None:
    named = {d for s in specs for d in (s.shape or ()) if isinstance(d, str) and d}
    unknown = [n for n in dims if n not in named]
    if unknown:
        known = ", ".join(sorted(named)) or "none (its dynamic dims are unnamed: use --shapes)"
        raise ConfigError(f"--dim {unknown[0]}: the model has no dim named '{unknown[0]}'; its named dims are: {known}")


def _explicit(spec, profile: ShapeProfile | None, dims: Mapping[str, DimRange], source: str) -> InputShape | None:
    """The input's range from --shapes, else from --dim when --dim sizes every dynamic dim."""
    if profile is not None and spec.name in profile.shapes:
        return InputShape(spec.name, *profile.shapes[spec.name], source)
    if spec.shape is None or not dims:
        return None
    dynamic = [d for d in spec.shape if _is_dynamic(d)]
    if not dynamic or not all(isinstance(d, str) and d in dims for d in dynamic):
        return None
    rng = [[d if not _is_dynamic(d) else dims[d][i] for d in spec.shape] for i in range(3)]
    return InputShape(spec.name, tuple(rng[0]), tuple(rng[1]), tuple(rng[2]), "--dim" if source == "--shapes" else source)


def _metadata_ranges(metadata: Mapping[str, str], by_name: Mapping[str, Any]) -> dict[str, Range]:
    ranges: dict[str, Range] = {}
    for profile in profiles_from_metadata(metadata):
        for name, rng in profile.shapes.items():
            if name in by_name and name not in ranges:
                ranges[name] = rng
    return ranges


def _overlay_dims(spec, chosen: InputShape, dims: Mapping[str, DimRange]) -> InputShape:
    """--dim wins over data, metadata and defaults for the dims it names."""
    if spec.shape is None or not any(isinstance(d, str) and d in dims for d in spec.shape):
        return chosen
    rng = [list(chosen.min), list(chosen.opt), list(chosen.max)]
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, str) and dim in dims:
            for i in range(3):
                rng[i][axis] = dims[dim][i]
    return InputShape(spec.name, tuple(rng[0]), tuple(rng[1]), tuple(rng[2]), chosen.source)


def _resolve_defaults(
    pending: Sequence[Any], resolved: ResolvedShapes, probe, dims: Mapping[str, DimRange], alternatives: int = 0
) -> None:
    """Batch-like dims 1; the rest from DEFAULT_LADDER, the first size ONNX Runtime runs with."""
    sizes: dict[str, DimRange] = {}
    ladder_keys: dict[str, tuple[Any, int]] = {}
    for spec in pending:
        if spec.shape is None:
            resolved.unresolved[spec.name] = (
                f"input '{spec.name}' has no declared shape (unknown rank); give it with --shapes '{spec.name}:1x3x224x224'"
            )
            continue
        for axis, dim in enumerate(spec.shape):
            if not _is_dynamic(dim):
                continue
            key = _dim_key(spec.name, axis, dim)
            if key in dims:
                sizes[key] = dims[key]
            elif _batch_like(spec, axis, dim):
                sizes.setdefault(key, (1, 1, 1))
            elif key not in sizes:
                ladder_keys.setdefault(key, (spec, axis))
    fixed = {n: (s.min, s.opt, s.max) for n, s in resolved.inputs.items()}

    def ranges_with(size: int) -> dict[str, Range]:
        table = {**sizes, **{k: (size, size, size) for k in ladder_keys}}
        out = dict(fixed)
        for spec in pending:
            if spec.shape is not None:
                out[spec.name] = tuple(  # type: ignore[assignment]
                    tuple(table[_dim_key(spec.name, a, d)][i] if _is_dynamic(d) else d for a, d in enumerate(spec.shape))
                    for i in range(3)
                )
        return out

    last = ""
    ladder = DEFAULT_LADDER if ladder_keys else (1,)
    for index, size in enumerate(ladder):
        ranges = ranges_with(size)
        reason = probe({n: r[1] for n, r in ranges.items()}) if probe is not None else None
        if reason is None:
            if probe is not None and alternatives:
                names = [s.name for s in pending]
                # Near sizes only: an alternative is for a builder that refuses this one, not a
                # different workload (a decoder that ran at 1 is not tried at 16000).
                for other in (o for o in ladder[index + 1:] if o <= max(8 * size, 64)):
                    if len(resolved.alternatives) >= alternatives:
                        break
                    more = ranges_with(other)
                    if probe({n: r[1] for n, r in more.items()}) is None:
                        resolved.alternatives.append({n: more[n] for n in names if n in more})
            for spec in pending:
                if spec.name in ranges and spec.name not in resolved.unresolved:
                    resolved.inputs[spec.name] = InputShape(spec.name, *ranges[spec.name], "default")
            if ladder_keys:
                resolved.notes.append(
                    f"dynamic dims {', '.join(ladder_keys)} sized {size} by default (the first size ONNX Runtime ran); "
                    f"set them with --dim/--shapes"
                )
            return
        last = reason
    key, (spec, axis) = next(iter(ladder_keys.items()), (None, (pending[0], 0)))
    if key is None:
        what = f"ONNX Runtime cannot run it on random inputs with batch-like dims 1 ({last})"
        flag = f"--shapes '{spec.name}:{_pattern(spec.shape)}' with every ? replaced by a size"
    else:
        what = f"no size of {', '.join(map(str, DEFAULT_LADDER[:6]))}... runs it on random inputs (last: {last})"
        flag = _example_flag(spec, key, axis)
    message = f"input '{spec.name}' dim {axis} ({_pattern(spec.shape)}): {what}; set it with {flag}, or give --data DIR"
    for s in pending:
        resolved.unresolved.setdefault(s.name, message)


def _check_data_inside(specs: Sequence[Any], resolved: ResolvedShapes, data: Mapping[str, Range], dims: Mapping[str, DimRange]) -> None:
    """Data outside an explicit range (--shapes, the recipe, or a --dim) would fail on the engine: say so now."""
    for spec in specs:
        chosen = resolved.inputs.get(spec.name)
        if spec.name not in data or chosen is None:
            continue
        lo_seen, _, hi_seen = data[spec.name]
        if len(lo_seen) != len(chosen.min):
            continue
        whole = chosen.source in ("--shapes", "--dim", "recipe")
        for axis, (a, b, lo, hi) in enumerate(zip(lo_seen, hi_seen, chosen.min, chosen.max)):
            named = spec.shape is not None and isinstance(spec.shape[axis], str) and spec.shape[axis] in dims
            if (whole or named) and not (lo <= a and b <= hi):
                source = f"--dim {spec.shape[axis]}" if named else chosen.source
                raise ConfigError(
                    f"the data has input '{spec.name}' with shapes {format_shape(lo_seen)}..{format_shape(hi_seen)}, "
                    f"outside the {source} range {format_shape(chosen.min)}..{format_shape(chosen.max)} (dim {axis}); "
                    f"widen the range, or drop it to take it from the data"
                )


def resolve_model_shapes(
    model: Any,
    *,
    profiles: Sequence[ShapeProfile] = (),
    dims: Mapping[str, DimRange] | None = None,
    explicit_source: str = "--shapes",
    fingerprints: Sequence[Any] = (),
    probe: bool = True,
    alternatives: int = 0,
) -> ResolvedShapes:
    """``resolve_shapes`` for an onnx-ir model: its inputs, its metadata, and ONNX Runtime as the probe."""
    from optimizer.feeds import ort_probe
    from optimizer.model import input_specs, metadata

    return resolve_shapes(
        input_specs(model),
        profiles=profiles,
        dims=dims,
        explicit_source=explicit_source,
        data=ranges_from_data(*fingerprints),
        metadata=metadata(model),
        probe=ort_probe(model) if probe else None,
        alternatives=alternatives,
    )
