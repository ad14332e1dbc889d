"""fuse_layer_norm: the decomposed layer norm over the last axis becomes LayerNormalization (opset >= 17).

``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * scale + bias``, as paddle2onnx and
torch exporters below opset 17 write it (9 nodes), is one ``LayerNormalization(x, scale,
bias, axis=-1, epsilon=eps)``: TensorRT has a native normalization layer for it, and keeps
it in FP32 under mixed precision, where the decomposition overflows in FP16.

onnxscript's ``layer_normalization_rules`` only match opset-18 ReduceMean (axes as an
input, literally ``[-1]``) and do not check the scale's shape. Ours match both ReduceMean
forms, accept the last axis written as ``-1`` or ``rank - 1``, and require ``scale`` and
``bias`` of shape ``[D]`` or ``[1]`` (LayerNormalization broadcasts them one way only,
where the Mul/Add they replace broadcast both ways). Models below opset 17 are left alone:
run with ``--opset 17`` (or 18) to enable this fusion.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes._rules import RulePass
from optimizer.model import opset_of

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _reduce_axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        return None if tensor is None else [int(a) for a in np.asarray(tensor.numpy()).reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.as_ints())


def _rules() -> list:
    from onnxscript.rewriter import RewriteRuleClassBase, pattern
    from onnxscript.rewriter._basics import MatchResult

    class LayerNormFromParts(RewriteRuleClassBase):
        def __init__(self, axes_as_input: bool) -> None:
            super().__init__(name=f"layer_norm_{'axes_input' if axes_as_input else 'axes_attribute'}")
            self.axes_as_input = axes_as_input

        def _mean(self, op, v, axes, name):
            if self.axes_as_input:
                return op.ReduceMean(v, axes, _allow_other_attributes=True, _outputs=[name])
            return op.ReduceMean(v, _allow_other_attributes=True, _outputs=[name])

        def pattern(self, op, x, scale, bias, epsilon, axes1, axes2, two):
            mean = self._mean(op, x, axes1, "mean")
            deviation = op.Sub(x, mean)
            squared = pattern.OrValue([op.Pow(deviation, two), op.Mul(deviation, deviation)])
            variance = self._mean(op, squared, axes2, "variance")
            std = op.Sqrt(op.Add(variance, epsilon))
            return op.Add(op.Mul(op.Div(deviation, std), scale), bias)

        def check(self, context, x, scale, bias, epsilon, mean, variance, two=None, **_) -> MatchResult:
            result = MatchResult()
            if x.dtype not in _FLOATS:
                return result.fail(f"input dtype {x.dtype} is not a floating point type")
            if x.shape is None:
                return result.fail("input rank unknown (shape inference could not derive it)")
            rank = len(x.shape)
            for node in (mean.producer(), variance.producer()):
                axes = _reduce_axes(node)
                if axes is None or len(axes) != 1 or axes[0] not in (-1, rank - 1):
                    return result.fail(f"ReduceMean axes {axes} is not the last axis of a rank-{rank} input")
                if node.attributes.get_int("keepdims", 1) != 1:
                    return result.fail("ReduceMean keepdims=0")
            if two is not None:
                t = ir.convenience.get_const_tensor(two)
                if t is None or t.size != 1 or float(np.asarray(t.numpy()).reshape(())) != 2.0:
                    return result.fail("the power is not exactly 2")
            eps = ir.convenience.get_const_tensor(epsilon)
            if eps is None or eps.size != 1:
                return result.fail("epsilon is not a constant scalar")
            self._epsilon = float(np.asarray(eps.numpy()).reshape(()))
            last = x.shape[rank - 1]
            for name, v in (("scale", scale), ("bias", bias)):
                if v.shape is None or len(v.shape) != 1 or (v.shape[0] != 1 and v.shape[0] != last):
                    shape = None if v.shape is None else list(v.shape)
                    return result.fail(f"{name} of shape {shape} is not [D] or [1] for the last dim {last}")
                if v.dtype != x.dtype:
                    return result.fail(f"{name} dtype {v.dtype} differs from the input's {x.dtype}")
            return result

        def rewrite(self, op, x, scale, bias, **_):
            return op.LayerNormalization(x, scale, bias, axis=-1, epsilon=self._epsilon)

    return [LayerNormFromParts.rule(axes_as_input=False), LayerNormFromParts.rule(axes_as_input=True)]


class FuseLayerNorm(RulePass, GraphPass):
    """Fuse the decomposed last-axis layer norm (9 nodes) into LayerNormalization (opset >= 17)."""

    name = "fuse_layer_norm"
    preconditions = (
        "opset >= 17; both ReduceMeans over the last axis with keepdims; power exactly 2; epsilon a "
        "constant scalar; scale and bias of shape [D] or [1] and the input's dtype; intermediates feed "
        "nothing else"
    )

    reads_shapes = True  # rank and scale-shape checks read shapes: trust inferred ones only

    def rules(self, model: ir.Model) -> list:
        opset = opset_of(model)
        if opset < 17:
            self.note(f"skipped: opset {opset} < 17 has no LayerNormalization (run with --opset 17)")
            return []
        return _rules()
