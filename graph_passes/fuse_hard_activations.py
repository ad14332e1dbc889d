"""fuse_hard_activations: paddle/torch's decomposed hard-sigmoid and hard-swish back into one op.

``Clip(x + 3, 0, 6) / 6`` is ``HardSigmoid<alpha=1/6, beta=0.5>(x)`` (opset 6) and
``x * Clip(x + 3, 0, 6) / 6`` is ``HardSwish(x)`` (opset 14); below opset 14 the latter
becomes ``x * HardSigmoid(x)``. TensorRT has native activation layers for both, where the
decomposition costs it three or four elementwise layers. PP-OCR's MobileNetV3/PP-LCNet
backbones carry one per block.

onnxscript ships similar rules (``fuse_hardswish_rules``) but accepts constants within
1e-4 of 3, 0, 6; ours require them exactly (in the constant's own dtype), so a
``Clip(x + 3.0001, ...)`` stays what it is, with the reason in the refusals.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes._rules import RulePass
from optimizer.model import opset_of


def _exactly(value: ir.Value | None, expected: float) -> bool:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None:
        return False
    array = tensor.numpy()
    return array.size == 1 and bool(array.reshape(()) == np.asarray(expected, array.dtype))


def _rules(opset: int) -> list:
    from onnxscript.rewriter import RewriteRuleClassBase
    from onnxscript.rewriter._basics import MatchResult

    class _Hard(RewriteRuleClassBase):
        def check(self, context, x, three, lo, hi, six, **_) -> MatchResult:
            result = MatchResult()
            if x.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
                return result.fail(f"dtype {x.dtype} is not a floating point type")
            for name, value, want in (("added", three, 3), ("Clip min", lo, 0), ("Clip max", hi, 6), ("divisor", six, 6)):
                if not _exactly(value, want):
                    return result.fail(f"{name} is not exactly {want}")
            return result

    class HardSigmoidFromClip(_Hard):
        def pattern(self, op, x, three, lo, hi, six):
            return op.Div(op.Clip(op.Add(x, three), lo, hi), six)

        def rewrite(self, op, x, **_):
            return op.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5)

    class HardSwishFromClip(_Hard):
        def pattern(self, op, x, three, lo, hi, six):
            return op.Div(op.Mul(x, op.Clip(op.Add(x, three), lo, hi)), six)

        def rewrite(self, op, x, **_):
            if opset >= 14:
                return op.HardSwish(x)
            return op.Mul(x, op.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5))

    class HardSwishFromHardSigmoid(RewriteRuleClassBase):
        def pattern(self, op, x):
            return op.Mul(x, op.HardSigmoid(x, _allow_other_attributes=True, _outputs=["hs"]))

        def check(self, context, x, hs) -> MatchResult:
            node = hs.producer()
            alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
            if np.float32(alpha) != np.float32(1 / 6) or np.float32(beta) != np.float32(0.5):
                return MatchResult().fail(f"HardSigmoid alpha={alpha:g}, beta={beta:g} is not HardSwish's 1/6, 0.5")
            return MatchResult()

        def rewrite(self, op, x, hs):
            return op.HardSwish(x)

    rules = [HardSwishFromClip.rule(), HardSigmoidFromClip.rule()]
    if opset >= 14:
        rules.append(HardSwishFromHardSigmoid.rule())
    # Mul and Add commute: match both operand orders.
    return [r for rule in rules for r in rule.commute()]


class FuseHardActivations(RulePass, GraphPass):
    """Fuse Clip(x+3,0,6)/6 into HardSigmoid and x*Clip(x+3,0,6)/6 into HardSwish (opset >= 14)."""

    name = "fuse_hard_activations"
    preconditions = (
        "the added constant is exactly 3, Clip's bounds exactly 0 and 6 and the divisor exactly 6 (scalars); "
        "floating point input; intermediate values feed nothing else; HardSwish only at opset >= 14 (below "
        "that, x * HardSigmoid(x))"
    )

    def rules(self, model: ir.Model) -> list:
        return _rules(opset_of(model))
