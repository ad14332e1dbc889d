"""remove_initializer_inputs: weights listed as inputs become plain initializers (IR 3 -> 4)."""

import numpy as np
from gp_helpers import apply, assert_equivalent, check_valid, parse, random_feeds

from graph_passes.remove_initializer_inputs import RemoveInitializerInputs
from optimizer.model import input_specs


def test_ir3_model_loses_weight_inputs_and_becomes_ir4():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[2,3] x, float[3] w) => (float[2,3] y) <float[3] w = {1., 2., 3.}> {
      y = Mul(x, w)
    }
    """)
    pass_ = RemoveInitializerInputs()
    out, modified = apply(pass_, model)
    assert modified
    assert [v.name for v in out.graph.inputs] == ["x"]
    assert out.ir_version == 4
    assert [s.name for s in input_specs(out)] == [s.name for s in input_specs(model)]
    check_valid(out)
    assert_equivalent(model, out, feeds=[random_feeds(model, 0)])
    assert pass_.notes == ["removed 1 initializers from the graph inputs", "raised IR version 3 -> 4"]
    np.testing.assert_array_equal(out.graph.initializers["w"].const_value.numpy(), [1, 2, 3])


def test_model_without_initializer_inputs_is_untouched():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) <float[3] w = {1., 2., 3.}> {
      y = Mul(x, w)
    }
    """)
    _, modified = apply(RemoveInitializerInputs(), model)
    assert not modified
