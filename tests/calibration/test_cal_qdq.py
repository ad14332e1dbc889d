"""plan_qdq / insert_qdq on small models: Q/DQ structure per target, and numerics within the scale-derived bound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import pytest
from cal_models import error_bound, model_from_text, op_types, qdq_params, rand, run, uniform_samples
from onnx_ir.passes.common import ShapeInferencePass

from calibration.qdq import activation_qparams, insert_qdq, plan_qdq, quantize_weight, target_format
from calibration.stats import TensorRange, collect_ranges
from optimizer.errors import CalibrationError, ConfigError

TARGETS = ("tensorrt", "onnxruntime-cpu")
HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


@dataclass
class Case:
    name: str
    text: str
    weights: dict
    shapes: dict
    node: str
    op: str
    attrs: dict
    axis: int


CASES = [
    Case(
        "conv",
        HEAD + "g (float[N,16,8,8] x) => (float[N,24,8,8] y) { [conv] y = Conv <pads = [1,1,1,1]> (x, w, b) }",
        {"w": rand(24, 16, 3, 3), "b": rand(24, seed=2)},
        {"x": (2, 16, 8, 8)},
        "conv", "Conv", {"pads": [1, 1, 1, 1]}, 0,
    ),
    Case(
        "gemm_transB0",
        HEAD + "g (float[N,32] x) => (float[N,24] y) { [gemm] y = Gemm <transB = 0> (x, w, b) }",
        {"w": rand(32, 24), "b": rand(24, seed=2)},
        {"x": (4, 32)},
        "gemm", "Gemm", {"transB": 0}, 1,
    ),
    Case(
        "gemm_transB1",
        HEAD + "g (float[N,32] x) => (float[N,24] y) { [gemm] y = Gemm <transB = 1> (x, w, b) }",
        {"w": rand(24, 32), "b": rand(24, seed=2)},
        {"x": (4, 32)},
        "gemm", "Gemm", {"transB": 1}, 0,
    ),
    Case(
        "matmul",
        HEAD + "g (float[N,5,32] x) => (float[N,5,24] y) { [matmul] y = MatMul (x, w) }",
        {"w": rand(32, 24)},
        {"x": (2, 5, 32)},
        "matmul", "MatMul", {}, 1,
    ),
]


def _quantized(case: Case, target: str, samples):
    model = model_from_text(case.text, **case.weights)
    plan = plan_qdq(model, target=target)
    ranges = collect_ranges(model, plan.activations, samples)
    record = insert_qdq(model, plan, ranges, target=target)
    return model, plan, record


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_structure(case, target):
    samples = uniform_samples(case.shapes, 3)
    model, plan, record = _quantized(case, target, samples)
    assert [p.node for p in plan.nodes] == [case.node] and not plan.skipped
    ops = op_types(model)
    # The output is a graph output, so even the ORT target quantizes only the input here.
    assert (ops.count("QuantizeLinear"), ops.count("DequantizeLinear")) == (1, 2) == (record.num_q, record.num_dq)
    p = qdq_params(model, case.node)
    w = case.weights["w"]
    assert p["w_q"].dtype == np.int8 and p["w_q"].shape == w.shape and np.abs(p["w_q"]).max() == 127
    assert not p["weight_has_q"], "weights must be stored as int8, not quantized at run time"
    assert p["axis"] == case.axis and p["s_w"].shape == (w.shape[case.axis],)
    assert p["zp_w"].dtype == np.int8 and not p["zp_w"].any()
    if target == "tensorrt":
        assert p["zp_x"].dtype == np.int8 and p["zp_x"] == 0
    else:
        assert p["zp_x"].dtype == np.uint8 and 120 <= p["zp_x"] <= 136  # data in [-1, 1]
    # The float weight is gone; the bias stays a float initializer on the node.
    assert "w" not in model.graph.initializers
    node = model.graph.node(case.node)
    if "b" in case.weights:
        assert node.inputs[2].name == "b" and node.inputs[2].const_value.dtype == ir.DataType.FLOAT


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_error_within_bound_from_scales(case, target):
    samples = uniform_samples(case.shapes, 3)
    reference = model_from_text(case.text, **case.weights)
    model, _, _ = _quantized(case, target, samples)
    p = qdq_params(model, case.node)
    # Calibration samples plus a fresh one: max calibration on data that spans [-1, 1] keeps
    # any draw from [-1, 1] inside the range, where the bound holds.
    fresh = uniform_samples(case.shapes, 2, seed=7)[1:]
    worst = 0.0
    for feed in samples + fresh:
        y = run(reference, feed)["y"]
        y_q = run(model, feed)["y"]
        bound = error_bound(case.op, case.attrs, feed["x"], case.weights["w"], p["s_x"], p["s_w"], case.axis)
        err = np.abs(y_q - y)
        assert (err <= bound).all(), f"error {err.max():.3g} exceeds the bound where {np.argmax(err - bound)}"
        worst = max(worst, float(err.max()))
    assert worst > 0, "no quantization error at all: the Q/DQ did nothing"


def test_shared_activation_gets_one_qdq_pair():
    text = HEAD + """g (float[N,16,8,8] x) => (float[N,16,6,6] y1, float[N,24,6,6] y2) {
        [conv1] y1 = Conv (x, w1)
        [conv2] y2 = Conv (x, w2)
    }"""
    weights = {"w1": rand(16, 16, 3, 3), "w2": rand(24, 16, 3, 3, seed=3)}
    for target in TARGETS:
        model = model_from_text(text, **weights)
        samples = uniform_samples({"x": (1, 16, 8, 8)}, 2)
        plan = plan_qdq(model, target=target)
        assert plan.activations == ["x"]
        insert_qdq(model, plan, collect_ranges(model, plan.activations, samples), target=target)
        ops = op_types(model)
        assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 3
        assert model.graph.node("conv1").inputs[0] is model.graph.node("conv2").inputs[0]
        reference = model_from_text(text, **weights)
        for name, w in (("conv1", weights["w1"]), ("conv2", weights["w2"])):
            p = qdq_params(model, name)
            y = run(reference, samples[1])[f"y{name[-1]}"]
            y_q = run(model, samples[1])[f"y{name[-1]}"]
            assert (np.abs(y_q - y) <= error_bound("Conv", {}, samples[1]["x"], w, p["s_x"], p["s_w"], 0)).all()


def test_onnxruntime_target_quantizes_outputs_for_integer_kernels():
    """ORT fuses DQ -> Conv -> Q into QLinearConv only with a Q after the Conv; TensorRT needs none."""
    text = HEAD + """g (float[N,16,8,8] x) => (float[N,24,6,6] y) {
        [conv] c = Conv (x, w, b)
        [relu] y = Relu (c)
    }"""
    weights = {"w": rand(24, 16, 3, 3), "b": rand(24, seed=2)}
    samples = uniform_samples({"x": (2, 16, 8, 8)}, 3)
    reference = model_from_text(text, **weights)
    for target, n_q in (("tensorrt", 1), ("onnxruntime-cpu", 2)):
        model = model_from_text(text, **weights)
        plan = plan_qdq(model, target=target)
        record = insert_qdq(model, plan, collect_ranges(model, plan.activations, samples), target=target)
        assert record.num_q == op_types(model).count("QuantizeLinear") == n_q
        p = qdq_params(model, "conv")
        assert (p["s_y"] > 0) == (target == "onnxruntime-cpu")
        if target == "onnxruntime-cpu":
            # The Q is the Conv's only reader; Relu reads the DQ.
            assert [u.node.op_type for u in model.graph.node("conv").outputs[0].uses()] == ["QuantizeLinear"]
            assert model.graph.node("relu").inputs[0].producer().op_type == "DequantizeLinear"
        for feed in samples:
            # Relu is 1-Lipschitz: the Conv's bound (plus s_y/2 for the output Q/DQ) holds after it.
            bound = error_bound("Conv", {}, feed["x"], weights["w"], p["s_x"], p["s_w"], 0, p["s_y"])
            assert (np.abs(run(model, feed)["y"] - run(reference, feed)["y"]) <= bound).all()


def test_weight_from_constant_node_is_quantized_and_the_constant_dropped():
    # PP-OCR stores every weight as a Constant node, not an initializer.
    text = HEAD + """g (float[N,32] x) => (float[N,24] y) {
        w = Constant <value = float[32,24] {%s}> ()
        [mm] y = MatMul (x, w)
    }""" % ", ".join(f"{v:.6f}" for v in rand(32, 24).ravel())
    model = model_from_text(text)
    plan = plan_qdq(model, target="tensorrt")
    assert [p.node for p in plan.nodes] == ["mm"]
    insert_qdq(model, plan, collect_ranges(model, plan.activations, uniform_samples({"x": (2, 32)}, 2)), target="tensorrt")
    assert "Constant" not in op_types(model)


def test_shared_weight_keeps_float_copy_for_other_readers():
    text = HEAD + """g (float[N,32] x) => (float[N,24] y, float[32,24] w_out) {
        [mm] y = MatMul (x, w)
        [id] w_out = Identity (w)
    }"""
    model = model_from_text(text, w=rand(32, 24))
    plan = plan_qdq(model, target="tensorrt")
    insert_qdq(model, plan, collect_ranges(model, plan.activations, uniform_samples({"x": (2, 32)}, 2)), target="tensorrt")
    assert "w" in model.graph.initializers and model.graph.node("id").inputs[0].name == "w"
    assert run(model, uniform_samples({"x": (2, 32)}, 1)[0])["w_out"].dtype == np.float32


def test_plan_skips_with_reasons():
    text = HEAD + """g (float[N,16,8,8] x, float[N,3,8,8] img, float[N,4,16] a)
                     => (float[N,16,8,8] y, float[N,8,6,6] stem_out, float[N,16,8,8] dw_out,
                         float[N,4,4] mm_out, float[N,4,4] small_out, float[N,24,8,8] ex_out) {
        [first] c0 = Conv (x, w_first)
        [squeeze] c1 = Conv (c0, w_squeeze)
        [tiny] c2 = Conv (c1, w_tiny)
        [expand] y = Conv (c2, w_expand)
        [stem] stem_out = Conv (img, w_stem)
        [depthwise] dw_out = Conv <group = 16, pads = [1,1,1,1]> (x, w_dw)
        [transpose] a_t = Transpose <perm = [0, 2, 1]> (a)
        [act_act] mm_out = MatMul (a, a_t)
        [small] small_out = MatMul (a, w_small)
        [excluded] ex_out = Conv <pads = [1,1,1,1]> (x, w_ex)
    }"""
    weights = {
        "w_first": rand(16, 16, 1, 1),
        "w_squeeze": rand(4, 16, 1, 1),  # 4 outputs, but 16 inputs: INT8 kernels exist
        "w_tiny": rand(4, 4, 1, 1),  # 4 -> 4: not worth Q/DQ
        "w_expand": rand(16, 4, 1, 1),
        "w_stem": rand(8, 3, 3, 3),  # narrow, but it reads the network input
        "w_dw": rand(16, 1, 3, 3),
        "w_small": rand(16, 4),
        "w_ex": rand(24, 16, 3, 3),
    }
    model = model_from_text(text, **weights)
    ShapeInferencePass()(model)  # the act_act size rule reads inferred shapes, as exporters record them
    plan = plan_qdq(model, target="tensorrt", exclude={"excluded"})
    assert {p.node for p in plan.nodes} == {"first", "squeeze", "expand", "stem", "depthwise"}
    assert set(plan.skipped) == {"tiny", "act_act", "small", "excluded"}
    assert "too small" in plan.skipped["tiny"]
    # TensorRT quantizes activation x activation MatMuls, but not one with N=4; ORT's CPU form none.
    assert "too small" in plan.skipped["act_act"] and "N=4" in plan.skipped["act_act"]
    assert "not a constant" in plan_qdq(model, target="onnxruntime-cpu").skipped["act_act"]
    assert "too small" in plan.skipped["small"] and "N=4" in plan.skipped["small"]
    assert plan.skipped["excluded"] == "excluded by name"
    assert plan.total_weight_params == sum(w.size for w in weights.values())
    only_matmul = plan_qdq(model, target="tensorrt", op_types=("MatMul",))
    assert "not selected" in only_matmul.skipped["first"]


def test_conv_inside_if_branch_is_reported_not_silently_skipped():
    text = HEAD + """g (float[N,16,8,8] x, bool c) => (float[N,16,8,8] y, float[N,16,8,8] z) {
        [main_conv] y = Conv <pads = [1,1,1,1]> (x, w)
        [branch] z = If (c) <
            then_branch = t () => (float[N,16,8,8] ty) { [then_conv] ty = Conv <pads = [1,1,1,1]> (x, w2) },
            else_branch = e () => (float[N,16,8,8] ey) { [else_id] ey = Identity (y) }>
    }"""
    model = model_from_text(text, w=rand(16, 16, 3, 3), w2=rand(16, 16, 3, 3, seed=4))
    plan = plan_qdq(model, target="tensorrt")
    assert [p.node for p in plan.nodes] == ["main_conv"]
    assert "subgraph" in plan.skipped["then_conv"] and "If 'branch'" in plan.skipped["then_conv"]
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 2)
    for feed in samples:
        feed["c"] = np.array(True)
    insert_qdq(model, plan, collect_ranges(model, plan.activations, samples), target="tensorrt")
    then_conv = next(n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.name == "then_conv")
    assert then_conv.inputs[1].name == "w2"  # untouched, float
    assert run(model, samples[0])["z"].shape == (1, 16, 8, 8)


def test_bad_arguments():
    model = model_from_text(CASES[0].text, **CASES[0].weights)
    with pytest.raises(ConfigError, match="unknown quantization target"):
        plan_qdq(model, target="tensorrt-fp4")
    with pytest.raises(ConfigError, match="Relu"):
        plan_qdq(model, target="tensorrt", op_types=("Conv", "Relu"))
    with pytest.raises(ConfigError, match=r"not in the model: \['cnov'\]"):
        plan_qdq(model, target="tensorrt", exclude={"cnov"})
    plan = plan_qdq(model, target="tensorrt")
    with pytest.raises(CalibrationError, match="no calibrated range for activation 'x'"):
        insert_qdq(model, plan, {}, target="tensorrt")
    old = model_from_text(CASES[0].text.replace('"" : 17', '"" : 12'), **CASES[0].weights)
    with pytest.raises(CalibrationError, match="opset >= 13"):
        insert_qdq(old, plan_qdq(old, target="tensorrt"), {"x": TensorRange(-1, 1, 1)}, target="tensorrt")


def test_scales():
    trt, cpu = target_format("tensorrt"), target_format("onnxruntime-cpu")
    assert activation_qparams(TensorRange(-2.0, 1.0, 1), trt) == (np.float32(2 / 127), 0)
    scale, zp = activation_qparams(TensorRange(0.5, 3.0, 1), cpu)  # widened to include 0
    assert scale == np.float32(3 / 255) and zp == 0
    scale, zp = activation_qparams(TensorRange(-1.0, 3.0, 1), cpu)
    assert zp == round(255 / 4) and abs(-zp * scale - -1.0) <= scale / 2
    assert activation_qparams(TensorRange(0.0, 0.0, 1), trt) == (1.0, 0)  # all-zero tensor stays exact
    w = np.array([[1.0, -0.5], [0.0, 0.0], [-4.0, 2.0]], dtype=np.float32)
    q, s = quantize_weight(w, 0)
    assert s.tolist() == pytest.approx([1 / 127, 1.0, 4 / 127]) and q[1].tolist() == [0, 0]
    assert q[0, 0] == 127 and q[2, 0] == -127 and np.abs(q.astype(np.float32) * s[:, None] - w).max() <= s.max() / 2
