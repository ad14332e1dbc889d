"""Validation: error statistics against hand-computed values, task metric plugins, latency harness."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper

from optimizer.errors import ConfigError, ValidationError
from optimizer.runners import OrtRunner
from optimizer.validate import MetricContext, compare, load_metric, measure_latency


def _scale_model(path, factor: float, out_name: str = "y"):
    """y = x * factor: a candidate with a known, exact error against factor 1."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], [out_name])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("k", onnx.TensorProto.FLOAT, [], [factor])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_error_statistics_match_hand_computation(tmp_path):
    ref = OrtRunner(_scale_model(tmp_path / "ref.onnx", 1.0))
    cand = OrtRunner(_scale_model(tmp_path / "cand.onnx", 1.1))
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(5)]
    result = compare(ref, cand, samples)
    (out,) = result.outputs
    xs = np.concatenate([s["x"].ravel() for s in samples]).astype(np.float64)
    assert out.max_abs == pytest.approx(0.1 * np.abs(xs).max(), rel=1e-5)
    assert out.mean_abs == pytest.approx(0.1 * np.abs(xs).mean(), rel=1e-5)
    assert out.max_rel == pytest.approx(0.1, rel=1e-5)
    assert out.cosine_min == pytest.approx(1.0, abs=1e-6)  # a pure scale keeps direction
    assert out.snr_db == pytest.approx(20.0, abs=1e-3)  # noise is 0.1 x signal → 20 dB
    assert result.samples == 5


def test_identical_models_have_zero_error(tmp_path):
    ref = OrtRunner(_scale_model(tmp_path / "ref.onnx", 2.0))
    result = compare(ref, ref, [{"x": np.ones((1, 4), np.float32)}])
    assert result.outputs[0].max_abs == 0.0 and result.outputs[0].snr_db == 999.0


def test_missing_output_and_empty_data(tmp_path):
    ref = OrtRunner(_scale_model(tmp_path / "ref.onnx", 1.0))
    other = OrtRunner(_scale_model(tmp_path / "other.onnx", 1.0, out_name="z"))
    with pytest.raises(ValidationError, match="lacks the reference's outputs"):
        compare(ref, other, [{"x": np.ones((1, 4), np.float32)}])
    with pytest.raises(ValidationError, match="no validation samples"):
        compare(ref, ref, [])


def test_task_metric_plugin(tmp_path):
    plugin = tmp_path / "metric.py"
    plugin.write_text(
        "NAME = 'mean_out'\nHIGHER_IS_BETTER = True\n"
        "def mean_out(outputs, labels, context):\n"
        "    assert context.metadata == {'k': 'v'}\n"
        "    return float(sum(o['y'].mean() for o in outputs) / len(outputs)) + 0 * len(labels)\n"
    )
    metric = load_metric("metric.py:mean_out", tmp_path)
    assert metric.name == "mean_out" and metric.higher_is_better
    ref = OrtRunner(_scale_model(tmp_path / "ref.onnx", 1.0))
    cand = OrtRunner(_scale_model(tmp_path / "cand.onnx", 2.0))
    result = compare(ref, cand, [{"x": np.ones((1, 4), np.float32)}], labels=["a"], metric=metric, context=MetricContext({"k": "v"}))
    assert result.task.reference == pytest.approx(1.0) and result.task.candidate == pytest.approx(2.0)
    with pytest.raises(ValidationError, match="needs one label per sample"):
        compare(ref, cand, [{"x": np.ones((1, 4), np.float32)}], labels=None, metric=metric)


@pytest.mark.parametrize(
    "spec, message",
    [("nofunction", "expected 'path/to/file.py:function'"), ("missing.py:f", "not found"), ("m.py:absent", "has no function 'absent'")],
)
def test_bad_metric_specs(tmp_path, spec, message):
    (tmp_path / "m.py").write_text("def f(o, l, c):\n    return 0.0\n")
    with pytest.raises(ConfigError, match=message):
        load_metric(spec, tmp_path)


