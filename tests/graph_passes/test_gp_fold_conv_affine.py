"""fold_conv_affine: per-channel Mul/Add after Conv/ConvTranspose fold into weight and bias."""

import numpy as np
import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.fold_conv_affine import FoldConvAffine


def _floats(rng, shape):
    return ", ".join(f"{v:.5f}" for v in rng.standard_normal(int(np.prod(shape))))


def _model(producer, tail, w_shape, x="float[2,4,5,5] x", y="float[2,6,5,5] y", extra="", opset=17):
    rng = np.random.default_rng(3)
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x}) => ({y})
    <float[{','.join(map(str, w_shape))}] w = {{{_floats(rng, w_shape)}}},
     float[6] wb = {{{_floats(rng, (6,))}}},
     float[6,1,1] c = {{{_floats(rng, (6,))}}}, float[1,6,1,1] s = {{{_floats(rng, (6,))}}},
     float k = {{1.5}}, float[6] g = {{{_floats(rng, (6,))}}}, float[6] mu = {{{_floats(rng, (6,))}}},
     float[6] v = {{0.5, 1., 1.5, 2., 0.7, 0.9}}{extra}> {{
      h = {producer}
      {tail}
    }}
    """)


CASES = {
    "conv_add_no_bias": ("Conv<pads=[1,1,1,1]>(x, w)", "y = Add(h, c)", (6, 4, 3, 3), 1),
    "conv_bias_mul_add": ("Conv<pads=[1,1,1,1]>(x, w, wb)", "m = Mul(s, h)\n y = Add(m, c)", (6, 4, 3, 3), 1),
    "conv_scalar_mul": ("Conv<pads=[1,1,1,1]>(x, w, wb)", "y = Mul(h, k)", (6, 4, 3, 3), 1),
    "grouped_conv_mul": ("Conv<pads=[1,1,1,1], group=2>(x, w)", "y = Mul(h, s)", (6, 2, 3, 3), 1),
    "conv_transpose_add_mul": (
        "ConvTranspose<strides=[1,1], pads=[1,1,1,1], group=2>(x, w)",
        "a = Add(h, c)\n y = Mul(a, s)",
        (4, 3, 3, 3),
        1,
    ),
    # PP-OCR det's head: ConvTranspose, its bias as an Add, then BatchNormalization.
    "conv_transpose_add_batchnorm": (
        "ConvTranspose<strides=[2,2]>(x, w)",
        "a = Add(h, c)\n y = BatchNormalization<epsilon=0.001>(a, g, wb, mu, v)",
        (4, 6, 2, 2),
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_folds(case):
    producer, tail, w_shape, expected_nodes = CASES[case]
    y = "float[2,6,10,10] y" if "strides=[2,2]" in producer else "float[2,6,5,5] y"
    model = _model(producer, tail, w_shape, y=y)
    pass_ = FoldConvAffine()
    out, modified = apply(pass_, model)
    assert modified, pass_.refusals
    assert sum(op_counts(out).values()) == expected_nodes, op_counts(out)
    assert not ({"Add", "Mul", "BatchNormalization"} & set(op_counts(out)))
    assert out.graph.outputs[0].name == "y"
    assert_equivalent(model, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "tail, extra, reason",
    [
        # The Conv's output is read by Relu too: its value must stay.
        ("y = Add(h, c)\n z = Relu(h)", "", "also read elsewhere"),
        # A [5] constant broadcasts along the last (spatial) axis, not the channels.
        ("y = Add(h, v5)", ", float[5] v5 = {1., 2., 3., 4., 5.}", "varies along an axis other than the channel"),
        # A [2,6,1,1] constant differs per batch item.
        ("y = Add(h, bt)", ", float[2,6,1,1] bt = {" + ", ".join(["1."] * 12) + "}", "varies along an axis"),
        ("y = BatchNormalization<training_mode=1>(h, g, wb, mu, v)", "", "training mode"),
    ],
)
def test_refuses_and_says_why(tail, extra, reason):
    outputs = "float[2,6,5,5] y, float[2,6,5,5] z" if "z =" in tail else "float[2,6,5,5] y"
    model = _model("Conv<pads=[1,1,1,1]>(x, w)", tail, (6, 4, 3, 3), y=outputs, extra=extra)
    pass_ = FoldConvAffine()
    out, modified = apply(pass_, model)
    assert not modified
    assert op_counts(out) == op_counts(model)
    assert any(reason in r for r in pass_.refusals), pass_.refusals
    if "training_mode" not in tail:  # ONNX Runtime has no inference kernel for training-mode BN
        assert_equivalent(model, out)


def test_refuses_shared_weight():
    model = _model("Conv<pads=[1,1,1,1]>(x, w)", "y0 = Add(h, c)\n y = Conv<pads=[1,1,1,1]>(y0, w2)", (6, 4, 3, 3),
                   extra=", float[6,6,1,1] w2 = {" + ", ".join(["0.1"] * 36) + "}")
    model2 = _model("Conv<pads=[1,1,1,1]>(x, w)", "h2 = Conv<pads=[1,1,1,1]>(x, w)\n a = Add(h, c)\n y = Add(a, h2)", (6, 4, 3, 3))
    pass_ = FoldConvAffine()
    out, modified = apply(pass_, model2)
    assert not modified and any("shared with another node" in r for r in pass_.refusals)
    out, modified = apply(pass_, model)
    assert modified
    assert_equivalent(model, out, rtol=1e-4, atol=1e-5)
