"""remove_dropout: inference-mode Dropout is the identity; route its input to its users."""

from __future__ import annotations

import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes.remove_identity import eliminate_identity_node
from optimizer.model import opset_of


def _const_scalar(value: ir.Value | None):
    """The Python scalar of a constant one-element value, or None when it is not constant."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    array = tensor.numpy()
    if array.size != 1:
        return None
    return array.reshape(()).item()


def inference_refusal(node: ir.Node, opset: int) -> str | None:
    """Why this Dropout may not be treated as the identity, or None when it may."""
    if len(node.outputs) > 1 and node.outputs[1].name:
        mask = node.outputs[1]
        if mask.is_graph_output():
            return f"its mask '{mask.name}' is a graph output"
        if mask.uses():
            return f"its mask '{mask.name}' is used"
    if not node.inputs or node.inputs[0] is None:
        return "it has no data input"
    if opset < 7:
        # Dropout-1/6 default to training mode (is_test=0).
        is_test = node.attributes.get("is_test")
        if is_test is None or is_test.as_int() == 0:
            return f"opset {opset} Dropout without is_test=1 runs in training mode"
        return None
    if opset < 12:
        return None  # Dropout-7/10 has no training mode: it is the identity at inference
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return None
    mode = _const_scalar(training)
    if mode is None:
        return f"its training_mode '{training.name}' is not a constant"
    if not bool(mode):
        return None
    ratio = _const_scalar(node.inputs[1] if len(node.inputs) > 1 else None)
    if ratio is not None and float(ratio) == 0.0:
        return None  # training with ratio 0 drops nothing and scales by 1
    return "it runs in training mode (training_mode is true and ratio is not 0)"


class RemoveDropout(GraphPass):
    """Remove inference-mode Dropout nodes whose mask output is unused."""

    name = "remove_dropout"
    preconditions = (
        "the mask output is absent or unused (not read, not a graph output), and the node is in "
        "inference mode: opset 7-11, opset <7 with is_test=1, or opset >=12 with training_mode absent, "
        "constant false, or ratio constant 0"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = opset_of(model)
        removed = 0
        for graph_like in (model.graph, *model.functions.values()):
            version = graph_like.opset_imports.get("", opset) if isinstance(graph_like, ir.Function) else opset
            for node in ir.traversal.RecursiveGraphIterator(graph_like):
                if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                    continue
                reason = inference_refusal(node, version)
                if reason is not None:
                    self.refuse(node, reason)
                    continue
                self._replace_with_identity(node)
                removed += 1
        if removed:
            self.note(f"removed {removed} Dropout")
        return ir.passes.PassResult(model, modified=bool(removed))

    @staticmethod
    def _replace_with_identity(node: ir.Node) -> None:
        # Swap in an Identity that takes over the output value (and so its name and any
        # graph-output slot), then let the guarded Identity elimination bypass it. Where
        # that is not allowed (input is a graph input and output a graph output) the
        # Identity stays: still cheaper than a Dropout and never wrong.
        graph = node.graph
        assert graph is not None
        identity = ir.node("Identity", inputs=[node.inputs[0]], name=node.name)
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [identity], [node.outputs[0]], [identity.outputs[0]]
        )
        eliminate_identity_node(identity)
