"""Optimization profiles checked against a parsed TensorRT network.

The shape language and its parser live in ``optimizer.shapes`` (one for every command and the
recipe); this module checks a profile against what TensorRT's parser made of the model.
"""

from __future__ import annotations

from typing import Any

from optimizer.errors import ConfigError
from optimizer.shapes import Shape, ShapeProfile, format_shape, parse_shapes

__all__ = ["ShapeProfile", "check_profile", "format_shape", "parse_shapes", "require_profiles"]


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
