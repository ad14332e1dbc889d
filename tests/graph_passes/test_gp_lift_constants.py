"""lift_constants: Constant nodes become initializers (not on IR 3 models)."""

from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.lift_constants import LiftConstants


def test_lifts_constants_of_every_kind():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      w = Constant<value = float[3] {1., 2., 3.}>()
      s = Constant<value_float = 2.0>()
      shape = Constant<value_ints = [3, 2]>()
      a = Mul(x, w)
      b = Mul(a, s)
      r = Reshape(b, shape)
      shape_back = Constant<value_ints = [2, 3]>()
      y = Reshape(r, shape_back)
    }
    """)
    pass_ = LiftConstants()
    out, modified = apply(pass_, model)
    assert modified
    assert "Constant" not in op_counts(out)
    assert set(out.graph.initializers) == {"w", "s", "shape", "shape_back"}
    assert pass_.notes == ["lifted 4 of 4 Constant nodes"]
    assert_equivalent(model, out)


def test_constant_that_is_a_graph_output_stays():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y, float[3] c) {
      c = Constant<value = float[3] {1., 2., 3.}>()
      y = Add(x, c)
    }
    """)
    out, modified = apply(LiftConstants(), model)
    assert not modified and op_counts(out)["Constant"] == 1
    assert_equivalent(model, out)


def test_skips_ir3_models():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[3] x) => (float[3] y) {
      c = Constant<value = float[3] {1., 2., 3.}>()
      y = Add(x, c)
    }
    """)
    pass_ = LiftConstants()
    _, modified = apply(pass_, model)
    assert not modified and "IR version 3" in pass_.notes[0]
