"""``trtforge prune``, the prune stage of ``optimize``, and inspect's 2:4 report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from optimizer.cli import main
from optimizer.errors import ConfigError
from optimizer.pipeline import optimize
from optimizer.recipe import recipe_from_dict
from optimizer.runners import OrtRunner


def _model(tmp_path, dead: int = 0):
    """conv1(8→16) → relu → conv2(16→32, 3×3) → y; dims static so FLOPs need no data.

    ``dead``: the last channels of conv1 output zero (zero weights and bias): removing them
    changes nothing, so a cut of that size passes the pruning check while a random one fails.
    """
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    if dead:
        w1[-dead:], b1[-dead:] = 0.0, 0.0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _calib(tmp_path, name="calib", seed=0, n=4):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal((1, 8, 8, 8)).astype(np.float32))
    return folder


def test_cli_dry_run_reports_and_writes_nothing(tmp_path):
    path = _model(tmp_path, dead=4)
    result = CliRunner().invoke(main, ["prune", str(path), "--channels", "0.25", "--dry-run", "--calib", str(_calib(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "FLOPs" in result.output and "dry run: nothing written" in result.output
    assert "16 → 12 channels" in result.output
    assert "pruned vs original on 4 calibration sample(s): output error" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "m.onnx"]


def test_cli_2_4_then_inspect_reports_the_sparse_weights(tmp_path):
    path = _model(tmp_path)
    out = tmp_path / "sparse.onnx"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--sparsity", "2:4", "--calib", str(_calib(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {l["name"] for l in data["layers"] if l["action"] == "pruned"} == {"conv2"}
    inspected = CliRunner().invoke(main, ["inspect", str(out), "--json", "--no-parse-check"])
    assert json.loads(inspected.output)["weights_2_4"] == ["conv2"]
    original = CliRunner().invoke(main, ["inspect", str(path), "--json", "--no-parse-check"])
    assert json.loads(original.output)["weights_2_4"] == []
    y = OrtRunner(out).run({"x": np.ones((1, 8, 8, 8), np.float32)})["y"]
    assert np.isfinite(y).all()


@pytest.mark.parametrize(
    "args, fragment",
    [(["--channels", "2"], "between 0 and 1"), ([], "nothing to do"), (["--channels", "0.5"], "give -o")],
)
def test_cli_bad_options_exit_2_with_one_line(tmp_path, args, fragment):
    path = _model(tmp_path)
    extra = ["-o", str(tmp_path / "o.onnx")] if fragment != "give -o" else []
    result = CliRunner().invoke(main, ["prune", str(path), *extra, *args])
    assert result.exit_code == 2 and fragment in result.output


def test_prune_stage_runs_caches_and_keys_on_data(tmp_path):
    path = _model(tmp_path, dead=8)
    recipe = recipe_from_dict({"prune": {"enabled": True, "channels": 0.5}, "precision": {"mode": "none"}, "build": {"enabled": "no"}})
    calib = _calib(tmp_path)
    report = optimize(path, tmp_path / "out", recipe, calib=calib)
    stage = report.stage("prune")
    assert stage.status == "ran" and stage.details["flops_after"] < stage.details["flops_before"]
    assert OrtRunner(stage.artifact).run({"x": np.ones((1, 8, 8, 8), np.float32)})["y"].shape == (1, 32, 8, 8)
    again = optimize(path, tmp_path / "out2", recipe, calib=calib)
    assert again.stage("prune").status == "cached"
    other = optimize(path, tmp_path / "out3", recipe, calib=_calib(tmp_path, "calib2", seed=1))
    assert other.stage("prune").status == "ran"  # different data, different key


def test_prune_stage_disabled_by_default_and_needs_a_budget(tmp_path):
    path = _model(tmp_path)
    recipe = recipe_from_dict({"precision": {"mode": "none"}, "build": {"enabled": "no"}})
    report = optimize(path, tmp_path / "out", recipe)
    stage = report.stage("prune")
    assert stage.status == "skipped" and stage.reason == "disabled in the recipe"
    with pytest.raises(ConfigError, match="no budget"):
        optimize(path, tmp_path / "o2", recipe_from_dict({"prune": {"enabled": True}, "precision": {"mode": "none"}}))
    with pytest.raises(ConfigError, match="prune.sparsity"):
        recipe_from_dict({"prune": {"sparsity": "1:2"}})


def test_cli_accuracy_budget_needs_val_and_reports_trials(tmp_path):
    path = _model(tmp_path)
    calib = _calib(tmp_path)
    out = tmp_path / "b.onnx"
    missing = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--max-error", "0.5", "--calib", str(calib)])
    assert missing.exit_code == 2 and "validation data" in missing.output
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--max-error", "10", "--calib", str(calib), "--val", str(calib)])
    assert result.exit_code == 0, result.output
    assert "error budget 10 on validation data; tried" in result.output and out.exists()


def test_prune_stage_accuracy_budget_needs_validation_data(tmp_path):
    path = _model(tmp_path)
    recipe = recipe_from_dict({"prune": {"enabled": True, "max_error": 0.5}, "precision": {"mode": "none"}, "build": {"enabled": "no"}})
    with pytest.raises(ConfigError, match="validation data"):
        optimize(path, tmp_path / "out", recipe, calib=_calib(tmp_path))
    report = optimize(path, tmp_path / "out", recipe, calib=tmp_path / "calib", val=_calib(tmp_path, "val", seed=3))
    details = report.stage("prune").details
    assert details["budget"]["max_error"] == 0.5 and details["budget"]["trials"]
    assert all(t["relative_error"] <= 0.5 for t in details["budget"]["trials"][:-1])


# ---------------------------------------------------------------- pruning measures itself


def test_a_destroying_cut_exits_1_names_groups_and_writes_nothing(tmp_path):
    path = _model(tmp_path)  # random weights: every channel matters
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--channels", "0.5", "--calib", str(_calib(tmp_path))])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "BEYOND the tolerance 0.15" in text and "worst groups: conv1" in text
    assert "--flops-target" in text and "--max-error" in text and "--force" in text
    assert "nothing written" in text and not out.exists()
    forced = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--channels", "0.5", "--calib", str(_calib(tmp_path, "c2")),
                                       "--force", "--json"])
    assert forced.exit_code == 0 and out.exists(), forced.output
    check = json.loads(forced.output)["check"]
    assert check["relative_error"] > 0.15 and not check["passed"] and check["data"] == "calibration"


def test_a_harmless_cut_passes_the_check_on_generated_data(tmp_path):
    from optimizer.pruning import prune

    path = _model(tmp_path, dead=4)
    result = prune(path, tmp_path / "p.onnx", channels=0.25, criterion="l1")  # no data: generated inputs, weight criterion
    assert result.check["data"] == "generated" and result.check["passed"]
    assert result.check["relative_error"] < 1e-5 and result.output == str(tmp_path / "p.onnx")
    x = {"x": np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(OrtRunner(tmp_path / "p.onnx").run(x)["y"], OrtRunner(path).run(x)["y"], rtol=1e-4, atol=1e-4)


def test_prune_stage_stops_the_run_on_a_destroying_cut(tmp_path):
    from optimizer.errors import GateFailed

    path = _model(tmp_path)
    recipe = recipe_from_dict({"prune": {"enabled": True, "channels": 0.5}, "precision": {"mode": "none"}, "build": {"enabled": "no"}})
    with pytest.raises(GateFailed, match="prune stage: pruned vs original .* BEYOND the tolerance"):
        optimize(path, tmp_path / "out", recipe, calib=_calib(tmp_path))
    assert not (tmp_path / "out" / "m.pruned.onnx").exists()


def test_help_states_the_default_tolerance():
    from optimizer.pruning.check import DEFAULT_TOLERANCE

    text = " ".join(CliRunner().invoke(main, ["prune", "--help"]).output.split())
    assert f"default: {DEFAULT_TOLERANCE:g}" in text and f"default {DEFAULT_TOLERANCE:g}" in text and "--force" in text


def test_prune_stage_records_the_task_metric_of_the_pruned_model(tmp_path):
    path = _model(tmp_path, dead=8)
    val = _calib(tmp_path, "val", seed=4)
    (val / "labels.json").write_text(json.dumps({f"{i:03d}.npz": 0 for i in range(4)}))
    (tmp_path / "metric.py").write_text(
        "NAME = 'energy'\nUNIT = ''\nHIGHER_IS_BETTER = True\n"
        "def energy(outputs, labels, context):\n    return float(sum(abs(o['y']).mean() for o in outputs) / len(outputs))\n"
    )
    recipe = recipe_from_dict({"prune": {"enabled": True, "channels": 0.5}, "precision": {"mode": "none"}, "build": {"enabled": "no"},
                               "validate": {"metric": str(tmp_path / "metric.py") + ":energy", "latency": {"enabled": False}}})
    report = optimize(path, tmp_path / "out", recipe, calib=_calib(tmp_path), val=val)
    stage = report.stage("prune")
    task = stage.details["task"]
    assert task["name"] == "energy" and task["reference"] > 0
    assert task["candidate"] == pytest.approx(task["reference"], rel=1e-4)  # only dead channels were cut
    assert "energy original → pruned" in stage.summary and "output error" in stage.summary
    assert stage.details["check"]["passed"] and stage.details["check"]["relative_error"] < 1e-4
