"""fuse_pad_into_conv: a zero constant Pad of the spatial axes before a Conv becomes the Conv's own pads.

Exporters write asymmetric or "same" padding as a separate Pad (TensorFlow-style models,
paddle's ``padding_algorithm``). TensorRT pads inside the convolution for free; a separate
Pad is one more layer and a padded copy of the activation. The rewrite is onnxscript's
``fuse_pad_into_conv_rule``; we add the guards it lacks: a Pad from before opset 11 (pads
as an attribute, which that rule would index as an input) is refused with a reason, and
shapes are re-inferred from the inputs first (its rank check reads them).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from graph_passes._base import GraphPass, quiet_logger, summarize_counts, untrusted_shapes
from graph_passes._rules import apply_rules


def _rules() -> list:
    from onnxscript.rewriter._basics import MatchResult
    from onnxscript.rewriter.rules.common._fuse_pad_into_conv import FuseConvPad

    class CheckedFuseConvPad(FuseConvPad):
        def check(self, context, x, pad, conv) -> MatchResult:
            pad_node = pad.producer()
            if len(pad_node.inputs) < 2 or pad_node.inputs[1] is None:
                return MatchResult().fail("Pad before opset 11 (pads as an attribute)")
            return super().check(context, x, pad, conv)

    return [CheckedFuseConvPad().rule()]


class FusePadIntoConv(GraphPass):
    """Fold a zero constant Pad of the spatial axes into the following Conv's pads."""

    name = "fuse_pad_into_conv"
    preconditions = (
        "Pad mode 'constant' with value 0 and constant pads (opset >= 11 form), non-negative and zero on "
        "the batch and channel axes; the Pad's output feeds only the Conv; the Conv's auto_pad is NOTSET"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        with untrusted_shapes(model):
            with quiet_logger("onnx_ir.passes.common.shape_inference"):
                ShapeInferencePass(strict_mode=False)(model)
            fired, refusals = apply_rules(model, _rules(), explain=self.explain)
        self.refusals.extend(refusals)
        if fired:
            self.note(f"fused {sum(fired.values())} ({summarize_counts(fired)})")
        return ir.passes.PassResult(model, modified=bool(fired))
