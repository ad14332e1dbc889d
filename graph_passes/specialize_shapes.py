"""Static-shape specialisation: pin a model's dynamic input dims (``trtforge passes --shapes ... --specialize``).

A model exported with dynamic batch/H/W keeps Shape -> Slice -> Concat chains alive that a
fixed deployment shape makes constant. Pinning the inputs lets ``fold_shape_computations``
and ``fold_constants`` fold them all; the model then only runs at those shapes, which is
what a static TensorRT engine does anyway. Declared static dims must agree with the pins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir

from optimizer.errors import ConfigError


def specialize_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Set the declared shapes of the named graph inputs to ``shapes``; return one note per input.

    ConfigError when a name is not an input the caller feeds, the rank differs, or a pinned
    dim contradicts a declared static one. The model is unchanged when an error is raised.
    """
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise ConfigError(f"shapes given for {unknown}, which are not inputs of the model; its inputs are {list(inputs)}")
    planned = []
    for name, dims in shapes.items():
        dims = tuple(int(d) for d in dims)
        value = inputs[name]
        declared = value.shape
        if any(d <= 0 for d in dims):
            raise ConfigError(f"input '{name}': pinned shape {dims} needs positive dims")
        if declared is not None:
            if len(declared) != len(dims):
                raise ConfigError(f"input '{name}': pinned shape {dims} has rank {len(dims)}, the model declares rank {len(declared)}")
            for axis, (want, got) in enumerate(zip(declared, dims)):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise ConfigError(f"input '{name}': pinned shape {dims} has {got} at axis {axis}, the model declares {want}")
        planned.append((value, dims, declared))
    notes = []
    for value, dims, declared in planned:
        value.shape = ir.Shape(dims)
        before = "?" if declared is None else "x".join(str(d) if isinstance(d, int) else str(d) for d in declared)
        notes.append(f"input '{value.name}': {before} -> {'x'.join(map(str, dims))}")
    return notes
