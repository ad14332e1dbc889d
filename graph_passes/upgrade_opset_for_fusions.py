"""upgrade_opset_for_fusions: raise opset 13-16 models to 17 when that lets a fusion fire.

LayerNormalization exists from opset 17 and HardSwish from 14, so a transformer exported at
opset 13/14 (the Hugging Face default for years) keeps every layer norm as 9 nodes, and a
MobileNetV3 at opset 13 keeps ``x * HardSigmoid(x)``. TensorRT runs the fused ops as one kernel
(and NVIDIA recommends the opset-17 LayerNormalization for FP16 accuracy). So when the graph
holds such a pattern, the model goes to opset 17 through ``convert_opset`` (onnx's version
converter, checked numerically like every pass); otherwise it keeps its opset.
"""

from __future__ import annotations

import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes.convert_opset import ConvertOpset
from optimizer.model import PROTOBUF_LIMIT, model_nbytes, opset_of

TARGET = 17
# Below 13 the converter's adapters change more than attribute spellings (Upsample, Split, Pad):
# those models keep their opset unless --opset asks.
LOWEST = 13


def _decomposed_layer_norms(model: ir.Model) -> int:
    """Pow nodes squaring a ``x - ReduceMean(x)`` whose square feeds a ReduceMean: the variance of a layer norm."""
    count = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Pow" or not node.inputs or node.inputs[0] is None:
            continue
        sub = node.inputs[0].producer()
        if sub is None or sub.op_type != "Sub":
            continue
        centred = any(v is not None and v.producer() is not None and v.producer().op_type == "ReduceMean" for v in sub.inputs)
        if centred and any(use.node.op_type == "ReduceMean" for use in node.outputs[0].uses()):
            count += 1
    return count


def _hard_swishes(model: ir.Model) -> int:
    """``x * HardSigmoid(x)``: HardSwish from opset 14."""
    count = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "HardSigmoid" or not node.inputs or node.inputs[0] is None:
            continue
        x = node.inputs[0]
        if any(use.node.op_type == "Mul" and x in use.node.inputs for use in node.outputs[0].uses()):
            count += 1
    return count


class UpgradeOpsetForFusions(GraphPass):
    """Upgrade opset 13-16 to 17 when a decomposed LayerNorm or HardSwish would then fuse."""

    name = "upgrade_opset_for_fusions"
    preconditions = (
        f"default-domain opset {LOWEST}..{TARGET - 1}; at least one decomposed layer norm (or, below 14, "
        "x * HardSigmoid(x)); weights under protobuf's 2 GB (the converter works on one message)"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = opset_of(model)
        if not LOWEST <= opset < TARGET:
            return ir.passes.PassResult(model, modified=False)
        norms = _decomposed_layer_norms(model)
        swishes = _hard_swishes(model) if opset < 14 else 0
        if not norms and not swishes:
            return ir.passes.PassResult(model, modified=False)
        if model_nbytes(model) > PROTOBUF_LIMIT:
            self.note(f"left at opset {opset}: over 2 GB, too large for onnx's version converter (--opset {TARGET} tries)")
            return ir.passes.PassResult(model, modified=False)
        why = ", ".join(f"{n} {what}" for n, what in ((norms, "decomposed LayerNorm(s)"), (swishes, "HardSwish(es)")) if n)
        result = ConvertOpset(TARGET).call(model)
        self.note(f"opset {opset} -> {TARGET} so that {why} can fuse")
        return result
