"""fold_batchnorm_into_conv: inference BN folds into Conv/ConvTranspose/Gemm; the rest is kept."""

import numpy as np
import onnx_ir as ir
import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.fold_batchnorm_into_conv import FoldBatchnormIntoConv


def _bn_params(rng, c):
    fmt = lambda a: ", ".join(f"{v:.6f}" for v in a)  # noqa: E731
    scale, bias = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.uniform(0.2, 2.0, c)
    return (
        f"float[{c}] s = {{{fmt(scale)}}}, float[{c}] b = {{{fmt(bias)}}}, "
        f"float[{c}] m = {{{fmt(mean)}}}, float[{c}] v = {{{fmt(var)}}}"
    )


def _weights(rng, name, shape):
    values = ", ".join(f"{v:.6f}" for v in rng.standard_normal(int(np.prod(shape))))
    return f"float[{','.join(map(str, shape))}] {name} = {{{values}}}"


CASES = {
    "conv": ("float[1,4,6,6] x", "float[1,6,6,6] y", [("w", (6, 4, 3, 3))], 6, "h = Conv<pads=[1,1,1,1]>(x, w)"),
    "conv_bias": ("float[2,4,5,5] x", "float[2,6,3,3] y", [("w", (6, 4, 3, 3)), ("wb", (6,))], 6, "h = Conv(x, w, wb)"),
    "group_conv": ("float[1,4,5,5] x", "float[1,4,5,5] y", [("w", (4, 2, 1, 1))], 4, "h = Conv<group=2>(x, w)"),
    "conv_transpose": (
        "float[1,4,3,3] x",
        "float[1,6,6,6] y",
        [("w", (4, 3, 2, 2))],
        6,
        "h = ConvTranspose<strides=[2,2], group=2>(x, w)",
    ),
    "gemm": ("float[3,5] x", "float[3,4] y", [("w", (4, 5)), ("wb", (4,))], 4, "h = Gemm<transB=1>(x, w, wb)"),
    "gemm_beta": ("float[3,5] x", "float[3,4] y", [("w", (5, 4)), ("wb", (4,))], 4, "h = Gemm<beta=0.5>(x, w, wb)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_folds_batchnorm(case):
    x_decl, y_decl, weights, channels, producer = CASES[case]
    rng = np.random.default_rng(7)
    inits = ", ".join([_weights(rng, n, s) for n, s in weights] + [_bn_params(rng, channels)])
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 15]>
    g ({x_decl}) => ({y_decl}) <{inits}> {{
      {producer}
      y = BatchNormalization<epsilon=0.001>(h, s, b, m, v)
    }}
    """)
    pass_ = FoldBatchnormIntoConv()
    out, modified = apply(pass_, model)
    assert modified, pass_.notes
    assert "BatchNormalization" not in op_counts(out)
    assert sum(op_counts(out).values()) == 1
    assert_equivalent(model, out, rtol=1e-4, atol=1e-5)


def _conv_bn(extra_inputs="", body_tail="", opset=15, bn_attrs="", outputs="float[1,2,4,4] y"):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[1,2,4,4] x{extra_inputs}) => ({outputs})
    <float[2,2,1,1] w = {{1., 2., 3., 4.}}, float[2] s = {{1., 2.}}, float[2] b = {{0.5, 0.5}},
     float[2] m = {{0.1, 0.2}}, float[2] v = {{1., 2.}}> {{
      h = Conv(x, w)
      y = BatchNormalization{bn_attrs}(h, s, b, m, v)
      {body_tail}
    }}
    """)


@pytest.mark.parametrize(
    "model, reason",
    [
        # Conv output also read elsewhere: removing the Conv is not possible (no rule matches).
        (
            _conv_bn(body_tail="z = Relu(h)", outputs="float[1,2,4,4] y, float[1,2,4,4] z"),
            "no Conv/ConvTranspose/Gemm feeds it alone",
        ),
        # Training mode normalizes with batch statistics.
        (_conv_bn(bn_attrs="<training_mode=1>"), "BatchNormalization runs in training mode"),
    ],
)
def test_refuses(model, reason):
    pass_ = FoldBatchnormIntoConv()
    out, modified = apply(pass_, model)
    assert not modified
    assert op_counts(out) == op_counts(model)
    assert pass_.notes == []  # the kept BatchNormalization is a refusal, one line for the one node
    assert len(pass_.refusals) == 1 and pass_.refusals[0].startswith("BatchNormalization (unnamed, output 'y'): ")
    assert reason in pass_.refusals[0], pass_.refusals


def test_refuses_shared_weight_and_non_constant_parameters():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[1,2,4,4] x, float[2] s2) => (float[1,2,4,4] y, float[1,2,4,4] z)
    <float[2,2,1,1] w = {1., 2., 3., 4.}, float[2] s = {1., 2.}, float[2] b = {0.5, 0.5},
     float[2] m = {0.1, 0.2}, float[2] v = {1., 2.}> {
      h1 = Conv(x, w)
      y = BatchNormalization(h1, s, b, m, v)
      h2 = Conv(y, w)
      z = BatchNormalization(h2, s2, b, m, v)
    }
    """)
    pass_ = FoldBatchnormIntoConv()
    out, modified = apply(pass_, model)
    assert not modified
    first, second = pass_.refusals
    assert first.startswith("BatchNormalization (unnamed, output 'y'): ") and "used by another node" in first
    assert second == "BatchNormalization (unnamed, output 'z'): s2 is not a constant initializer."
    feeds = [{"x": np.ones((1, 2, 4, 4), np.float32), "s2": np.array([1.0, 3.0], np.float32)}]
    assert_equivalent(model, out, feeds=feeds)


def test_skips_ir3_models():
    model = _conv_bn()
    model.ir_version = 3
    for v in model.graph.initializers.values():
        model.graph.inputs.append(v)
    pass_ = FoldBatchnormIntoConv()
    _, modified = apply(pass_, model)
    assert not modified and "IR version 3" in pass_.notes[0]
    assert isinstance(model, ir.Model)
