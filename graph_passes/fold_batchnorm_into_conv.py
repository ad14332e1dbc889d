"""fold_batchnorm_into_conv: fold inference BatchNormalization into the Conv/ConvTranspose/Gemm before it.

The rewrite is onnxscript's (``rewriter/rules/common/_fuse_batchnorm.py``): scale the
weights by ``gamma / sqrt(var + eps)`` and fold the rest into the bias. We add the one check
it lacks: the BatchNormalization must run in inference mode (``training_mode`` absent or 0),
since training mode normalizes with the batch's own statistics.
"""

from __future__ import annotations

import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes._rules import apply_rules


def _inference_mode_rules():
    from onnxscript.rewriter._basics import MatchResult
    from onnxscript.rewriter.rules.common import _fuse_batchnorm as fb

    def checked(base):
        class InferenceOnly(base):
            def check(self, context, x, inbound_out, batchnorm_out) -> MatchResult:
                bn = batchnorm_out.producer()
                mode = bn.attributes.get("training_mode")
                if mode is not None and (mode.is_ref() or mode.as_int() != 0):
                    return MatchResult().fail("BatchNormalization runs in training mode (batch statistics)")
                if any(v is None for v in bn.inputs[1:5]) or len(bn.inputs) < 5:
                    return MatchResult().fail("BatchNormalization lacks one of scale, bias, mean, var")
                return super().check(context, x, inbound_out, batchnorm_out)

        InferenceOnly.__name__ = base.__name__
        return InferenceOnly().rule()

    return [
        checked(fb.FuseBatchNormIntoConv),
        checked(fb.FuseBatchNormIntoConvTranspose),
        checked(fb.FuseBatchNormIntoGemm),
    ]


class FoldBatchnormIntoConv(GraphPass):
    """Fold inference BatchNormalization into the preceding Conv, ConvTranspose or Gemm."""

    name = "fold_batchnorm_into_conv"
    preconditions = (
        "the BatchNormalization has one output, is in inference mode and reads the Conv's output, which "
        "nothing else reads; weights, bias and BN parameters are constant initializers (run "
        "lift_constants first) not shared with other nodes; IR version >= 4"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version < 4:
            self.note(f"skipped: IR version {model.ir_version} < 4 needs every initializer to be a graph input")
            return ir.passes.PassResult(model, modified=False)
        # apply_rules dry-runs the rules for their reasons; a BatchNormalization no rule matched gets one too.
        fired, refusals = apply_rules(model, _inference_mode_rules())
        total = sum(fired.values())
        if total:
            self.note(f"folded {total} BatchNormalization ({', '.join(f'{k} x{v}' for k, v in fired.items())})")
        for node, reason in refusals:
            self.refuse(node, reason)
        explained = {node for node, _ in refusals}
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type == "BatchNormalization" and node not in explained:
                self.refuse(node, "no Conv/ConvTranspose/Gemm feeds it alone")
        return ir.passes.PassResult(model, modified=bool(total))
