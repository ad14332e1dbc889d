"""remove_initializer_inputs: initializers listed as graph inputs become plain weights."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from graph_passes._base import GraphPass


class RemoveInitializerInputs(GraphPass):
    """Stop listing initializers as graph inputs (raising IR version 3 to 4), so they fold as constants."""

    name = "remove_initializer_inputs"
    preconditions = (
        "none; the inputs it removes are the ones fed by a default (an initializer), so the inputs "
        "a caller must feed do not change; the weights can no longer be overridden at run time"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = [v.name for v in model.graph.inputs if v.is_initializer()]
        result = RemoveInitializersFromInputsPass()(model)
        modified = result.modified
        if removed:
            self.note(f"removed {len(removed)} initializers from the graph inputs")
        # IR < 4 requires every initializer to be an input; 4 is the first version where
        # initializers are plain constants. Nothing else differs between 3 and 4.
        if model.ir_version < 4:
            self.note(f"raised IR version {model.ir_version} -> 4")
            model.ir_version = 4
            modified = True
        return ir.passes.PassResult(model, modified=modified)
