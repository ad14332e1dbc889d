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
    ],
)
def test_removes_noop(body):
    model = parse(f"""
    {HEADER}
    g (float[2,3] x) => (float[2,3] y)
    <float one = {{1.0}}, float zero = {{0.0}}, float[1,3] ones_row = {{1., 1., 1.}}, int64[2] shape23 = {{2, 3}}> {{
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
    ],
)
def test_keeps_what_is_not_a_noop(x_shape, y_decl, body, reason):
    model = parse(f"""
    {HEADER}
    g (float[{x_shape}] x) => ({y_decl} y)
    <float eps = {{1e-12}}, float two = {{2.0}},
     float[2,1,3] ones_3d = {{1.,1.,1.,1.,1.,1.}}, float[4,1] ones_col = {{1.,1.,1.,1.}}> {{
      {body}
    }}
    """)
    pass_ = RemoveNoopOps()
    out, modified = apply(pass_, model)
    assert not modified, pass_.notes
    assert op_counts(out) == op_counts(model)
    if reason:
        assert any(reason in n for n in pass_.notes), pass_.notes
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
