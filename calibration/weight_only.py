"""INT4 weight-only quantization: block-wise INT4 ``DequantizeLinear`` on MatMul/Gemm weights.

Activations stay float; each constant 2-D weight of a MatMul/Gemm becomes an INT4 initializer
with one float scale per block of ``block_size`` consecutive input channels (the reduction
axis K) per output channel, read through one ``DequantizeLinear`` with the ``block_size``
attribute (opset 21). TensorRT builds its INT4 weight-only GEMMs from that pattern, and ONNX
Runtime's CPU provider turns DQ(int4, blocked along K) -> MatMul into its MatMulNBits kernel.

The quantizer is symmetric (zero point 0, values in [-8, 7], scale = clip / 7). Two ways to
choose each block's clip:

- ``rtn``: round to nearest with the block's largest magnitude as the clip;
- ``awq`` (default): activation-aware clip search. A clip below the largest magnitude rounds the
  bulk of the block more finely and saturates the outliers; which is better depends on the
  inputs the weights meet. For block b of column n with weight error d = w - Q(w), the error
  added to the layer's output over the calibration data is d^T G_b d, where G_b = X_b^T X_b is
  the block's slice of the input Gram matrix. The search tries ``CLIP_RATIOS`` of the largest
  magnitude and keeps, per block and column, the one with the least output error (the clip
  search of AWQ; its per-channel rescaling would change the graph, so it is not used here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from calibration.data import bind_source
from calibration.qdq import (
    _const,
    _ensure_unique_node_names,
    _initializer,
    _int_attr,
    _is_float_activation,
    _NameSource,
    replace_weight_with_dq,
)
from optimizer.runners import session_for
from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import input_specs, opset_of

INT4_METHODS = ("awq", "rtn")
DEFAULT_BLOCK_SIZE = 128
# DequantizeLinear takes INT4 and the block_size attribute from opset 21 on.
INT4_MIN_OPSET = 21
INT4_MAX = 7  # symmetric: [-7, 7] * scale covers the clip; -8 is reachable only by rounding a clipped value
CLIP_RATIOS = tuple(np.round(np.linspace(1.0, 0.5, 11), 3))


@dataclass
class Int4Node:
    node: str
    op_type: str
    activation: str
    weight: str
    axis: int  # the weight's K axis: blocks run along it
    transpose_activation: bool  # Gemm transA: the activation is [K, M]
    weight_params: int


@dataclass
class Int4Plan:
    nodes: list[Int4Node]
    skipped: dict[str, str]
    total_weight_params: int
    block_size: int

    @property
    def quantized_nodes(self) -> list[str]:
        return [p.node for p in self.nodes]


@dataclass
class Int4Record:
    quantized_nodes: list[str]
    num_dq: int
    quantized_weight_params: int
    method: str
    block_size: int
    # weight -> mean clip ratio chosen by the search (1.0 everywhere for rtn)
    clip_ratios: dict[str, float] = field(default_factory=dict)


def plan_int4(model: ir.Model, *, block_size: int = DEFAULT_BLOCK_SIZE, exclude: Iterable[str] = ()) -> Int4Plan:
    """The MatMul/Gemm nodes whose weights can be INT4 block-quantized, and why the others cannot."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"block_size must be a power of two >= 16 (TensorRT uses 32..128), got {block_size}")
    exclude = set(exclude)
    _ensure_unique_node_names(model)
    if unknown := exclude - {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph)}:
        raise ConfigError(f"exclude names nodes that are not in the model: {sorted(unknown)}")
    plan = Int4Plan([], {}, 0, block_size)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        weight = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is not None:
            plan.total_weight_params += int(math.prod(weight.shape))
        if reason := _int4_skip_reason(model, node, weight, block_size, exclude):
            plan.skipped[node.name] = reason
            continue
        trans_b = node.op_type == "Gemm" and _int_attr(node, "transB", 0)
        plan.nodes.append(
            Int4Node(
                node.name, node.op_type, node.inputs[0].name, node.inputs[1].name, 1 if trans_b else 0,
                node.op_type == "Gemm" and bool(_int_attr(node, "transA", 0)), int(math.prod(weight.shape)),
            )
        )
    return plan


def _int4_skip_reason(model, node, weight, block_size, exclude) -> str | None:
    if node.op_type == "Conv":
        return "INT4 weight-only covers MatMul/Gemm weights (TensorRT has no INT4 convolution)"
    if node.graph is not model.graph:
        return "inside a subgraph; subgraphs are not quantized yet, so this node stays FP32"
    if node.name in exclude:
        return "excluded by name"
    if weight is None:
        return "no constant weight (activation x activation); weight-only quantization needs a constant"
    if weight.dtype != ir.DataType.FLOAT or len(weight.shape) != 2:
        return f"weight is {weight.dtype.name} of rank {len(weight.shape)}; only 2-D FLOAT weights are INT4-quantized"
    if not _is_float_activation(node.inputs[0]):
        return f"input '{node.inputs[0].name}' is not a float activation"
    k = weight.shape[1] if node.op_type == "Gemm" and _int_attr(node, "transB", 0) else weight.shape[0]
    if k % block_size:
        fits = [b for b in (256, 128, 64, 32, 16) if b < block_size and k % b == 0]
        hint = f"--block-size {fits[0]} fits it" if fits else "no block size >= 16 divides it"
        return f"K={k} is not a multiple of the block size {block_size} ({hint})"
    return None


