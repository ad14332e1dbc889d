"""remove_noop_ops: remove operations that return their input unchanged.

Rules: ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1`` and Pad by zeros (ours, see
below), and onnxscript's no-op Cast, no-op Expand, identity Transpose, Transpose∘Transpose,
Reshape∘Reshape (merged into one Reshape) and whole-axis Slice; and a Reshape of a statically
shaped input to its own shape (computed from the constant target, never from a declared
output shape). Each rule
turns the node into an Identity; the guarded Identity elimination of ``remove_identity``
then bypasses it, and the two repeat until nothing changes.

Why our own arithmetic rules: onnxscript's ``mul_by_1``/``add_0`` compare the constant with
a tolerance (``math.isclose``, abs_tol 1e-8), so ``var + 1e-12`` (a LayerNorm epsilon)
would count as ``+ 0`` and a zero variance would then divide by zero; and they only take
scalars. Ours require the neutral element exactly, in a constant of any shape as long as
broadcasting it cannot change the other operand's shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass, infer_shapes, summarize_counts, untrusted_shapes
from graph_passes._rules import RuleStep
from graph_passes.remove_identity import RemoveIdentity

# (op, neutral element, constant operand first?)
_NEUTRAL_OPERANDS = (
    ("Mul", 1, False),
    ("Mul", 1, True),
    ("Add", 0, False),
    ("Add", 0, True),
    ("Sub", 0, False),
    ("Div", 1, False),
)


def _neutral_operand_rule(op_type: str, neutral: int, constant_first: bool, refuse: Callable[[ir.Node, str], None]):
    from onnxscript.rewriter import RewriteRuleClassBase
    from onnxscript.rewriter._basics import MatchResult

    class NeutralOperand(RewriteRuleClassBase):
        def pattern(self, op, x, c):
            make = getattr(op, op_type)
            return make(c, x) if constant_first else make(x, c)

        def check(self, context, x: ir.Value, c: ir.Value) -> MatchResult:
            result = MatchResult()
            tensor = ir.convenience.get_const_tensor(c)
            if tensor is None:
                return result.fail("operand is not a constant")  # the common case; not reported
            array = tensor.numpy()
            node = context.root
            if not np.all(array == neutral):
                if array.size != 1 or not np.isclose(array.reshape(()).item(), neutral, rtol=1e-5, atol=1e-8):
                    return result.fail("constant is not the neutral element")  # the common case; not reported
                reason = f"constant {array.reshape(()).item()!r} is close to but not exactly {neutral}"
            elif (why := _broadcast_changes_shape(x, array.shape)) is None:
                return result
            else:
                reason = why
            refuse(node, reason)
            return result.fail(reason)

        def rewrite(self, op, x, c):
            return op.Identity(x)

    side = "_lhs" if constant_first else ""
    return NeutralOperand.rule(name=f"{op_type.lower()}_by_{neutral}{side}")


def _broadcast_changes_shape(x: ir.Value, const_shape: tuple[int, ...]) -> str | None:
    """Why broadcasting ``x`` against a constant of ``const_shape`` might not return x's shape."""
    if not const_shape:
        return None  # a scalar never changes the shape
    if x.shape is None:
        return f"constant of shape {list(const_shape)} against an input of unknown shape may broadcast it"
    if len(const_shape) > len(x.shape):
        return f"constant of rank {len(const_shape)} would raise the input's rank {len(x.shape)}"
    for c_dim, x_dim in zip(reversed(const_shape), reversed(tuple(x.shape))):
        if c_dim != 1 and x_dim != c_dim:
            return f"constant of shape {list(const_shape)} may broadcast the input's shape {list(x.shape)}"
    return None


def _zero_pad_rule():
    from onnxscript.rewriter import RewriteRuleClassBase
    from onnxscript.rewriter._basics import MatchResult

    class ZeroPad(RewriteRuleClassBase):
        """Pad by zero everywhere (any mode) returns its input."""

        def pattern(self, op, x, pads):
            return op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True)

        def check(self, context, x, pads) -> MatchResult:
            tensor = ir.convenience.get_const_tensor(pads)
            if tensor is None or np.any(tensor.numpy() != 0):
                return MatchResult().fail("pads are not all constant zeros")  # the common case; not reported
            return MatchResult()

        def rewrite(self, op, x, pads):
            return op.Identity(x)

    return ZeroPad.rule(name="zero_pad")


