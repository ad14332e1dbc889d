"""run_passes and the pass library's contract: names, order, records, errors, rollback."""

import dataclasses
import importlib
from collections import Counter
import inspect

import onnx_ir as ir
import pytest
from gp_helpers import assert_equivalent, check_valid, op_counts, parse

import graph_passes
from graph_passes import DEFAULT_PASSES, PassRecord, available_passes, get_pass, run_passes
from graph_passes._base import GraphPass
from graph_passes.default_order import DEFAULT_ORDER
from optimizer.errors import ConfigError, PassError

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2,4] x) => (float[2,4] y, float[2,4] z)
<float[4] w1 = {1., 2., 3., 4.}, float[4] w2 = {1., 2., 3., 4.}, float unused = {3.0}> {
  one = Constant<value_float = 1.0>()
  i = Identity(x)
  d = Dropout(i)
  k = Add(w1, w1)
  a = Mul(d, k)
  b = Mul(a, one)
  p = Mul(b, w1)
  q = Mul(b, w2)
  dead = Sin(q)
  z = Add(p, q)
  y = If(c) <
    then_branch = t () => (float[2,4] t_out) {
      t_i = Identity(z)
      t_out = Neg(t_i)
    },
    else_branch = e () => (float[2,4] e_out) {
      e_out = Abs(z)
    }
  >
}
"""


def test_default_passes_are_the_commented_order():
    assert DEFAULT_PASSES == [p.name for p in DEFAULT_ORDER]
    assert DEFAULT_PASSES[-1] == "topological_sort"
    assert list(available_passes()) == DEFAULT_PASSES
    assert len(set(DEFAULT_PASSES)) == len(DEFAULT_PASSES)


def test_every_pass_is_one_module_with_name_doc_and_preconditions():
    for name, description in available_passes().items():
        cls = type(get_pass(name))
        assert issubclass(cls, GraphPass) and issubclass(cls, ir.passes.InPlacePass)
        assert cls.__module__ == f"graph_passes.{name}"
        assert description and "\n" not in description and len(description) < 120
        assert cls.preconditions
        module = importlib.import_module(cls.__module__)
        own = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
        assert [c for c in own if issubclass(c, GraphPass)] == [cls]


def test_unknown_names_raise_config_error_listing_valid_names():
    model = parse(MODEL)
    with pytest.raises(ConfigError) as err:
        run_passes(model, ["fold_constants", "fold_everything"])
    assert "fold_everything" in str(err.value)
    for name in DEFAULT_PASSES:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="no_such_pass"):
        run_passes(model, skip=["no_such_pass"])
    with pytest.raises(ConfigError, match="valid passes"):
        get_pass("nope")


def test_default_passes_on_a_small_model():
    model = parse(MODEL)
    original = model.clone()
    records = run_passes(model)
    assert [r.name for r in records] == DEFAULT_PASSES
    assert all(isinstance(r, PassRecord) and r.seconds >= 0 for r in records)
    # Counts include the If branches; each pass starts where the previous one ended.
    assert records[0].nodes_before == 14
    for prev, cur in zip(records, records[1:]):
        assert cur.nodes_before == prev.nodes_after
    assert records[-1].nodes_after < records[0].nodes_before
    assert op_counts(model) == {"Mul": 2, "Add": 1, "If": 1, "Neg": 1, "Abs": 1}
    by_name = {r.name: r for r in records}
    assert by_name["remove_dropout"].modified and by_name["fold_constants"].modified
    assert any("folded" in n for n in by_name["fold_constants"].notes)
    assert set(model.graph.initializers) == {"k", "w1"}
    check_valid(model)
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for cond in (True, False):
        assert_equivalent(original, model, feeds=[{"c": np.array(cond), "x": x}])


def test_named_subset_and_skip():
    model = parse(MODEL)
    records = run_passes(model, ["remove_identity", "remove_dropout", "eliminate_dead_code"], skip=["remove_dropout"])
    assert [r.name for r in records] == ["remove_identity", "eliminate_dead_code"]
    assert "Dropout" in op_counts(model) and "Sin" not in op_counts(model)


class _Crash(GraphPass):
    """Fails halfway through (for the test)."""

    name = "crash"

    def call(self, model):
        for node in list(model.graph):
            model.graph.remove(node, safe=False)
            raise RuntimeError("boom")
        return ir.passes.PassResult(model, True)


class _RenameOutput(GraphPass):
    """Renames the first graph output (for the test)."""

    name = "rename_output"

    def call(self, model):
        model.graph.outputs[0].name = "renamed"
        return ir.passes.PassResult(model, True)


def test_a_failing_pass_is_rolled_back_named_and_the_run_goes_on():
    model = parse(MODEL)
    before = op_counts(model)
    records = run_passes(model, ["remove_identity", _Crash(), "remove_dropout"])
    assert [r.name for r in records] == ["remove_identity", "crash", "remove_dropout"]
    crash = records[1]
    assert not crash.modified and "'crash'" in crash.warning and "boom" in crash.warning
    assert dataclasses.asdict(crash)["warning"] == crash.warning
    assert records[0].warning is None and records[2].modified
    # The crash was undone; the passes around it stayed applied.
    assert op_counts(model) == before - Counter({"Identity": 2, "Dropout": 1})
    check_valid(model)


def test_strict_makes_a_failing_pass_an_error():
    model = parse(MODEL)
    before = op_counts(model)
    with pytest.raises(PassError) as err:
        run_passes(model, ["remove_identity", _Crash(), "remove_dropout"], strict=True)
    assert "'crash'" in str(err.value) and "boom" in str(err.value) and "--strict" in str(err.value)
    assert op_counts(model) == before - Counter({"Identity": 2})  # remove_identity stayed applied
    assert isinstance(err.value.__cause__, Exception)
    check_valid(model)


def test_a_pass_that_changes_the_signature_is_rolled_back():
    model = parse(MODEL)
    (record,) = run_passes(model, [_RenameOutput()])
    assert "rename_output" in record.warning and not record.modified
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    with pytest.raises(PassError, match="rename_output"):
        run_passes(model, [_RenameOutput()], strict=True)
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_public_api():
    assert set(graph_passes.__all__) >= {"PassRecord", "available_passes", "DEFAULT_PASSES", "run_passes", "Verifier"}
    params = inspect.signature(run_passes).parameters
    assert list(params) == ["model", "names", "skip", "verifier", "explain", "opset", "specialize", "strict"]
    keyword_only = ("skip", "verifier", "explain", "opset", "specialize", "strict")
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in keyword_only)


EXPLAINED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z)
<float[2,2,1,1] w = {1., 2., 3., 4.}, float[2,1,1] c = {0.5, -1.}> {
  h = Conv(x, w)
  y = Add(h, c)
  z = Relu(h)
}
"""


