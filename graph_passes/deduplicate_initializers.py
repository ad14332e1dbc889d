"""deduplicate_initializers: initializers with equal dtype, shape and bytes become one."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import DeduplicateHashedInitializersPass

from graph_passes._base import GraphPass, quiet_logger


def _count_initializers(model: ir.Model) -> int:
    return sum(len(g.initializers) for g in model.graphs())


class DeduplicateInitializers(GraphPass):
    """Merge initializers with identical dtype, shape and contents (per graph, hashed)."""

    name = "deduplicate_initializers"
    preconditions = (
        "the duplicates are in the same graph and neither is a graph input or output (those are part "
        "of the model's signature)"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _count_initializers(model)
        exposed = sum(
            1 for g in model.graphs() for v in g.initializers.values() if v.is_graph_input() or v.is_graph_output()
        )
        # onnx-ir warns once per initializer that is also a graph input; on old (IR 3) models
        # that is every weight. One note says it instead.
        with quiet_logger("onnx_ir.passes.common.initializer_deduplication"):
            result = DeduplicateHashedInitializersPass()(model)
        after = _count_initializers(model)
        if before != after:
            self.note(f"merged {before - after} duplicate initializers ({before} -> {after})")
        if exposed:
            self.note(f"left {exposed} initializers alone that are graph inputs or outputs")
        return ir.passes.PassResult(model, modified=result.modified)
