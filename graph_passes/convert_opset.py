"""convert_opset: upgrade the default-domain opset with onnx's version converter (``--opset N``).

Some rewrites need a newer opset than the exporter wrote (HardSwish is opset 14,
LayerNormalization 17), and per-channel Q/DQ needs 13. The conversion is onnx's
(``onnx.version_converter``); around it we keep the model's tensors as they were (the
converter round-trips through protobuf; the original, possibly memory-mapped, tensors are put
back wherever the converted graph kept an initializer unchanged), refuse downgrades, and
``run_passes`` checks the result numerically like every other pass when given a Verifier.
"""

from __future__ import annotations

import onnx_ir as ir

from graph_passes._base import GraphPass
from optimizer.errors import ConfigError
from optimizer.model import opset_of


class ConvertOpset(GraphPass):
    """Upgrade the model's default-domain opset with onnx's version converter."""

    name = "convert_opset"
    preconditions = (
        "the target opset is at least the model's; every op has an onnx version adapter up to the target "
        "(the converter raises otherwise and the pass is rolled back); functions are not converted"
    )

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = int(target)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        import onnx
        from onnx import version_converter

        current = opset_of(model) or None
        if current is None:
            raise ConfigError("the model imports no default-domain opset; nothing to convert")
        if self.target < current:
            raise ConfigError(f"--opset {self.target} is below the model's opset {current}; only upgrades are supported")
        if self.target == current:
            self.note(f"already at opset {current}")
            return ir.passes.PassResult(model, modified=False)
        tensors = {name: v.const_value for name, v in model.graph.initializers.items() if v.const_value is not None}
        proto = ir.to_proto(model)
        converted = version_converter.convert_version(proto, self.target)
        onnx.checker.check_model(converted)
        new = ir.from_proto(converted)
        del proto, converted
        for name, value in new.graph.initializers.items():
            old = tensors.get(name)
            if old is not None and value.const_value is not None and value.const_value.shape == old.shape:
                value.const_value = old  # the original tensor object (memory-mapped stays mapped)
        model.graph = new.graph
        model.ir_version = max(model.ir_version, new.ir_version)
        self.note(f"opset {current} -> {self.target} (onnx version converter)")
        return ir.passes.PassResult(model, modified=True)
