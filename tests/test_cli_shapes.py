"""Zero config and the one shape language through the real CLI: dynamic models work with no flags,
and shapes that contradict the model or the data are one line, exit 2, nothing written."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from optimizer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _dynamic_conv(path: Path) -> Path:
    """Conv over x[batch, 4, 16, width]: a batch and a width dim, both named."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4, 16, "width"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8, 16, "width"])],
        [w],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _data(folder: Path, shapes: list[tuple[int, ...]]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate(shapes):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal(shape).astype(np.float32))
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizer.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ.copy(), timeout=600)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_exit_2(proc: subprocess.CompletedProcess, expected: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: "), proc.stderr
    assert expected in lines[0], lines[0]


BAD_SHAPES = {
    "contradicts-static-dim": (["--shapes", "x:1x3x16x32"], "dim 1 is fixed at 4"),
    "unknown-dim-name": (["--dim", "seq=16"], "no dim named 'seq'"),
    "wrong-input-name": (["--shapes", "image:1x4x16x32"], "inputs are x"),
}


@pytest.mark.parametrize("command", ["passes", "optimize", "build", "quantize", "prune"])
@pytest.mark.parametrize("case", sorted(BAD_SHAPES))
def test_shapes_that_contradict_the_model_are_one_line_exit_2_nothing_written(tmp_path, command, case):
    model = _dynamic_conv(tmp_path / "m.onnx")
    extra, expected = BAD_SHAPES[case]
    out = tmp_path / "out"
    args = {
        "passes": ["passes", str(model), "-o", str(out / "o.onnx")],
        "optimize": ["optimize", str(model), "-o", str(out), "--synthetic"],
        "build": ["build", str(model), "-o", str(out / "m.engine"), "--no-engine-store"],
        "quantize": ["quantize", str(model), "-o", str(out / "q.onnx"), "--synthetic", "2"],
        "prune": ["prune", str(model), "-o", str(out / "p.onnx"), "--channels", "0.25"],
    }[command]
    before = _digest(tmp_path)
    result = CliRunner().invoke(main, [*args, *extra])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: ") and expected in lines[0], result.output
    assert not out.exists() and _digest(tmp_path) == before


def test_data_outside_an_explicit_profile_is_refused_before_any_stage(tmp_path):
    """A real subprocess: the exit code and stderr as a CI job sees them."""
    model = _dynamic_conv(tmp_path / "m.onnx")
    calib = _data(tmp_path / "calib", [(1, 4, 16, 24), (1, 4, 16, 80)])
    out = tmp_path / "out"
    proc = _run("optimize", str(model), "-o", str(out), "--calib", str(calib), "--shapes", "x:1x4x16x16,1x4x16x32,1x4x16x64")
    _one_line_exit_2(proc, "outside the --shapes range")
    assert not out.exists()


def test_passes_with_no_flags_verifies_a_dynamic_model_numerically(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    proc = _run("passes", str(model), "-o", str(tmp_path / "o.onnx"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verified"] is True and result["partial"] is None
    assert result["shapes"]["inputs"]["x"] == {"min": [1, 4, 16, 32], "opt": [1, 4, 16, 32], "max": [1, 4, 16, 32], "source": "default"}


def test_passes_verifies_on_data_when_given(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    data = _data(tmp_path / "data", [(2, 4, 16, 40), (1, 4, 16, 8)])
    proc = _run("passes", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shapes"]["inputs"]["x"]["source"] == "data"


@pytest.mark.rtx
def test_zero_config_optimize_builds_an_engine_whose_profile_spans_the_data(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    shapes = [(1, 4, 16, 24), (2, 4, 16, 48), (2, 4, 16, 48), (4, 4, 16, 96)]
    calib = _data(tmp_path / "calib", shapes)
    out = tmp_path / "out"
    proc = _run("optimize", str(model), "-o", str(out), "--calib", str(calib), "--no-cache", "-q")
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["shapes"]["inputs"]["x"] == {
        "min": [1, 4, 16, 24], "opt": [2, 4, 16, 48], "max": [4, 4, 16, 96], "source": "data"}
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert build["status"] == "ran", build
    assert (out / "m.engine").stat().st_size > 0
    assert build["details"]["profiles"] == ["x:1x4x16x24,2x4x16x48,4x4x16x96"]


@pytest.mark.rtx
def test_zero_config_synthetic_optimize_of_a_dynamic_model_builds_on_default_shapes(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _run("optimize", str(model), "-o", str(out), "--synthetic", "--no-cache", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["shapes"]["inputs"]["x"]["source"] == "default"
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert any("default shapes" in w for w in build["warnings"])
    assert (out / "m.engine").exists()


def test_dims_from_the_command_line_are_labelled_dim_not_recipe(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    out = tmp_path / "out"
    proc = _run("optimize", str(model), "-o", str(out), "--synthetic", "--dim", "batch=1,2,4", "--dim", "width=16,32,64",
                "--no-cache", "-q")
    assert proc.returncode == 0, proc.stderr
    shape = json.loads((out / "report.json").read_text())["model"]["shapes"]["inputs"]["x"]
    assert shape["source"] == "--dim" and shape["max"] == [4, 4, 16, 64]


def test_validate_refuses_data_outside_the_given_shapes(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    data = _data(tmp_path / "val", [(1, 4, 16, 24), (1, 4, 16, 80)])
    result = CliRunner().invoke(main, ["validate", str(model), "--reference", str(model), "--data", str(data),
                                       "--dim", "width=16,32,64", "--no-latency"])
    assert result.exit_code == 2 and "outside the --dim width range" in result.output, result.output


@pytest.mark.rtx
@pytest.mark.slow
def test_a_default_shape_tensorrt_refuses_moves_to_the_next_one_ort_runs(tmp_path):
    """PP-OCRv4 rec runs in ONNX Runtime at 1x3x32x32, but TensorRT computes one pooling shape
    differently there and refuses to build; the build moves to the next default size and says so."""
    from conftest import rapidocr_models

    out = tmp_path / "out"
    proc = _run("optimize", str(rapidocr_models() / "ch_PP-OCRv4_rec_infer.onnx"), "-o", str(out),
                "--precision", "none", "--no-cache", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert any("TensorRT refused default shapes x 1x3x32x32" in w for w in build["warnings"]), build["warnings"]
    assert build["status"] == "ran" and build["details"]["profiles"] == ["x:1x3x64x64,1x3x64x64,1x3x64x64"]
    assert report["model"]["shapes"]["inputs"]["x"]["opt"] == [1, 3, 64, 64]


@pytest.mark.rtx
def test_a_stage_that_fails_late_takes_this_runs_artifacts_with_it(tmp_path):
    """Passes succeed (verification partial: ONNX Runtime has no kernel for the custom op), then
    TensorRT cannot parse the op. With build.enabled 'yes' that is exit 2, and the passes artifact
    written before is gone; with the default 'auto' the build is skipped and the report says why."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mystery", ["r"], ["y"], domain="example.custom")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    model = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]), str(model))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("build:\n  enabled: 'yes'\n")
    out = tmp_path / "out"
    proc = _run("optimize", str(model), "-o", str(out), "--precision", "none", "--recipe", str(recipe), "--no-cache", "-q")
    assert proc.returncode == 2, proc.stderr
    assert "Mystery" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.glob("*.onnx")) and not list(out.glob("*.engine"))

    proc = _run("optimize", str(model), "-o", str(out), "--precision", "none", "--no-cache", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert build["status"] == "skipped" and "cannot parse" in build["reason"] and "Mystery" in build["reason"]
    assert any(w.startswith("build skipped") for w in report["warnings"])


def test_validate_takes_val_like_every_other_command_and_still_reads_data(tmp_path):
    model = _dynamic_conv(tmp_path / "m.onnx")
    data = _data(tmp_path / "val", [(1, 4, 16, 24)])
    for flag in ("--val", "--data"):  # --data: the old spelling, kept hidden for one release
        result = CliRunner().invoke(main, ["validate", str(model), "--reference", str(model), flag, str(data), "--no-latency"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["validate", str(model), "--reference", str(model), "--no-latency"])
    assert result.exit_code == 2 and "--val DIR" in result.output


@pytest.mark.parametrize("command", [["optimize", "--synthetic"], ["quantize", "--synthetic"], ["passes"]])
def test_an_invalid_export_is_named_invalid_not_a_shape_problem(tmp_path, command):
    """torch's opset-17 dynamo export of GPT-2 writes Split(num_outputs=...), an opset-18 attribute.

    ONNX Runtime cannot load it at any size, so the shape probe used to blame the dynamic dims
    ('no size of 32, 64, ... runs it; set --dim s70=N'), a flag that could never help."""
    graph = helper.make_graph(
        [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2, name="node_Split_3"),
         helper.make_node("Add", ["a", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "half"])],
    )
    model = tmp_path / "invalid.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    before = _digest(tmp_path)
    out = tmp_path / "out" if command[0] == "optimize" else tmp_path / "out.onnx"
    proc = _run(command[0], str(model), "-o", str(out), *command[1:])
    _one_line_exit_2(proc, "this model is invalid: Unrecognized attribute: num_outputs for operator Split")
    assert "fix it at its source (the exporter)" in proc.stderr and _digest(tmp_path) == before
