"""Inline ``If`` nodes whose condition is a constant, so the branch taken can be quantized.

Exporters leave such Ifs behind (a flag traced as a constant); their branch is the only code
that ever runs, yet static quantizers skip it because it sits in a subgraph. onnxscript's
constant folder knows how to splice the taken branch into the parent graph; it runs here with
every other folding rule switched off, so nothing else in the model changes (and no constant
is materialised: folding can blow a small model up to hundreds of MB).
"""

from __future__ import annotations

import onnx_ir as ir


def inline_constant_ifs(model: ir.Model) -> int:
    """Replace every constant-condition ``If`` in ``model`` (in place) by its taken branch; return how many."""
    from onnxscript.optimizer import fold_constants

    def count() -> int:
        return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "If" and n.domain in ("", "ai.onnx"))

    before = count()
    if before == 0:
        return 0
    fold_constants(model, should_fold=lambda node: None if node.op_type == "If" else False)
    return before - count()
