"""Attention in TensorRT's INT8 form: Q/DQ on both inputs of Q·Kᵀ and P·V, the softmax output at a fixed scale."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from cal_models import model_from_text, rand, run, save, uniform_samples

from calibration import quantize
from calibration.qdq import SOFTMAX_RANGE, insert_qdq, plan_qdq
from calibration.stats import collect_ranges

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,S,64] x) => (float[1,S,64] y) {
    [q_proj] q = MatMul (x, wq)
    [k_proj] k = MatMul (x, wk)
    [v_proj] v = MatMul (x, wv)
    [k_t] kt = Transpose <perm = [0, 2, 1]> (k)
    [bmm1] s = MatMul (q, kt)
    [scale] sc = Mul (s, inv_sqrt_d)
    [softmax] p = Softmax <axis = -1> (sc)
    [bmm2] o = MatMul (p, v)
    [out_proj] y = MatMul (o, wo)
}"""
WEIGHTS = {
    "wq": rand(64, 64, seed=1), "wk": rand(64, 64, seed=2), "wv": rand(64, 64, seed=3), "wo": rand(64, 64, seed=4),
    "inv_sqrt_d": np.array(0.125, np.float32),
}


def _samples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    return [{"x": f["x"] * 2} for f in uniform_samples({"x": (1, 24, 64)}, count, seed)]


def _dq(value: ir.Value) -> tuple[float, np.ndarray]:
    dq = value.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", f"{value.name} is not dequantized"
    return float(dq.inputs[1].const_value.numpy()), dq.inputs[2].const_value.numpy()


def _fake_quant(x: np.ndarray, scale: float) -> np.ndarray:
    return (np.clip(np.rint(x / np.float32(scale)), -127, 127) * np.float32(scale)).astype(np.float32)


def test_bmm_inputs_get_qdq_and_softmax_a_fixed_scale():
    model = model_from_text(TEXT, **WEIGHTS)
    plan = plan_qdq(model, target="tensorrt")
    assert [(m.node, m.inputs) for m in plan.matmuls] == [("bmm1", ("q", "kt")), ("bmm2", ("p", "v"))]
    assert plan.fixed_ranges == {"p": SOFTMAX_RANGE}
    assert plan.quantized_nodes == ["q_proj", "k_proj", "v_proj", "out_proj", "bmm1", "bmm2"] and not plan.skipped
    samples = _samples(4)
    ranges = collect_ranges(model, plan.activations, samples)
    record = insert_qdq(model, plan, ranges, target="tensorrt")
    nodes = {n.name: n for n in model.graph}
    for name in ("bmm1", "bmm2"):
        for value in nodes[name].inputs:
            scale, zero_point = _dq(value)
            assert zero_point.dtype == np.int8 and zero_point == 0  # TensorRT's symmetric form
    assert _dq(nodes["bmm2"].inputs[0])[0] == np.float32(1 / 127)  # [0, 1], whatever calibration saw
    # q and kt are calibrated per tensor, symmetric: amax / 127.
    amax = max(-ranges["q"].min, ranges["q"].max)
    assert _dq(nodes["bmm1"].inputs[0])[0] == pytest.approx(amax / 127, rel=1e-6)
    assert record.quantized_nodes == plan.quantized_nodes and record.num_q == len(plan.activations)


def test_quantized_attention_matches_its_emulation_and_stays_close_to_fp32():
    """ORT runs exactly the Q/DQ arithmetic we claim (numpy emulation), and it is close to FP32."""
    model = model_from_text(TEXT, **WEIGHTS)
    fp32 = model_from_text(TEXT, **WEIGHTS)
    plan = plan_qdq(model, target="tensorrt", op_types=("MatMul",), exclude=["q_proj", "k_proj", "v_proj", "out_proj"])
    assert plan.quantized_nodes == ["bmm1", "bmm2"]  # only the attention products, to emulate them alone
    insert_qdq(model, plan, collect_ranges(model, plan.activations, _samples(4)), target="tensorrt")
    nodes = {n.name: n for n in model.graph}
    s_q, s_kt = _dq(nodes["bmm1"].inputs[0])[0], _dq(nodes["bmm1"].inputs[1])[0]
    s_p, s_v = _dq(nodes["bmm2"].inputs[0])[0], _dq(nodes["bmm2"].inputs[1])[0]
    for feed in _samples(3, seed=5):  # fresh inputs, not the calibration ones
        x = feed["x"][0]
        q, k, v = x @ WEIGHTS["wq"], x @ WEIGHTS["wk"], x @ WEIGHTS["wv"]
        s = (_fake_quant(q, s_q) @ _fake_quant(k.T, s_kt)) * np.float32(0.125)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        expected = (_fake_quant(p, s_p) @ _fake_quant(v, s_v)) @ WEIGHTS["wo"]
        got = run(model, feed)["y"][0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        reference = run(fp32, feed)["y"][0]
        assert np.sqrt(np.mean((got - reference) ** 2) / np.mean(reference**2)) < 0.03


def test_onnxruntime_target_keeps_activation_products_float():
    plan = plan_qdq(model_from_text(TEXT, **WEIGHTS), target="onnxruntime-cpu")
    assert plan.matmuls == [] and "not a constant" in plan.skipped["bmm1"] and "not a constant" in plan.skipped["bmm2"]


def test_budget_can_keep_an_attention_product_float(tmp_path):
    src = save(model_from_text(TEXT, **WEIGHTS), tmp_path / "attn.onnx")
    result = quantize(src, tmp_path / "q.onnx", _samples(3), target="tensorrt", exclude=["bmm2"])
    assert "bmm1" in result.quantized_nodes and "bmm2" not in result.quantized_nodes
    assert result.skipped["bmm2"] == "excluded by name"
    model = ir.load(tmp_path / "q.onnx")
    bmm2 = model.graph.node("bmm2")
    assert all(v.producer() is None or v.producer().op_type != "DequantizeLinear" for v in bmm2.inputs)


@pytest.mark.rtx
def test_tensorrt_rtx_builds_int8_attention(tmp_path):
    engine = pytest.importorskip("optimizer.engine")
    from optimizer.shapes import parse_shapes

    src = save(model_from_text(TEXT, **WEIGHTS), tmp_path / "attn.onnx")
    result = quantize(src, tmp_path / "q.onnx", _samples(3), target="tensorrt")
    config = engine.BuildConfig(profiles=[parse_shapes("x:1x16x64,1x24x64,1x64x64")], expect="int8")
    built = engine.build_engine(result.output_path, tmp_path / "q.engine", config, builder="tensorrt-rtx")
    # All six MatMuls, the two attention products included, reach TensorRT as INT8 layers.
    assert built.precision.compute_by_precision == {"int8": 6}
