"""Explicit INT8: decide which nodes get Q/DQ (``plan_qdq``) and write it into the graph (``insert_qdq``).

TensorRT 11 is strongly typed, so INT8 exists only where the graph says so. We quantize the
inputs of the compute-heavy ops (Conv, Gemm, MatMul with a constant weight):

- weights become per-channel symmetric int8 initializers (channel = the output channel)
  followed by a DequantizeLinear; no QuantizeLinear on weights, so no runtime weight work;
- each activation input gets one QuantizeLinear -> DequantizeLinear pair with a per-tensor
  scale, shared by every quantized node that reads the tensor;
- biases and everything else stay float.

MatMuls of two activations (attention's Q·Kᵀ and P·V) get a per-tensor Q/DQ on both inputs
where the target runs them in INT8 (TensorRT's fused attention kernels); a softmax output
gets the fixed range [0, 1] instead of a calibrated one.

For TensorRT, ``_plan_fusions`` adds its placement rules beyond the compute ops: the residual
input of an Add fed by a quantized conv, the input of a pooling that feeds quantized nodes, and
one shared scale for a Concat whose inputs and output are all quantized.

The target picks the activation form: symmetric int8 (zero point 0) for TensorRT, asymmetric
uint8 for ONNX Runtime's x86 U8S8 kernels, which also need a Q/DQ on the quantized node's
output before ORT turns the node into an integer kernel. Nodes inside subgraphs (If/Loop
bodies) are never quantized silently: the plan lists them as skipped with the reason
(``quantize`` first inlines Ifs whose condition is a constant, see ``calibration.subgraphs``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from calibration.stats import TensorRange
from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import opset_of

SUPPORTED_OP_TYPES = ("Conv", "Gemm", "MatMul")
# Ops that carry weights the planner does not quantize yet, by weight input position: they count
# in the weight share's denominator and are listed in ``skipped``, so the share never claims a
# model is all INT8 while its ConvTranspose or recurrent weights stay FP32.
UNQUANTIZED_WEIGHTED = {"ConvTranspose": (1,), "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}
# Per-channel DequantizeLinear (the ``axis`` attribute) exists from opset 13 on.
MIN_OPSET = 13
# Below these sizes INT8 kernels do not pay for the Q/DQ around them (TensorRT's Tensor
# Core GEMM/conv tiles need >= 16 along K/N or the channels); the thresholds follow
# TensorRT Model Optimizer's published heuristics.
MIN_GEMM_DIM = 16
MIN_CONV_CHANNELS = 16


@dataclass(frozen=True)
class TargetFormat:
    name: str
    activation_dtype: ir.DataType
    symmetric_activations: bool
    # Also put Q/DQ on the outputs of quantized nodes (every reader then sees the DQ).
    quantize_outputs: bool
    # Q/DQ on residual Adds and pooling inputs, shared Concat scales: TensorRT's fusion rules.
    fusion_rules: bool = False
    # Quantize MatMuls of two activations (attention's Q·Kᵀ and P·V).
    activation_matmuls: bool = False
    # The largest representable magnitude of the quantized type on the symmetric side (int8: 127, E4M3: 448).
    qmax: float = 127.0
    # Extend the uint8 region past the compute ops the way ORT's x86 kernels run it (calibration.cpu_form).
    cpu_form: bool = False


TARGETS = {
    # TensorRT runs INT8 only in the symmetric form: zero point 0 everywhere. Inputs only:
    # TensorRT fuses the following Q into the producing kernel by itself.
    "tensorrt": TargetFormat(
        "tensorrt", ir.DataType.INT8, symmetric_activations=True, quantize_outputs=False, fusion_rules=True,
        activation_matmuls=True,
    ),
    # ORT's x86 kernels are fast for uint8 activations x int8 weights (U8S8); the asymmetric
    # range spends all 256 levels on one-sided tensors such as post-activation outputs. ORT
    # only turns DQ -> Conv into an integer QLinearConv when a Q follows the Conv, so the
    # outputs get Q/DQ too (measured on PP-OCRv4 rec: without them INT8 runs slower than FP32).
    "onnxruntime-cpu": TargetFormat(
        "onnxruntime-cpu", ir.DataType.UINT8, symmetric_activations=False, quantize_outputs=True, cpu_form=True
    ),
}


# Q/DQ number formats. FP8 (E4M3, TensorRT 11 on Hopper/Ada/Blackwell): the same placement as
# INT8 for TensorRT, activations per tensor and weights per output channel, scale = amax / 448.
QDQ_MODES = ("int8", "fp8")
FP8_MAX = 448.0
# QuantizeLinear/DequantizeLinear take float8 from opset 19 on.
FP8_MIN_OPSET = 19


def target_format(target: str, mode: str = "int8") -> TargetFormat:
    try:
        fmt = TARGETS[target]
    except KeyError:
        raise ConfigError(f"unknown quantization target '{target}'; choose one of {sorted(TARGETS)}") from None
    if mode == "int8":
        return fmt
    if mode != "fp8":
        raise ConfigError(f"unknown Q/DQ mode '{mode}'; choose one of {list(QDQ_MODES)}")
    if not fmt.symmetric_activations:
        raise ConfigError(
            f"FP8 Q/DQ is a TensorRT form (Hopper/Ada/Blackwell); target '{target}' has no FP8 kernels: "
            "use --target tensorrt, or --mode int8 for this target"
        )
    return dataclasses.replace(fmt, activation_dtype=ir.DataType.FLOAT8E4M3FN, qmax=FP8_MAX)


@dataclass
class PlannedNode:
    """One node to quantize: its float activation input, its constant weight and the weight's channel axis."""

    node: str
    op_type: str
    activation: str
    weight: str
    axis: int
    weight_params: int
    output: str | None = None  # set when the target quantizes outputs too


