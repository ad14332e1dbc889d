"""quantize(): the whole INT8 stage on small models, its record, and its refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import onnx_ir as ir
import pytest
from cal_models import model_from_text, op_types, rand, run, save, uniform_samples

from calibration import NpzFolderSource, quantize, synthetic_source
from optimizer.errors import CalibrationError, ConfigError, InputError
from optimizer.model import input_specs, load_model

CONV_SOFTMAX = """<ir_version: 7, opset_import: ["" : %d]>
g (float[N,16,8,8] x) => (float[N,24,8,8] y) {
    [conv] c = Conv <pads = [1,1,1,1]> (x, w, b)
    [softmax] y = Softmax <axis = 1> (c)
}"""
WEIGHTS = {"w": rand(24, 16, 3, 3), "b": rand(24, seed=2)}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime-cpu"])
def test_quantize_opset12_model(tmp_path, target):
    """Opset 12 -> 13 first (Softmax changed meaning in 13: the converter must keep the numbers)."""
    src = save(model_from_text(CONV_SOFTMAX % 12, **WEIGHTS), tmp_path / "m.onnx")
    before = _sha(src)
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 4)
    seen = []
    result = quantize(src, tmp_path / "q.onnx", samples, target=target, progress=seen.append)
    assert _sha(src) == before, "the input model must never be modified"
    assert (result.opset_before, result.opset_after) == (12, 13)
    assert result.quantized_nodes == ["conv"] and result.skipped == {}
    assert result.quantized_weight_share == 1.0 and result.fingerprint.count == 4 and seen == [1, 2, 3, 4]
    q = load_model(result.output_path)
    assert op_types(q).count("QuantizeLinear") == result.num_q and op_types(q).count("DequantizeLinear") == result.num_dq
    # onnxruntime-cpu: the conv output, and the Flatten the opset converter puts before Softmax
    # (data movement: it shares the conv output's scale and runs on uint8).
    assert (result.num_q, result.num_dq) == ((1, 2) if target == "tensorrt" else (3, 4))
    ref = run(src, samples[1])["y"]
    out = run(q, samples[1])["y"]
    assert out.shape == ref.shape and np.abs(out - ref).max() < 0.05 and np.allclose(out.sum(axis=(1, 2, 3)), 1, atol=1e-5)  # opset-12 Softmax: over C*H*W
    json.dumps(dataclasses.asdict(result))  # the report serialises it as is


def test_folder_source_and_synthetic_end_to_end(tmp_path):
    src = save(model_from_text(CONV_SOFTMAX % 17, **WEIGHTS), tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, feed in enumerate(uniform_samples({"x": (1, 16, 8, 8)}, 3)):
        np.save(folder / f"{i}.npy", feed["x"])
    result = quantize(src, tmp_path / "q.onnx", NpzFolderSource(folder))
    assert result.fingerprint.count == 3 and not result.fingerprint.synthetic
    synthetic = synthetic_source(input_specs(load_model(src)), 2, shapes={"x": (1, 16, 8, 8)})
    assert quantize(src, tmp_path / "q2.onnx", synthetic).fingerprint.synthetic


def test_conv_in_if_branch_is_listed_as_skipped(tmp_path):
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,16,8,8] x, bool c) => (float[N,16,8,8] y, float[N,16,8,8] z) {
        [main_conv] y = Conv <pads = [1,1,1,1]> (x, w)
        [branch] z = If (c) <
            then_branch = t () => (float[N,16,8,8] ty) { [then_conv] ty = Conv <pads = [1,1,1,1]> (x, w2) },
            else_branch = e () => (float[N,16,8,8] ey) { [else_id] ey = Identity (y) }>
    }"""
    src = save(model_from_text(text, w=rand(16, 16, 3, 3), w2=rand(16, 16, 3, 3, seed=4)), tmp_path / "if.onnx")
    samples = [dict(f, c=np.array(i % 2 == 0)) for i, f in enumerate(uniform_samples({"x": (1, 16, 8, 8)}, 2))]
    result = quantize(src, tmp_path / "q.onnx", samples)
    assert result.quantized_nodes == ["main_conv"]
    assert "subgraph of If 'branch'" in result.skipped["then_conv"]
    assert result.quantized_weight_share == pytest.approx(0.5)  # the branch's weights stay FP32


