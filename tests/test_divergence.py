"""First-divergent-layer search: real Q/DQ candidates from ``calibration.quantize``, run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import quantize
from optimizer.divergence import Tolerance, find_divergence, pair_tensors
from optimizer.errors import ConfigError, ValidationError
from optimizer.model import load_model
from optimizer.runners import OrtRunner
from optimizer.validate import OutputStats


def _chain_model(path, *, wide_column: bool) -> None:
    """x[?,16] → mm1 → Relu → mm2 → Relu → mm3 → y; mm2's weight optionally has one huge column.

    A huge column makes one per-tensor weight scale 100x too coarse for the other columns,
    while per-channel scales keep every column exact to int8 precision.
    """
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((32, 32)).astype(np.float32) * 0.3
    if wide_column:
        w2[:, 0] *= 200.0
    w3 = rng.standard_normal((32, 8)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w, n) for n, w in (("w1", w1), ("w2", w2), ("w3", w3))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _samples(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (4, 16)).astype(np.float32)} for _ in range(count)]


def _snr(reference, candidate, feeds) -> float:
    ref, cand = OrtRunner(reference), OrtRunner(candidate)
    stats = OutputStats("y")
    for f in feeds:
        stats.add(ref.run(f)["y"], cand.run(f)["y"])
    return stats.result().snr_db


@pytest.fixture(scope="module")
def bad_candidate(tmp_path_factory):
    d = tmp_path_factory.mktemp("div")
    ref = d / "ref.onnx"
    _chain_model(ref, wide_column=True)
    cand = d / "per_tensor.onnx"
    quantize(ref, cand, _samples(8, seed=2), per_channel=False)
    return ref, cand, d


def test_search_names_the_layer_whose_weights_lose_precision(bad_candidate):
    ref, cand, _ = bad_candidate
    feeds = _samples(3)
    result = find_divergence(ref, cand, feeds, chunk=4)
    assert result.first is not None
    # mm1 has an ordinary weight and survives per-tensor INT8; mm2 is where the output breaks.
    mm1 = next(layer for layer in result.layers if layer.node == "mm1" and layer.kind == "node")
    assert not mm1.diverges, mm1
    # mm2's own output still looks fine (its huge column dominates the SNR); the Relu after it,
    # which drops that column's negative half, is the first tensor beyond tolerance. Relu is
    # not quantized, so the recommendation walks up to the quantized node feeding it.
    assert (result.first.node, result.first.kind) == ("relu2", "node")
    assert result.recommend_exclude == ["mm2"]
    local = {layer.node for layer in result.layers if layer.kind == "local"}
    assert {"mm1", "mm2"} <= local
    # Activations re-created through Q/DQ are mapped back to their original names.
    assert "r1" in {layer.tensor for layer in result.layers if layer.kind == "requantized"}
    assert result.peak_rss_anon_mb >= result.baseline_rss_anon_mb > 0


def test_applying_the_recommendation_restores_accuracy(bad_candidate):
    ref, cand, d = bad_candidate
    feeds = _samples(4, seed=3)
    result = find_divergence(ref, cand, feeds[:2])
    fixed = d / "fixed.onnx"
    quantize(ref, fixed, _samples(8, seed=2), per_channel=False, exclude=result.recommend_exclude)
    before, after = _snr(ref, cand, feeds), _snr(ref, fixed, feeds)
    assert before < Tolerance().min_snr_db <= after, (before, after)
    assert find_divergence(ref, fixed, feeds[:2]).first is None


def test_chunk_size_changes_memory_not_results(bad_candidate):
    ref, cand, _ = bad_candidate
    feeds = _samples(2)
    one = find_divergence(ref, cand, feeds, chunk=1)
    many = find_divergence(ref, cand, feeds, chunk=1000)
    assert one.sessions == one.compared and many.sessions == 1
    assert [(a.tensor, a.kind) for a in one.layers] == [(b.tensor, b.kind) for b in many.layers]
    np.testing.assert_allclose([a.snr_db for a in one.layers], [b.snr_db for b in many.layers], rtol=1e-9)


def test_cast_round_trip_pairs_by_original_name(tmp_path):
    ref = tmp_path / "ref.onnx"
    _chain_model(ref, wide_column=False)
    model = load_model(ref)
    graph = model.graph
    relu1 = next(n for n in graph if n.name == "relu1")
    r1 = relu1.outputs[0]
    half = ir.node("Cast", [r1], {"to": ir.DataType.FLOAT16}, name="to_half")
    back = ir.node("Cast", [half.outputs[0]], {"to": ir.DataType.FLOAT}, name="to_float")
    half.outputs[0].name, back.outputs[0].name = "r1_fp16", "r1_roundtrip"
    next(n for n in graph if n.name == "mm2").replace_input_with(0, back.outputs[0])
    graph.insert_after(relu1, [half, back])
    cand = tmp_path / "cast.onnx"
    ir.save(model, cand)
    pairs, _ = pair_tensors(load_model(ref), load_model(cand))
    assert ("r1", "r1_roundtrip", "requantized") in {(p.ref_name, p.cand_name, p.kind) for p in pairs}
    result = find_divergence(ref, cand, _samples(2))
    roundtrip = next(layer for layer in result.layers if layer.candidate_tensor == "r1_roundtrip")
    assert 40 < roundtrip.snr_db < 999  # FP16 rounding: measurable, far within tolerance
    assert result.first is None and result.recommend_exclude == []


def test_bad_inputs(bad_candidate, tmp_path):
    ref, cand, _ = bad_candidate
    with pytest.raises(ConfigError, match="chunk"):
        find_divergence(ref, cand, _samples(1), chunk=0)
    with pytest.raises(ValidationError, match="at least one input sample"):
        find_divergence(ref, cand, [])
    other = tmp_path / "other.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])
    y = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 16])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["z"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 13)]), other)
    with pytest.raises(ValidationError, match="shares no tensor names"):
        find_divergence(other, cand, _samples(1))


@pytest.mark.slow
def test_sample_per_tensor_int8_fails_the_gate_and_the_recommendation_fixes_it(sample_dir, tmp_path):
    """The must-show on the real sample: per-tensor MinMax INT8 of PP-OCRv4 rec breaks CER; the search's fix restores it."""
    from calibration import NpzFolderSource
    from optimizer.gates import evaluate_gates
    from optimizer.model import metadata
    from optimizer.validate import MetricContext, compare, load_metric

    model = sample_dir / "ppocr_rec.onnx"
    calib, val = NpzFolderSource(sample_dir / "data" / "calib"), NpzFolderSource(sample_dir / "data" / "val")
    metric = load_metric(str(Path(__file__).resolve().parents[1] / "samples" / "ppocr_rec" / "metric.py") + ":cer")
    context = MetricContext(metadata(load_model(model)))
    gate = ["cer_increase<=1.0"]

    def cer_gate(candidate):
        result = compare(OrtRunner(model), OrtRunner(candidate), val, labels=val.labels, metric=metric, context=context)
        return result.task, evaluate_gates(gate, result)[0]

    bad = tmp_path / "per_tensor.onnx"
    quantize(model, bad, calib, per_channel=False)
    task, verdict = cer_gate(bad)
    assert not verdict.passed and task.change > 10, task  # the recognizer collapses

    result = find_divergence(model, bad, val, max_samples=2, chunk=64)
    assert result.first is not None and result.recommend_exclude
    assert result.sessions >= result.compared / 64 >= 2  # chunked: never all tensors in one session
    assert result.peak_rss_anon_mb < 2048  # bounded: the model is 10 MB, a chunk of activations a few hundred MB at most

    fixed = tmp_path / "fixed.onnx"
    quantize(model, fixed, calib, per_channel=False, exclude=result.recommend_exclude)
    task, verdict = cer_gate(fixed)
    assert verdict.passed, (task, result.recommend_exclude, result.reason)


