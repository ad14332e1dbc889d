"""topological_sort: order nodes so every node comes after its inputs' producers."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from graph_passes._base import GraphPass


class TopologicalSort(GraphPass):
    """Sort nodes topologically (stable; main graph, subgraphs and functions)."""

    name = "topological_sort"
    preconditions = "the graph has no cycle (a cycle raises: the model was already invalid)"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return TopologicalSortPass()(model)
