"""The sample model (PP-OCRv4 recognizer) built for real with TensorRT-RTX in FP32, FP16 and INT8.

FP16 comes from the precision stage's autocast, INT8 from calibrated Q/DQ; each engine's
network-level precision report is checked against what that stage says it did. The CLI's
exit codes are checked through a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.engine import BuildConfig, EngineStore, build_or_reuse, parse_shapes

ROOT = Path(__file__).parents[1]
REC_SHAPES = "x:1x3x48x80,1x3x48x320,4x3x48x960"
pytestmark = [pytest.mark.rtx, pytest.mark.slow]


def _compute_layers(summary) -> int:
    return sum(summary.compute_by_precision.values())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One trtforge cache for the module: the CLI (TRTFORGE_CACHE_DIR) and the API share its engine store."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def int8_model(sample_dir, tmp_path_factory):
    from calibration import NpzFolderSource, quantize

    out = tmp_path_factory.mktemp("int8") / "rec.int8.onnx"
    result = quantize(sample_dir / "ppocr_rec.onnx", out, NpzFolderSource(sample_dir / "data" / "calib"))
    return out, result


@pytest.fixture(scope="module")
def fp16_model(sample_dir, tmp_path_factory):
    autocast = pytest.importorskip("calibration.autocast").autocast
    out = tmp_path_factory.mktemp("fp16") / "rec.fp16.onnx"
    return out, autocast(sample_dir / "ppocr_rec.onnx", out)


def _build(model: Path, tmp_path: Path, expect: str, cache_dir: Path):
    config = BuildConfig(profiles=[parse_shapes(REC_SHAPES)], expect=expect)
    return build_or_reuse(model, tmp_path / f"{model.stem}.engine", config, "tensorrt-rtx", EngineStore(cache_dir / "engines"))


def test_fp32_engine_with_two_profiles_runs_every_compute_layer_in_fp32(sample_dir, tmp_path):
    batch8 = "x:8x3x48x320,8x3x48x320,8x3x48x320"
    config = BuildConfig(profiles=[parse_shapes(REC_SHAPES), parse_shapes(batch8)], expect="fp32")
    result = build_or_reuse(sample_dir / "ppocr_rec.onnx", tmp_path / "fp32.engine", config, "tensorrt-rtx", EngineStore(tmp_path / "s"))
    p = result.precision
    assert p.carries == ["fp32"] and p.compute_by_precision == {"fp32": _compute_layers(p)}
    assert p.quantize_layers == p.dequantize_layers == 0
    assert json.loads(Path(result.sidecar_path).read_text())["profiles"] == [REC_SHAPES, batch8]


def test_int8_engine_carries_what_the_quantizer_quantized(int8_model, tmp_path, cache_dir):
    model, quantized = int8_model
    p = _build(model, tmp_path, "int8", cache_dir).precision
    assert p.carries[0] == "int8"
    # Every Conv/MatMul the quantizer wrapped in Q/DQ is an INT8 layer in TensorRT's network;
    # the ones it left in FP32 (with a reason) are the FP32 ones.
    assert p.compute_by_precision["int8"] == len(quantized.quantized_nodes)
    assert p.compute_by_precision.get("fp32", 0) == _compute_layers(p) - len(quantized.quantized_nodes)
    assert p.quantize_layers == quantized.num_q


def test_fp16_engine_from_autocast_runs_its_compute_in_fp16(fp16_model, tmp_path, cache_dir):
    model, cast = fp16_model
    p = _build(model, tmp_path, "fp16", cache_dir).precision
    assert p.carries == ["fp16"] and p.compute_by_precision == {"fp16": _compute_layers(p)}
    assert p.cast_layers > 0 and p.by_dtype["fp16"] > p.by_dtype.get("fp32", 0)
    assert not any(k.startswith(("Conv", "MatMul")) for k in cast.kept_fp32)  # what autocast says agrees


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRTFORGE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "optimizer.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: "), proc.stderr
    return lines[0]


def test_cli_expect_int8_fails_on_fp32_and_passes_on_qdq(sample_dir, int8_model, tmp_path, cache_dir):
    # The INT8 build may be a store hit of the API test's build: `expect` is checked either way.
    fp32 = _cli("build", str(sample_dir / "ppocr_rec.onnx"), "-o", str(tmp_path / "a.engine"), "--shapes", REC_SHAPES,
                "--expect", "int8", "--builder", "tensorrt-rtx", cache=cache_dir)  # fmt: skip
    assert fp32.returncode == 2 and "does not carry int8" in _one_error_line(fp32)
    assert not (tmp_path / "a.engine").exists()
    int8 = _cli("build", str(int8_model[0]), "-o", str(tmp_path / "b.engine"), "--shapes", REC_SHAPES,
                "--expect", "int8", "--builder", "tensorrt-rtx", cache=cache_dir)  # fmt: skip
    assert int8.returncode == 0, int8.stderr
    # Since attention products are quantized too, every compute layer of rec runs in INT8.
    assert "network carries int8;" in int8.stdout and (tmp_path / "b.engine").is_file()


@pytest.mark.parametrize(
    "shapes, message",
    [
        ("x:1x3x48x320,1x3x48x80,4x3x48x960", "need min <= opt <= max"),  # opt below min
        ("x:1x3x48x80,1x3x48x1200,4x3x48x960", "need min <= opt <= max"),  # opt above max
    ],
)
def test_cli_profile_that_excludes_the_opt_shape_exits_2(sample_dir, tmp_path, shapes, message):
    proc = _cli("build", str(sample_dir / "ppocr_rec.onnx"), "-o", str(tmp_path / "a.engine"),
                "--shapes", REC_SHAPES, "--shapes", shapes, cache=tmp_path / "c")  # fmt: skip
    assert proc.returncode == 2 and message in _one_error_line(proc)
    assert not (tmp_path / "a.engine").exists()


def test_cli_unparseable_op_exits_2(tmp_path):
    import onnx
    from onnx import helper

    nodes = [helper.make_node("FancyOp", ["x"], ["y"], name="fancy0", domain="com.example")]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", vi[:1], vi[1:]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "custom.onnx")
    proc = _cli("build", str(tmp_path / "custom.onnx"), "-o", str(tmp_path / "a.engine"), "--builder", "tensorrt-rtx",
                cache=tmp_path / "c")  # fmt: skip
    assert proc.returncode == 2 and "node 0 'fancy0' (FancyOp)" in _one_error_line(proc)