# ---------------------------------------------------------------- the recommendation, measured


def test_excluding_in_the_candidate_equals_requantizing_with_exclude(bad_candidate):
    from optimizer.divergence import exclude_in_candidate
    from optimizer.model import save_model

    ref, cand, d = bad_candidate
    model = load_model(cand)
    assert exclude_in_candidate(load_model(ref), model, ["mm2"]) == ["mm2"]
    assert not any(n.op_type == "DequantizeLinear" and "w2" in n.name for n in model.graph)  # its int8 weight is gone
    surgery = save_model(model, d / "surgery.onnx")
    requantized = d / "requantized.onnx"
    quantize(ref, requantized, _samples(8, seed=2), per_channel=False, exclude=["mm2"])
    a, b = OrtRunner(surgery), OrtRunner(requantized)
    for feed in _samples(3, seed=9):
        np.testing.assert_array_equal(a.run(feed)["y"], b.run(feed)["y"])


def _gate_failure(ref, cand, val, gate):
    from optimizer.gates import evaluate_gates
    from optimizer.validate import compare

    validation = compare(OrtRunner(ref), OrtRunner(cand), val)
    failing = [g.expression for g in evaluate_gates([gate], validation) if not g.passed]
    assert failing == [gate], validation.outputs
    return validation, failing


