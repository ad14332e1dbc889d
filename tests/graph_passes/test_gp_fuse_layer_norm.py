"""fuse_layer_norm: decomposed last-axis layer norm -> LayerNormalization at opset >= 17."""

import numpy as np
import pytest
from gp_helpers import apply, assert_equivalent, assert_refused, op_counts, parse

from graph_passes.fuse_layer_norm import FuseLayerNorm


def _model(opset=17, square="Pow(d, two)", axes="<axes=[-1]>", axes_in="", scale_shape="8", eps="0.00001", x="float[2,5,8] x", power="2.0"):
    values = ", ".join(f"{v:.3f}" for v in np.linspace(0.5, 1.5, int(np.prod([int(s) for s in scale_shape.split(",")]))))
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x}) => (float[2,5,8] y)
    <float[{scale_shape}] s = {{{values}}}, float[8] b = {{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}},
     float two = {{{power}}}, float eps = {{{eps}}}, int64[1] ax = {{-1}}> {{
      m = ReduceMean{axes}(x{axes_in})
      d = Sub(x, m)
      q = {square}
      v = ReduceMean{axes}(q{axes_in})
      e = Add(v, eps)
      r = Sqrt(e)
      n = Div(d, r)
      k = Mul(n, s)
      y = Add(k, b)
    }}
    """)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"square": "Mul(d, d)"},
        {"axes": "<axes=[2]>"},
        {"opset": 18, "axes": "", "axes_in": ", ax"},
    ],
    ids=["pow", "mul", "positive_axis", "opset18_axes_input"],
)
def test_fuses(kwargs):
    model = _model(**kwargs)
    out, modified = apply(FuseLayerNorm(), model)
    assert modified
    assert op_counts(out) == {"LayerNormalization": 1}
    assert_equivalent(model, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"axes": "<axes=[1]>", "x": "float[2,5,8] x"}, "is not the last axis"),
        ({"scale_shape": "5,1"}, "is not [D] or [1]"),
        ({"power": "3.0"}, "the power is not exactly 2"),
    ],
)
def test_refuses(kwargs, reason):
    model = _model(**kwargs)
    assert_refused(FuseLayerNorm(), model, reason)


def test_leaves_models_below_opset_17_alone():
    model = _model(opset=16)
    pass_ = FuseLayerNorm()
    out, modified = apply(pass_, model)
    assert not modified and "opset 16 < 17" in pass_.notes[0]
