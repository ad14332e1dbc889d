"""autocast: FP16/BF16 Casts placed by op schema and observed ranges, checked against FP32 in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from cal_models import model_from_text, op_types, rand, run, save, uniform_samples

from calibration.autocast import autocast
from optimizer.errors import CalibrationError, ConfigError

# Conv -> Relu -> Resize (float 'scales' input) -> Softmax (FP32 by default) -> MatMul; 'feat' is an
# output read by an FP32 node too, so one Cast serves both.
TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8,6,6] x) => (float[N,8,12,12] feat, float[N,8,12,16] y) {
    [conv] c = Conv <pads = [1,1,1,1]> (x, w, b)
    [relu] r = Relu (c)
    [resize] feat = Resize <mode = "nearest"> (r, , scales)
    [softmax] s = Softmax <axis = -1> (feat)
    [matmul] m = MatMul (s, wm)
    [shape] sh = Shape (m)
    [reshape] y = Reshape (m, sh)
}"""


def _weights(big: float = 1.0):
    w = rand(8, 8, 3, 3)
    w[0, 0, 1, 1] = w[0, 1, 1, 1] = big  # centre taps: output channel 0 reaches ~2 * big * max(x)
    return {"w": w, "b": rand(8, seed=2), "scales": np.array([1, 1, 2, 2], np.float32), "wm": rand(12, 16, seed=3)}


def _node_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    return {n.name: n.outputs[0].dtype for n in model.graph}


def test_fp16_bulk_fp32_softmax_and_io_kept(tmp_path):
    src = save(model_from_text(TEXT, **_weights()), tmp_path / "m.onnx")
    before = src.read_bytes()
    result = autocast(src, tmp_path / "h.onnx")
    assert src.read_bytes() == before
    out = ir.load(result.output_path)
    dtypes = _node_dtypes(out)
    assert dtypes["conv"] == dtypes["relu"] == dtypes["matmul"] == ir.DataType.FLOAT16
    assert dtypes["softmax"] == ir.DataType.FLOAT and "Softmax" in result.kept_fp32["softmax"]
    assert out.graph.initializers["w_float16"].const_value.dtype == ir.DataType.FLOAT16
    # Resize's 'scales' is tensor(float) in every opset: it must stay FP32 even inside an FP16 node.
    resize = out.graph.node("resize")
    assert resize.outputs[0].dtype == ir.DataType.FLOAT16 and resize.inputs[2].dtype == ir.DataType.FLOAT
    assert [(v.name, v.dtype) for v in out.graph.outputs] == [("feat", ir.DataType.FLOAT), ("y", ir.DataType.FLOAT)]
    assert [(v.name, v.dtype) for v in out.graph.inputs] == [("x", ir.DataType.FLOAT)]
    # x -> fp16, feat -> fp32 (shared by Softmax and the output), softmax -> fp16, m -> fp32 for y.
    assert op_types(out).count("Cast") == result.num_casts == 4
    onnx.checker.check_model(onnx.load(result.output_path), full_check=True)
    for feed in uniform_samples({"x": (2, 8, 6, 6)}, 2, seed=5):
        ref, got = run(src, feed), run(out, feed)
        for name in ("feat", "y"):
            assert got[name].dtype == np.float32
            # FP16 keeps 11 significant bits: relative error ~1e-3 of the magnitudes involved.
            np.testing.assert_allclose(got[name], ref[name], rtol=5e-3, atol=5e-3 * np.abs(ref[name]).max())
            assert not np.array_equal(got[name], ref[name]) or name == "y"


def test_observed_range_beyond_fp16_keeps_the_tensor_fp32(tmp_path):
    """Weights of 2e4 (fine in FP16) push the conv output to 3.6e4, past half of FP16's maximum."""
    src = save(model_from_text(TEXT, **_weights(big=2e4)), tmp_path / "m.onnx")
    samples = uniform_samples({"x": (1, 8, 6, 6)}, 3)
    samples[0]["x"][:] = 0.9
    blind = autocast(src, tmp_path / "blind.onnx")
    assert _node_dtypes(ir.load(blind.output_path))["conv"] == ir.DataType.FLOAT16  # nothing to see without data
    seen = autocast(src, tmp_path / "seen.onnx", source=samples)
    assert "c" in seen.out_of_range and seen.ranges_observed
    dtypes = _node_dtypes(ir.load(seen.output_path))
    assert dtypes["conv"] == dtypes["relu"] == ir.DataType.FLOAT and "reaches |x|=" in seen.kept_fp32["conv"]
    assert dtypes["matmul"] == ir.DataType.FLOAT16
    ref, got = run(src, samples[1]), run(ir.load(seen.output_path), samples[1])
    np.testing.assert_allclose(got["feat"], ref["feat"], rtol=5e-3, atol=5e-3 * np.abs(ref["feat"]).max())


