"""upgrade_opset_for_fusions: opset 13-16 goes to 17 only where a LayerNorm/HardSwish fusion then fires."""

import pytest
from gp_helpers import assert_equivalent, op_counts, parse
from test_gp_fuse_layer_norm import _model as layer_norm_model

from graph_passes import run_passes
from graph_passes.upgrade_opset_for_fusions import UpgradeOpsetForFusions
from optimizer.model import opset_of


@pytest.mark.parametrize("opset", [13, 14, 16])
def test_a_decomposed_layer_norm_below_17_ends_fused(opset):
    """A transformer exported at opset 14 (9 nodes per layer norm) leaves as one LayerNormalization."""
    model = layer_norm_model(opset=opset)
    out = layer_norm_model(opset=opset)
    records = run_passes(out)  # the default order, as `trtforge passes` runs it
    assert opset_of(out) == 17 and op_counts(out) == {"LayerNormalization": 1}
    upgrade = next(r for r in records if r.name == "upgrade_opset_for_fusions")
    assert upgrade.modified and f"opset {opset} -> 17 so that 1 decomposed LayerNorm(s) can fuse" in upgrade.notes[0]
    assert_equivalent(model, out)


def test_x_times_hard_sigmoid_at_opset_13_becomes_hard_swish():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,8] x) => (float[2,8] y) {
      h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(x)
      y = Mul(x, h)
    }
    """)
    out = _passes_on_a_copy(model)
    assert opset_of(out) == 17 and op_counts(out) == {"HardSwish": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("opset, body", [
    (14, "y = Relu(x)"),  # nothing to fuse: the opset stays
    (12, None),  # below 13 the converter changes more than spellings: --opset asks for it
])
def test_left_alone_without_a_fusion_or_below_13(opset, body):
    model = layer_norm_model(opset=opset) if body is None else parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,8] x) => (float[2,8] y) {{ {body} }}
    """)
    pass_ = UpgradeOpsetForFusions()
    assert not pass_(model).modified and opset_of(model) == opset


def _passes_on_a_copy(model):
    import onnx_ir as ir

    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    run_passes(copy)
    return copy