def _reshape_result(in_shape: tuple[int, ...], target: list[int], allowzero: bool) -> tuple[int, ...] | None:
    """The shape Reshape produces from a static input shape and a constant target (None: invalid)."""
    out = [in_shape[i] if (t == 0 and not allowzero and i < len(in_shape)) else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        return None
    total = int(np.prod(in_shape))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return tuple(out) if int(np.prod(out)) == total else None


def _names_every_dim(shape, target, allowzero: bool) -> bool:
    """A target of the input's rank that keeps each dim: a 0 copying it (without allowzero), its own
    static size, or a single -1, which then can only be that dim's size again."""
    target = [int(t) for t in target]
    if len(target) != len(shape) or target.count(-1) > 1:
        return False
    return all(t == -1 or (t == 0 and not allowzero) or (isinstance(d, int) and d == t) for d, t in zip(shape, target))


def _noop_reshape_rule():
    from onnxscript.rewriter import RewriteRuleClassBase
    from onnxscript.rewriter._basics import MatchResult

    class NoopReshape(RewriteRuleClassBase):
        """Reshape of a statically shaped input to that same shape."""

        def pattern(self, op, x, shape):
            return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

        def check(self, context, x, shape, out) -> MatchResult:
            tensor = ir.convenience.get_const_tensor(shape)
            allowzero = bool(out.producer().attributes.get_int("allowzero", 0))
            if tensor is not None and x.shape is not None and _names_every_dim(x.shape, tensor.numpy().reshape(-1), allowzero):
                return MatchResult()  # dynamic dims too: Reshape(Range(...), [-1]) in a YOLO grid
            if tensor is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
                return MatchResult().fail("target or input shape not static")  # the common case; not reported
            in_shape = tuple(int(d) for d in x.shape)
            result = _reshape_result(in_shape, [int(t) for t in tensor.numpy().reshape(-1)], allowzero)
            if result != in_shape:
                return MatchResult().fail("reshapes to another shape")
            return MatchResult()

        def rewrite(self, op, x, shape, out):
            return op.Identity(x)

    return NoopReshape.rule(name="noop_reshape")


def noop_rules(refuse: Callable[[ir.Node, str], None]) -> list:
    """The no-op rules; the arithmetic ones report near misses worth a reason to ``refuse``."""
    from onnxscript.rewriter.rules.common import (
        collapse_slice2_rule,
        collapse_slice_rule,
        no_op_cast_rule,
        no_op_expand_rule,
        no_op_transpose_rule,
        reshape_reshape_rule,
        transpose_transpose_rule,
    )

    return [
        *(_neutral_operand_rule(op, n, first, refuse) for op, n, first in _NEUTRAL_OPERANDS),
        no_op_cast_rule,  # Cast to the dtype it already has
        no_op_expand_rule,  # Expand to the shape it already has (shapes re-inferred first)
        no_op_transpose_rule,  # perm = (0, 1, ..., n-1)
        transpose_transpose_rule,  # inverse pair -> Identity, otherwise one Transpose
        reshape_reshape_rule,  # Reshape(Reshape(x, a), b) -> Reshape(x, b) for a constant b
        collapse_slice_rule,  # Slice [0:INT_MAX] or [0:dim] with step 1 over one axis
        collapse_slice2_rule,  # Slice whose inferred output shape equals its input's
        _zero_pad_rule(),  # Pad by zeros (opset >= 11: pads are an input)
        _noop_reshape_rule(),  # Reshape to the input's own (inferred, static) shape
    ]


class RemoveNoopOps(GraphPass):
    """Remove no-op Mul/Add/Sub/Div/Cast/Expand/Transpose/Slice/Pad; merge Transpose and Reshape pairs."""

    name = "remove_noop_ops"
    preconditions = (
        "the constant operand is exactly the neutral element everywhere and broadcasting it cannot "
        "change the other operand's shape (its non-1 dims match static dims); Cast to the input's own "
        "dtype; Expand to the input's inferred shape; identity or mutually inverse Transpose permutations; "
        "Reshape pairs whose outer target is constant; Slices whose inferred output shape is the input's; "
        "Pads whose pads are all constant zeros; Reshapes whose constant target maps the input's inferred "
        "static shape to itself"
    )
    max_rounds = 4

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        step = RuleStep(noop_rules(self.refuse))
        # Expand's rule compares against the input's shape: trust inferred shapes only.
        with untrusted_shapes(model):
            infer_shapes(model)
            # A removed no-op can expose another (Transpose pairs around a dropped Cast):
            # repeat rules + Identity elimination until a round changes nothing.
            result = ir.passes.PassManager([step, RemoveIdentity()], steps=self.max_rounds, early_stop=True)(model)
        fired = step.fired
        if fired:
            self.note(f"removed {sum(fired.values())} no-ops ({summarize_counts(fired)})")
        return ir.passes.PassResult(model, modified=result.modified)
