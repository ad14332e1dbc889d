"""fold_shape_computations: Shape chains with known dims fold; Reshape targets become constants."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse, run

from graph_passes import run_passes
from graph_passes.fold_shape_computations import FoldShapeComputations

FLATTEN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,6,H,W] x) => (float[N,6,?] y) <int64[1] zero = {0}, int64[1] two = {2}, int64[1] m1 = {-1}> {
  r = Relu(x)
  s = Shape(r)
  nc = Slice(s, zero, two)
  t = Concat<axis=0>(nc, m1)
  y = Reshape(r, t)
}
"""


def _shape_nodes(model):
    return {k: v for k, v in op_counts(model).items() if k in ("Shape", "Slice", "Concat", "Gather", "Cast")}


def test_dynamic_batch_reshape_target_folds_to_copy_and_infer():
    model = parse(FLATTEN)
    out, modified = apply(FoldShapeComputations(), model)
    assert modified
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 6, -1]
    run_passes(out, ["eliminate_dead_code"])
    assert _shape_nodes(out) == {}
    for shape in [(1, 6, 4, 5), (3, 6, 2, 7)]:
        feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        np.testing.assert_array_equal(run(out, feeds)["y"], run(model, feeds)["y"])


def test_static_chain_folds_to_constant_through_gather_and_cast():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[2,3,4] x) => (float[2,12] y) <int64 one = {1}, int64[1] zero = {0}> {
      s = Shape(x)
      c = Cast<to=6>(s)
      a = Gather<axis=0>(c, one)
      b = Shape<start=2>(x)
      u = Unsqueeze(a, zero)
      bc = Cast<to=7>(b)
      uc = Cast<to=7>(u)
      p = Mul(uc, bc)
      first = Slice(s, zero, one1)
      t = Concat<axis=0>(first, p)
      y = Reshape(x, t)
    }
    """.replace("one1", "one_v").replace("int64 one = {1},", "int64 one = {1}, int64[1] one_v = {1},"))
    out, modified = apply(FoldShapeComputations(), model)
    assert modified
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value is not None
    assert_equivalent(model, out)


def test_declared_shapes_are_not_trusted():
    # The file claims r is [2,5] and y is [10]: the graph computes [2,4] and [8]. Folding
    # from the claims would give Reshape(x, [10]) and fail (or worse, change the layout).
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,4] x) => (float[10] y) <int64[1] zero = {0}, int64[1] two = {2}> {
      r = Relu(x)
      s = Shape(r)
      d = Slice(s, zero, two)
      n = ReduceProd<keepdims=1>(d)
      y = Reshape(r, n)
    }
    """)
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2, 5]))
    model = ir.from_proto(proto)
    out, _ = apply(FoldShapeComputations(), model)
    assert out.graph.outputs[0].shape == ir.Shape([10])  # the declared contract stays as declared
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    target = reshape.inputs[1]
    # Either left dynamic or folded to what the graph computes, never to the declared 10.
    assert target.const_value is None or target.const_value.numpy().tolist() in ([8], [-1])
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    np.testing.assert_array_equal(run(out, feeds)["y"], np.arange(8, dtype=np.float32))


@pytest.mark.parametrize(
    "body, reason",
    [
        # Two dims of another tensor, unknown here: neither known nor the data's own dims.
        ("s = Shape(z)\n t = Slice(s, zero, two)\n y = Reshape(x, t)", "neither known nor the data's own dims"),
    ],
)
def test_refuses_and_says_why(body, reason):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[A,B] x, float[C,D] z) => (float[A,B] y) <int64[1] zero = {{0}}, int64[1] two = {{2}}> {{
      {body}
    }}
    """)
    pass_ = FoldShapeComputations()
    out, modified = apply(pass_, model)
    assert not modified
    assert any(reason in r for r in pass_.refusals), pass_.refusals
    assert op_counts(out) == op_counts(model)
    assert_equivalent(model, out, shapes={"x": (3, 4), "z": (3, 4)})


def test_zero_in_a_target_stays_a_copy():
    # paddle2onnx writes Reshape(x, Concat([0], Shape(z)[1:2], [-1])): the 0 is "copy dim 0".
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4,6] x, float[M,4] z) => (float[N,4,6] y)
    <int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2}, int64[1] m1 = {-1}> {
      s = Shape(z)
      c = Slice(s, one, two)
      t = Concat<axis=0>(zero, c, m1)
      y = Reshape(x, t)
    }
    """)
    out, modified = apply(FoldShapeComputations(), model)
    assert modified
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 4, -1]
    assert_equivalent(model, out, shapes={"x": (3, 4, 6), "z": (5, 4)})


def test_a_dynamic_dim_times_one_is_still_that_dim():
    # ddddocr's CRNN head: Reshape(h, [seq * 1, 1024]) after the LSTM, with seq dynamic.
    model = parse("""
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[S,1,1024] h) => (float[S,1024] y) <int64 zero = {0}, int64 one = {1}, int64[1] width = {1024}> {
      s = Shape(h)
      seq = Gather<axis=0>(s, zero)
      seq1 = Mul(seq, one)
      seq0 = Add(seq1, zero)
      d = Unsqueeze<axes=[0]>(seq0)
      target = Concat<axis=0>(d, width)
      y = Reshape(h, target)
    }
    """)
    out, modified = apply(FoldShapeComputations(), model)
    assert modified
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 1024]
    assert_equivalent(model, out, shapes={"h": (5, 1, 1024)})


def test_slice_with_attributes_opset_9_is_read():
    # pytorch-operator's test_operator_index: Slice-1 keeps starts/ends in attributes.
    model = parse("""
    <ir_version: 4, opset_import: ["" : 9]>
    g (float[1,1] x) => (float[1] y) {
      s = Slice<axes=[0], starts=[0], ends=[1]>(x)
      y = Squeeze<axes=[0]>(s)
    }
    """)
    out, _ = apply(FoldShapeComputations(), model)
    assert_equivalent(model, out)


def test_allowzero_1_target_without_a_literal_zero_folds_to_copies():
    # torch.export writes every view as Reshape<allowzero=1>.
    model = parse("""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[A,B] x) => (float[A,B] y) <int64[1] zero = {0}, int64[1] two = {2}> {
      s = Shape(x)
      t = Slice(s, zero, two)
      y = Reshape<allowzero=1>(x, t)
    }
    """)
    out, modified = apply(FoldShapeComputations(), model)
    assert modified
    (reshape,) = [n for n in out.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 0]
    assert reshape.attributes.get_int("allowzero", 0) == 0
    assert_equivalent(model, out, shapes={"x": (3, 4)})


def test_allowzero_1_target_with_a_literal_zero_is_refused():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[A,B] x) => (float[A,0] y) <int64[1] zero = {0}, int64[1] one = {1}> {
      s = Shape(x)
      a = Slice(s, zero, one)
      t = Concat<axis=0>(a, zero)
      y = Reshape<allowzero=1>(x, t)
    }
    """)
    pass_ = FoldShapeComputations()
    out, modified = apply(pass_, model)
    assert not modified and any("literal 0" in r for r in pass_.refusals), pass_.refusals
