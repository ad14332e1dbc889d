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


def test_large_tensors_that_differ_only_in_the_middle_stay_apart():
    # Same dtype, shape, first and last 64 KiB: only the full comparison tells them apart.
    import numpy as np
    import onnx_ir as ir

    base = np.zeros(300_000, np.float32)
    other = base.copy()
    other[150_000] = 1.0
    x = ir.Value(name="x", shape=ir.Shape([300_000]), type=ir.TensorType(ir.DataType.FLOAT))
    inits = [
        ir.Value(name=n, shape=ir.Shape(a.shape), type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(a, name=n))
        for n, a in (("a", base), ("b", other), ("c", base.copy()))
    ]
    n1 = ir.node("Add", [x, inits[0]])
    n2 = ir.node("Add", [n1.outputs[0], inits[1]])
    n3 = ir.node("Add", [n2.outputs[0], inits[2]])
    n3.outputs[0].name, n3.outputs[0].type = "y", ir.TensorType(ir.DataType.FLOAT)
    n3.outputs[0].shape = ir.Shape([300_000])
    graph = ir.Graph([x], n3.outputs, nodes=[n1, n2, n3], initializers=inits, opset_imports={"": 17}, name="g")
    model = ir.Model(graph, ir_version=8)
    pass_ = DeduplicateInitializers()
    out, modified = apply(pass_, model)
    assert modified
    assert set(out.graph.initializers) == {"a", "b"}  # c merged into a; b differs in one value
    assert_equivalent(model, out, shapes={"x": (300_000,)})
