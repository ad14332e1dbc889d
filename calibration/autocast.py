"""FP16/BF16 autocast: Casts in the graph so the bulk runs in half precision, the fragile parts in FP32.

TensorRT 11 (and TensorRT-RTX) is strongly typed: a layer runs in FP16 only when its tensors
are FP16 in the ONNX graph. ``autocast`` decides node by node:

- a node is lowered unless its op overflows or loses too much in half precision (accumulating
  reductions, Softmax, normalizations, Pow/Exp/Log: ``DEFAULT_KEEP_FP32_OPS``), it is named in
  ``keep_fp32_nodes``, it has subgraphs or a non-standard domain, or (when data is given) one
  of its float tensors was observed beyond ``range_fraction`` of the half-precision maximum;
- which inputs follow the node's precision comes from the op schema: only inputs whose type
  parameter is float, accepts the low dtype and is bound to an input (so ``Cast``'s output, set
  by its ``to`` attribute, stays what it says) are lowered. ``Resize``'s ``scales`` stays float;
- constants read by lowered nodes are stored in the low dtype (no run-time Cast); every other
  precision change gets one Cast per (tensor, dtype), shared by all readers;
- graph inputs and outputs keep their names and dtypes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from calibration.checks import check_runs
from calibration.data import validate_source
from calibration.stats import collect_ranges
from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import input_specs, load_model, opset_of, refuse_overwrite, save_model

LOW_DTYPES = {"float16": ir.DataType.FLOAT16, "bfloat16": ir.DataType.BFLOAT16}
_TYPE_STR = {ir.DataType.FLOAT16: "tensor(float16)", ir.DataType.BFLOAT16: "tensor(bfloat16)"}

# Ops whose FP16 results overflow or drift: sums over many elements, exponentials, and the
# normalizations built on them. TensorRT's own mixed-precision guidance keeps the same set in
# FP32 (its "strongly typed" mode runs them as written).
DEFAULT_KEEP_FP32_OPS = (
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
    "Softmax", "LogSoftmax", "Pow", "Exp", "Log",
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "CumSum",
)  # fmt: skip
# A tensor seen above this share of the low dtype's maximum stays FP32: calibration data
# rarely shows the worst case, so leave headroom.
DEFAULT_RANGE_FRACTION = 0.5


@dataclass
class AutocastResult:
    output_path: str
    dtype: str
    lowered_nodes: int
    kept_fp32: dict[str, str]  # node name -> why it stays FP32 (nodes without float tensors are not listed)
    num_casts: int
    lowered_constants: int
    # Share of float-computing nodes that now run in the low dtype.
    lowered_share: float
    ranges_observed: bool
    out_of_range: dict[str, float] = field(default_factory=dict)  # tensor -> observed max |x| (over the limit)


def autocast(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    dtype: str = "float16",
    keep_fp32_ops: Iterable[str] = DEFAULT_KEEP_FP32_OPS,
    keep_fp32_nodes: Iterable[str] = (),
    source=None,
    range_fraction: float = DEFAULT_RANGE_FRACTION,
) -> AutocastResult:
    """Write a copy of ``model_path`` that runs in ``dtype`` ("float16" or "bfloat16") where it is safe.

    ``source`` (optional, re-iterable feeds) lets observed ranges keep overflowing tensors in FP32.
    """
    if dtype not in LOW_DTYPES:
        raise ConfigError(f"autocast dtype must be one of {sorted(LOW_DTYPES)}, got '{dtype}'")
    if not 0 < range_fraction <= 1:
        raise ConfigError(f"range_fraction must be in (0, 1], got {range_fraction}")
    low = LOW_DTYPES[dtype]
    model_path, output_path = Path(model_path), Path(output_path)
    refuse_overwrite(model_path, output_path)
    model = load_model(model_path)
    if source is not None:
        validate_source(source, input_specs(model))
    # Dtypes of intermediate tensors decide what a node reads; exporters often omit them.
    model = ShapeInferencePass()(model).model
    keep_nodes = set(keep_fp32_nodes)
    if unknown := keep_nodes - {n.name for n in model.graph}:
        raise ConfigError(f"keep_fp32_nodes names nodes that are not in the main graph: {sorted(unknown)}")

    limit = float(range_fraction * (65504.0 if low == ir.DataType.FLOAT16 else float(np.finfo(np.float32).max)))
    out_of_range: dict[str, float] = {}
    if source is not None and low == ir.DataType.FLOAT16:
        names = [v.name for n in model.graph for v in n.outputs if v.name and v.dtype == ir.DataType.FLOAT]
        names += [v.name for v in model.graph.inputs if v.dtype == ir.DataType.FLOAT]
        for name, r in collect_ranges(model, names, source).items():
            if (amax := max(abs(r.min), abs(r.max))) > limit:
                out_of_range[name] = amax

    opset = opset_of(model)
    plans: dict[ir.Node, list[int]] = {}  # lowered node -> input indices that take the low dtype
    kept: dict[str, str] = {}
    float_nodes = 0
    # Decide on the original dtypes first, then switch the lowered outputs in one go.
    lowered_outputs: list[ir.Value] = []
    for node in model.graph:
        ins, outs = _lowerable_io(node, opset, low)
        if ins is None:
            continue  # no float tensor follows this node's precision: nothing to decide
        float_nodes += 1
        if reason := _keep_reason(node, ins, outs, low, set(keep_fp32_ops), keep_nodes, out_of_range, limit):
            kept[node.name] = reason
        else:
            plans[node] = ins
            lowered_outputs += [node.outputs[i] for i in outs]
    if not plans:
        hint = f" (the model is opset {opset}; most ops accept bfloat16 from opset 13)" if low == ir.DataType.BFLOAT16 and opset < 13 else ""
        raise CalibrationError(f"{model_path}: no node can run in {dtype}{hint}; nothing was written")
    for value in lowered_outputs:
        value.dtype = low

    rewriter = _CastWriter(model.graph, low)
    for node, indices in plans.items():
        for i in indices:
            value = node.inputs[i]
            if value is not None and value.dtype == ir.DataType.FLOAT:
                node.replace_input_with(i, rewriter.to_low(value))
    # Everything else that reads a lowered tensor (FP32 nodes, subgraphs, graph outputs) gets FP32 back.
    for node in list(plans):
        for out in node.outputs:
            if out.dtype != low:
                continue
            for use in list(out.uses()):
                if use.idx not in plans.get(use.node, ()):
                    use.node.replace_input_with(use.idx, rewriter.to_float(out))
            if out.is_graph_output():
                rewriter.restore_output(out)
    RemoveUnusedNodesPass()(model)
    if low == ir.DataType.FLOAT16:
        check_runs(model, _first(source) if source is not None else None, "autocast", "; keep more ops in FP32")
    else:  # ONNX Runtime's CPU kernels have no bfloat16: check the graph itself
        _check_valid(model)
    save_model(model, output_path)
    return AutocastResult(
        output_path=str(output_path),
        dtype=dtype,
        lowered_nodes=len(plans),
        kept_fp32=kept,
        num_casts=rewriter.casts,
        lowered_constants=rewriter.constants,
        lowered_share=len(plans) / float_nodes if float_nodes else 0.0,
        ranges_observed=source is not None,
        out_of_range=out_of_range,
    )


def _lowerable_io(node: ir.Node, opset: int, low: ir.DataType) -> tuple[list[int] | None, list[int]]:
    """Indices of the inputs and outputs that would switch to ``low`` (None: the node has none)."""
    if node.domain not in ("", "ai.onnx"):
        return ([i for i, v in enumerate(node.inputs) if v is not None and v.dtype == ir.DataType.FLOAT] or None), []
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset, domain="")
    except onnx.defs.SchemaError:
        return None, []
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def param(formals, i):
        if i < len(formals):
            return formals[i].type_str
        if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return formals[-1].type_str
        return None

    input_params = {param(schema.inputs, i) for i in range(len(node.inputs))}
    lowered = {p for p in input_params if p in allowed and _TYPE_STR[low] in allowed[p]}
    ins = [
        i for i, v in enumerate(node.inputs)
        if v is not None and param(schema.inputs, i) in lowered and v.dtype == ir.DataType.FLOAT
    ]
    outs = [i for i, v in enumerate(node.outputs) if param(schema.outputs, i) in lowered and v.dtype == ir.DataType.FLOAT]
    if not ins and not outs:
        if any(v is not None and v.dtype == ir.DataType.FLOAT for v in node.inputs):
            return [], []  # float data, but the op has no low-precision form at this opset: kept, with the reason
        return None, []
    return ins, outs


def _keep_reason(node, ins, outs, low, keep_ops, keep_nodes, out_of_range, limit) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"op {node.domain}::{node.op_type} has no standard schema"
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return "has subgraphs (kept FP32 whole)"
    if not ins and not outs:
        return f"{node.op_type} has no {low.name.lower()} form at this opset"
    if node.op_type in keep_ops:
        return f"{node.op_type} is overflow-prone in half precision"
    if node.name in keep_nodes:
        return "kept by name"
    tensors = [node.inputs[i] for i in ins] + [node.outputs[i] for i in outs]
    if any(v.dtype is None for v in tensors):
        return "a float tensor has an unknown dtype"
    for v in tensors:
        if v.name in out_of_range:
            return f"tensor '{v.name}' reaches |x|={out_of_range[v.name]:.4g} on the data (limit {limit:.4g})"
        const = ir.convenience.get_const_tensor(v) if not v.is_graph_input() else None
        if const is not None and const.size and (amax := float(np.max(np.abs(const.numpy())))) > limit:
            return f"constant '{v.name}' holds |x|={amax:.4g} (limit {limit:.4g})"
    return None


class _CastWriter:
    """Cast nodes and low-precision constants, one per (tensor, dtype), placed before every reader."""

    def __init__(self, graph: ir.Graph, low: ir.DataType) -> None:
        self.graph, self.low = graph, low
        self.cache: dict[tuple[int, ir.DataType], ir.Value] = {}
        self.taken = {v.name for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.outputs}
        self.taken |= {n.name for n in ir.traversal.RecursiveGraphIterator(graph)}
        self.taken |= set(graph.initializers) | {v.name for v in graph.inputs}
        self.casts = self.constants = 0

    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def to_low(self, value: ir.Value) -> ir.Value:
        key = (id(value), self.low)
        if key in self.cache:
            return self.cache[key]
        const = ir.convenience.get_const_tensor(value) if not value.is_graph_input() else None
        if const is not None:
            array = const.numpy().astype(self.low.numpy())
            name = self._name(f"{value.name}_{self.low.name.lower()}")
            tensor = ir.tensor(array, dtype=self.low, name=name)
            new = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(self.low), const_value=tensor)
            self.graph.register_initializer(new)
            self.constants += 1
        else:
            new = self._cast(value, self.low)
        self.cache[key] = new
        return new

    def to_float(self, value: ir.Value) -> ir.Value:
        key = (id(value), ir.DataType.FLOAT)
        if key not in self.cache:
            self.cache[key] = self._cast(value, ir.DataType.FLOAT)
        return self.cache[key]

    def _cast(self, value: ir.Value, to: ir.DataType) -> ir.Value:
        out = ir.Value(
            name=self._name(f"{value.name}_{to.name.lower()}"), type=ir.TensorType(to),
            shape=ir.Shape(value.shape) if value.shape is not None else None,
        )
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to.value)], outputs=[out],
                       name=self._name(f"{value.name}_Cast_{to.name.lower()}"))
        if (producer := value.producer()) is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, cast)
        else:
            self.graph.insert_before(self.graph.node(0), cast)
        self.casts += 1
        return out

    def restore_output(self, value: ir.Value) -> None:
        """A graph output keeps its name and FP32 dtype: the low tensor is renamed, a Cast takes its place."""
        index = list(self.graph.outputs).index(value)
        name = value.name
        value.name = self._name(f"{name}_{self.low.name.lower()}")
        restored = self.to_float(value)
        self.taken.discard(restored.name)
        restored.name = name
        self.graph.outputs[index] = restored


def _first(source):
    for feed in source:
        return feed
    return None


def _check_valid(model: ir.Model) -> None:
    try:
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    except Exception as exc:
        raise CalibrationError(f"the autocast model is not valid ONNX: {' '.join(str(exc).split())[:300]}") from None
