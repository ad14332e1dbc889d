"""remove_noop_ops: exact no-ops go; near-no-ops and shape-changing broadcasts stay."""

import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.remove_noop_ops import RemoveNoopOps

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


@pytest.mark.parametrize(
    "body",
    [
        "h = Mul(x, one)",
        "h = Mul(one, x)",
        "h = Add(x, zero)",
        "h = Add(zero, x)",
        "h = Sub(x, zero)",
        "h = Div(x, one)",
        "h = Mul(x, ones_row)",  # [1,3] of ones against [2,3]: same shape
        "h = Cast<to=1>(x)",
        "h = Transpose<perm=[0,1]>(x)",
        "t = Transpose<perm=[1,0]>(x)\n h = Transpose<perm=[1,0]>(t)",
        "h = Expand(x, shape23)",
        "a = Mul(x, one)\n b = Add(a, zero)\n h = Div(b, one)",
        "h = Slice(x, zero1, big1, zero1, one1)",  # [0:INT_MAX] on axis 0
        "h = Slice(x, zero1, three1, one1, one1)",  # [0:3] on axis 1, which has 3
        "h = Pad(x, pads0)",
        "h = Reshape(x, shape23)",
        "h = Reshape(x, keep_m1)",  # [0, -1] on [2,3]
        "h = Pad<mode=\"reflect\">(x, pads0)",
    ],
)
def test_removes_noop(body):
    model = parse(f"""
    {HEADER}
    g (float[2,3] x) => (float[2,3] y)
    <float one = {{1.0}}, float zero = {{0.0}}, float[1,3] ones_row = {{1., 1., 1.}}, int64[2] shape23 = {{2, 3}},
     int64[1] zero1 = {{0}}, int64[1] one1 = {{1}}, int64[1] three1 = {{3}}, int64[1] big1 = {{9223372036854775807}},
     int64[4] pads0 = {{0, 0, 0, 0}}, int64[2] keep_m1 = {{0, -1}}> {{
      {body}
      y = Relu(h)
    }}
    """)
    pass_ = RemoveNoopOps()
    out, modified = apply(pass_, model)
    assert modified, pass_.notes
    assert op_counts(out) == {"Relu": 1}
    assert_equivalent(model, out)


