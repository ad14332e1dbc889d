"""fold_constants: evaluate nodes whose inputs are all constant, under a size cap.

The work is onnxscript's constant folder (``FoldConstantsPass``: ONNX reference
evaluation plus partial evaluators for Shape, Cast, If, Dropout, ...). Around it we add
what deployment needs and the folder does not promise:

- a byte cap per folded tensor (the folder's own limit counts elements and is waived when
  the inputs die, so one Tile can still write hundreds of MB), except for a Reshape/Transpose/
  Squeeze/Unsqueeze/Flatten of a weight only it reads (same bytes, and the input dies);
- computed weights are folded whatever their size: the constant subgraph feeding a weight
  or bias input of Conv/ConvTranspose/Gemm/MatMul (onnx's zoo models make every weight with
  ``ConstantOfShape``). TensorRT fuses and quantizes only constant weights, so there the
  bytes are the price of a deployable model; elsewhere ``ConstantOfShape`` folds only under
  the cap (onnxscript never folds it);
- a cap on the growth of the model's live weight bytes, not counting the tensors in weight
  slots, checked before/after; when a run grows the model by more than the cap it is rolled
  back as a whole;
- declared shapes of intermediate values and outputs are not trusted: they are dropped and
  re-inferred from the inputs, so a wrong value_info cannot be baked into a folded ``Shape``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from onnx_ir.passes.common import RemoveUnusedNodesPass

from graph_passes._base import (
    GraphPass,
    Snapshot,
    count_nodes,
    live_weight_bytes,
    quiet_logger,
    summarize_counts,
    untrusted_shapes,
)
from optimizer.model import opset_of

DEFAULT_MAX_TENSOR_BYTES = 1 << 20  # 1 MiB

# onnxscript records, on every folded value, the names it was folded from; that is useful
# in memory but we do not want it written into every deployed model.
_FOLDED_FROM_KEY = "pkg.onnxscript.optimizer.folded_from"


def _capped_folder_class():
    # onnxscript is imported on first use: `import graph_passes` stays light.
    from onnxscript.optimizer._constant_folding import FoldConstantsPass

    class CappedFoldConstants(FoldConstantsPass):
        """onnxscript's folder, refusing any folded tensor over ``max_tensor_bytes``."""

        def __init__(
            self, *, max_tensor_bytes: int, input_size_limit: int, weight_cone: set[ir.Node], opset: int
        ) -> None:
            super().__init__(
                shape_inference=True,
                input_size_limit=input_size_limit,
                # The element limit must not be the binding one: our byte check is.
                output_size_limit=np.iinfo(np.int64).max,
                should_fold=self._should_fold,
            )
            self.max_tensor_bytes = max_tensor_bytes
            self.weight_cone = weight_cone
            self.opset = opset
            self.folded: Counter = Counter()
            self.folded_weights: Counter = Counter()
            #: (node, reason) per node left unfolded, for ``GraphPass.refuse`` once the fold is kept.
            self.refused: list[tuple[ir.Node, str]] = []

        def process_node(self, node: ir.Node, is_function: bool):
            # onnxscript rewrites these into Unsqueeze/Squeeze/Split with axes or split as an
            # input, the opset-13 form: invalid in an older model.
            if node.op_type in _EMITS_OPSET_13 and node.domain in ("", "ai.onnx") and self.opset < 13:
                return None
            try:
                return super().process_node(node, is_function)
            except RuntimeError as exc:
                # One of onnxscript's partial evaluators failed on this node (SplitToSequence
                # with a split of known shape but unknown value): leave the node, fold the rest.
                if not str(exc).startswith("Error during constant folding for node"):
                    raise
                self.refused.append((node, f"onnxscript's folder failed on it ({type(exc.__cause__).__name__})"))
                return None

        def _refuse_large(self, node: ir.Node, nbytes: int) -> None:
            reason = f"its folded tensor would be {_size(nbytes)}, over the {_size(self.max_tensor_bytes)} cap"
            self.refused.append((node, reason))

        def _should_fold(self, node: ir.Node) -> bool | None:
            if node in self.weight_cone or _relayout_of_dying_weight(node):
                return True
            if _is_onnx(node, "ConstantOfShape"):
                nbytes = _constant_of_shape_bytes(node)
                if nbytes <= self.max_tensor_bytes:
                    return True
                self._refuse_large(node, nbytes)
                return False
            return None

        def _too_large(self, node: ir.Node, array) -> bool:
            nbytes = getattr(array, "nbytes", 0)
            if nbytes > self.max_tensor_bytes and node not in self.weight_cone and not _relayout_of_dying_weight(node):
                self._refuse_large(node, nbytes)
                return True
            return False

        def new_initializer(self, node, array):
            if self._too_large(node, array):
                return None
            return super().new_initializer(node, array)

        def new_constant(self, node, array):
            if self._too_large(node, array):
                return None
            return super().new_constant(node, array)

        def replace_node(self, node, replacement, root):
            self.folded[node.op_type] += 1
            if node in self.weight_cone:
                self.folded_weights[node.op_type] += 1
            super().replace_node(node, replacement, root)

    return CappedFoldConstants


