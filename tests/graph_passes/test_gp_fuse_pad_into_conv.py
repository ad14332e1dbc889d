"""fuse_pad_into_conv: zero constant spatial Pad + Conv -> Conv with pads; the rest is kept."""

import numpy as np
import pytest
from gp_helpers import apply, assert_equivalent, assert_refused, op_counts, parse

from graph_passes.fuse_pad_into_conv import FusePadIntoConv


def _model(pad, y="float[1,3,6,7] y", conv_attrs="<pads=[1,1,1,1]>", opset=13, extra=""):
    w = ", ".join(f"{v:.4f}" for v in np.random.default_rng(0).standard_normal(3 * 2 * 3 * 3))
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[1,2,5,5] x) => ({y})
    <float[3,2,3,3] w = {{{w}}}, int64[8] p = {{0, 0, 0, 1, 0, 0, 1, 2}}, float zero = {{0.0}},
     float half = {{0.5}}, int64[8] pc = {{0, 1, 0, 0, 0, 0, 0, 0}}{extra}> {{
      t = {pad}
      y = Conv{conv_attrs}(t, w)
    }}
    """)


@pytest.mark.parametrize("pad", ["Pad(x, p)", "Pad(x, p, zero)", 'Pad<mode="constant">(x, p)'])
def test_fuses(pad):
    model = _model(pad)
    out, modified = apply(FusePadIntoConv(), model)
    assert modified
    assert op_counts(out) == {"Conv": 1}
    (conv,) = out.graph
    assert list(conv.attributes["pads"].as_ints()) == [1, 2, 2, 3]
    assert_equivalent(model, out)


@pytest.mark.parametrize(
    "pad, y, reason",
    [
        ('Pad<mode="reflect">(x, p)', "float[1,3,6,7] y", "mode must be 'constant'"),
        ("Pad(x, p, half)", "float[1,3,6,7] y", "must be equal to 0"),
        # Padding the channel axis changes what the Conv reads: not a Conv padding.
        ("Pad(x, pc)", "float[1,3,5,5] y", "must be zero in non-spatial dimensions"),
    ],
)
def test_refuses_and_says_why(pad, y, reason):
    if "pc" not in pad:
        model = _model(pad, y=y)
    else:  # three input channels after padding: a weight for 3 channels
        w = ", ".join(["0.1"] * 3 * 3 * 3 * 3)
        model = parse(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,2,5,5] x) => (float[1,3,5,5] y)
        <float[3,3,3,3] w = {{{w}}}, int64[8] pc = {{0, 1, 0, 0, 0, 0, 0, 0}}> {{
          t = Pad(x, pc)
          y = Conv<pads=[1,1,1,1]>(t, w)
        }}
        """)
    assert_refused(FusePadIntoConv(), model, reason)
