"""eliminate_dead_code: unused nodes and initializers go, in the main graph and in subgraphs."""

import numpy as np
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.eliminate_dead_code import EliminateDeadCode

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2,3] x) => (float[2,3] y, float[2,3] z)
<float[3] used = {1., 2., 3.}, float[3] unused = {4., 5., 6.}> {
  dead1 = Sin(x)
  dead2 = Cos(dead1)
  z = Add(x, used)
  y = If(c) <
    then_branch = t () => (float[2,3] t_out) <float[3] t_unused = {7., 8., 9.}, float[3] t_used = {1., 1., 1.}> {
      t_dead = Exp(x)
      t_out = Mul(x, t_used)
    },
    else_branch = e () => (float[2,3] e_out) {
      e_out = Neg(x)
    }
  >
}
"""


def test_removes_unused_nodes_and_initializers_everywhere():
    model = parse(MODEL)
    pass_ = EliminateDeadCode()
    out, modified = apply(pass_, model)
    assert modified
    assert op_counts(out) == {"Add": 1, "If": 1, "Mul": 1, "Neg": 1}
    assert set(out.graph.initializers) == {"used"}
    then_branch = next(n for n in out.graph if n.op_type == "If").attributes["then_branch"].as_graph()
    assert set(then_branch.initializers) == {"t_used"}
    assert [v.name for v in out.graph.outputs] == ["y", "z"]
    assert "removed 3 nodes and 2 initializers" in pass_.notes[0]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for cond in (True, False):
        assert_equivalent(model, out, feeds=[{"c": np.array(cond), "x": x}])


def test_nothing_to_remove_is_not_a_modification():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      y = Relu(x)
    }
    """)
    out, modified = apply(EliminateDeadCode(), model)
    assert not modified and op_counts(out) == {"Relu": 1}
