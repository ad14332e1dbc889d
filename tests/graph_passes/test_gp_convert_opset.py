"""convert_opset (--opset N): onnx's version converter, checked numerically; downgrades refused."""

import pytest
from gp_helpers import apply, assert_equivalent, parse

from graph_passes import Verifier, run_passes
from graph_passes.convert_opset import ConvertOpset
from optimizer.errors import ConfigError

# Softmax changed meaning at opset 13 (it no longer flattens to 2-D); ReduceSum moved axes
# to an input; Clip took min/max as inputs at 11; the converter must keep all three right.
MODEL = """
<ir_version: 6, opset_import: ["" : 12]>
g (float[2,3,4] x) => (float[2,1,4] y, float[2,3,4] z) <float lo = {-0.5}, float hi = {0.5}> {
  s = Softmax<axis=1>(x)
  y = ReduceSum<axes=[1], keepdims=1>(s)
  z = Clip(x, lo, hi)
}
"""


def test_upgrades_and_keeps_outputs():
    model = parse(MODEL)
    pass_ = ConvertOpset(17)
    out, modified = apply(pass_, model)
    assert modified
    assert out.opset_imports[""] == 17
    (reduce,) = [n for n in out.graph if n.op_type == "ReduceSum"]
    assert len(reduce.inputs) == 2 and "axes" not in reduce.attributes  # opset 13 form
    assert_equivalent(model, out)


def test_run_passes_verifies_the_conversion():
    model = parse(MODEL)
    records = run_passes(model, ["eliminate_dead_code"], opset=17, verifier=Verifier(model.clone()))
    assert [r.name for r in records] == ["convert_opset", "eliminate_dead_code"]
    assert records[0].modified and any("verified" in n for n in records[0].notes)
    assert model.opset_imports[""] == 17


def test_refuses_downgrade():
    model = parse(MODEL)
    with pytest.raises(ConfigError, match="below the model's opset 12"):
        run_passes(model, [], opset=11)
    assert model.opset_imports[""] == 12
