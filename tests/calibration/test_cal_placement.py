"""TensorRT placement beyond compute ops: residual Add, pooling, Concat with one shared scale."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from cal_models import model_from_text, rand, run, save, uniform_samples

from calibration import quantize
from calibration.qdq import insert_qdq, plan_qdq
from calibration.stats import collect_ranges

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,16,8,8] x) => (float[1,16,4,4] y) {
    [conv1] c1 = Conv <pads = [1,1,1,1]> (x, w1)
    [add] a = Add (c1, x)
    [relu] r = Relu (a)
    [pool] p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
    [conv2] c2 = Conv <pads = [1,1,1,1]> (p, w2)
    [conv3] c3 = Conv <pads = [1,1,1,1]> (p, w3)
    [relu_u] u = Relu (c2)
    [relu_v] v = Relu (c3)
    [conv4] d4 = Conv (u, w4)
    [conv5] d5 = Conv (v, w5)
    [cat] cat = Concat <axis = 1> (u, v)
    [conv6] e = Conv (cat, w6)
    [sum45] s = Add (d4, d5)
    [out] y = Add (s, e)
}"""
WEIGHTS = {
    "w1": rand(16, 16, 3, 3), "w2": rand(16, 16, 3, 3, seed=2), "w3": rand(16, 16, 3, 3, seed=3),
    "w4": rand(16, 16, 1, 1, seed=4), "w5": rand(16, 16, 1, 1, seed=5), "w6": rand(16, 32, 1, 1, seed=6),
}


def _dq_scale(value: ir.Value) -> float:
    dq = value.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", f"{value.name} is not dequantized"
    return float(dq.inputs[1].const_value.numpy())


def test_tensorrt_fusion_rules():
    model = model_from_text(TEXT, **WEIGHTS)
    plan = plan_qdq(model, target="tensorrt")
    fusion = {(f.node, f.index, f.tensor, f.rule) for f in plan.fusion_inputs}
    # add: x is the residual (c1 comes from the quantized conv1). sum45: both from quantized convs,
    # the later one (d5) is fused, so d4 is the residual. out: e's conv6 is fused, s is not a conv output.
    assert fusion == {
        ("add", 1, "x", "residual-add"), ("sum45", 0, "d4", "residual-add"), ("out", 0, "s", "residual-add"),
        ("pool", 0, "r", "pooling"),
    }
    assert plan.shared_scales == [["u", "v", "cat"]]
    samples = uniform_samples({"x": (1, 16, 8, 8)}, 4)
    ranges = collect_ranges(model, plan.activations, samples)
    reference = [run(model, f)["y"] for f in samples]
    insert_qdq(model, plan, ranges, target="tensorrt")
    nodes = {n.name: n for n in model.graph}
    assert nodes["add"].inputs[0].name == "c1" and _dq_scale(nodes["add"].inputs[1]) > 0
    assert nodes["conv1"].inputs[0] is nodes["add"].inputs[1]  # x's one Q/DQ pair serves both readers
    assert _dq_scale(nodes["pool"].inputs[0]) > 0
    scales = {_dq_scale(nodes["conv4"].inputs[0]), _dq_scale(nodes["conv5"].inputs[0]), _dq_scale(nodes["conv6"].inputs[0])}
    assert len(scales) == 1  # u, v and their concatenation share one scale
    amax = max(max(-ranges[t].min, ranges[t].max) for t in ("u", "v", "cat"))
    assert scales.pop() == pytest.approx(amax / 127, rel=1e-6)
    for feed, ref in zip(samples, reference):
        got = run(model, feed)["y"]
        assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()


def test_onnxruntime_target_has_no_tensorrt_fusion_inputs():
    plan = plan_qdq(model_from_text(TEXT, **WEIGHTS), target="onnxruntime-cpu")
    assert plan.fusion_inputs == [] and plan.shared_scales == []


@pytest.mark.rtx
def test_fused_placement_builds_in_tensorrt_rtx(tmp_path):
    engine = pytest.importorskip("optimizer.engine")
    src = save(model_from_text(TEXT, **WEIGHTS), tmp_path / "m.onnx")
    result = quantize(src, tmp_path / "q.onnx", uniform_samples({"x": (1, 16, 8, 8)}, 3), target="tensorrt")
    check = engine.parse_check(result.output_path, builder="tensorrt-rtx")
    assert check.ok, check.issues[:3]
    built = engine.build_engine(result.output_path, tmp_path / "q.engine", engine.BuildConfig(expect="int8"), builder="tensorrt-rtx")
    assert (tmp_path / "q.engine").stat().st_size > 0 and built.precision.quantize_layers == result.num_q