class FoldConstants(GraphPass):
    """Fold constant subexpressions into initializers (onnxscript folder, 1 MiB cap per tensor)."""

    name = "fold_constants"
    preconditions = (
        "every input of a folded node is constant (graph inputs never are); no folded tensor exceeds "
        "max_tensor_bytes, unless it is a Reshape/Transpose/... of a weight only that node reads; the model's live weight bytes grow by at most max_tensor_bytes (else the "
        "whole fold is rolled back); models with IR version < 4 are left alone (run "
        "remove_initializer_inputs first)"
    )

    def __init__(
        self,
        max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
        max_growth_bytes: int | None = None,
        input_size_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.max_tensor_bytes = max_tensor_bytes
        self.max_growth_bytes = max_tensor_bytes if max_growth_bytes is None else max_growth_bytes
        # Inputs up to the cap (in float32 elements) may be read; bigger ones are weights
        # we do not want to rewrite (onnxscript still folds a Transpose of a weight it is
        # the only reader of).
        self.input_size_limit = input_size_limit if input_size_limit is not None else max_tensor_bytes // 4

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version < 4:
            self.note(f"skipped: IR version {model.ir_version} < 4 needs every initializer to be a graph input")
            return ir.passes.PassResult(model, modified=False)

        snapshot = Snapshot(model)
        before = live_weight_bytes(model) - weight_slot_bytes(model)
        constants_before = set(_constant_nodes(model))
        cone = weight_cone(model, self.max_tensor_bytes)
        folder = _capped_folder_class()(
            max_tensor_bytes=self.max_tensor_bytes,
            input_size_limit=self.input_size_limit,
            weight_cone=cone,
            opset=opset_of(model),
        )
        with untrusted_shapes(model), quiet_logger("onnxscript.optimizer._constant_folding"):
            result = folder(model)
        _strip_folded_from(model)
        # Leave no litter: the folder emits some results (Shape's) as Constant nodes, and
        # the nodes that fed folded values are dead now.
        lifted = _lift_new_constants(model, constants_before)
        nodes = count_nodes(model)
        RemoveUnusedNodesPass()(model)
        dead = nodes - count_nodes(model)
        after = live_weight_bytes(model) - weight_slot_bytes(model)

        if after - before > self.max_growth_bytes:
            snapshot.restore(model)
            self.note(
                f"rolled back: folding {sum(folder.folded.values())} nodes would grow live weights by "
                f"{(after - before) / 2**20:.2f} MiB (cap {self.max_growth_bytes / 2**20:.2f} MiB)"
            )
            return ir.passes.PassResult(model, modified=False)

        folded = sum(folder.folded.values())
        self.note(f"folded {folded} nodes" + (f" ({summarize_counts(folder.folded)})" if folded else ""))
        for node, reason in folder.refused:  # the folder may ask twice about a node: refuse() keeps one
            self.refuse(node, reason)
        if dead or lifted:
            self.note(f"removed {dead} dead nodes; {lifted} folded Constant nodes became initializers")
        weights = sum(folder.folded_weights.values())
        if weights:
            self.note(f"folded {weights} computed weight nodes regardless of size ({summarize_counts(folder.folded_weights)})")
        self.note(f"live weight bytes outside weight slots {before} -> {after}")
        return ir.passes.PassResult(model, modified=result.modified or bool(dead or lifted))


# Sequence ops onnxscript's partial evaluators turn into opset-13-only forms.
_EMITS_OPSET_13 = frozenset({"ConcatFromSequence", "SplitToSequence"})

# Weight and bias slots (input indices) of the ops TensorRT fuses and quantizes, and the
# per-channel parameters of BatchNormalization (folded into the Conv before it afterwards).
_WEIGHT_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2, 3, 4),
}