@dataclass
class ActivationMatMul:
    """A MatMul of two activations (attention's BMM1 Q·Kᵀ and BMM2 P·V): both inputs get per-tensor Q/DQ.

    TensorRT runs its INT8 multi-head-attention kernels only when both BMMs read Q/DQ'd
    inputs; the softmax output P has the fixed range [0, 1] (``SOFTMAX_RANGE``).
    """

    node: str
    inputs: tuple[str, str]
    output: str | None = None  # set when the target quantizes outputs too


# Softmax outputs lie in [0, 1] whatever the data: a fixed scale, not a calibrated one, so a
# sharper attention map than calibration saw (a probability of 1.0) never saturates.
SOFTMAX_RANGE = (0.0, 1.0)


@dataclass
class FusionInput:
    """An input of a non-compute op that gets Q/DQ so TensorRT can run or fuse that op in INT8."""

    node: str
    index: int
    tensor: str
    rule: str  # "residual-add" | "pooling"


@dataclass
class QdqPlan:
    target: str
    nodes: list[PlannedNode]
    skipped: dict[str, str]  # node name -> why it stays float
    total_weight_params: int  # constant weights of every Conv/Gemm/MatMul, quantized or not
    fusion_inputs: list[FusionInput] = field(default_factory=list)
    # Tensors that must share one scale (a Concat's inputs and output), so TensorRT can
    # concatenate INT8 data without requantizing each input.
    shared_scales: list[list[str]] = field(default_factory=list)
    matmuls: list[ActivationMatMul] = field(default_factory=list)
    # Tensors whose range is known without calibration (softmax outputs): tensor -> (min, max).
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # ORT's CPU form (calibration.cpu_form): outputs of non-compute ops quantized for all readers,
    # Relu outputs whose Relu folds into the Q (tensor -> Relu node), uint8 constants (node, input index).
    cpu_outputs: list[str] = field(default_factory=list)
    folded: dict[str, str] = field(default_factory=dict)
    const_inputs: list[tuple[str, int]] = field(default_factory=list)

    @property
    def activations(self) -> list[str]:
        """The activation tensors to calibrate, each once: inputs of quantized nodes, then outputs, then fusion inputs."""
        inputs = [p.activation for p in self.nodes] + [t for m in self.matmuls for t in m.inputs]
        outputs = [p.output for p in self.nodes if p.output] + [m.output for m in self.matmuls if m.output]
        fusion = [f.tensor for f in self.fusion_inputs]
        return list(dict.fromkeys(inputs + outputs + self.cpu_outputs + fusion))

    @property
    def all_reader_tensors(self) -> set[str]:
        """Tensors whose Q/DQ every reader sees (outputs); the others are dequantized only for the quantized nodes."""
        return {p.output for p in self.nodes if p.output} | {m.output for m in self.matmuls if m.output} | set(self.cpu_outputs)

    @property
    def quantized_nodes(self) -> list[str]:
        """Every Conv/Gemm/MatMul the plan quantizes: weight-carrying ones, then activation x activation MatMuls."""
        return [p.node for p in self.nodes] + [m.node for m in self.matmuls]


