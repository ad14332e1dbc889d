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

from graph_passes._base import GraphPass
from graph_passes._rules import RulePass


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


class FusePadIntoConv(RulePass, GraphPass):
    """Fold a zero constant Pad of the spatial axes into the following Conv's pads."""

    name = "fuse_pad_into_conv"
    preconditions = (
        "Pad mode 'constant' with value 0 and constant pads (opset >= 11 form), non-negative and zero on "
        "the batch and channel axes; the Pad's output feeds only the Conv; the Conv's auto_pad is NOTSET"
    )

    reads_shapes = True  # the rule's rank check reads shapes

    def rules(self, model: ir.Model) -> list:
        return _rules()
