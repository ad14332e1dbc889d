"""fuse_hard_activations: decomposed hard-sigmoid / hard-swish become HardSigmoid / HardSwish."""

import pytest
from gp_helpers import apply, assert_equivalent, assert_refused, op_counts, parse

from graph_passes.fuse_hard_activations import FuseHardActivations


def _model(body, opset=12, three="3.0", lo="0.0", hi="6.0", six="6.0"):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,3,4,5] x) => (float[2,3,4,5] y)
    <float t = {{{three}}}, float lo = {{{lo}}}, float hi = {{{hi}}}, float s = {{{six}}}> {{
      {body}
    }}
    """)


SWISH = "a = Add(x, t)\n c = Clip(a, lo, hi)\n m = Mul(x, c)\n y = Div(m, s)"
SWISH_COMMUTED = "a = Add(t, x)\n c = Clip(a, lo, hi)\n m = Mul(c, x)\n y = Div(m, s)"
SIGMOID = "a = Add(x, t)\n c = Clip(a, lo, hi)\n y = Div(c, s)"


@pytest.mark.parametrize(
    "body, opset, expected",
    [
        (SIGMOID, 12, {"HardSigmoid": 1}),
        (SWISH, 12, {"HardSigmoid": 1, "Mul": 1}),
        (SWISH_COMMUTED, 11, {"HardSigmoid": 1, "Mul": 1}),
        (SWISH, 14, {"HardSwish": 1}),
        ("h = HardSigmoid<alpha=0.16666667, beta=0.5>(x)\n y = Mul(x, h)", 14, {"HardSwish": 1}),
    ],
)
def test_fuses(body, opset, expected):
    model = _model(body, opset)
    out, modified = apply(FuseHardActivations(), model)
    assert modified
    assert op_counts(out) == expected
    assert_equivalent(model, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "body, opset, kwargs, reason",
    [
        (SWISH, 12, {"three": "3.0001"}, "added is not exactly 3"),
        (SIGMOID, 12, {"hi": "5.0"}, "Clip max is not exactly 6"),
        # Paddle's hard_sigmoid (slope 0.2) times x is not a HardSwish.
        ("h = HardSigmoid<alpha=0.2, beta=0.5>(x)\n y = Mul(x, h)", 14, {}, "is not HardSwish's"),
    ],
)
def test_refuses_and_says_why(body, opset, kwargs, reason):
    model = _model(body, opset, **kwargs)
    assert_refused(FuseHardActivations(), model, reason)
