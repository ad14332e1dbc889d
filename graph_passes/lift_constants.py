"""lift_constants: turn Constant nodes into initializers."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from graph_passes._base import GraphPass


class LiftConstants(GraphPass):
    """Turn Constant nodes into initializers so fusions and deduplication can see the weights."""

    name = "lift_constants"
    preconditions = (
        "IR version >= 4 (older models need every initializer listed as a graph input); a Constant "
        "whose output is a graph output stays a node"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version < 4:
            self.note(f"skipped: IR version {model.ir_version} < 4 needs every initializer to be a graph input")
            return ir.passes.PassResult(model, modified=False)
        before = sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Constant")
        # size_limit=0 lifts scalars too: exporters (paddle2onnx, torch) emit weights and
        # scalar operands alike as Constant nodes, and rewrite rules look for initializers.
        result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        after = sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Constant")
        if before:
            self.note(f"lifted {before - after} of {before} Constant nodes")
        return ir.passes.PassResult(model, modified=result.modified)
