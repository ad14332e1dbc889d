"""Budget search: per-layer sensitivity finds the layer INT8 breaks, and only that one stays FP32."""

from __future__ import annotations

import numpy as np
import pytest
from cal_models import model_from_text, op_types, rand, run, save, uniform_samples

from calibration.sensitivity import output_nrmse, parse_budget, quantize_model, quantize_with_budget
from optimizer.errors import ConfigError
from optimizer.model import load_model

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,32] x) => (float[N,32] y) {
    [m1] h1 = MatMul (x, w1)
    [m2] h2 = MatMul (h1, w2)
    [relu] r = Relu (h2)
    [m3] y = MatMul (r, w3)
}"""


def _weights():
    # h1's column 0 is 1000x the others: one per-tensor activation scale for m2's input then
    # rounds every other column to 0. w2's row 0 scales that column back, so FP32 is balanced.
    w1, w2 = rand(32, 32, seed=1), rand(32, 32, seed=2)
    w1[:, 0] *= 1000
    w2[0, :] /= 1000
    return {"w1": w1, "w2": w2, "w3": rand(32, 32, seed=3)}


@pytest.fixture
def model_and_data(tmp_path):
    src = save(model_from_text(TEXT, **_weights()), tmp_path / "m.onnx")
    return src, uniform_samples({"x": (4, 32)}, 8, seed=0), uniform_samples({"x": (4, 32)}, 10, seed=1)


def test_output_budget_keeps_exactly_the_broken_layer(tmp_path, model_and_data):
    src, calib, val = model_and_data
    result = quantize_with_budget(src, tmp_path / "q.onnx", calib, val, budget="output_nrmse<=0.05", target="tensorrt")
    sens = result.sensitivity
    assert max(sens, key=sens.get) == "m2" and sens["m2"] > 10 * max(sens["m1"], sens["m3"])
    assert result.all_int8_change > 0.05 and result.met and result.kept == ["m2"]
    assert "rank 1 of 3" in result.reasons["m2"] and result.final_change <= 0.05
    assert sorted(result.quantize.quantized_nodes) == ["m1", "m3"] and result.quantize.skipped["m2"] == "excluded by name"
    q = load_model(result.quantize.output_path)
    assert op_types(q).count("QuantizeLinear") == 2
    # The written model has the error the search measured.
    ref = [run(src, f) for f in val]
    got = [run(q, f) for f in val]
    assert output_nrmse(got, ref) == pytest.approx(result.final_change, rel=1e-5)


def test_budget_met_by_full_int8_measures_nothing_more(tmp_path, model_and_data):
    src, calib, val = model_and_data
    result = quantize_with_budget(src, tmp_path / "q.onnx", calib, val, budget="output_nrmse<=10", target="onnxruntime-cpu")
    assert result.met and result.kept == [] and result.sensitivity == {} and result.evaluations == 1


def test_task_metric_budget(tmp_path, model_and_data):
    src, calib, val = model_and_data
    labels = [run(src, f)["y"].argmax(-1) for f in val]  # FP32's own decisions as ground truth

    def agreement(outputs):
        return 100 * float(np.mean([np.mean(o["y"].argmax(-1) == y) for o, y in zip(outputs, labels)]))

    result = quantize_with_budget(
        src, tmp_path / "q.onnx", calib, val, budget="agreement_drop<=5", metric=agreement, higher_is_better=True
    )
    assert result.fp32_score == 100.0 and result.all_int8_change > 5
    assert result.met and result.kept == ["m2"] and result.final_change <= 5


def test_progress_counts_the_models_tried_and_log_narrates(tmp_path, model_and_data):
    src, calib, val = model_and_data
    done, lines = [], []
    result = quantize_with_budget(
        src, tmp_path / "q.onnx", calib, val, budget="output_nrmse<=0.05", progress=done.append, log=lines.append
    )
    # One count per partially quantized model run: each layer alone (3), then every scored probe.
    assert done == list(range(1, len(result.sensitivity) + result.evaluations + 1)) and len(result.sensitivity) == 3
    assert lines[0] == "calibrating 3 tensors on 8 samples" and "measuring 3 layers one at a time" in lines[1]


def test_quantize_model_is_quantize_without_a_budget_and_the_search_with_one(tmp_path, model_and_data):
    src, calib, val = model_and_data
    seen = []
    plain = quantize_model(src, tmp_path / "a.onnx", calib, method="mse", progress=seen.append)
    assert plain.search is None and "budget" not in plain.details() and plain.details()["method"] == "mse"
    assert sorted(plain.result.quantized_nodes) == ["m1", "m2", "m3"] and seen == list(range(1, len(calib) + 1))
    searched = quantize_model(src, tmp_path / "b.onnx", calib, budget="output_nrmse<=0.05", val=val)
    assert searched.result is searched.search.quantize and searched.search.kept == ["m2"]
    details = searched.details()
    assert details["budget"]["kept"] == ["m2"] and sorted(details["quantized_nodes"]) == ["m1", "m3"]
    assert set(details["budget"]["quantize"]) == {"output_path", "target", "method", "num_q", "num_dq", "quantized_weight_share"}
    with pytest.raises(ConfigError, match="measured on validation data"):
        quantize_model(src, tmp_path / "c.onnx", calib, budget="output_nrmse<=0.05")
    assert not (tmp_path / "c.onnx").exists()


def test_budget_refusals(tmp_path, model_and_data):
    src, calib, val = model_and_data
    for text, match in [("cer<0.1", "expected 'name<=number'"), ("speed<=2", "neither"), ("cer_increase<=-1", ">= 0")]:
        with pytest.raises(ConfigError, match=match):
            parse_budget(text)
    with pytest.raises(ConfigError, match="needs a task metric"):
        quantize_with_budget(src, tmp_path / "q.onnx", calib, val, budget="cer_increase<=0.1")
    with pytest.raises(ConfigError, match="use 'cer_increase'"):
        quantize_with_budget(src, tmp_path / "q.onnx", calib, val, budget="cer_drop<=0.1", metric=len)
    assert not (tmp_path / "q.onnx").exists()


def test_cli_quantize_with_budget(tmp_path, model_and_data):
    import json

    from click.testing import CliRunner

    from optimizer.cli import main

    src, calib, val = model_and_data
    for name, samples in (("calib", calib), ("val", val)):
        (tmp_path / name).mkdir()
        for i, feed in enumerate(samples):
            np.savez(tmp_path / name / f"{i:03d}.npz", **feed)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(src), "-o", str(out), "--calib", str(tmp_path / "calib"), "--method", "mse"]
    res = CliRunner().invoke(main, [*args, "--val", str(tmp_path / "val"), "--budget", "output_nrmse<=0.05", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["method"] == "mse" and data["budget"]["kept"] == ["m2"] and data["budget"]["met"]
    text = CliRunner().invoke(main, [*args, "--val", str(tmp_path / "val"), "--budget", "output_nrmse<=0.05"]).output
    assert "measuring 3 layers one at a time" in text and "met" in text and "kept in FP32: m2" in text
    assert "m2: sensitivity rank 1 of 3" in text and "quantized 2 node(s) for tensorrt" in text
    res = CliRunner().invoke(main, [*args, "--val", str(tmp_path / "val"), "--budget", "output_nrmse<=0"])
    assert res.exit_code == 2 and "holds only with every layer in FP32" in res.output
    res = CliRunner().invoke(main, [*args, "--budget", "output_nrmse<=0.05"])
    assert res.exit_code == 2 and "pass --val DIR" in res.output


def test_pipeline_precision_stage_with_budget(tmp_path, model_and_data):
    from optimizer.pipeline import optimize
    from optimizer.recipe import recipe_from_dict

    src, calib, val = model_and_data
    for name, samples in (("calib", calib), ("val", val)):
        (tmp_path / name).mkdir()
        for i, feed in enumerate(samples):
            np.savez(tmp_path / name / f"{i:03d}.npz", **feed)
    recipe = recipe_from_dict({
        "passes": {"enabled": False},
        "precision": {"mode": "int8", "method": "mse", "budget": "output_nrmse<=0.05"},
        "build": {"enabled": "no"},
        "validate": {"latency": {"enabled": False}},
    })
    report = optimize(src, tmp_path / "out", recipe, calib=tmp_path / "calib", val=tmp_path / "val")
    stage = next(s for s in report.stages if s.name == "precision")
    assert stage.status == "ran" and stage.details["budget"]["kept"] == ["m2"] and stage.details["budget"]["met"]
    assert stage.details["quantized_nodes"] == ["m1", "m3"]