@dataclass
class QdqRecord:
    target: str
    quantized_nodes: list[str]
    num_q: int
    num_dq: int
    quantized_weight_params: int
    # tensor -> {"scale", "zero_point", "min", "max"}: what the report shows per activation
    activations: dict[str, dict] = field(default_factory=dict)


def _count_unquantized(plan: QdqPlan, node: ir.Node) -> None:
    """A weighted op trtforge does not quantize: its constant weights count, and it says why it stays FP32."""
    weights = [w for i in UNQUANTIZED_WEIGHTED[node.op_type]
               if i < len(node.inputs) and node.inputs[i] is not None and (w := _const(node.inputs[i])) is not None]
    if weights:
        plan.total_weight_params += sum(int(math.prod(w.shape)) for w in weights)
        plan.skipped[node.name] = f"{node.op_type} weights are not quantized by trtforge yet; it stays FP32"


def plan_qdq(
    model: ir.Model,
    *,
    target: str,
    op_types: Iterable[str] = SUPPORTED_OP_TYPES,
    exclude: Iterable[str] = (),
    fusion: bool = True,
) -> QdqPlan:
    """Choose the nodes to quantize and say why every other Conv/Gemm/MatMul stays float.

    Unnamed or duplicate node names are fixed first (NameFixPass) so the plan can name nodes.
    """
    fmt = target_format(target)
    op_types, exclude = set(op_types), set(exclude)
    if unsupported := op_types - set(SUPPORTED_OP_TYPES):
        raise ConfigError(f"cannot quantize op types {sorted(unsupported)}; supported: {list(SUPPORTED_OP_TYPES)}")
    _ensure_unique_node_names(model)
    # A typo in an exclude list would otherwise quantize the very layer the user protected.
    if unknown := exclude - {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph)}:
        raise ConfigError(f"exclude names nodes that are not in the model: {sorted(unknown)}")
    owners = _subgraph_owners(model.graph)
    plan = QdqPlan(target, [], {}, 0)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in ("", "ai.onnx") and node.op_type in UNQUANTIZED_WEIGHTED:
            _count_unquantized(plan, node)
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OP_TYPES:
            continue
        weight = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if weight is not None:
            plan.total_weight_params += int(math.prod(weight.shape))
        if node.graph is not model.graph:
            plan.skipped[node.name] = (
                f"inside a subgraph of {owners.get(node.graph, 'another node')}; "
                "subgraphs are not quantized yet, so this node stays FP32"
            )
        elif node.name in exclude:
            plan.skipped[node.name] = "excluded by name"
        elif node.op_type not in op_types:
            plan.skipped[node.name] = f"op type {node.op_type} not selected for quantization"
        elif fmt.activation_matmuls and weight is None and _is_activation_matmul(node):
            if reason := _small_matmul_reason(node):
                plan.skipped[node.name] = reason
            else:
                _plan_activation_matmul(node, fmt, plan)
        elif reason := _skip_reason(node, weight):
            plan.skipped[node.name] = reason
        else:
            out = node.outputs[0]
            # A graph output keeps its float value: the user reads it, and ORT's fusion
            # needs the Q to be the only reader of the node's output anyway.
            quantize_out = fmt.quantize_outputs and not out.is_graph_output() and out.dtype in (None, ir.DataType.FLOAT)
            plan.nodes.append(
                PlannedNode(
                    node.name, node.op_type, node.inputs[0].name, node.inputs[1].name, _weight_axis(node),
                    int(math.prod(weight.shape)), out.name if quantize_out else None,
                )
            )
    if fmt.fusion_rules and fusion:
        _plan_fusions(model.graph, plan)
    if fmt.cpu_form and fusion:
        from calibration.cpu_form import plan_cpu_form  # it builds on this module's helpers

        plan_cpu_form(model.graph, plan)
    return plan


POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def _is_float_activation(value: ir.Value | None) -> bool:
    return value is not None and _const(value) is None and value.dtype in (None, ir.DataType.FLOAT)


def _plan_activation_matmul(node: ir.Node, fmt: TargetFormat, plan: QdqPlan) -> None:
    out = node.outputs[0]
    quantize_out = fmt.quantize_outputs and not out.is_graph_output() and out.dtype in (None, ir.DataType.FLOAT)
    plan.matmuls.append(ActivationMatMul(node.name, (node.inputs[0].name, node.inputs[1].name), out.name if quantize_out else None))
    for value in node.inputs:
        if (producer := value.producer()) is not None and producer.op_type == "Softmax":
            plan.fixed_ranges[value.name] = SOFTMAX_RANGE


def _is_activation_matmul(node: ir.Node) -> bool:
    """A MatMul whose two inputs are float tensors computed at run time (no constant weight)."""
    return node.op_type == "MatMul" and len(node.inputs) == 2 and all(_is_float_activation(v) for v in node.inputs)


def _plan_fusions(graph: ir.Graph, plan: QdqPlan) -> None:
    """TensorRT's placement rules beyond the compute ops (its "Q/DQ layer placement" guidance).

    - residual Add: Conv -> Add(conv output, residual). With the residual quantized, TensorRT
      fuses the Add into the conv's INT8 epilogue; without it, the Add runs as a separate
      float layer and the conv output is written in float;
    - pooling whose output only feeds quantized nodes: with its input quantized the pooling
      runs in INT8 between the Q/DQ pairs instead of forcing a dequantize before it;
    - Concat whose inputs and output are all quantized: one shared scale, so TensorRT can
      concatenate INT8 data in place instead of requantizing each input.
    """
    planned = {p.node: p for p in plan.nodes}
    activation_readers: dict[str, set[str]] = {}
    for p in plan.nodes:
        activation_readers.setdefault(p.activation, set()).add(p.node)
    for m in plan.matmuls:
        for tensor in m.inputs:
            activation_readers.setdefault(tensor, set()).add(m.node)
    for node in graph:
        if node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
            a, b = node.inputs
            if not (_is_float_activation(a) and _is_float_activation(b)):
                continue
            fused = [
                i for i, v in enumerate((a, b))
                if (prod := v.producer()) is not None and prod.name in planned and len(v.uses()) == 1
            ]
            if not fused:
                continue
            # Both branches from quantized convs: TensorRT fuses the later one; the other is the residual.
            residual = 1 - fused[-1] if len(fused) == 1 else 0
            plan.fusion_inputs.append(FusionInput(node.name, residual, node.inputs[residual].name, "residual-add"))
        elif node.op_type in POOLING_OPS and node.domain in ("", "ai.onnx") and _is_float_activation(node.inputs[0]):
            out = node.outputs[0]
            readers = {(u.node.name, u.idx) for u in out.uses()}
            if readers and not out.is_graph_output() and all(
                idx == 0 and name in activation_readers.get(out.name, ()) for name, idx in readers
            ):
                plan.fusion_inputs.append(FusionInput(node.name, 0, node.inputs[0].name, "pooling"))
    quantized = set(plan.activations)
    for node in graph:
        if node.op_type == "Concat" and node.outputs[0].name in quantized:
            tensors = [v.name for v in node.inputs if v is not None]
            if tensors and all(t in quantized for t in tensors):
                plan.shared_scales.append(list(dict.fromkeys(tensors + [node.outputs[0].name])))


def _ensure_unique_node_names(model: ir.Model) -> None:
    names = [n.name for n in ir.traversal.RecursiveGraphIterator(model.graph)]
    if not all(names) or len(set(names)) != len(names):
        NameFixPass()(model)