def collect_grams(model: ir.Model, plan: Int4Plan, source, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """X^T X (float64, K x K) of each planned node's activation over every calibration sample (one ORT pass)."""
    transposed = {p.activation for p in plan.nodes if p.transpose_activation}
    names = list(dict.fromkeys(p.activation for p in plan.nodes))
    graph_inputs = {v.name for v in model.graph.inputs}
    fetched = [n for n in names if n not in graph_inputs]
    grams: dict[str, np.ndarray] = {}
    bind_source(source, input_specs(model))
    with session_for(model, outputs=fetched) as runner:
        for index, feed in enumerate(source):
            outputs = runner.run(feed, fetched) if fetched else {}
            for name in names:
                x = np.asarray(feed[name] if name in graph_inputs else outputs[name], dtype=np.float64)
                x = x.T if name in transposed else x
                x = x.reshape(-1, x.shape[-1])
                grams[name] = grams.get(name, 0.0) + x.T @ x
            if progress is not None:
                progress(index + 1)
    if not grams and names:
        raise CalibrationError("the calibration data source yielded no samples (a one-shot generator used twice?)")
    return grams


def quantize_int4_blocks(
    weight: np.ndarray, axis: int, block_size: int, gram: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Symmetric block-wise INT4: (int4 values as int8, float32 scales, mean clip ratio).

    Blocks of ``block_size`` run along ``axis`` (the K axis); the scales have the weight's shape
    with that axis divided by ``block_size`` (DequantizeLinear's blocked layout). With ``gram``
    (K x K), each block's clip is searched (see the module docstring); without it, RTN.
    """
    w = np.asarray(weight, dtype=np.float32)
    wk = w if axis == 0 else w.T  # [K, N]
    k, n = wk.shape
    blocks = wk.reshape(k // block_size, block_size, n)
    amax = np.abs(blocks).max(axis=1)  # [K/B, N]
    ratios = CLIP_RATIOS if gram is not None else (1.0,)
    best_err = np.full(amax.shape, np.inf)
    best_ratio = np.ones(amax.shape, dtype=np.float32)
    for ratio in ratios:
        scale = _safe_scale(amax * np.float32(ratio) / INT4_MAX)
        deq = np.clip(np.rint(blocks / scale[:, None, :]), -8, INT4_MAX) * scale[:, None, :]
        if gram is None:
            break
        d = (blocks - deq).astype(np.float64)  # [K/B, B, N]
        err = np.empty(amax.shape)
        for b in range(blocks.shape[0]):
            g = gram[b * block_size : (b + 1) * block_size, b * block_size : (b + 1) * block_size]
            err[b] = np.einsum("in,in->n", d[b], g @ d[b])
        better = err < best_err
        best_err[better], best_ratio[better] = err[better], ratio
    scale = _safe_scale(amax * best_ratio / INT4_MAX)
    q = np.clip(np.rint(blocks / scale[:, None, :]), -8, INT4_MAX).astype(np.int8).reshape(k, n)
    if axis == 1:
        q, scale = q.T, scale.T
    return np.ascontiguousarray(q), np.ascontiguousarray(scale.astype(np.float32)), float(best_ratio.mean())


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    scale = scale.astype(np.float32)
    scale[~(scale >= np.finfo(np.float32).tiny)] = 1.0  # all-zero block: any scale is exact
    return scale


def insert_int4(model: ir.Model, plan: Int4Plan, grams: dict[str, np.ndarray] | None, method: str) -> Int4Record:
    """Replace each planned weight by INT4 blocks + DequantizeLinear(block_size), in place."""
    import ml_dtypes

    if method not in INT4_METHODS:
        raise ConfigError(f"unknown INT4 method '{method}'; choose one of {list(INT4_METHODS)}")
    if (opset := opset_of(model)) < INT4_MIN_OPSET:
        raise CalibrationError(f"INT4 DequantizeLinear needs opset >= {INT4_MIN_OPSET}, the model has {opset}; upgrade it first")
    graph, names = model.graph, _NameSource(model)
    nodes = {node.name: node for node in graph}
    order = {node: i for i, node in enumerate(graph)}
    record = Int4Record(plan.quantized_nodes, 0, 0, method, plan.block_size)
    by_weight: dict[tuple[str, int], list[Int4Node]] = {}
    for p in plan.nodes:
        by_weight.setdefault((p.weight, p.axis), []).append(p)
    for (weight_name, axis), planned in by_weight.items():
        users = [nodes[p.node] for p in planned]
        w = users[0].inputs[1]
        array = _const(w).numpy()
        gram = None
        if method == "awq":
            # Readers with different inputs: their Gram matrices add (the error summed over all of them).
            gram = sum(grams[p.activation] for p in planned)
        q, scales, ratio = quantize_int4_blocks(array, axis, plan.block_size, gram)
        w_q = _initializer(graph, names.new(f"{weight_name}_int4"), q.astype(ml_dtypes.int4))
        s = _initializer(graph, names.new(f"{weight_name}_scale"), scales)
        attributes = [ir.AttrInt64("axis", axis), ir.AttrInt64("block_size", plan.block_size)]
        replace_weight_with_dq(graph, w, users, order, names, [w_q, s], attributes, array.shape)
        record.num_dq += 1
        record.quantized_weight_params += int(array.size)
        record.clip_ratios[weight_name] = round(ratio, 4)
    return record
