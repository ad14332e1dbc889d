"""eliminate_dead_code: remove nodes, initializers, functions and opsets nothing reads."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from graph_passes._base import GraphPass, count_nodes


class _RemoveUnusedSubgraphInitializers(ir.passes.InPlacePass):
    """onnx-ir's RemoveUnusedNodesPass drops unused initializers of the main graph only."""

    def __init__(self) -> None:
        super().__init__()
        self.removed = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = 0
        for graph in model.graphs():
            if graph is model.graph:
                continue
            for value in list(graph.initializers.values()):
                if not (value.uses() or value.is_graph_output() or value.is_graph_input()):
                    del graph.initializers[value.name]
                    removed += 1
        self.removed += removed
        return ir.passes.PassResult(model, modified=bool(removed))


def _count_initializers(model: ir.Model) -> int:
    return sum(len(g.initializers) for g in model.graphs())


class EliminateDeadCode(GraphPass):
    """Remove unused nodes and initializers (main graph and subgraphs), functions and opset imports."""

    name = "eliminate_dead_code"
    preconditions = (
        "a node is removed when none of its outputs is read or is a graph output; graph inputs and "
        "outputs are never removed; unused optional outputs of kept nodes are dropped"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes, inits = count_nodes(model), _count_initializers(model)
        result = ir.passes.PassManager(
            [
                RemoveUnusedNodesPass(),
                _RemoveUnusedSubgraphInitializers(),
                RemoveUnusedFunctionsPass(),
                RemoveUnusedOpsetsPass(),
            ],
            steps=3,  # a removed function or subgraph initializer can orphan more
            early_stop=True,
        )(model)
        removed_nodes, removed_inits = nodes - count_nodes(model), inits - _count_initializers(model)
        if removed_nodes or removed_inits:
            self.note(f"removed {removed_nodes} nodes and {removed_inits} initializers")
        return ir.passes.PassResult(model, modified=result.modified)
