"""common_subexpression_elimination: nodes computing the same thing from the same inputs become one."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass

from graph_passes._base import GraphPass, count_nodes


class CommonSubexpressionElimination(GraphPass):
    """Merge nodes with the same op, attributes and inputs in the main graph (onnx-ir CSE)."""

    name = "common_subexpression_elimination"
    preconditions = (
        "same op, domain, attributes and the very same input values; random ops (RandomNormal, ...) and "
        "control flow (If/Loop/Scan) are never merged; subgraphs are not searched"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = count_nodes(model)
        # Merging can make the users of merged nodes identical in turn; the pass walks the
        # graph in order and catches most chains in one sweep, a second one the rest.
        result = ir.passes.PassManager([CommonSubexpressionEliminationPass()], steps=3, early_stop=True)(model)
        merged = before - count_nodes(model)
        if merged:
            self.note(f"merged {merged} duplicate nodes")
        return ir.passes.PassResult(model, modified=result.modified)