def test_constant_beyond_fp16_and_keep_lists(tmp_path):
    src = save(model_from_text(TEXT, **_weights(big=1e5)), tmp_path / "m.onnx")
    result = autocast(src, tmp_path / "h.onnx", keep_fp32_ops=(), keep_fp32_nodes=["matmul"])
    assert "constant 'w'" in result.kept_fp32["conv"] and result.kept_fp32["matmul"] == "kept by name"
    assert _node_dtypes(ir.load(result.output_path))["softmax"] == ir.DataType.FLOAT16  # no longer kept by op type
    with pytest.raises(ConfigError, match="not in the main graph"):
        autocast(src, tmp_path / "x.onnx", keep_fp32_nodes=["nope"])


def test_bfloat16(tmp_path):
    src = save(model_from_text(TEXT, **_weights()), tmp_path / "m.onnx")
    result = autocast(src, tmp_path / "b.onnx", dtype="bfloat16")
    out = ir.load(result.output_path)
    # Conv has a bfloat16 form only from opset 22; MatMul/Relu from 13/14. ORT's CPU kernels have
    # no bfloat16, so the graph is checked by onnx (TensorRT runs it).
    assert _node_dtypes(out)["matmul"] == _node_dtypes(out)["relu"] == ir.DataType.BFLOAT16
    assert _node_dtypes(out)["conv"] == ir.DataType.FLOAT and "no bfloat16 form" in result.kept_fp32["conv"]
    onnx.checker.check_model(onnx.load(result.output_path), full_check=True)


def test_refusals(tmp_path):
    src = save(model_from_text(TEXT, **_weights()), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        autocast(src, tmp_path / "h.onnx", dtype="float8")
    with pytest.raises(ConfigError, match="overwrite the input"):
        autocast(src, src)
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N] x) => (int64[N] y) { [neg] y = Neg (x) }"""
    with pytest.raises(CalibrationError, match="no node can run in float16"):
        autocast(save(model_from_text(text), tmp_path / "i.onnx"), tmp_path / "i16.onnx")
    assert not (tmp_path / "h.onnx").exists() and not (tmp_path / "i16.onnx").exists()


@pytest.mark.slow
def test_ppocr_rec_fp16_agrees_with_fp32(sample_dir, tmp_path):
    from calibration import NpzFolderSource

    calib = list(NpzFolderSource(sample_dir / "data" / "calib"))[:2]
    val = list(NpzFolderSource(sample_dir / "data" / "val"))[:6]
    result = autocast(sample_dir / "ppocr_rec.onnx", tmp_path / "rec16.onnx", source=calib)
    assert result.lowered_share > 0.9 and any("Softmax" in r for r in result.kept_fp32.values())
    ref_model, out_model = sample_dir / "ppocr_rec.onnx", tmp_path / "rec16.onnx"
    from optimizer.runners import OrtRunner

    ref_runner, runner = OrtRunner(ref_model), OrtRunner(out_model)
    agree = []
    for feed in val:
        ref, got = ref_runner.run(feed), runner.run(feed)
        for name in ref:
            assert got[name].dtype == ref[name].dtype and got[name].shape == ref[name].shape
            assert np.abs(got[name] - ref[name]).max() < 0.05  # softmax probabilities
            agree.append(got[name][0].argmax(-1) == ref[name][0].argmax(-1))
    assert float(np.mean(np.concatenate(agree))) >= 0.99


@pytest.mark.rtx
def test_fp16_model_parses_in_tensorrt_rtx_with_fp16_compute(tmp_path):
    engine = pytest.importorskip("optimizer.engine")
    from optimizer.engine.parse import parse_network

    src = save(model_from_text(TEXT, **_weights()), tmp_path / "m.onnx")
    result = autocast(src, tmp_path / "h.onnx")
    check = engine.parse_check(result.output_path, builder="tensorrt-rtx")
    assert check.ok, check.issues[:3]
    trt, _ = engine.load_tensorrt("tensorrt-rtx")
    summary = engine.network_precision(parse_network(trt, result.output_path).network)
    assert summary.compute_by_precision == {"fp16": 2}  # conv and matmul, strongly typed from the graph
