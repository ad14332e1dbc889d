"""FP8 (E4M3) Q/DQ and INT4 block-wise weight-only: structure, ORT numerics against an emulation, FP32 closeness."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest
from cal_models import model_from_text, rand, run, save, uniform_samples

from calibration import quantize
from calibration.qdq import FP8_MAX, quantize_weight_fp8, target_format
from calibration.weight_only import CLIP_RATIOS, INT4_MAX, plan_int4, quantize_int4_blocks
from optimizer.errors import ConfigError
from optimizer.runners import OrtRunner

CONV_MM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,16,8,8] x) => (float[1,32] y) {
    [conv] c = Conv <pads = [1,1,1,1]> (x, wc)
    [relu] r = Relu (c)
    [pool] p = GlobalAveragePool (r)
    [flat] f = Flatten (p)
    [fc] y = MatMul (f, wf)
}"""
CONV_MM_WEIGHTS = {"wc": rand(32, 16, 3, 3), "wf": rand(32, 32, seed=2)}

MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,256] x) => (float[N,64] y, float[N,24] z) {
    [fc1] h = MatMul (x, w1)
    [act] r = Relu (h)
    [fc2] y = Gemm <transB = 1> (r, w2, b2)
    [odd] z = MatMul (x, w_odd)
}"""


def _mlp_weights() -> dict[str, np.ndarray]:
    w1 = rand(256, 128, seed=3)
    w1[::37, ::11] *= 4  # outliers: where a clip below the block maximum can pay off
    return {"w1": w1, "w2": rand(64, 128, seed=4), "b2": rand(64, seed=5), "w_odd": rand(256, 24, seed=6)}


def _fp8(x: np.ndarray, scale) -> np.ndarray:
    return np.clip(x / scale, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


def _dq_inputs(value: ir.Value):
    dq = value.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", f"{value.name} is not dequantized"
    return dq, [v.const_value.numpy() if v is not None and v.const_value is not None else None for v in dq.inputs]


# --- FP8 ------------------------------------------------------------------------------------


def test_fp8_weights_are_e4m3_per_channel_and_round_to_nearest():
    w = rand(8, 4, 3, 3)
    q, scale = quantize_weight_fp8(w, 0)
    assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == (8,)
    assert np.allclose(np.abs(q.astype(np.float32)).reshape(8, -1).max(1), FP8_MAX)  # each channel reaches 448
    restored = q.astype(np.float32) * scale[:, None, None, None]
    # E4M3 has 3 mantissa bits: relative rounding error <= 2^-4 for normal values.
    normal = np.abs(w) > scale[:, None, None, None] * 2**-6
    assert np.all(np.abs(restored - w)[normal] <= np.abs(w)[normal] * 2**-4 + 1e-9)


def test_fp8_model_runs_in_ort_as_emulated(tmp_path):
    src = save(model_from_text(CONV_MM, **CONV_MM_WEIGHTS), tmp_path / "m.onnx")
    calib = uniform_samples({"x": (1, 16, 8, 8)}, 4)
    result = quantize(src, tmp_path / "fp8.onnx", calib, target="tensorrt", mode="fp8")
    assert result.mode == "fp8" and (result.opset_before, result.opset_after) == (17, 19)
    assert result.quantized_nodes == ["conv", "fc"]
    model = ir.load(tmp_path / "fp8.onnx")
    conv, fc = model.graph.node("conv"), model.graph.node("fc")
    _, (x_q, s_x, zp_x) = _dq_inputs(conv.inputs[0])
    dq_w, (w_q, s_w, zp_w) = _dq_inputs(conv.inputs[1])
    assert zp_x.dtype == ml_dtypes.float8_e4m3fn and zp_x == 0 and w_q.dtype == ml_dtypes.float8_e4m3fn
    assert dq_w.attributes["axis"].value == 0 and s_w.shape == (32,)
    _, (_, s_f, _) = _dq_inputs(fc.inputs[0])
    _, (wf_q, s_wf, _) = _dq_inputs(fc.inputs[1])
    fp32 = model_from_text(CONV_MM, **CONV_MM_WEIGHTS)
    for feed in uniform_samples({"x": (1, 16, 8, 8)}, 2, seed=9):
        # The emulation: Conv on E4M3-rounded data and weights, then the same for the MatMul.
        conv_w = w_q.astype(np.float32) * s_w[:, None, None, None]
        emulated = model_from_text(CONV_MM, wc=conv_w, wf=wf_q.astype(np.float32) * s_wf[None, :])
        h = run(_prefix(emulated, "f"), {"x": _fp8(feed["x"], s_x)})["f"]
        expected = _fp8(h, s_f) @ (wf_q.astype(np.float32) * s_wf[None, :])
        got = run(model, feed)["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        reference = run(fp32, feed)["y"]
        assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()


def _prefix(model: ir.Model, output: str) -> ir.Model:
    """The model cut at ``output`` (its first nodes up to that tensor)."""
    value = next(v for n in model.graph for v in n.outputs if v.name == output)
    model.graph.outputs.clear()
    model.graph.outputs.append(value)
    return model


def test_fp8_is_refused_for_the_ort_cpu_target(tmp_path):
    with pytest.raises(ConfigError, match="FP8 Q/DQ is a TensorRT form"):
        target_format("onnxruntime-cpu", "fp8")
    src = save(model_from_text(CONV_MM, **CONV_MM_WEIGHTS), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="--target tensorrt"):
        quantize(src, tmp_path / "out.onnx", uniform_samples({"x": (1, 16, 8, 8)}, 1), target="onnxruntime-cpu", mode="fp8")
    assert not (tmp_path / "out.onnx").exists()


# --- INT4 weight-only -----------------------------------------------------------------------


def test_int4_blocks_rtn_and_clip_search():
    w = _mlp_weights()["w1"]
    x = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    gram = x.astype(np.float64).T @ x
    q, scale, ratio = quantize_int4_blocks(w, 0, 128)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= INT4_MAX and scale.shape == (2, 128) and ratio == 1.0
    deq = q.reshape(2, 128, 128) * scale[:, None, :]
    # RTN: every block's largest magnitude maps to 7, so the rounding error is at most half a step.
    assert np.all(np.abs(deq.reshape(256, 128) - w) <= np.repeat(scale, 128, axis=0) / 2 + 1e-7)
    q2, scale2, ratio2 = quantize_int4_blocks(w, 0, 128, gram)
    assert min(CLIP_RATIOS) <= ratio2 < 1.0
    err_rtn = np.linalg.norm(x @ (deq.reshape(256, 128) - w))
    err_awq = np.linalg.norm(x @ ((q2.reshape(2, 128, 128) * scale2[:, None, :]).reshape(256, 128) - w))
    assert err_awq < 0.95 * err_rtn  # the search lowers the output error it minimises
    qt, st, _ = quantize_int4_blocks(w.T.copy(), 1, 128)  # Gemm transB layout: blocks along axis 1
    np.testing.assert_array_equal(qt, q.T)
    np.testing.assert_array_equal(st, scale.T)


def test_int4_plan_covers_matmul_and_gemm_with_reasons():
    model = model_from_text(MLP, **_mlp_weights())
    plan = plan_int4(model, block_size=128)
    # MatMul weights are [K, N]: blocks along axis 0; Gemm transB weights are [N, K]: along axis 1.
    assert [(p.node, p.axis) for p in plan.nodes] == [("fc1", 0), ("fc2", 1), ("odd", 0)] and not plan.skipped
    assert all("multiple of the block size 512" in r for r in plan_int4(model, block_size=512).skipped.values())
    with pytest.raises(ConfigError, match="power of two"):
        plan_int4(model, block_size=100)


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_int4_model_runs_in_ort_as_emulated(tmp_path, method):
    weights = _mlp_weights()
    src = save(model_from_text(MLP, **weights), tmp_path / "mlp.onnx")
    calib = uniform_samples({"x": (16, 256)}, 4)
    result = quantize(src, tmp_path / "int4.onnx", calib, mode="int4-weight", int4_method=method, block_size=128)
    assert result.opset_after == 21 and result.num_q == 0 and result.method == f"int4-{method}"
    assert result.quantized_nodes == ["fc1", "fc2", "odd"] and result.quantized_weight_share == 1.0
    model = ir.load(tmp_path / "int4.onnx")
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph)  # weight-only: activations stay float
    deq = {}
    for name, weight_name in (("fc1", "w1"), ("fc2", "w2"), ("odd", "w_odd")):
        dq, (w_q, scale, *_) = _dq_inputs(model.graph.node(name).inputs[1])
        assert dq.inputs[0].const_value.dtype == ir.DataType.INT4 and dq.attributes["block_size"].value == 128
        axis = dq.attributes["axis"].value
        deq[weight_name] = w_q.astype(np.float32) * np.repeat(scale, 128, axis=axis)
        # RTN rounds within half a step (max / 14); the clip search may also saturate, by at most 1 - min ratio.
        bound = (1 - min(CLIP_RATIOS) if method == "awq" else 0) + 1 / 14
        assert np.abs(deq[weight_name] - weights[weight_name]).max() <= np.abs(weights[weight_name]).max() * bound
    fp32 = model_from_text(MLP, **weights)
    for feed in uniform_samples({"x": (16, 256)}, 2, seed=3):
        expected = model_from_text(MLP, **{**weights, **deq})
        want = run(expected, feed)
        payload = ir.serde.serialize_model(model).SerializeToString()
        got = OrtRunner(payload, optimization="basic").run(feed)  # our graph as written: DQ then float GEMM
        for k in ("y", "z"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
        # Level "all" fuses DQ(int4) -> MatMul into MatMulNBits, which by default also rounds the
        # activations to int8 per block (ORT's accuracy level 4): close, not identical.
        fused = OrtRunner(payload, optimization="all").run(feed)
        for k in ("y", "z"):
            assert np.abs(fused[k] - want[k]).max() < 0.02 * np.abs(want[k]).max()
        reference = run(fp32, feed)["y"]
        # INT4 with 16 levels per block of Gaussian-like weights (block max ~3 sigma) rounds each
        # weight with ~0.12 sigma error; two layers of it: ~0.17 relative error at most, measured 0.13-0.17.
        assert _nrmse(got["y"], reference) < 0.2


def _nrmse(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - reference) ** 2) / np.mean(reference**2)))


def test_int4_clip_search_beats_rtn_on_fresh_data(tmp_path):
    src = save(model_from_text(MLP, **_mlp_weights()), tmp_path / "mlp.onnx")
    calib, fresh = uniform_samples({"x": (16, 256)}, 4), uniform_samples({"x": (16, 256)}, 4, seed=11)
    reference = [run(model_from_text(MLP, **_mlp_weights()), f)["y"] for f in fresh]
    errors = {}
    for method in ("rtn", "awq"):
        out = quantize(src, tmp_path / f"{method}.onnx", calib, mode="int4-weight", int4_method=method)
        runner = OrtRunner(out.output_path, optimization="basic")
        errors[method] = np.mean([_nrmse(runner.run(f)["y"], r) for f, r in zip(fresh, reference)])
    assert errors["awq"] < 0.95 * errors["rtn"], errors


@pytest.mark.rtx
@pytest.mark.parametrize("mode,expect", [("fp8", "fp8"), ("int4-weight", "int4")])
def test_tensorrt_rtx_builds_fp8_and_int4(tmp_path, mode, expect):
    engine = pytest.importorskip("optimizer.engine")
    from optimizer.shapes import parse_shapes

    text, weights, shape, spec = (
        (CONV_MM, CONV_MM_WEIGHTS, (1, 16, 8, 8), None) if mode == "fp8" else (MLP, _mlp_weights(), (16, 256), "x:1x256,16x256,64x256")
    )
    src = save(model_from_text(text, **weights), tmp_path / "m.onnx")
    result = quantize(src, tmp_path / "q.onnx", uniform_samples({"x": shape}, 2), mode=mode)
    config = engine.BuildConfig(profiles=[parse_shapes(spec)] if spec else [])
    built = engine.build_engine(result.output_path, tmp_path / "q.engine", config, builder="tensorrt-rtx")
    assert built.precision.compute_by_precision.get(expect) == len(result.quantized_nodes), built.precision
    assert expect in built.precision.carries


# --- the CLI --------------------------------------------------------------------------------


def _npz_folder(folder, samples):
    folder.mkdir()
    for i, feed in enumerate(samples):
        np.savez(folder / f"{i:03d}.npz", **feed)
    return folder


@pytest.mark.parametrize("mode,expect", [("fp8", "fp8"), ("int4-weight", "int4")])
def test_cli_quantize_mode(tmp_path, mode, expect):
    from click.testing import CliRunner

    from optimizer.cli import main

    src = save(model_from_text(MLP, **_mlp_weights()), tmp_path / "mlp.onnx")
    calib = _npz_folder(tmp_path / "calib", uniform_samples({"x": (4, 256)}, 3))
    out = tmp_path / f"mlp.{expect}.onnx"
    result = CliRunner().invoke(main, ["quantize", str(src), "-o", str(out), "--calib", str(calib), "--mode", mode, "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["mode"] == mode and data["quantized_nodes"] == ["fc1", "fc2", "odd"]
    dtypes = {v.const_value.dtype for v in ir.load(out).graph.initializers.values()}
    assert (ir.DataType.FLOAT8E4M3FN if mode == "fp8" else ir.DataType.INT4) in dtypes


def test_cli_refuses_fp8_for_ort_and_budget_for_int4(tmp_path):
    import subprocess
    import sys

    src = save(model_from_text(MLP, **_mlp_weights()), tmp_path / "mlp.onnx")
    calib = _npz_folder(tmp_path / "calib", uniform_samples({"x": (4, 256)}, 2))
    base = [sys.executable, "-m", "optimizer.cli", "quantize", str(src), "-o", str(tmp_path / "o.onnx"), "--calib", str(calib)]
    for extra, message in (
        (["--mode", "fp8", "--target", "onnxruntime-cpu"], "FP8 Q/DQ is a TensorRT form"),
        (["--mode", "int4-weight", "--budget", "output_nrmse<=0.1", "--val", str(calib)], "accuracy budget applies to Q/DQ modes"),
    ):
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith("trtforge: error:") and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()