def test_explain_records_why_a_rule_refused():
    # The Conv's output also feeds Relu: fold_conv_affine must refuse, and say so on request.
    quiet = run_passes(parse(EXPLAINED), ["fold_conv_affine"])
    assert quiet[0].refusals == []
    assert quiet[0].notes == ["refused 1 match (explain=True, or --explain, lists which and why)"]
    (record,) = run_passes(parse(EXPLAINED), ["fold_conv_affine"], explain=True)
    assert not record.modified
    assert record.refusals == ["Add (unnamed, output 'y'): the Conv output is also read elsewhere"]
    assert record.notes == ["refused 1 match; each is listed with its reason"]
    assert dataclasses.asdict(record)["refusals"] == record.refusals


# Seven Dropouts whose masks are graph outputs (more than the old notes' cut of 5), a
# BatchNormalization in training mode after a Conv, and two unnamed "+ 2**-30" near no-ops.
REFUSING = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y, bool[1,2,4,4] m0, bool[1,2,4,4] m1, bool[1,2,4,4] m2,
                         bool[1,2,4,4] m3, bool[1,2,4,4] m4, bool[1,2,4,4] m5, bool[1,2,4,4] m6)
<float[2,2,1,1] w = {1., 2., 3., 4.}, float[2] s = {1., 2.}, float[2] b = {0.5, 0.5},
 float[2] mean = {0.1, 0.2}, float[2] var = {1., 2.}, float eps = {9.313225746154785e-10}> {
  c = Conv(x, w)
  n = BatchNormalization<training_mode=1>(c, s, b, mean, var)
  h0, m0 = Dropout(n)
  h1, m1 = Dropout(h0)
  h2, m2 = Dropout(h1)
  h3, m3 = Dropout(h2)
  h4, m4 = Dropout(h3)
  h5, m5 = Dropout(h4)
  h6, m6 = Dropout(h5)
  y0 = Add(h6, eps)
  y = Add(y0, eps)
}
"""
REFUSING_PASSES = ["remove_dropout", "fold_batchnorm_into_conv", "remove_noop_ops"]


def _refusing_model() -> ir.Model:
    model = parse(REFUSING)
    for node in model.graph:
        if node.op_type in ("Dropout", "BatchNormalization"):
            node.name = f"{node.op_type.lower()}_{node.outputs[0].name}"
    return model


def test_every_refusal_is_counted_in_one_note_without_explain():
    records = run_passes(_refusing_model(), REFUSING_PASSES)
    counts = {r.name: r.notes[-1] for r in records}
    assert counts == {
        "remove_dropout": "refused 7 matches (explain=True, or --explain, lists which and why)",
        "fold_batchnorm_into_conv": "refused 1 match (explain=True, or --explain, lists which and why)",
        "remove_noop_ops": "refused 2 matches (explain=True, or --explain, lists which and why)",
    }
    assert all(r.refusals == [] and not r.modified for r in records)
    assert not [n for r in records for n in r.notes if n.startswith("kept")]  # no per-pass summaries left


def test_explain_lists_every_refused_node_by_name():
    records = {r.name: r for r in run_passes(_refusing_model(), REFUSING_PASSES, explain=True)}
    assert records["remove_dropout"].refusals == [
        f"Dropout 'dropout_h{i}': its mask 'm{i}' is a graph output" for i in range(7)
    ]
    assert records["fold_batchnorm_into_conv"].refusals == [
        "BatchNormalization 'batchnormalization_n': BatchNormalization runs in training mode (batch statistics)"
    ]
    # Two unnamed nodes refused for the same reason are two lines, each once despite the rounds.
    assert records["remove_noop_ops"].refusals == [
        "Add (unnamed, output 'y0'): constant 9.313225746154785e-10 is close to but not exactly 0",
        "Add (unnamed, output 'y'): constant 9.313225746154785e-10 is close to but not exactly 0",
    ]
    assert records["remove_dropout"].notes == ["refused 7 matches; each is listed with its reason"]


def test_import_is_light():
    # onnxscript (rewriter, folder) and onnxruntime (Verifier) load on first use only.
    import subprocess
    import sys

    code = "import sys, graph_passes; print('onnxscript' in sys.modules, 'onnxruntime' in sys.modules)"
    from pathlib import Path

    repo = Path(graph_passes.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.split() == ["False", "False"]
