"""remove_dropout: inference Dropout goes; training-mode Dropout and used masks stay."""

import numpy as np
import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.remove_dropout import RemoveDropout


@pytest.mark.parametrize(
    "opset, body",
    [
        (13, "h = Dropout(x)"),
        (13, "h, unused_mask = Dropout(x, ratio, no)"),
        (13, "h = Dropout(x, zero, yes)"),  # training mode with ratio 0 drops nothing
        (10, "h, unused_mask = Dropout <ratio = 0.5> (x)"),
        (7, "h = Dropout <ratio = 0.3> (x)"),
    ],
)
def test_removes_inference_dropout(opset, body):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,8] x) => (float[2,8] y)
    <float ratio = {{0.5}}, float zero = {{0.0}}, bool no = {{0}}, bool yes = {{1}}> {{
      {body}
      y = Relu(h)
    }}
    """)
    pass_ = RemoveDropout()
    out, modified = apply(pass_, model)
    assert modified
    assert "Dropout" not in op_counts(out)
    assert pass_.notes == ["removed 1 Dropout"]
    assert_equivalent(model, out)


def test_dropout_producing_graph_output_keeps_the_name():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,8] x) => (float[2,8] y) {
      h = Relu(x)
      y = Dropout(h)
    }
    """)
    out, modified = apply(RemoveDropout(), model)
    assert modified
    assert op_counts(out) == {"Relu": 1}
    assert [v.name for v in out.graph.outputs] == ["y"]
    assert_equivalent(model, out)


def test_dropout_from_graph_input_to_graph_output_becomes_identity():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,8] x) => (float[2,8] y) {
      y = Dropout(x)
    }
    """)
    out, modified = apply(RemoveDropout(), model)
    assert modified
    assert op_counts(out) == {"Identity": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize(
    "outputs, body, reason",
    [
        ("float[2,8] y, bool[2,8] mask", "h, mask = Dropout(x)\n y = Relu(h)", "mask 'mask' is a graph output"),
        ("float[2,8] y", "h, mask = Dropout(x)\n m = Cast<to=1>(mask)\n y = Mul(h, m)", "mask 'mask' is used"),
        ("float[2,8] y", "h = Dropout(x, ratio, yes)\n y = Relu(h)", "training mode"),
        ("float[2,8] y", "h = Dropout(x, ratio, train)\n y = Relu(h)", "training_mode 'train' is not a constant"),
    ],
)
def test_refuses_when_precondition_fails(outputs, body, reason):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,8] x, bool train) => ({outputs})
    <float ratio = {{0.5}}, bool yes = {{1}}> {{
      {body}
    }}
    """)
    pass_ = RemoveDropout()
    out, modified = apply(pass_, model)
    assert not modified
    assert op_counts(out) == op_counts(model)
    assert pass_.notes == []  # the reason is a refusal, not a note
    assert len(pass_.refusals) == 1 and pass_.refusals[0].startswith("Dropout (unnamed, output 'h'): ")
    assert reason in pass_.refusals[0], pass_.refusals
    if "train" not in body and "yes" not in body:  # inference: deterministic, so comparable
        x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
        assert_equivalent(model, out, feeds=[{"x": x, "train": np.array(False)}])


def test_opset6_training_default_is_kept():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,8] x) => (float[2,8] y) {
      y = Dropout(x)
    }
    """)
    pass_ = RemoveDropout()
    _, modified = apply(pass_, model)
    assert not modified
    assert len(pass_.refusals) == 1 and "is_test=1" in pass_.refusals[0]