def test_nothing_to_quantize_is_an_error_not_a_copy(tmp_path):
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4,8,8] x) => (float[N,4,8,8] y) { [tiny] y = Conv (x, w) }"""
    src = save(model_from_text(text, w=rand(4, 4, 1, 1)), tmp_path / "tiny.onnx")
    with pytest.raises(CalibrationError, match="nothing to quantize .*tiny: too small"):
        quantize(src, tmp_path / "q.onnx", uniform_samples({"x": (1, 4, 8, 8)}, 2))
    assert not (tmp_path / "q.onnx").exists()


def test_refusals_before_any_work(tmp_path):
    src = save(model_from_text(CONV_SOFTMAX % 17, **WEIGHTS), tmp_path / "m.onnx")
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 2)
    with pytest.raises(ConfigError, match="unknown quantization target"):
        quantize(tmp_path / "missing.onnx", tmp_path / "q.onnx", samples, target="tensorrt-int4")
    with pytest.raises(ConfigError, match="method 'kl'"):
        quantize(src, tmp_path / "q.onnx", samples, method="kl")
    with pytest.raises(ConfigError, match="overwrite the input"):
        quantize(src, src, samples)
    bad = [dict(samples[0]), {"x": samples[1]["x"].astype(np.float16)}]
    with pytest.raises(InputError, match="sample 1: input 'x' has dtype float16"):
        quantize(src, tmp_path / "q.onnx", bad)
    with pytest.raises(InputError, match="one-shot generator"):
        quantize(src, tmp_path / "q.onnx", (s for s in samples))
    assert not (tmp_path / "q.onnx").exists()


def test_quantized_model_is_valid_onnx(tmp_path):
    import onnx

    src = save(model_from_text(CONV_SOFTMAX % 17, **WEIGHTS), tmp_path / "m.onnx")
    result = quantize(src, tmp_path / "q.onnx", uniform_samples({"x": (1, 16, 8, 8)}, 2), target="onnxruntime-cpu")
    onnx.checker.check_model(onnx.load(result.output_path), full_check=True)
    assert ir.load(result.output_path).graph.initializers["w_int8"].const_value.dtype == ir.DataType.INT8


def test_per_tensor_weights(tmp_path):
    """per_channel=False: one weight scale, no axis; with one loud channel the quiet ones lose precision."""
    weights = dict(WEIGHTS, w=WEIGHTS["w"].copy())
    weights["w"][0] *= 50  # one output channel 50x louder than the rest
    src = save(model_from_text(CONV_SOFTMAX % 17, **weights), tmp_path / "m.onnx")
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 3)
    per_tensor = quantize(src, tmp_path / "t.onnx", samples, per_channel=False)
    per_channel = quantize(src, tmp_path / "c.onnx", samples)
    assert not per_tensor.per_channel and per_channel.per_channel
    dq = load_model(per_tensor.output_path).graph.node("w_DequantizeLinear")
    assert "axis" not in dq.attributes and dq.inputs[1].const_value.numpy().shape == ()
    scale = float(dq.inputs[1].const_value.numpy())
    assert scale == pytest.approx(np.abs(weights["w"]).max() / 127, rel=1e-6)
    ref = run(src, samples[1])["y"]
    err_t = np.abs(run(load_model(per_tensor.output_path), samples[1])["y"] - ref)[:, 1:].max()
    err_c = np.abs(run(load_model(per_channel.output_path), samples[1])["y"] - ref)[:, 1:].max()
    assert err_t > 3 * err_c


def test_constant_condition_if_is_inlined_and_quantized(tmp_path):
    """An exporter's constant-flag If: the taken branch is spliced in and quantized, not skipped."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,16,8,8] x) => (float[N,16,8,8] z) {
        flag = Constant <value = bool {1}> ()
        [branch] z = If (flag) <
            then_branch = t () => (float[N,16,8,8] ty) { [then_conv] ty = Conv <pads = [1,1,1,1]> (x, w) },
            else_branch = e () => (float[N,16,8,8] ey) { [else_id] ey = Identity (x) }>
    }"""
    src = save(model_from_text(text, w=rand(16, 16, 3, 3)), tmp_path / "if.onnx")
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 3)
    result = quantize(src, tmp_path / "q.onnx", samples)
    assert result.inlined_ifs == 1 and result.quantized_nodes == ["branch_then_conv"] and result.skipped == {}
    q = load_model(result.output_path)
    assert "If" not in op_types(q) and "QuantizeLinear" in op_types(q)
    ref, got = run(src, samples[1])["z"], run(q, samples[1])["z"]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_weights_trtforge_does_not_quantize_count_against_the_share_and_say_why(tmp_path):
    """A U-Net-style ConvTranspose beside a Conv: half the weights stay FP32, and the record says which and why.

    The share was 1.0 here before (only Conv/Gemm/MatMul weights were counted), which claimed
    an all-INT8 network while the ConvTranspose ran in FP32."""
    text = """<ir_version: 7, opset_import: ["" : 17]>
    g (float[1,8,8,8] x) => (float[1,8,16,16] y) {
        [conv] c = Conv <pads = [1,1,1,1]> (x, w)
        [up] y = ConvTranspose <strides = [2,2], kernel_shape = [2,2]> (c, wt)
    }"""
    src = save(model_from_text(text, w=rand(8, 8, 3, 3), wt=rand(8, 8, 2, 2, seed=3)), tmp_path / "m.onnx")
    result = quantize(src, tmp_path / "q.onnx", uniform_samples({"x": (1, 8, 8, 8)}, 2))
    assert result.quantized_nodes == ["conv"]
    assert result.quantized_weight_share == pytest.approx(576 / (576 + 256))
    assert "ConvTranspose weights are not quantized" in result.skipped["up"]
