"""Verifier: reference outputs once, clear errors for unpinned shapes, catches a broken pass."""

import numpy as np
import onnx_ir as ir
import pytest
from gp_helpers import op_counts, parse

from graph_passes import Verifier, run_passes
from graph_passes._base import GraphPass
from graph_passes.verify import compare
from optimizer.errors import ConfigError, InputError, VerificationError

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x, int64[2] idx) => (float[N,3] y, float[2,3] g) <float[3] w = {1., 2., 3.}> {
  a = Add(x, w)
  y = Relu(a)
  g = Gather<axis=0>(y, idx)
}
"""


class SwapAddForSub(GraphPass):
    """Deliberately wrong: turns every Add into a Sub."""

    name = "swap_add_for_sub"

    def call(self, model):
        modified = False
        for node in list(model.graph):
            if node.op_type == "Add":
                sub = ir.node("Sub", inputs=list(node.inputs), name=node.name)
                ir.convenience.replace_nodes_and_values(model.graph, node, [node], [sub], node.outputs, sub.outputs)
                modified = True
        return ir.passes.PassResult(model, modified)


class Nudge(GraphPass):
    """Adds 1e-7 to the first output: within tolerance."""

    name = "nudge"

    def call(self, model):
        out = model.graph.outputs[0]
        eps = ir.Value(name="nudge_eps", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([]),
                       const_value=ir.tensor(np.float32(1e-7), name="nudge_eps"))
        model.graph.register_initializer(eps)
        node = ir.node("Add", inputs=[out, eps])
        model.graph.append(node)
        name = out.name
        out.name = name + "_pre"
        node.outputs[0].name = name
        node.outputs[0].type, node.outputs[0].shape = out.type, out.shape
        model.graph.outputs[0] = node.outputs[0]
        return ir.passes.PassResult(model, True)


class BreakModel(GraphPass):
    """Makes the model unloadable: a node with an op ONNX does not have."""

    name = "break_model"

    def call(self, model):
        node = next(iter(model.graph))
        node.op_type = "NoSuchOp"
        return ir.passes.PassResult(model, True)


def test_unpinned_dynamic_dim_is_resolved_not_refused():
    """Zero config: the batch-like dim N gets 1, and verification is numeric."""
    verifier = Verifier(parse(DYNAMIC))
    assert verifier.partial is None and verifier.numeric
    assert verifier.feeds[0]["x"].shape == (1, 3)


SEQUENCE_INPUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (seq(float[3]) s) => (float[3] y) {
  zero = Constant<value = int64 {0}>()
  y = SequenceAt(s, zero)
}
"""


def test_a_sequence_input_gives_partial_verification_that_still_checks_structure():
    model = parse(SEQUENCE_INPUT)
    verifier = Verifier(model)
    assert not verifier.numeric and "sequence" in verifier.partial
    assert "--data DIR" in verifier.describe_partial()
    assert verifier.check(model, "noop") == []
    broken = parse(SEQUENCE_INPUT)
    next(iter(broken.graph)).op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match="fails the ONNX checker"):
        verifier.check(broken, "break_model")


