"""End to end on the real sample: PP-OCRv4 rec → passes → INT8 Q/DQ → RTX engine → validation → report."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.pipeline import optimize
from optimizer.recipe import load_recipe
from optimizer.report import load_report, to_markdown

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "samples" / "ppocr_rec" / "recipe.yaml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fast_recipe():
    recipe = load_recipe(RECIPE)
    recipe.validate.latency.iterations = 6
    recipe.validate.latency.warmup = 1
    recipe.validate.latency.samples = 2
    return recipe


@pytest.fixture(scope="module")
def first_run(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-out")
    model = sample_dir / "ppocr_rec.onnx"
    before = _sha(model)
    report = optimize(model, out, _fast_recipe(), calib=sample_dir / "data" / "calib", val=sample_dir / "data" / "val")
    return model, out, report, before


def test_every_stage_ran_and_wrote_its_artifact(first_run):
    model, out, report, before = first_run
    assert _sha(model) == before, "the input model must never change"
    statuses = {s.name: s.status for s in report.stages}
    assert statuses["passes"] == "ran" and statuses["precision"] == "ran" and statuses["validate"] == "ran"
    for name in ("passes", "precision"):
        assert Path(report.artifacts[name]).exists()
    passes = report.stage("passes").details
    assert passes["nodes_after"] <= passes["nodes_before"]
    # The report says which nodes a pass matched but kept, and why (PP-OCRv4's HardSwish-like
    # patterns that fuse_hard_activations refuses), in the JSON and in the HTML.
    refused = {r["name"]: r["refusals"] for r in passes["passes"] if r["refusals"]}
    assert refused and all(len(lines) == r["refused"] for r in passes["passes"] for lines in [r["refusals"]])
    assert "matched but kept" in (out / "report.html").read_text()
    precision = report.stage("precision").details
    assert len(precision["quantized_nodes"]) > 10 and precision["num_dq"] > 0


def test_validation_numbers_are_real(first_run):
    _, out, report, _ = first_run
    val = report.validation
    assert val.samples == 24
    task = val.task
    assert task.name == "cer" and 0 <= task.reference < 2.0  # FP32 reads rendered text almost perfectly
    assert task.candidate >= 0
    (output,) = val.outputs
    assert 0 < output.max_abs < 1 and output.cosine_min > 0.5  # INT8 moves outputs, but not to noise
    lat = val.latency
    assert lat.threads == 1 and lat.reference.p50_ms > 0 and lat.candidate.p50_ms > 0
    assert "tensorrt target" in lat.note
    saved = json.loads((out / "report.json").read_text())
    assert saved["schema_version"] == 1 and saved["validation"]["task"]["candidate"] == task.candidate
    markdown = (out / "report.md").read_text()
    assert "cer" in markdown and "p50 speed-up" in markdown


@pytest.mark.rtx
def test_engine_built_with_int8(first_run):
    _, out, report, _ = first_run
    build = report.stage("build")
    assert build.status == "ran", build.reason
    engine = Path(report.artifacts["build"])
    assert engine.exists() and engine.stat().st_size > 100_000
    assert "int8" in build.details["precision"]["carries"]
    assert (Path(str(engine) + ".json")).exists()


def test_rerun_hits_the_cache_and_reproduces_artifacts(first_run, sample_dir, tmp_path):
    model, out, report, _ = first_run
    again = optimize(model, tmp_path / "again", _fast_recipe(), calib=sample_dir / "data" / "calib", val=sample_dir / "data" / "val")
    statuses = {s.name: s.status for s in again.stages}
    assert statuses["passes"] == "cached" and statuses["precision"] == "cached"
    if report.stage("build").status == "ran":
        assert statuses["build"] == "cached"
    for name in ("passes", "precision"):
        assert _sha(Path(again.artifacts[name])) == _sha(Path(report.artifacts[name]))
    # Validation is the gate: it always measures again, on the same numbers.
    assert again.validation.task == report.validation.task


def test_report_rerenders_from_json(first_run, tmp_path):
    _, out, report, _ = first_run
    loaded = load_report(out / "report.json")
    assert to_markdown(loaded) == to_markdown(report)
    result = CliRunner().invoke(main, ["report", str(out / "report.json"), "--markdown", str(tmp_path / "s.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.md").read_text() == to_markdown(report)


def test_failed_gate_exits_1(first_run, sample_dir, tmp_path):
    model, _, _, _ = first_run
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(tmp_path / "o"), "--recipe", str(RECIPE),
         "--calib", str(sample_dir / "data" / "calib"), "--val", str(sample_dir / "data" / "val"),
         "--gate", "min_cosine>=1.01", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["passed"] is False
    assert [g["passed"] for g in report["gates"] if g["expression"] == "min_cosine>=1.01"] == [False]


def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_nan_in_calibration_data_is_named(sample_dir, tmp_path):
    calib = _copy_data(sample_dir / "data" / "calib", tmp_path / "calib")
    victim = sorted(calib.glob("*.npz"))[3]
    x = np.load(victim)["x"].copy()
    x[0, 0, 0, 0] = np.nan
    np.savez(victim, x=x)
    result = CliRunner().invoke(
        main, ["optimize", str(sample_dir / "ppocr_rec.onnx"), "-o", str(tmp_path / "o"), "--calib", str(calib), "--precision", "int8"]
    )
    assert result.exit_code == 2
    assert victim.name in result.output and "NaN" in result.output
    assert not (tmp_path / "o").exists()


def test_wrong_input_name_is_named(sample_dir, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "0.npz", image=np.zeros((1, 3, 48, 320), np.float32))
    result = CliRunner().invoke(main, ["optimize", str(sample_dir / "ppocr_rec.onnx"), "-o", str(tmp_path / "o"), "--calib", str(calib)])
    assert result.exit_code == 2
    assert "image" in result.output and "'x'" in result.output
    assert not (tmp_path / "o").exists()


def test_int8_without_data_is_a_config_error(sample_dir, tmp_path):
    result = CliRunner().invoke(main, ["optimize", str(sample_dir / "ppocr_rec.onnx"), "-o", str(tmp_path / "o"), "--precision", "int8"])
    assert result.exit_code == 2
    assert "calibration data" in result.output