def test_noop_producing_graph_output_keeps_name():
    model = parse(f"""
    {HEADER}
    g (float[2,3] x) => (float[2,3] y) <float one = {{1.0}}> {{
      h = Relu(x)
      y = Mul(h, one)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert modified and op_counts(out) == {"Relu": 1}
    assert [v.name for v in out.graph.outputs] == ["y"]
    assert_equivalent(model, out)


def test_reshape_pair_merges_into_one():
    model = parse(f"""
    {HEADER}
    g (float[2,3,4] x) => (float[4,6] y) <int64[2] s1 = {{6, 4}}, int64[2] s2 = {{4, -1}}> {{
      t = Reshape(x, s1)
      y = Reshape(t, s2)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert modified and op_counts(out) == {"Reshape": 1}
    assert_equivalent(model, out)


def test_transpose_pair_merges_into_one():
    model = parse(f"""
    {HEADER}
    g (float[2,3,4] x) => (float[4,2,3] y) {{
      t = Transpose<perm=[1,0,2]>(x)
      y = Transpose<perm=[2,1,0]>(t)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert modified and op_counts(out) == {"Transpose": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize(
    "x_shape, y_decl, body, reason",
    [
        # A LayerNorm-style epsilon is not "+ 0", however small.
        ("2,3", "float[2,3]", "y = Add(x, eps)", "close to but not exactly 0"),
        # Ones of shape [2,1,3] against [2,3] raise the rank.
        ("2,3", "float[2,2,3]", "y = Mul(x, ones_3d)", "rank 3"),
        # Ones of shape [4,1] against [1,3]: the output is [4,3].
        ("1,3", "float[4,3]", "y = Mul(x, ones_col)", "may broadcast"),
        ("2,3", "float[2,3]", "y = Mul(x, two)", None),
        ("2,3", "double[2,3]", "y = Cast<to=11>(x)", None),
        ("2,3", "float[3,2]", "y = Transpose<perm=[1,0]>(x)", None),
        ("2,3", "float[2,2]", "y = Slice(x, zero1, two1, one1)", None),  # [0:2] of an axis of 3
        ("2,3", "float[2,5]", "y = Pad(x, pads1)", None),
        ("2,3", "float[3,2]", "y = Reshape(x, s32)", None),
    ],
)
def test_keeps_what_is_not_a_noop(x_shape, y_decl, body, reason):
    model = parse(f"""
    {HEADER}
    g (float[{x_shape}] x) => ({y_decl} y)
    <float eps = {{1e-12}}, float two = {{2.0}}, int64[1] zero1 = {{0}}, int64[1] one1 = {{1}},
     int64[1] two1 = {{2}}, int64[4] pads1 = {{0, 1, 0, 1}}, int64[2] s32 = {{3, 2}},
     float[2,1,3] ones_3d = {{1.,1.,1.,1.,1.,1.}}, float[4,1] ones_col = {{1.,1.,1.,1.}}> {{
      {body}
    }}
    """)
    pass_ = RemoveNoopOps()
    out, modified = apply(pass_, model)
    assert not modified, pass_.notes
    assert op_counts(out) == op_counts(model)
    if reason:  # a near miss says why, once, naming the node; a plain non-no-op is not worth a line
        assert len(pass_.refusals) == 1 and reason in pass_.refusals[0], pass_.refusals
    else:
        assert pass_.refusals == []
    assert_equivalent(model, out)


def test_does_not_trust_a_wrong_declared_shape_for_expand():
    # value_info claims h is [2,3]; it is [2,1], so the Expand really broadcasts.
    model = parse(f"""
    {HEADER}
    g (float[2,1] x) => (float[2,3] y) <float[2,3] h, int64[2] shape23 = {{2, 3}}> {{
      h = Relu(x)
      y = Expand(h, shape23)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert not modified and op_counts(out)["Expand"] == 1
    assert_equivalent(model, out)


def test_does_not_trust_a_wrong_declared_output_shape_for_expand():
    model = parse(f"""
    {HEADER}
    g (float[2,1] x) => (float[2,3] h, float[2,3] y) <int64[2] shape23 = {{2, 3}}> {{
      h = Relu(x)
      y = Expand(h, shape23)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert not modified and op_counts(out)["Expand"] == 1
    assert [list(v.shape) for v in out.graph.outputs] == [[2, 3], [2, 3]]  # declarations kept
    assert_equivalent(model, out)


def test_does_not_trust_a_wrong_declared_shape_for_reshape():
    # value_info claims h is [3,2], which would make Reshape(h, [3,2]) look like a no-op; h is [2,3].
    model = parse(f"""
    {HEADER}
    g (float[2,3] x) => (float[3,2] y) <float[3,2] h, int64[2] s32 = {{3, 2}}> {{
      h = Relu(x)
      y = Reshape(h, s32)
    }}
    """)
    out, modified = apply(RemoveNoopOps(), model)
    assert not modified and op_counts(out)["Reshape"] == 1
    assert_equivalent(model, out)


@pytest.mark.parametrize("target, removed", [
    ("{-1}", True),  # a YOLO grid: Reshape(Range(0, n), [-1]) with n dynamic
    ("{0}", True),  # copy the one dim
    ("{-1, 1}", False),  # raises the rank
])
def test_reshape_that_names_every_dynamic_dim_goes(target, removed):
    model = parse(f"""
    {HEADER}
    g (float[N, 4] x) => (float[M] y) <float zero = {{0.0}}, float step = {{1.0}}, int64[1] first = {{0}},
      int64[{target.count(",") + 1}] t = {target}> {{
      s = Shape(x)
      n = Gather<axis = 0>(s, first)
      n0 = Squeeze(n)
      nf = Cast<to = 1>(n0)
      r = Range(zero, nf, step)
      h = Reshape(r, t)
      y = Relu(h)
    }}
    """.replace("float[M] y", "float[M] y" if removed else "float[M, 1] y"))
    out, modified = apply(RemoveNoopOps(), model)
    assert modified == removed
    assert ("Reshape" in op_counts(out)) != removed
    assert_equivalent(model, out, shapes={"x": (5, 4)})
