"""remove_identity: bypass Identity nodes, keeping every graph output's name."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from graph_passes._base import GraphPass


class _GuardedIdentityElimination(IdentityEliminationPass):
    """onnx-ir's Identity elimination, refusing the two cases where it would lose a name.

    onnx-ir renames ``x`` to ``y`` when ``y = Identity(x)`` is a graph output. That is wrong
    when ``x`` is itself a graph output (the model would lose the output ``x``) and when
    ``x`` lives in an outer graph (renaming it from inside an If branch renames it for
    the other branch and the outer graph too). Each refused node goes to ``refuse`` (the
    owning pass's ``GraphPass.refuse``) when one is given.
    """

    def __init__(self, refuse: Callable[[ir.Node, str], None] | None = None) -> None:
        super().__init__()
        self._refuse = refuse

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            return False
        if len(node.inputs) == 1 and len(node.outputs) == 1 and node.inputs[0] is not None:
            reason = _renaming_refusal(node)
            if reason is not None:
                if self._refuse is not None:
                    self._refuse(node, reason)
                return False
        return super()._try_eliminate_identity_node(node)


def _renaming_refusal(node: ir.Node) -> str | None:
    """Why bypassing ``out = Identity(source)`` would lose or clobber a name, or None when it may go."""
    source, out = node.inputs[0], node.outputs[0]
    if not out.is_graph_output():
        return None  # its users are rewired to ``source``; no name is at stake
    if source.is_graph_output():
        return f"it produces graph output '{out.name}' and its input '{source.name}' is also a graph output"
    if source.is_graph_input() or source.is_initializer():
        return (
            f"it produces graph output '{out.name}' from '{source.name}', "
            "and a graph output may not be a graph input or initializer"
        )
    producer = source.producer()
    if producer is None or producer.graph is not node.graph:
        return f"it produces graph output '{out.name}' and its input '{source.name}' comes from an outer graph"
    return None


class RemoveIdentity(GraphPass):
    """Remove Identity nodes (main graph, subgraphs, functions), keeping graph output names."""

    name = "remove_identity"
    preconditions = (
        "an Identity that produces a graph output is removed only when its input is produced by a "
        "node of the same graph and is not itself a graph input, initializer or output"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = _GuardedIdentityElimination(self.refuse)(model)
        return ir.passes.PassResult(model, result.modified)


def eliminate_identity_node(node: ir.Node) -> bool:
    """Remove one Identity node under the same guards; True when it was removed."""
    return _GuardedIdentityElimination()._try_eliminate_identity_node(node)