def _is_onnx(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _weight_slot_values(model: ir.Model) -> list[ir.Value]:
    values: dict[int, ir.Value] = {}
    for graph in model.graphs():
        for node in graph:
            for i in _WEIGHT_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
                if i < len(node.inputs) and node.inputs[i] is not None:
                    values[id(node.inputs[i])] = node.inputs[i]
    return list(values.values())


def weight_slot_bytes(model: ir.Model) -> int:
    """Bytes of the constant tensors sitting in weight/bias slots (see ``_WEIGHT_SLOTS``)."""
    return sum(_tensor_bytes(v) for v in _weight_slot_values(model) if v.const_value is not None)


def weight_cone(model: ir.Model, max_shared_bytes: int) -> set[ir.Node]:
    """Nodes of the constant subgraphs that compute a weight or bias (see ``_WEIGHT_SLOTS``).

    A node belongs when it is a deterministic standard op without subgraphs and every input
    is an initializer (not a graph input, and not one over ``max_shared_bytes`` that other
    nodes read too) or the output of another such node.
    """
    memo: dict[ir.Node, bool] = {}

    def constant(node: ir.Node) -> bool:
        # Iterative DFS: weight subgraphs can be deep; recursion would hit Python's limit.
        stack = [node]
        while stack:
            top = stack[-1]
            if top in memo:
                stack.pop()
                continue
            if top.domain not in ("", "ai.onnx") or top.op_type in _NEVER_FOLD or any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in top.attributes.values()
            ):
                memo[top] = False
                stack.pop()
                continue
            pending, ok = [], True
            for v in top.inputs:
                if v is not None and v.const_value is not None and not v.is_graph_input():
                    # A large tensor something else reads too would be kept twice.
                    if _tensor_bytes(v) > max_shared_bytes and len(v.uses()) > 1:
                        ok = False
                        break
                    continue
                if v is None:
                    continue
                producer = v.producer()
                if producer is None or v.is_graph_input():
                    ok = False
                    break
                if producer not in memo:
                    pending.append(producer)
                elif not memo[producer]:
                    ok = False
                    break
            if not ok:
                memo[top] = False
                stack.pop()
            elif pending:
                stack.extend(pending)
            else:
                memo[top] = True
                stack.pop()
        return memo[node]

    cone: set[ir.Node] = set()
    for value in _weight_slot_values(model):
        producer = value.producer()
        if value.const_value is not None or producer is None or not constant(producer):
            continue
        stack = [producer]
        while stack:
            node = stack.pop()
            if node in cone:
                continue
            cone.add(node)
            stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
    return cone


# Never evaluated at compile time: random or quantization ops (onnxscript keeps Q/DQ).
_NEVER_FOLD = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
     "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
)


def _size(nbytes: int) -> str:
    """``1.5 MiB`` or ``4.0 KiB``: a cap below a MiB (tests, tight budgets) still reads right."""
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _tensor_bytes(value: ir.Value) -> int:
    try:
        return int(value.const_value.nbytes)
    except Exception:  # string tensors have no fixed byte size
        return 0


def _constant_of_shape_bytes(node: ir.Node) -> int:
    """Bytes a ConstantOfShape would write (its shape input is constant when this is asked)."""
    shape = ir.convenience.get_const_tensor(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return np.iinfo(np.int64).max
    value = node.attributes.get("value")
    itemsize = value.value.dtype.itemsize if value is not None and value.value is not None else 4
    return int(np.prod(shape.numpy(), dtype=np.int64)) * int(itemsize)


# Ops that only rearrange their first input: the result has exactly its bytes.
_RELAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def _relayout_of_dying_weight(node: ir.Node) -> bool:
    """A Reshape/Transpose/... of a constant only it reads: folding it replaces, never grows.

    Exporters reshape FC weights at run time (``Reshape(W[1,1,1000,1024], [1000,1024])``);
    those are over any sensible per-tensor cap and still cost nothing to fold.
    """
    if node.op_type not in _RELAYOUT_OPS or node.domain not in ("", "ai.onnx") or not node.inputs:
        return False
    data = node.inputs[0]
    if data is None or data.const_value is None or len(data.uses()) != 1:
        return False
    if data.is_graph_input() or data.is_graph_output():
        return False
    return all(v is None or v.const_value is not None for v in node.inputs[1:])


def _strip_folded_from(model: ir.Model) -> None:
    for graph in model.graphs():
        for value in graph.initializers.values():
            value.metadata_props.pop(_FOLDED_FROM_KEY, None)
        for node in graph:
            for value in node.outputs:
                value.metadata_props.pop(_FOLDED_FROM_KEY, None)
    for function in model.functions.values():
        for node in function:
            for value in node.outputs:
                value.metadata_props.pop(_FOLDED_FROM_KEY, None)


def _constant_nodes(model: ir.Model) -> list[ir.Node]:
    return [
        n
        for g in (model.graph, *model.functions.values())
        for n in ir.traversal.RecursiveGraphIterator(g)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
    ]


def _lift_new_constants(model: ir.Model, existing: set[ir.Node]) -> int:
    """Turn Constant nodes the folder created (in graphs, not functions) into initializers."""
    lifted = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node in existing or node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        tensor = ir.convenience.get_const_tensor(out)
        if tensor is None or out.is_graph_output() or not out.uses():
            continue
        init = ir.Value(
            name=out.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
        )
        graph = node.graph
        out.replace_all_uses_with(init)
        graph.remove(node, safe=True)
        graph.register_initializer(init)
        lifted += 1
    return lifted
