"""fold_shape_computations: fold Shape -> Gather/Slice -> Concat chains once the dims they read are known.

Exporters compute reshape targets at run time: ``Reshape(x, Concat(Slice(Shape(x), 0, 2), [-1]))``.
With shapes inferred from the graph inputs, a small evaluator tracks each 1-D int tensor of
such a chain element by element: a known int, or "dim ``i`` of value ``v``" (with its
symbol, when shape inference named it). Then

- a chain whose elements are all known ints becomes a constant;
- a Reshape target whose elements are known ints, or the data's own dim at the same position
  (written ``0``: "copy", valid when ``allowzero`` is 0), or one unknown (written ``-1``)
  becomes a constant too. With ``allowzero`` 1 (torch.export's ``view``) a target without a
  literal 0 folds the same way and the Reshape gets ``allowzero`` 0: without zeros in the
  target it only changes what a written 0 means. Batch-dynamic PP-OCR reshapes fold this way although their batch
  and width stay dynamic.

The dead chains are left to ``fold_constants``/``eliminate_dead_code``. Shapes come from ONNX
shape inference run on the *graph inputs* only (intermediate and output shapes declared in
the file are dropped first, see ``untrusted_shapes``): a wrong ``value_info`` cannot be
baked into a constant. Where ONNX's inference gives up (PP-OCR's dynamic reshapes), each
round's folded targets let the next round infer further, to a fixed point.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass, all_graphs, infer_shapes, summarize_counts, untrusted_shapes

_INTS = (ir.DataType.INT64, ir.DataType.INT32)


@dataclass(frozen=True)
class Dim:
    """One element of a shape tensor: a known int, or dim ``axis`` of ``source`` (symbol if named)."""

    value: int | None = None
    source: ir.Value | None = None
    axis: int | None = None
    symbol: str | None = None

    def same_dim(self, value: ir.Value, axis: int) -> bool:
        """True when this element is provably dim ``axis`` of ``value``."""
        if self.source is value and self.axis == axis:
            return True
        if value.shape is None or axis >= len(value.shape):
            return False
        dim = value.shape[axis]
        return self.symbol is not None and isinstance(dim, ir.SymbolicDim) and dim.value == self.symbol


def _dims_of(value: ir.Value) -> list[Dim] | None:
    if value.shape is None:
        return None
    out = []
    for axis, d in enumerate(value.shape):
        if isinstance(d, int):
            out.append(Dim(value=d))
        else:
            out.append(Dim(source=value, axis=axis, symbol=d.value if isinstance(d, ir.SymbolicDim) else None))
    return out


def _const_ints(value: ir.Value | None) -> list[int] | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.dtype not in _INTS or len(tensor.shape) > 1:
        return None
    return [int(v) for v in np.asarray(tensor.numpy()).reshape(-1)]


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    values = node.attributes.get_ints(name, None)
    return None if values is None else [int(v) for v in values]


def _const_ok(node: ir.Node) -> bool:
    """Integer Div by a known non-zero divisor only."""
    values = _const_ints(node.inputs[1])
    return values is None or 0 not in values


class _Evaluator:
    """Element-wise values of the small 1-D int tensors of shape chains (None: not tracked)."""

    def __init__(self) -> None:
        self.known: dict[ir.Value, list[Dim]] = {}
        self.scalar: set[ir.Value] = set()

    def get(self, value: ir.Value | None) -> list[Dim] | None:
        if value is None:
            return None
        if value in self.known:
            return self.known[value]
        ints = _const_ints(value)
        if ints is None:
            return None
        dims = [Dim(value=v) for v in ints]
        if value.const_value is not None and len(value.const_value.shape) == 0:
            self.scalar.add(value)
        return dims

    def visit(self, node: ir.Node) -> None:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return
        out = node.outputs[0]
        result = getattr(self, f"_{node.op_type.lower()}", lambda n: None)(node)
        if result is not None:
            self.known[out] = result

    def _shape(self, node):
        dims = _dims_of(node.inputs[0])
        if dims is None:
            return None
        rank = len(dims)
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        return dims[slice(start, end)]

    def _cast(self, node):
        to = node.attributes.get_int("to", 0)
        if ir.DataType(to) not in _INTS:
            return None
        dims = self.get(node.inputs[0])
        if dims is not None and node.inputs[0] in self.scalar:
            self.scalar.add(node.outputs[0])
        return dims

    def _slice(self, node):
        dims = self.get(node.inputs[0])
        if len(node.inputs) < 3:  # Slice-1 (opset < 10): starts/ends/axes are attributes
            starts, ends = _attr_ints(node, "starts"), _attr_ints(node, "ends")
            axes, steps = _attr_ints(node, "axes") or [0], [1]
        else:
            starts, ends = _const_ints(node.inputs[1]), _const_ints(node.inputs[2])
            axes = _const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
            steps = _const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if dims is None or None in (starts, ends, axes, steps) or axes not in ([0], [-1]) or len(starts) != 1:
            return None
        if steps[0] == 0:
            return None
        return dims[slice(starts[0], ends[0], steps[0])]

    def _gather(self, node):
        dims = self.get(node.inputs[0])
        index_tensor = ir.convenience.get_const_tensor(node.inputs[1])
        if dims is None or index_tensor is None or node.attributes.get_int("axis", 0) != 0:
            return None
        indices = np.asarray(index_tensor.numpy())
        if indices.ndim > 1 or not np.issubdtype(indices.dtype, np.integer):
            return None
        try:
            picked = [dims[int(i)] for i in indices.reshape(-1)]
        except IndexError:
            return None
        if indices.ndim == 0:
            self.scalar.add(node.outputs[0])
        return picked

    def _concat(self, node):
        parts = [self.get(v) for v in node.inputs]
        if any(p is None for p in parts) or any(v in self.scalar for v in node.inputs):
            return None
        return [d for p in parts for d in p]

    def _unsqueeze(self, node):
        dims = self.get(node.inputs[0])
        axes = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else _attr_ints(node, "axes")
        if dims is None or node.inputs[0] not in self.scalar or list(axes or []) != [0]:
            return None
        return dims

    def _arith(self, node, fn, identity: int | None = None, commutes: bool = False):
        a, b = self.get(node.inputs[0]), self.get(node.inputs[1])
        if a is None or b is None:
            return None
        # x * 1, x + 0, x - 0, x / 1 stay x, even where x is an unknown dim (seq * 1).
        if identity is not None:
            pairs = ((a, b), (b, a))[: 2 if commutes else 1]
            for this, other in pairs:
                if len(other) == 1 and other[0].value == identity and len(this) >= 1:
                    if all(v in self.scalar for v in node.inputs[:2]):
                        self.scalar.add(node.outputs[0])
                    return this
        if any(d.value is None for d in (*a, *b)):
            return None
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        n = max(len(a), len(b))
        pick = lambda dims, i: dims[0 if len(dims) == 1 else i].value  # noqa: E731
        if node.inputs[0] in self.scalar and node.inputs[1] in self.scalar:
            self.scalar.add(node.outputs[0])
        return [Dim(value=fn(pick(a, i), pick(b, i))) for i in range(n)]

    def _mul(self, node):
        return self._arith(node, lambda x, y: x * y, identity=1, commutes=True)

    def _add(self, node):
        return self._arith(node, lambda x, y: x + y, identity=0, commutes=True)

    def _sub(self, node):
        return self._arith(node, lambda x, y: x - y, identity=0)

    def _div(self, node):  # integer Div truncates toward zero
        return self._arith(node, lambda x, y: int(x / y) if y else None, identity=1) if _const_ok(node) else None

    def _squeeze(self, node):
        dims = self.get(node.inputs[0])
        if dims is None or len(dims) != 1:
            return None
        self.scalar.add(node.outputs[0])
        return dims


def _contrib_rnn_shapes(model: ir.Model) -> int:
    """Output shapes of ONNX Runtime's quantized LSTM (``com.microsoft.DynamicQuantizeLSTM``).

    ONNX inference knows no contrib op, so every Shape read after ORT's dynamic quantization of
    an LSTM stays dynamic. Its outputs are an LSTM's: Y ``[seq, directions, batch, hidden]``,
    Y_h and Y_c ``[directions, batch, hidden]`` (from X ``[seq, batch, input]`` and attributes).
    Returns how many outputs got a shape.
    """
    filled = 0
    for graph in all_graphs(model):
        for node in graph:
            if node.op_type != "DynamicQuantizeLSTM" or node.domain != "com.microsoft" or not node.inputs:
                continue
            x = node.inputs[0]
            hidden = node.attributes.get_int("hidden_size", 0)
            if x is None or x.shape is None or len(x.shape) != 3 or hidden <= 0:
                continue
            directions = 2 if node.attributes.get_string("direction", "forward") == "bidirectional" else 1
            seq, batch = x.shape[0], x.shape[1]
            shapes = ([seq, directions, batch, hidden], [directions, batch, hidden], [directions, batch, hidden])
            for value, dims in zip(node.outputs, shapes):
                if value.shape is None and x.dtype is not None:
                    value.type, value.shape = ir.TensorType(x.dtype), ir.Shape(dims)
                    filled += 1
    return filled


class FoldShapeComputations(GraphPass):
    """Fold Shape/Gather/Slice/Concat chains whose dims are known; Reshape targets to constants."""

    name = "fold_shape_computations"
    preconditions = (
        "shapes come from ONNX inference on the graph inputs (declared intermediate/output shapes are "
        "ignored); a chain folds when every element is a known int; a Reshape target (allowzero=0, or 1 without a literal 0) folds when "
        "each element is a known int (0 still means copy), the data's own dim at that position or the only "
        "unknown"
    )
    max_rounds = 4

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded: Counter = Counter()
        with untrusted_shapes(model):
            for _ in range(self.max_rounds):
                infer_shapes(model)
                if _contrib_rnn_shapes(model):
                    infer_shapes(model)  # carry them past the contrib op ONNX cannot infer
                round_folds = sum(self._round(graph, folded) for graph in all_graphs(model))
                if not round_folds:
                    break
        total = sum(folded.values())
        if total:
            self.note(f"folded {total} shape computations ({summarize_counts(folded)})")
        return ir.passes.PassResult(model, modified=bool(total))

    def _round(self, graph: ir.Graph, folded: Counter) -> int:
        evaluator = _Evaluator()
        count = 0
        for node in list(graph):
            evaluator.visit(node)
            out = node.outputs[0] if node.outputs else None
            dims = evaluator.known.get(out) if out is not None else None
            if dims is not None and all(d.value is not None for d in dims) and node.op_type != "Constant":
                if out.uses() and self._replace_with_constant(graph, out, [d.value for d in dims], out in evaluator.scalar):
                    folded[node.op_type] += 1
                    count += 1
            if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
                count += self._fold_reshape_target(graph, node, evaluator, folded)
        return count

    def _replace_with_constant(self, graph: ir.Graph, value: ir.Value, ints: list[int], scalar: bool) -> bool:
        dtype = value.dtype if value.dtype in _INTS else ir.DataType.INT64
        array = np.array(ints[0] if scalar else ints, dtype=dtype.numpy())
        const = _new_initializer(graph, (value.name or "shape") + "_folded", array)
        value.replace_all_uses_with(const, replace_graph_outputs=False)
        return True

    def _fold_reshape_target(self, graph: ir.Graph, node: ir.Node, evaluator: _Evaluator, folded: Counter) -> int:
        data, target = node.inputs[0], node.inputs[1]
        if target is None or target.const_value is not None:
            return 0
        dims = evaluator.get(target)
        if dims is None:
            return 0
        allowzero = node.attributes.get_int("allowzero", 0) != 0
        if allowzero and any(d.value == 0 for d in dims):
            self.refuse(node, "allowzero=1 and the target holds a literal 0 (an empty dim, not a copy)")
            return 0
        new: list[int] = []
        unknown = 0
        for axis, d in enumerate(dims):
            if d.value is not None:
                # A known 0 means "copy" (allowzero=0) at run time however it was computed,
                # so it stays 0.
                new.append(d.value)
            elif d.same_dim(data, axis):
                new.append(0)
            else:
                unknown += 1
                new.append(-1)
        if unknown > 1 or (unknown == 1 and -1 in [d.value for d in dims]):
            self.refuse(node, f"{unknown} target elements are neither known nor the data's own dims")
            return 0
        const = _new_initializer(graph, (target.name or "reshape") + "_folded", np.array(new, dtype=np.int64))
        node.replace_input_with(1, const)
        if allowzero:
            # No element is a literal 0, so allowzero only changes what a written 0 means:
            # with 0 it copies the data's dim at that position, which is what it was.
            node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        folded["Reshape target"] += 1
        return 1


def _new_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}{i}"
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value