def _subgraph_owners(graph: ir.Graph) -> dict[ir.Graph, str]:
    owners = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attr in node.attributes.values():
            subgraphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else (
                list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
            )
            for sub in subgraphs:
                owners[sub] = f"{node.op_type} '{node.name}' ({attr.name})"
    return owners


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant behind ``value`` (initializer or Constant node), unless it can change at run time."""
    if value is None or value.is_graph_input():
        return None
    return ir.convenience.get_const_tensor(value)


def _skip_reason(node: ir.Node, weight: ir.TensorProtocol | None) -> str | None:
    """Why ``node`` cannot or should not be quantized, or None when it should."""
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "missing an input"
    act, w = node.inputs[0], node.inputs[1]
    if weight is None:
        if w.is_graph_input():
            return f"weight '{w.name}' is a graph input (it may change at run time)"
        return f"input '{w.name}' is not a constant (activation x activation product); only constant weights are quantized"
    if _const(act) is not None:
        return f"input '{act.name}' is a constant too (fold the node first)"
    if weight.dtype != ir.DataType.FLOAT:
        return f"weight '{w.name}' is {weight.dtype.name}; only FLOAT weights are quantized in this version"
    if act.dtype is not None and act.dtype != ir.DataType.FLOAT:
        return f"activation '{act.name}' is {act.dtype.name}; only FLOAT activations are quantized in this version"
    shape = tuple(weight.shape)
    if node.op_type == "Conv":
        if not 3 <= len(shape) <= 5:
            return f"weight shape {list(shape)} is not a 1-D/2-D/3-D convolution kernel"
        return _small_conv_reason(node, shape)
    if len(shape) != 2:
        return f"weight '{w.name}' has rank {len(shape)}; only 2-D {node.op_type} weights are quantized"
    k, n = (shape[1], shape[0]) if node.op_type == "Gemm" and _int_attr(node, "transB", 0) else shape
    if k < MIN_GEMM_DIM or n < MIN_GEMM_DIM:
        return f"too small for INT8 kernels: K={k}, N={n} (both need >= {MIN_GEMM_DIM})"
    return None


def _small_matmul_reason(node: ir.Node) -> str | None:
    """An activation x activation MatMul whose static K or N is below the INT8 kernel minimum."""
    a, b = node.inputs[0].shape, node.inputs[1].shape
    k = a[-1] if a is not None and len(a) >= 1 else None
    n = b[-1] if b is not None and len(b) >= 2 else None
    small = [f"{name}={d}" for name, d in (("K", k), ("N", n)) if isinstance(d, int) and d < MIN_GEMM_DIM]
    return f"too small for INT8 kernels: {', '.join(small)} (both need >= {MIN_GEMM_DIM})" if small else None


def _small_conv_reason(node: ir.Node, shape: tuple[int, ...]) -> str | None:
    out_ch, in_ch, kernel = shape[0], shape[1], shape[2:]  # in_ch is per group
    if out_ch >= MIN_CONV_CHANNELS and in_ch >= MIN_CONV_CHANNELS:
        return None
    if _int_attr(node, "group", 1) == 1:
        # Narrow plain convs still have INT8 kernels when a channel count is a multiple of 8
        # and the other is large (or the conv reads the network input, e.g. 3-channel images).
        wide = max(out_ch, in_ch) >= MIN_CONV_CHANNELS or node.inputs[0].is_graph_input()
        if (out_ch % 8 == 0 or in_ch % 8 == 0) and wide and len(set(kernel)) == 1:
            return None
    elif out_ch % 8 == 0 and all(k >= 3 for k in kernel):
        return None  # grouped/depthwise convs with real spatial kernels
    return f"too small for INT8 kernels: {out_ch} output / {in_ch} input channels per group, kernel {list(kernel)}"


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _weight_axis(node: ir.Node) -> int:
    """The weight axis that indexes output channels: one scale per output channel."""
    if node.op_type == "Conv":
        return 0  # [O, I/group, k...]
    if node.op_type == "Gemm" and _int_attr(node, "transB", 0):
        return 0  # B is [N, K]
    return 1  # MatMul / Gemm B is [K, N]


# -- scales ---------------------------------------------------------------------------------


def activation_qparams(r: TensorRange, fmt: TargetFormat) -> tuple[np.float32, int]:
    """Per-tensor scale and zero point for a calibrated range.

    The range is widened to include 0 so zero (padding, ReLU output) is exact. A tensor that
    was constant zero gets scale 1, which represents it exactly.
    """
    lo, hi = min(r.min, 0.0), max(r.max, 0.0)
    if fmt.symmetric_activations:
        scale, zero_point = max(-lo, hi) / fmt.qmax, 0
    else:
        scale = (hi - lo) / 255.0
        zero_point = int(np.clip(round(-lo / scale), 0, 255)) if scale > 0 else 0
    scale32 = np.float32(scale)
    if not np.isfinite(scale32) or scale32 < np.finfo(np.float32).tiny:
        return np.float32(1.0), 0
    return scale32, zero_point


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127]: (int8 weight, float32 scales).

    One scale per channel along ``axis``, or one scale (a 0-d array) for the whole tensor
    when ``axis`` is None. The narrow range keeps -128 unused so the quantized weight negates
    exactly, as TensorRT's and ORT's symmetric kernels assume. An all-zero channel gets scale 1.
    """
    weight = np.asarray(weight, dtype=np.float32)
    if axis is None:
        amax = np.max(np.abs(weight)) if weight.size else np.float32(0)
        scale = np.asarray(amax / 127.0, dtype=np.float32)
        if not scale >= np.finfo(np.float32).tiny:
            scale = np.asarray(1.0, dtype=np.float32)
        return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale
    other = tuple(i for i in range(weight.ndim) if i != axis)
    amax = np.max(np.abs(weight), axis=other)
    scale = (amax / 127.0).astype(np.float32)
    scale[~(scale >= np.finfo(np.float32).tiny)] = 1.0
    bshape = [1] * weight.ndim
    bshape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(bshape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_weight_fp8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """FP8 E4M3 weights: (float8_e4m3fn weight, float32 scales), one scale per channel along ``axis``.

    The scale maps each channel's largest magnitude to 448 (E4M3's largest finite value), so
    nothing saturates; rounding is to the nearest E4M3 value (ml_dtypes' cast). An all-zero
    channel gets scale 1.
    """
    import ml_dtypes

    weight = np.asarray(weight, dtype=np.float32)
    if axis is None:
        scale = np.asarray(np.max(np.abs(weight)) / FP8_MAX if weight.size else 0.0, dtype=np.float32)
        if not scale >= np.finfo(np.float32).tiny:
            scale = np.asarray(1.0, dtype=np.float32)
        bscale = scale
    else:
        other = tuple(i for i in range(weight.ndim) if i != axis)
        scale = (np.max(np.abs(weight), axis=other) / FP8_MAX).astype(np.float32)
        scale[~(scale >= np.finfo(np.float32).tiny)] = 1.0
        bshape = [1] * weight.ndim
        bshape[axis] = -1
        bscale = scale.reshape(bshape)
    q = np.clip(weight / bscale, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return q, scale


# -- insertion ------------------------------------------------------------------------------


def insert_qdq(
    model: ir.Model, plan: QdqPlan, ranges: dict[str, TensorRange], *, target: str, per_channel: bool = True,
    mode: str = "int8",
) -> QdqRecord:
    """Write ``plan`` into ``model`` in place with the scales from ``ranges``; return what was done.

    ``per_channel=False`` gives each weight one scale (per-tensor) instead of one per output channel.
    ``mode="fp8"`` writes E4M3 Q/DQ (opset >= 19) instead of INT8.
    """
    fmt = target_format(target, mode)
    opset = opset_of(model)
    need = FP8_MIN_OPSET if mode == "fp8" else MIN_OPSET
    if opset < need:
        raise CalibrationError(f"{mode} DequantizeLinear needs opset >= {need}, the model has {opset}; upgrade it first")
    graph = model.graph
    order = {node: i for i, node in enumerate(graph)}
    nodes = {node.name: node for node in graph}
    missing = [n for n in plan.quantized_nodes if n not in nodes]
    if missing:
        raise CalibrationError(f"the plan names nodes that are not in the main graph: {missing}")
    names = _NameSource(model)
    record = QdqRecord(target, plan.quantized_nodes, 0, 0, 0)

    values = {v.name: v for v in graph.inputs} | {v.name: v for n in graph for v in n.outputs}
    quantized_outputs = plan.all_reader_tensors
    ranges = _share_ranges(_with_fixed_ranges(ranges, plan.fixed_ranges), plan.shared_scales)
    for tensor in plan.activations:
        if tensor not in ranges:
            raise CalibrationError(f"no calibrated range for activation '{tensor}'")
        x = values[tensor]
        # Inputs: only the quantized nodes read the DQ, other readers keep the float tensor.
        # Outputs: every reader does, so the producer's only consumer is the Q.
        if tensor in quantized_outputs:
            uses = [(u.node, u.idx) for u in x.uses()]
            if tensor in plan.folded:  # the Q reads the Relu's input; its zero-point-0 clamp is the Relu
                relu = nodes[plan.folded[tensor]]
                x = relu.inputs[0]
        else:
            uses = [(nodes[p.node], 0) for p in plan.nodes if p.activation == tensor]
            uses += [(nodes[m.node], i) for m in plan.matmuls for i, t in enumerate(m.inputs) if t == tensor]
            uses += [(nodes[f.node], f.index) for f in plan.fusion_inputs if f.tensor == tensor]
        scale, zero_point = activation_qparams(ranges[tensor], fmt)
        zp_array = np.array(zero_point, dtype=fmt.activation_dtype.numpy())
        s = _initializer(graph, names.new(f"{tensor}_scale"), np.array(scale, dtype=np.float32))
        zp = _initializer(graph, names.new(f"{tensor}_zero_point"), zp_array)
        q_out = ir.Value(name=names.new(f"{tensor}_quantized"), type=ir.TensorType(fmt.activation_dtype), shape=_copy_shape(x))
        dq_out = ir.Value(name=names.new(f"{tensor}_dequantized"), type=ir.TensorType(ir.DataType.FLOAT), shape=_copy_shape(x))
        q = ir.Node("", "QuantizeLinear", [x, s, zp], outputs=[q_out], name=names.new(f"{tensor}_QuantizeLinear"))
        dq = ir.Node("", "DequantizeLinear", [q_out, s, zp], outputs=[dq_out], name=names.new(f"{tensor}_DequantizeLinear"))
        for user, index in uses:
            user.replace_input_with(index, dq_out)
        if tensor in plan.folded:
            graph.remove(nodes[plan.folded[tensor]], safe=True)
            dq_out.name = tensor  # the Relu's output name, now free: it still names the value Relu(x)
        # Right after the producer (or first, for a graph input): before every reader.
        if (producer := x.producer()) is not None:
            graph.insert_after(producer, [q, dq])
        else:
            graph.insert_before(graph.node(0), [q, dq])
        record.num_q += 1
        record.num_dq += 1
        r = ranges[tensor]
        record.activations[tensor] = {"scale": float(scale), "zero_point": zero_point, "min": float(r.min), "max": float(r.max)}

    # One int8 copy + DequantizeLinear per (weight, axis), shared by every node that uses it.
    by_weight: dict[tuple[str, int], list[ir.Node]] = {}
    for p in plan.nodes:
        by_weight.setdefault((p.weight, p.axis), []).append(nodes[p.node])
    for (weight_name, axis), users in by_weight.items():
        w = users[0].inputs[1]
        array = _const(w).numpy()
        quantizer = quantize_weight_fp8 if mode == "fp8" else quantize_weight
        q_array, scales = quantizer(array, axis if per_channel else None)
        w_q = _initializer(graph, names.new(f"{weight_name}_{mode}"), q_array)
        s = _initializer(graph, names.new(f"{weight_name}_scale"), scales)
        zp = _initializer(graph, names.new(f"{weight_name}_zero_point"), np.zeros(scales.shape, dtype=q_array.dtype))
        attributes = [ir.AttrInt64("axis", axis)] if per_channel else []
        replace_weight_with_dq(graph, w, users, order, names, [w_q, s, zp], attributes, array.shape)
        record.num_dq += 1
        record.quantized_weight_params += int(array.size)
    record.num_dq += _insert_constant_dqs(graph, nodes, plan.const_inputs, names)
    return record


def _insert_constant_dqs(graph: ir.Graph, nodes: dict[str, ir.Node], const_inputs, names: "_NameSource") -> int:
    """uint8 constants behind a DequantizeLinear (ORT's CPU form: the bias of a QLinearAdd); returns the DQ count."""
    from calibration.cpu_form import quantize_constant_u8

    for node_name, index in const_inputs:
        node = nodes[node_name]
        value = node.inputs[index]
        q, scale, zero_point = quantize_constant_u8(_const(value).numpy())
        base = value.name or f"{node_name}_input{index}"
        inputs = [
            _initializer(graph, names.new(f"{base}_uint8"), q),
            _initializer(graph, names.new(f"{base}_scale"), np.array(scale, np.float32)),
            _initializer(graph, names.new(f"{base}_zero_point"), np.array(zero_point, np.uint8)),
        ]
        out = ir.Value(name=names.new(f"{base}_dequantized"), type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(q.shape))
        dq = ir.Node("", "DequantizeLinear", inputs, outputs=[out], name=names.new(f"{base}_DequantizeLinear"))
        graph.insert_before(node, dq)
        node.replace_input_with(index, out)
        _drop_if_unused(graph, value)
    return len(const_inputs)


def _with_fixed_ranges(ranges: dict[str, TensorRange], fixed: dict[str, tuple[float, float]]) -> dict[str, TensorRange]:
    if not fixed:
        return ranges
    ranges = dict(ranges)
    for tensor, (lo, hi) in fixed.items():
        ranges[tensor] = TensorRange(lo, hi, ranges[tensor].count if tensor in ranges else 0)
    return ranges


def _share_ranges(ranges: dict[str, TensorRange], groups: list[list[str]]) -> dict[str, TensorRange]:
    """Ranges with every tensor of a group widened to the group's union (one scale for all)."""
    if not groups:
        return ranges
    ranges = dict(ranges)
    for group in groups:
        members = [ranges[t] for t in group if t in ranges]
        if not members:
            continue
        union = TensorRange(min(r.min for r in members), max(r.max for r in members), min(r.count for r in members))
        for t in group:
            ranges[t] = union
    return ranges


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _copy_shape(value: ir.Value) -> ir.Shape | None:
    return ir.Shape(value.shape) if value.shape is not None else None


def replace_weight_with_dq(graph: ir.Graph, weight: ir.Value, users, order, names, dq_inputs: list, attributes: list, shape) -> None:
    """Feed ``users`` (input 1) from a new DequantizeLinear of ``dq_inputs`` instead of ``weight``,
    placed before the first of them; the float weight goes when nothing else reads it."""
    weight_name = weight.name
    dq_out = ir.Value(name=names.new(f"{weight_name}_dequantized"), type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
    dq = ir.Node("", "DequantizeLinear", dq_inputs, attributes=attributes, outputs=[dq_out],
                 name=names.new(f"{weight_name}_DequantizeLinear"))
    graph.insert_before(min(users, key=order.__getitem__), dq)
    for user in users:
        user.replace_input_with(1, dq_out)
    _drop_if_unused(graph, weight)


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Remove the float weight once nothing reads it (other consumers keep it alive)."""
    if value.uses() or value.is_graph_output():
        return
    if value.is_initializer():
        del graph.initializers[value.name]
    elif (producer := value.producer()) is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)


class _NameSource:
    """Fresh value/node names that collide with nothing in the model (subgraphs included)."""

    def __init__(self, model: ir.Model) -> None:
        self.taken = set(model.graph.initializers)
        self.taken.update(v.name for v in model.graph.inputs)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            self.taken.add(node.name)
            self.taken.update(v.name for v in node.outputs)
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    self.taken.update(attr.value.initializers)

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name