SHAPE_TENSOR_INPUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x, int64[2] target) => (float[A, B] y) {
  y = Reshape(x, target)
}
"""


def test_random_inputs_that_cannot_run_the_model_give_partial_verification():
    """A shape-tensor input: random [0, 4) values rarely reshape x; never a refusal."""
    verifier = Verifier(parse(SHAPE_TENSOR_INPUT), shapes={"x": (7,)})
    assert not verifier.numeric and "cannot run the original model on random inputs" in verifier.partial


def test_a_model_onnx_runtime_cannot_load_and_the_checker_rejects_is_invalid():
    bad = parse(DYNAMIC)
    next(iter(bad.graph)).op_type = "NoSuchOp"
    with pytest.raises(InputError, match="this model is invalid"):
        Verifier(bad, shapes={"x": (2, 3)})


def test_verification_feeds_over_the_size_limit_are_refused_before_allocation(monkeypatch):
    monkeypatch.setenv("TRTFORGE_MAX_FEED_BYTES", str(1 << 20))
    with pytest.raises(InputError, match="over the .* limit"):
        Verifier(parse(DYNAMIC), shapes={"x": (1 << 40, 3)})


def test_fp16_outputs_are_judged_at_fp16_precision():
    ref = {"h": np.array([1.0, 2.0], np.float16), "f": np.array([1.0, 2.0], np.float32)}
    off = {"h": np.array([1.0, 2.002], np.float16), "f": np.array([1.0, 2.002], np.float32)}
    diffs = {d.name: d for d in compare(ref, off)}
    assert diffs["h"].ok and not diffs["f"].ok


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"x": (4,)}, "rank 1"),
        ({"x": (4, 5)}, "declares 3"),
        ({"x": (4, 3), "nope": (1,)}, "not inputs of the model"),
    ],
)
def test_bad_pinned_shapes(shapes, message):
    with pytest.raises(ConfigError, match=message):
        Verifier(parse(DYNAMIC), shapes=shapes)


def test_feeds_must_fit_the_inputs():
    with pytest.raises(ConfigError, match="missing \\['idx'\\]"):
        Verifier(parse(DYNAMIC), feeds=[{"x": np.zeros((2, 3), np.float32)}])


def test_catches_a_semantics_breaking_pass_and_names_it():
    model = parse(DYNAMIC)
    verifier = Verifier(model, shapes={"x": (5, 3)})
    with pytest.raises(VerificationError) as err:
        run_passes(model, ["remove_identity", SwapAddForSub(), "eliminate_dead_code"], verifier=verifier, strict=True)
    message = str(err.value)
    assert "swap_add_for_sub" in message
    assert "output 'y'" in message or "output 'g'" in message
    assert "max abs error" in message and "max rel error" in message
    assert err.value.exit_code == 1
    # Rolled back: the model holds the passes before the broken one, and no Sub.
    assert "Sub" not in op_counts(model) and op_counts(model)["Add"] == 1


def test_within_tolerance_passes_and_reports_the_error():
    model = parse(DYNAMIC)
    feeds = [
        {"x": np.random.default_rng(s).standard_normal((n, 3)).astype(np.float32), "idx": np.array([0, 1])}
        for s, n in ((0, 2), (1, 7))
    ]
    verifier = Verifier(model, feeds=feeds)
    assert len(verifier.reference) == 2 and not verifier.synthetic
    records = run_passes(model, [Nudge()], verifier=verifier)
    assert any(n.startswith("verified:") for n in records[0].notes)


def test_an_unloadable_result_is_a_verification_error():
    model = parse(DYNAMIC)
    verifier = Verifier(model, shapes={"x": (4, 3)})
    with pytest.raises(VerificationError, match="break_model.*no longer runs"):
        run_passes(model, [BreakModel()], verifier=verifier, strict=True)
    assert "NoSuchOp" not in op_counts(model)


def test_without_strict_a_semantics_breaking_pass_is_rolled_back_named_and_skipped():
    model = parse(DYNAMIC)
    verifier = Verifier(model, shapes={"x": (5, 3)})
    records = run_passes(model, [SwapAddForSub(), "eliminate_dead_code"], verifier=verifier)
    broken = next(r for r in records if r.name == "swap_add_for_sub")
    assert broken.warning and "changed what the model computes" in broken.warning
    assert "Sub" not in op_counts(model) and op_counts(model)["Add"] == 1
    assert verifier.check(model, "end") is not None


def test_compare_handles_nan_inf_dtype_and_shape():
    ref = {"a": np.array([1.0, np.nan, np.inf]), "b": np.zeros(2, np.float32), "c": np.zeros(2, np.float32)}
    got = {"a": np.array([1.0, np.nan, np.inf]), "b": np.zeros(2, np.float64), "c": np.zeros(3, np.float32)}
    diffs = {d.name: d for d in compare(ref, got, rtol=1e-4, atol=1e-5)}
    assert diffs["a"].ok and diffs["a"].max_abs == 0
    assert "dtype" in diffs["b"].problem and "shape" in diffs["c"].problem
    bad = compare({"a": np.array([1.0, 2.0])}, {"a": np.array([1.0, np.nan])}, 1e-4, 1e-5)[0]
    assert not bad.ok and bad.ratio == np.inf


def test_an_input_dtype_onnx_runtime_cannot_be_fed_gives_partial_verification_not_a_refusal():
    model = parse("""
    <ir_version: 9, opset_import: ["" : 21]>
    g (float8e4m3fn[4] x) => (float[4] y) { y = Cast<to = 1>(x) }
    """)
    verifier = Verifier(model)
    assert not verifier.numeric and "FLOAT8E4M3FN" in verifier.partial


def test_the_checker_sees_external_data_beside_the_model(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    from optimizer.model import structural_problem
    from optimizer.model import load_model

    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4096])], [w])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="m.data")
    model = load_model(path)
    assert any(isinstance(t, ir.ExternalTensor) for t in [model.graph.initializers["w"].const_value])
    assert structural_problem(model) is None
