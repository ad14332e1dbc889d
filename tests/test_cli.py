"""The command line: exit codes, one-line errors without tracebacks, nothing written on bad input,
and a CLI that works without the heavy optional modules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from optimizer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _tiny_model(path: Path, external: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
        m = onnx.load(str(path), load_external_data=False)
        for entry in m.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = external
        onnx.save_model(m, str(path))
    return path


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optimizer.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each case: the model path and extra args."""
    good = _tiny_model(tmp / "good.onnx")
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp / "notes.onnx"
    text.write_text("this is a text file, not a model\n")
    escape_dir = tmp / "escape"
    escape_dir.mkdir()
    (tmp / "w.bin").write_bytes(np.zeros(8 * 4 * 9, np.float32).tobytes())
    escape = _tiny_model(escape_dir / "m.onnx", external="../w.bin")
    recipe = tmp / "typo.yaml"
    recipe.write_text("precision:\n  mode: int8\n  calibration_method: max\n")
    return {
        "truncated": (truncated, []),
        "not-onnx": (text, []),
        "escaping-external-data": (escape, []),
        "recipe-unknown-key": (good, ["--recipe", str(recipe)]),
    }


@pytest.mark.parametrize("case", ["truncated", "not-onnx", "escaping-external-data", "recipe-unknown-key"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    model, extra = _bad_inputs(tmp_path)[case]
    before = _digest(tmp_path)
    out = tmp_path / "out"
    proc = _run(["optimize", str(model), "-o", str(out), "--precision", "none", *extra])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    expected = {
        "truncated": "not a readable ONNX model",
        "not-onnx": "not",
        "escaping-external-data": "outside the model's folder",
        "recipe-unknown-key": "unknown key 'precision.calibration_method'",
    }[case]
    assert expected in lines[0]
    assert not out.exists()
    assert _digest(tmp_path) == before


def test_inspect_errors_are_one_line_too(tmp_path):
    model, _ = _bad_inputs(tmp_path)["truncated"]
    result = CliRunner().invoke(main, ["inspect", str(model)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("trtforge: error:") and len(result.output.strip().splitlines()) == 1


def test_inspect_json_on_real_model(ppocr_rec_path):
    result = CliRunner().invoke(main, ["inspect", str(ppocr_rec_path), "--json", "--no-parse-check"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["opsets"]["ai.onnx"] == 12
    assert data["inputs"][0]["name"] == "x" and data["inputs"][0]["shape"][1] == 3
    assert data["op_histogram"]["Conv"] > 10
    assert data["parameters"] > 1_000_000 and data["initializer_dtypes"]["float"] > 0


@pytest.mark.rtx
def test_inspect_parse_check_through_rtx(ppocr_rec_path):
    result = CliRunner().invoke(main, ["inspect", str(ppocr_rec_path), "--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.output)["parse_check"]
    assert check["builder"] == "tensorrt-rtx" and check["ok"] and check["num_layers"] > 0


# Simulates a machine without TensorRT in this very environment: a None entry in sys.modules
# makes both `import` and importlib.util.find_spec report the module as absent.
_WITHOUT_TRT = (
    "import sys\n"
    "sys.modules['tensorrt_rtx'] = None\n"
    "sys.modules['tensorrt'] = None\n"
    "from optimizer.cli import main\n"
    "main(sys.argv[1:])\n"
)


def test_help_and_inspect_work_without_tensorrt(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    help_ = subprocess.run([sys.executable, "-c", _WITHOUT_TRT, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_.returncode == 0 and "optimize" in help_.stdout
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TRT, "inspect", str(model)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "parse check skipped" in proc.stdout and "Conv 1" in proc.stdout


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from optimizer.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'tensorrt', 'tensorrt_rtx', 'onnxruntime', 'matplotlib', 'polygraphy'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_has_an_example_in_help():
    runner = CliRunner()
    for command in ("inspect", "optimize", "passes", "quantize", "prune", "build", "validate", "report", "export", "matrix", "check-engine"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, command


def test_fp16_flag_points_to_the_precision_stage(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["build", str(model), "-o", str(tmp_path / "m.engine"), "--fp16"])
    assert result.exit_code == 2
    assert "precision" in result.output.lower()
    assert not (tmp_path / "m.engine").exists()


def _entry_points(model: Path, tmp: Path) -> dict[str, list[str]]:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    return {
        "inspect": ["inspect", str(model)],
        "optimize": ["optimize", str(model), "-o", str(tmp / "out"), "--precision", "none"],
        "passes": ["passes", str(model), "-o", str(tmp / "out.onnx")],
        "quantize": ["quantize", str(model), "-o", str(tmp / "out.onnx"), "--calib", str(data)],
        "build": ["build", str(model), "-o", str(tmp / "out.engine")],
        "validate": ["validate", str(model), "--reference", str(model), "--data", str(data)],
    }


@pytest.mark.parametrize("command", ["inspect", "optimize", "passes", "quantize", "build", "validate"])
@pytest.mark.parametrize("case", ["truncated", "not-onnx", "escaping-external-data"])
def test_every_entry_point_refuses_bad_models_cleanly(tmp_path, command, case):
    model, _ = _bad_inputs(tmp_path)[case]
    before = _digest(tmp_path)
    result = CliRunner().invoke(main, _entry_points(model, tmp_path)[command])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: "), result.output
    # Nothing written, nothing changed (the empty data folder is this test's own).
    after = _digest(tmp_path)
    assert after == before, set(after) ^ set(before)
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_report_refuses_non_reports(tmp_path):
    bogus = tmp_path / "r.json"
    bogus.write_text('{"hello": 1}')
    result = CliRunner().invoke(main, ["report", str(bogus)])
    assert result.exit_code == 2 and "not a trtforge report" in result.output
    bogus.write_text("{truncated")
    result = CliRunner().invoke(main, ["report", str(bogus)])
    assert result.exit_code == 2 and "not a trtforge JSON report" in result.output


def test_passes_refuses_to_overwrite_its_input(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    before = _digest(tmp_path)
    result = CliRunner().invoke(main, ["passes", str(model), "-o", str(model)])
    assert result.exit_code == 2 and "overwrite the input" in result.output
    assert _digest(tmp_path) == before


def _sample_like_data(folder: Path, labels: dict | None) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(folder / f"{i}.npz", x=rng.standard_normal((1, 4, 16, 16)).astype(np.float32))
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gate", "min_cosine>=0.9"], "checked on validation data"),
        (["--val", "VAL", "--recipe", "BADMETRIC"], "metric 'nope.py:fn'"),
    ],
)
def test_config_errors_stop_before_any_stage(tmp_path, extra, message):
    model = _tiny_model(tmp_path / "m.onnx")
    val = _sample_like_data(tmp_path / "val", {"0.npz": "a", "1.npz": "b"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("precision:\n  mode: none\nvalidate:\n  metric: nope.py:fn\n")
    args = [a.replace("VAL", str(val)).replace("BADMETRIC", str(recipe)) for a in extra]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out), "--precision", "none", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_labels_are_part_of_the_data_fingerprint(tmp_path):
    from optimizer.model import input_specs, load_model
    from optimizer.pipeline import _open_data

    model = _tiny_model(tmp_path / "m.onnx")
    specs = input_specs(load_model(model))
    _, a = _open_data(_sample_like_data(tmp_path / "a", {"0.npz": "x", "1.npz": "y"}), specs, None)
    _, b = _open_data(_sample_like_data(tmp_path / "b", {"0.npz": "x", "1.npz": "z"}), specs, None)
    assert a["sha256"] == b["sha256"] and a["labels_sha256"] != b["labels_sha256"]


def test_optimize_fp16_through_autocast(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    val = _sample_like_data(tmp_path / "val", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["optimize", str(model), "-o", str(out), "--precision", "fp16", "--val", str(val), "--calib", str(val), "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    precision = next(s for s in report["stages"] if s["name"] == "precision")
    assert precision["status"] == "ran" and precision["artifact"].endswith("m.fp16.onnx")
    assert precision["details"]["lowered_share"] > 0.5
    fp16 = onnx.load(precision["artifact"])
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    (output,) = report["validation"]["outputs"]
    assert 0 < output["max_rel"] < 1e-2  # FP16 rounding, not noise


def test_optimize_synthetic_calibration_is_said_out_loud(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out), "--synthetic", "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    precision = next(s for s in report["stages"] if s["name"] == "precision")
    assert precision["status"] == "ran" and precision["details"]["fingerprint"]["synthetic"] is True
    assert precision["details"]["fingerprint"]["count"] == 16  # --synthetic alone: 16 samples
    assert any("synthetic" in w.lower() for w in report["warnings"] + precision["warnings"])


def test_synthetic_alone_before_the_model_path_leaves_the_path_alone(tmp_path):
    """`--synthetic` took no value on optimize before it took an optional count: the old word order still works."""
    model = _tiny_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["optimize", "--synthetic", str(model), "-o", str(tmp_path / "out"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    precision = next(s for s in json.loads(result.output)["stages"] if s["name"] == "precision")
    assert precision["details"]["fingerprint"]["count"] == 16
    written = tmp_path / "q.onnx"
    result = CliRunner().invoke(main, ["quantize", "-o", str(written), "--synthetic", str(model)])
    assert result.exit_code == 0, result.output
    assert written.exists()


def _matmul_model(path: Path) -> Path:
    """x[1,128] → MatMul(128→64) → Relu → y: one weight that FP8 Q/DQ and INT4 blocks of 128 both take."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"), helper.make_node("Relu", ["m"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [w],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    "mode, suffix, weight_type",
    [("fp8", "fp8", onnx.TensorProto.FLOAT8E4M3FN), ("int4-weight", "int4", onnx.TensorProto.INT4)],
)
def test_optimize_precision_offers_every_recipe_mode(tmp_path, mode, suffix, weight_type):
    model = _matmul_model(tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("build:\n  enabled: no\n")
    out = tmp_path / "out"
    args = ["optimize", str(model), "-o", str(out), "--recipe", str(recipe), "--precision", mode]
    result = CliRunner().invoke(main, [*args, "--synthetic", "4", "--json", "-q"])
    assert result.exit_code == 0, result.output
    precision = next(s for s in json.loads(result.output)["stages"] if s["name"] == "precision")
    assert precision["status"] == "ran" and precision["artifact"].endswith(f"m.{suffix}.onnx")
    assert precision["summary"]["mode"] == mode and precision["details"]["quantized_nodes"] == ["mm"]
    assert precision["details"]["fingerprint"]["count"] == 4  # --synthetic 4: four random samples
    weights = {i.name: i.data_type for i in onnx.load(precision["artifact"]).graph.initializer}
    assert weights[f"W_{suffix}"] == weight_type
    # Without data a quantize mode stops before any stage, in one line.
    missing = CliRunner().invoke(main, ["optimize", str(model), "-o", str(tmp_path / "o2"), "--recipe", str(recipe), "--precision", mode])
    assert missing.exit_code == 2 and f"{mode.upper()} needs calibration data" in missing.output, missing.output
    assert not (tmp_path / "o2").exists()


def test_quantize_synthetic_count_is_optional(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    counts = {}
    for extra in (["--synthetic"], ["--synthetic", "3"]):
        result = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / f"q{len(extra)}.onnx"), *extra, "--json"])
        assert result.exit_code == 0, result.output
        counts[len(extra)] = json.loads(result.output)["fingerprint"]["count"]
    assert counts == {1: 16, 2: 3}
    both = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "b.onnx"), "--synthetic", "--calib", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one of --calib DIR or --synthetic [N]" in both.output


def test_every_choice_offers_what_its_source_defines():
    """A click.Choice is derived, never re-listed: a mode added to the recipe reaches every command."""
    from calibration import MODES
    from optimizer.recipe import choices
    from optimizer.torch_export import EXPORTERS

    sources = {
        ("inspect", "builder"): choices("build.builder"),
        ("optimize", "precision"): choices("precision.mode"),
        ("optimize", "target"): choices("precision.target"),
        ("optimize", "divergence"): choices("validate.divergence"),
        ("quantize", "target"): choices("precision.target"),
        ("quantize", "method"): choices("precision.method"),
        ("quantize", "mode"): MODES,
        ("quantize", "int4_method"): choices("precision.int4_method"),
        ("prune", "sparsity"): choices("prune.sparsity"),
        ("prune", "method"): choices("prune.method"),
        ("prune", "criterion"): choices("prune.criterion"),
        ("build", "builder"): choices("build.builder"),
        ("build", "expect"): choices("build.expect"),
        ("build", "hardware_compat"): choices("build.hardware_compatibility"),
        ("validate", "divergence"): choices("validate.divergence"),
        ("export", "exporter"): EXPORTERS,
    }
    offered = {
        (name, param.name): tuple(param.type.choices)
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param.type, click.Choice)
    }
    assert offered == sources
    assert {"fp8", "int4-weight"} <= set(offered["optimize", "precision"])