def test_a_local_error_is_fixed_by_the_recommendation_and_says_so(bad_candidate):
    from optimizer.divergence import measure_fix

    ref, cand, _ = bad_candidate
    val = _samples(6, seed=5)
    validation, failing = _gate_failure(ref, cand, val, "min_cosine>=0.99")
    fix = measure_fix(find_divergence(ref, cand, val[:2]), ref, val, failing, validation)
    assert [t.exclude for t in fix.trials] == [["mm2"]] and fix.passed and not fix.distributed
    assert fix.before["min_cosine"] < 0.99 <= fix.trials[0].metrics["min_cosine"]
    assert "The error is local" in fix.verdict and "min_cosine" in fix.verdict


def _deep_model(path, layers: int = 8, width: int = 32) -> None:
    """MatMul → Tanh, ``layers`` times; every weight has one 8x column, so every per-tensor scale is equally coarse."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        w[:, 0] *= 8.0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"t{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Tanh", [f"h{i}"], [out], name=f"tanh{i}")]
        prev = out
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_a_distributed_error_is_measured_extended_and_named(tmp_path):
    from optimizer.divergence import MAX_FIX_SHARE, measure_fix

    ref, cand = tmp_path / "deep.onnx", tmp_path / "deep.int8.onnx"
    _deep_model(ref)
    feeds = lambda n, seed: [{"x": np.random.default_rng(seed + i).uniform(-1, 1, (4, 32)).astype(np.float32)} for i in range(n)]
    quantize(ref, cand, feeds(8, 100), per_channel=False)
    val = feeds(6, 200)
    validation, failing = _gate_failure(ref, cand, val, "min_cosine>=0.999")
    result = find_divergence(ref, cand, val[:2])
    fix = measure_fix(result, ref, val, failing, validation)
    # The recommendation, then greedy doubling up to half of the 8 quantized MatMuls; each one run for real.
    assert [len(t.exclude) for t in fix.trials] == [1, 2, 4] and len(fix.trials[-1].exclude) == int(8 * MAX_FIX_SHARE)
    assert fix.distributed and not fix.passed
    cosines = [fix.before["min_cosine"]] + [t.metrics["min_cosine"] for t in fix.trials]
    assert max(cosines) < 0.999 and len(set(cosines)) == len(cosines)  # measured, not copied
    assert "distributed, not local" in fix.verdict and "per-channel weights" in fix.verdict and "--budget" in fix.verdict


def test_no_fix_is_measured_for_a_gate_no_model_can_pass(bad_candidate):
    from optimizer.divergence import measure_fix

    ref, cand, _ = bad_candidate
    val = _samples(4, seed=5)
    validation, failing = _gate_failure(ref, cand, val, "min_cosine>=1.01")
    assert measure_fix(find_divergence(ref, cand, val[:2]), ref, val, failing, validation) is None
