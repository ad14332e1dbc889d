"""fuse_matmul_add_into_gemm: 2-D MatMul + broadcastable bias -> Gemm; the rest is kept."""

import pytest
from gp_helpers import apply, assert_equivalent, assert_refused, op_counts, parse

from graph_passes.fuse_matmul_add_into_gemm import FuseMatmulAddIntoGemm


def _model(x="float[3,5] x", bias="float[4] c = {1., 2., 3., 4.}", y="float[3,4] y", w="float[5,4] w"):
    values = ", ".join(str(0.1 * i) for i in range(20))
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({x}) => ({y}) <{w} = {{{values}}}, {bias}> {{
      h = MatMul(x, w)
      y = Add(h, c)
    }}
    """)


@pytest.mark.parametrize("bias", ["float[4] c = {1., 2., 3., 4.}", "float[1,4] c = {1., 2., 3., 4.}", "float c = {2.}"])
def test_fuses(bias):
    model = _model(bias=bias)
    out, modified = apply(FuseMatmulAddIntoGemm(), model)
    assert modified
    assert op_counts(out) == {"Gemm": 1}
    assert_equivalent(model, out)


def test_fuses_with_dynamic_batch():
    model = _model(x="float[N,5] x", y="float[N,4] y")
    out, modified = apply(FuseMatmulAddIntoGemm(), model)
    assert modified and op_counts(out) == {"Gemm": 1}
    assert_equivalent(model, out, shapes={"x": (7, 5)})


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        # Rank 3: Gemm takes matrices only.
        ({"x": "float[2,3,5] x", "y": "float[2,3,4] y"}, "Rank of input_a and input_b must be 2"),
        # A [2,3,4] bias would broadcast the [3,4] product up to rank 3.
        ({"bias": "float[2,3,4] c = {" + ", ".join(["1."] * 24) + "}", "y": "float[2,3,4] y"}, "would raise"),
        # A [3,1] bias against N=... fine, but [5,4] against M=3 would change the shape.
        ({"bias": "float[5,4] c = {" + ", ".join(["1."] * 20) + "}", "x": "float[1,5] x", "y": "float[5,4] y"}, "may broadcast"),
    ],
)
def test_refuses_and_says_why(kwargs, reason):
    model = _model(**kwargs)
    assert_refused(FuseMatmulAddIntoGemm(), model, reason)
