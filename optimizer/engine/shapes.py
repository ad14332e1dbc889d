"""Optimization profiles: the min/opt/max shape range an engine accepts per input.

Spec syntax (CLI ``--shapes``, recipe ``build.shapes``)::

    x:1x3x48x80,1x3x48x320,4x3x48x960          min,opt,max
    x:1x3x48x320                               one shape: min = opt = max
    x:1x3x48x80,1x3x48x320,4x3x48x960;mask:1x80,1x320,4x960   several inputs

The name is everything before the last ``:`` so TensorFlow-style names (``input:0``) work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optimizer.errors import ConfigError

Shape = tuple[int, ...]


def format_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


@dataclass
class ShapeProfile:
    """One optimization profile: ``shapes[input] = (min, opt, max)``."""

    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validated here too (not only in parse_shapes) because recipes and the Python API
        # construct profiles directly.
        self.shapes = {name: _check_range(name, rng) for name, rng in self.shapes.items()}

    def spec(self) -> str:
        return ";".join(f"{n}:{','.join(format_shape(s) for s in r)}" for n, r in self.shapes.items())


def _check_range(name: str, rng: Any) -> tuple[Shape, Shape, Shape]:
    if len(rng) != 3:
        raise ConfigError(f"shape profile for input {name!r} needs 3 shapes (min, opt, max), got {len(rng)}")
    lo, opt, hi = (tuple(int(d) for d in s) for s in rng)
    if not len(lo) == len(opt) == len(hi):
        raise ConfigError(
            f"shape profile for input {name!r}: min, opt and max have different ranks "
            f"({format_shape(lo)}, {format_shape(opt)}, {format_shape(hi)}); give each the input's full shape"
        )
    if any(d < 1 for d in lo + opt + hi):
        raise ConfigError(f"shape profile for input {name!r}: every dimension must be >= 1")
    for axis, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not a <= b <= c:
            raise ConfigError(
                f"shape profile for input {name!r}, dim {axis}: need min <= opt <= max, got {a}, {b}, {c}; "
                f"reorder the shapes as min,opt,max"
            )
    return lo, opt, hi


def _parse_dims(text: str, where: str) -> Shape:
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError:
        raise ConfigError(f"bad shape {text.strip()!r} in {where!r}: write dims joined by x, like 1x3x48x320") from None
    return dims


def parse_shapes(spec: str | list[str] | tuple[str, ...]) -> ShapeProfile:
    """Parse one profile from ``--shapes`` text; a list holds repeated options."""
    items = [spec] if isinstance(spec, str) else list(spec)
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
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
                    f"like x:1x3x48x80,1x3x48x320,4x3x48x960"
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


def network_inputs(network: Any) -> dict[str, Shape]:
    return {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}


def dynamic_inputs(network: Any) -> dict[str, Shape]:
    return {name: shape for name, shape in network_inputs(network).items() if -1 in shape}


def check_profile(profile: ShapeProfile, network: Any, model_name: str) -> None:
    """Raise ConfigError unless ``profile`` fits the parsed network's inputs."""
    inputs = network_inputs(network)
    for name, (lo, opt, hi) in profile.shapes.items():
        if name not in inputs:
            raise ConfigError(
                f"shape profile names input {name!r} but {model_name} has inputs {', '.join(inputs)}; fix the name"
            )
        declared = inputs[name]
        if len(lo) != len(declared):
            raise ConfigError(
                f"shape profile for input {name!r} has rank {len(lo)} but the model's input is rank {len(declared)} "
                f"({_pattern(declared)}); give {len(declared)} dims per shape"
            )
        for axis, d in enumerate(declared):
            if d != -1 and not lo[axis] == opt[axis] == hi[axis] == d:
                raise ConfigError(
                    f"shape profile for input {name!r}, dim {axis}: the model fixes it at {d} but the profile says "
                    f"{lo[axis]},{opt[axis]},{hi[axis]}; use {d} there"
                )
    missing = [n for n in dynamic_inputs(network) if n not in profile.shapes]
    if missing:
        raise ConfigError(
            f"{model_name} has dynamic inputs without a shape range: "
            + ", ".join(f"{n} [{_pattern(inputs[n])}]" for n in missing)
            + "; add them to --shapes as name:min,opt,max"
        )


def require_profiles(profiles: list[ShapeProfile], network: Any, model_name: str) -> None:
    dynamic = dynamic_inputs(network)
    if dynamic and not profiles:
        described = ", ".join(f"{n} [{_pattern(s)}]" for n, s in dynamic.items())
        template = ";".join(f"{n}:{_pattern(s)},{_pattern(s)},{_pattern(s)}" for n, s in dynamic.items())
        raise ConfigError(
            f"{model_name} has dynamic inputs {described}: give their shape ranges with "
            f"--shapes '{template}', every ? replaced by a number (min,opt,max)"
        )
    for profile in profiles:
        check_profile(profile, network, model_name)


def _pattern(shape: Shape) -> str:
    return "x".join("?" if d == -1 else str(d) for d in shape)
