"""ONNX Runtime's x86 form beyond the compute ops: keep tensors in uint8 between the quantized kernels.

ORT's CPU provider fuses ``DQ -> op -> Q`` into an integer kernel only when the Q/DQ are in
the graph. Quantizing just the inputs and outputs of Conv/Gemm/MatMul leaves every op between
two of them in float, with a DequantizeLinear before and a QuantizeLinear after it: two extra
passes over the tensor per op. This planner extends the quantized region the way ORT's kernels
allow, in graph order, from the outputs of quantized nodes:

- activations folded into the output Q (``FOLDED``): ``Conv -> Relu`` becomes ``Conv -> Q``
  with the Relu's calibrated range, whose zero point is 0, so the Q's clamp *is* the Relu and
  ORT fuses ``DQ -> Conv -> Q`` into one QLinearConv (the Relu node is removed);
- data movement (``SHARED_SCALE_OPS``: MaxPool, Transpose, Reshape...): the output gets a Q/DQ
  with the input's scale, which ORT drops, so the op runs on uint8 with no rounding added;
- arithmetic with a uint8 kernel (``OWN_RANGE_OPS``: Add, Mul, LeakyRelu, Sigmoid, pooling,
  Concat): the output gets its own calibrated Q/DQ (QLinearAdd, QLinearLeakyRelu, ...);
  a constant operand of Add/Mul (a bias) is stored as uint8 behind a DequantizeLinear.

An op is taken only when every float input that is not a constant is already quantized for
all its readers, so nothing new is quantized at the network's edges, and graph outputs keep
their float values.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

FOLDED = ("Relu",)
SHARED_SCALE_OPS = ("MaxPool", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice", "Resize")
OWN_RANGE_OPS = ("Add", "Mul", "LeakyRelu", "Sigmoid", "GlobalAveragePool", "AveragePool", "Concat")
# The operand of these ops that carries data (the others are shapes, indices, sizes).
DATA_INPUTS = {"Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Gather": (0,), "Slice": (0,), "Resize": (0,)}
CONST_OPERAND_OPS = ("Add", "Mul")


def plan_cpu_form(graph: ir.Graph, plan) -> None:
    """Add relu folding, shared-scale and own-range outputs and uint8 constants to ``plan`` (in place)."""
    from calibration.qdq import _const, _is_float_activation

    _fold_activations(graph, plan)
    quantized = {p.output for p in plan.nodes if p.output} | {m.output for m in plan.matmuls if m.output}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SHARED_SCALE_OPS + OWN_RANGE_OPS:
            continue
        out = node.outputs[0]
        if len(node.outputs) != 1 or out.is_graph_output() or out.dtype not in (None, ir.DataType.FLOAT) or not out.uses():
            continue
        indices = DATA_INPUTS.get(node.op_type, range(len(node.inputs)))
        data = [(i, node.inputs[i]) for i in indices if i < len(node.inputs) and node.inputs[i] is not None]
        consts = [i for i, v in data if _const(v) is not None]
        live = [v for i, v in data if i not in consts]
        if not live or not all(_is_float_activation(v) and v.name in quantized for v in live):
            continue
        if consts and (node.op_type not in CONST_OPERAND_OPS or any(_const(node.inputs[i]).dtype != ir.DataType.FLOAT for i in consts)):
            continue
        plan.cpu_outputs.append(out.name)
        quantized.add(out.name)
        if node.op_type in SHARED_SCALE_OPS:
            plan.shared_scales.append([live[0].name, out.name])
        plan.const_inputs.extend((node.name, i) for i in consts)


def _fold_activations(graph: ir.Graph, plan) -> None:
    """A quantized node whose output feeds only a Relu: quantize the Relu's output, fold the Relu into the Q."""
    for p in plan.nodes:
        if not p.output:
            continue
        value = next((v for n in graph for v in n.outputs if v.name == p.output), None)
        uses = value.uses() if value is not None else []
        if len(uses) != 1 or uses[0].node.op_type not in FOLDED or uses[0].node.domain not in ("", "ai.onnx"):
            continue
        relu = uses[0].node
        out = relu.outputs[0]
        if out.is_graph_output() or not out.uses():
            continue
        p.output = out.name
        plan.folded[out.name] = relu.name


def quantize_constant_u8(array: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """Asymmetric per-tensor uint8 for a small float constant (a bias): (values, scale, zero point)."""
    array = np.asarray(array, dtype=np.float32)
    lo, hi = min(float(array.min()), 0.0), max(float(array.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0)
    if not scale >= np.finfo(np.float32).tiny:
        return np.zeros(array.shape, np.uint8), np.float32(1.0), np.uint8(0)
    zero_point = np.uint8(np.clip(round(-lo / float(scale)), 0, 255))
    q = np.clip(np.rint(array / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point