def test_latency_harness_times_every_runner_alike(tmp_path):
    ref = OrtRunner(_scale_model(tmp_path / "ref.onnx", 1.0), threads=1)
    cand = OrtRunner(_scale_model(tmp_path / "cand.onnx", 1.1), threads=1)
    calls = {"ref": 0, "cand": 0}

    class Counting:
        def __init__(self, runner, key):
            self.runner, self.key = runner, key

        def run(self, feeds):
            calls[self.key] += 1
            return self.runner.run(feeds)

    feeds = [{"x": np.ones((1, 4), np.float32)}, {"x": np.zeros((1, 4), np.float32)}]
    times = measure_latency({"ref": Counting(ref, "ref"), "cand": Counting(cand, "cand")}, feeds, warmup=2, iterations=10)
    assert calls == {"ref": 2 * 2 + 10, "cand": 2 * 2 + 10}
    for t in times.values():
        assert 0 < t.p50_ms <= t.p90_ms <= t.p99_ms and math.isfinite(t.mean_ms)


# ---------------------------------------------------------------- `trtforge validate` with no flags: default gates


@pytest.fixture(scope="module")
def chain_models(tmp_path_factory):
    """A MatMul chain, its per-tensor INT8 copy (broken by one wide weight column) and validation data."""
    from calibration import quantize
    from test_divergence import _chain_model, _samples

    d = tmp_path_factory.mktemp("validate_cli")
    ref = d / "ref.onnx"
    _chain_model(ref, wide_column=True)
    bad = d / "bad.onnx"
    quantize(ref, bad, _samples(8, seed=2), per_channel=False)
    data = d / "val"
    data.mkdir()
    for i, feed in enumerate(_samples(6, seed=5)):
        np.savez(data / f"{i:03d}.npz", **feed)
    return ref, bad, data


def _validate(*args):
    from click.testing import CliRunner

    from optimizer.cli import main

    return CliRunner().invoke(main, ["validate", *map(str, args), "--no-latency"])


def test_broken_candidate_fails_without_gates_and_the_search_measures_its_fix(chain_models):
    import subprocess
    import sys

    ref, bad, data = chain_models
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "validate", str(bad), "--reference", str(ref), "--data", str(data), "--no-latency"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "default gate min_cosine>=" in out and "FAIL" in out
    assert "first divergent layer: " in out and "--exclude mm2" in out  # the MatMul whose weight lost precision
    # The recommendation was applied and measured before it was printed.
    assert "measured: excluding the 1 recommended node(s) gives min_cosine" in out and "The error is local" in out
    assert "wrote candidate" not in out  # validation reads the candidate; it writes nothing


def test_identical_candidate_passes_the_default_gates(chain_models, tmp_path):
    ref, _, data = chain_models
    result = _validate(ref, "--reference", ref, "--data", data, "--report", tmp_path / "r.json", "--junit", tmp_path / "j.xml")
    assert result.exit_code == 0, result.output
    assert "default gate nonfinite_values==0: pass" in " ".join(result.output.split())
    assert f"wrote {tmp_path / 'r.json'}" in result.output
    junit = (tmp_path / "j.xml").read_text()
    assert 'classname="trtforge.default_gates.' in junit and 'name="default_gates"' in junit


def test_explicit_gate_replaces_defaults_and_no_default_gates_drops_them(chain_models):
    ref, bad, data = chain_models
    loose = _validate(bad, "--reference", ref, "--data", data, "--gate", "min_cosine>=0.1", "--divergence", "never")
    assert loose.exit_code == 0, loose.output
    assert "default gate" not in loose.output and "gate min_cosine>=0.1: pass" in loose.output
    dropped = _validate(bad, "--reference", ref, "--data", data, "--no-default-gates", "--divergence", "never")
    assert dropped.exit_code == 0 and "gate" not in dropped.output.replace("gates", ""), dropped.output


def test_help_lists_the_default_gates_with_their_thresholds():
    from click.testing import CliRunner

    from optimizer.cli import main
    from optimizer.gates import DEFAULT_MIN_COSINE, DEFAULT_MIN_SNR_DB, DEFAULT_MIN_TOP1

    text = CliRunner().invoke(main, ["validate", "--help"]).output
    for expected in (f"min_cosine>={DEFAULT_MIN_COSINE:g}", f"min_snr_db>={DEFAULT_MIN_SNR_DB:g}",
                     f"min_top1_agreement>={DEFAULT_MIN_TOP1:g}", "nonfinite_values==0", "--no-default-gates"):
        assert expected in text, expected
