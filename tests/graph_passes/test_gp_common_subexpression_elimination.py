"""common_subexpression_elimination: duplicate computations merge; names and randomness survive."""

from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.common_subexpression_elimination import CommonSubexpressionElimination


def test_merges_duplicate_chains():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      a1 = Relu(x)
      a2 = Relu(x)
      b1 = Sigmoid(a1)
      b2 = Sigmoid(a2)
      c1 = Softmax<axis=1>(b1)
      c2 = Softmax<axis=0>(b2)
      y = Add(c1, c2)
    }
    """)
    pass_ = CommonSubexpressionElimination()
    out, modified = apply(pass_, model)
    assert modified
    # The Softmaxes differ in their axis: they stay apart.
    assert op_counts(out) == {"Relu": 1, "Sigmoid": 1, "Softmax": 2, "Add": 1}
    assert "merged 2" in pass_.notes[0]
    assert_equivalent(model, out)


def test_duplicate_graph_outputs_keep_their_names():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y1, float[2,3] y2) {
      y1 = Relu(x)
      y2 = Relu(x)
    }
    """)
    out, modified = apply(CommonSubexpressionElimination(), model)
    assert modified
    assert [v.name for v in out.graph.outputs] == ["y1", "y2"]
    assert_equivalent(model, out)


def test_random_ops_are_not_merged():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      r1 = RandomNormalLike<seed = 1.0>(x)
      r2 = RandomNormalLike<seed = 1.0>(x)
      y = Sub(r1, r2)
    }
    """)
    out, modified = apply(CommonSubexpressionElimination(), model)
    assert not modified and op_counts(out)["RandomNormalLike"] == 2
