"""deduplicate_initializers: identical initializers become one; signature initializers stay."""

from gp_helpers import apply, assert_equivalent, parse

from graph_passes.deduplicate_initializers import DeduplicateInitializers


def test_merges_identical_initializers():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y)
    <float[3] w1 = {1., 2., 3.}, float[3] w2 = {1., 2., 3.}, float[3] w3 = {1., 2., 4.}, int64[3] w4 = {1, 2, 3}> {
      a = Mul(x, w1)
      b = Mul(a, w2)
      c = Add(b, w3)
      d = Cast<to=1>(w4)
      y = Add(c, d)
    }
    """)
    pass_ = DeduplicateInitializers()
    out, modified = apply(pass_, model)
    assert modified
    # w3 differs in one value and w4 in dtype: both stay.
    assert set(out.graph.initializers) == {"w1", "w3", "w4"}
    assert "merged 1" in pass_.notes[0]
    assert_equivalent(model, out)


def test_leaves_initializers_that_are_graph_inputs():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x, float[3] w1) => (float[2,3] y)
    <float[3] w1 = {1., 2., 3.}, float[3] w2 = {1., 2., 3.}> {
      a = Mul(x, w1)
      y = Mul(a, w2)
    }
    """)
    pass_ = DeduplicateInitializers()
    out, modified = apply(pass_, model)
    assert not modified
    assert set(out.graph.initializers) == {"w1", "w2"}
    assert any("graph inputs or outputs" in n for n in pass_.notes)
