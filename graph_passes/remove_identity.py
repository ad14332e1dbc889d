"""remove_identity: bypass Identity nodes, keeping every graph output's name."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from graph_passes._base import GraphPass


class _GuardedIdentityElimination(IdentityEliminationPass):
    """onnx-ir's Identity elimination, refusing the two cases where it would lose a name.

    onnx-ir renames ``x`` to ``y`` when ``y = Identity(x)`` is a graph output. That is wrong
    when ``x`` is itself a graph output (the model would lose the output ``x``) and when
    ``x`` lives in an outer graph (renaming it from inside an If branch renames it for
    the other branch and the outer graph too).
    """

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[str] = []

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            return False
        if len(node.inputs) == 1 and len(node.outputs) == 1 and node.inputs[0] is not None:
            source, out = node.inputs[0], node.outputs[0]
            if out.is_graph_output():
                producer = source.producer()
                if source.is_graph_output():
                    self.kept.append(f"'{out.name}' (its input '{source.name}' is also a graph output)")
                    return False
                if source.is_graph_input() or source.is_initializer():
                    self.kept.append(f"'{out.name}' (a graph output may not be a graph input or initializer)")
                    return False
                if producer is None or producer.graph is not node.graph:
                    self.kept.append(f"'{out.name}' (its input '{source.name}' comes from an outer graph)")
                    return False
        return super()._try_eliminate_identity_node(node)


class RemoveIdentity(GraphPass):
    """Remove Identity nodes (main graph, subgraphs, functions), keeping graph output names."""

    name = "remove_identity"
    preconditions = (
        "an Identity that produces a graph output is removed only when its input is produced by a "
        "node of the same graph and is not itself a graph input, initializer or output"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inner = _GuardedIdentityElimination()
        result = inner(model)
        if inner.kept:
            self.note(f"kept {len(inner.kept)} Identity: " + "; ".join(inner.kept[:5]))
        return ir.passes.PassResult(model, result.modified)


def eliminate_identity_node(node: ir.Node) -> bool:
    """Remove one Identity node under the same guards; True when it was removed."""
    return _GuardedIdentityElimination()._try_eliminate_identity_node(node)
