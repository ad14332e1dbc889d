"""remove_identity: Identity nodes are bypassed; graph outputs keep their names."""

from gp_helpers import apply, assert_equivalent, check_valid, op_counts, parse

from graph_passes.remove_identity import RemoveIdentity

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) {
  a = Identity(x)
  b = Relu(a)
  c = Identity(b)
  y = Identity(c)
}
"""


def test_removes_identity_chain_and_keeps_output_name():
    model = parse(CHAIN)
    out, modified = apply(RemoveIdentity(), model)
    assert modified
    assert op_counts(out) == {"Relu": 1}
    assert [v.name for v in out.graph.outputs] == ["y"]
    assert_equivalent(model, out)


def test_keeps_identity_whose_input_is_another_graph_output():
    # onnx-ir alone would rename y1 to y2 and the model would lose its output y1.
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y1, float[2,3] y2) {
      y1 = Relu(x)
      y2 = Identity(y1)
    }
    """)
    pass_ = RemoveIdentity()
    out, modified = apply(pass_, model)
    assert not modified
    assert op_counts(out)["Identity"] == 1
    assert [v.name for v in out.graph.outputs] == ["y1", "y2"]
    assert pass_.refusals == [
        "Identity (unnamed, output 'y2'): it produces graph output 'y2' and its input 'y1' is also a graph output"
    ]
    assert_equivalent(model, out)


def test_keeps_identity_from_graph_input_to_graph_output():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
      y = Identity(x)
      z = Relu(x)
    }
    """)
    pass_ = RemoveIdentity()
    out, modified = apply(pass_, model)
    assert not modified
    assert [v.name for v in out.graph.outputs] == ["y", "z"]
    assert len(pass_.refusals) == 1 and "may not be a graph input or initializer" in pass_.refusals[0]
    assert_equivalent(model, out)


IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2,3] x) => (float[2,3] y) {
  h = Relu(x)
  y = If(c) <
    then_branch = t () => (float[2,3] t_out) {
      t_mid = Neg(h)
      t_id = Identity(t_mid)
      t_out = Abs(t_id)
    },
    else_branch = e () => (float[2,3] e_out) {
      e_out = Identity(h)
    }
  >
}
"""


def test_subgraphs_inner_identity_removed_outer_scope_output_kept():
    model = parse(IF_MODEL)
    pass_ = RemoveIdentity()
    out, modified = apply(pass_, model)
    assert modified
    # t_id goes; e_out = Identity(h) stays: h lives in the outer graph, renaming it from
    # inside the else branch would rename it for everyone.
    assert op_counts(out)["Identity"] == 1
    assert [v.name for v in out.graph.outputs] == ["y"]
    assert len(pass_.refusals) == 1 and "its input 'h' comes from an outer graph" in pass_.refusals[0]
    check_valid(out)
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for cond in (True, False):
        assert_equivalent(model, out, feeds=[{"c": np.array(cond), "x": x}])
