"""A trained ``torch.nn.TransformerEncoder`` (dynamic batch and sequence) in INT8, FP8 and INT4 weight-only.

Accuracy is the task's top-1 on 256 held-out sequences of varying length (see
``cal_transformer``); one sample is 0.39 points. The TensorRT form must quantize >= 90% of the
Conv/Gemm/MatMul nodes (the attention products included) within 1 point of FP32. Skips
cleanly without torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from cal_transformer import accuracy, encoder_task

from calibration import quantize
from calibration.sensitivity import output_nrmse
from optimizer.runners import OrtRunner

pytestmark = pytest.mark.slow
pytest.importorskip("torch", reason="torch==2.13.0 (CPU) is needed to export the encoder")

PROFILE = "x:1x8x32,1x48x32,8x128x32"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    data = encoder_task(tmp_path_factory.mktemp("encoder"), calib=16, val=256)
    runner = OrtRunner(str(data["model"]), optimization="basic")
    data["reference"] = [runner.run(f) for f in data["val"]]
    data["fp32"] = accuracy(data["reference"], data["labels"])
    return data


@pytest.fixture(scope="module")
def quantized(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder-q")
    variants = {
        "int8": dict(mode="int8", method="max"),
        "fp8": dict(mode="fp8", method="max"),
        "int4-rtn": dict(mode="int4-weight", int4_method="rtn"),
        "int4-awq": dict(mode="int4-weight", int4_method="awq"),
    }
    return {k: quantize(task["model"], out / f"{k}.onnx", task["calib"], target="tensorrt", **kw) for k, kw in variants.items()}


def _outputs(path, feeds):
    runner = OrtRunner(path, optimization="basic")  # our graph as written: Q/DQ simulated in float
    return [runner.run(f) for f in feeds]


def test_fp32_model_learned_the_task(task):
    assert 80 <= task["fp32"] < 100  # a real metric: far above chance (12.5%), not saturated


def test_int8_tensorrt_form_covers_attention_within_one_point(task, quantized):
    result = quantized["int8"]
    total = len(result.quantized_nodes) + len(result.skipped)
    assert len(result.quantized_nodes) / total >= 0.9, result.skipped
    # Both attention products of both layers (Q·Kᵀ and P·V) are among them.
    import onnx_ir as ir

    model = ir.load(result.output_path)
    act_act = [n.name for n in model.graph if n.op_type == "MatMul" and all(
        v.producer() is not None and v.producer().op_type == "DequantizeLinear"
        and v.producer().inputs[0].producer() is not None for v in n.inputs
    )]
    assert len(act_act) == 4 and set(act_act) <= set(result.quantized_nodes)
    score = accuracy(_outputs(result.output_path, task["val"]), task["labels"])
    assert score >= task["fp32"] - 1.0, (score, task["fp32"])


def test_fp8_within_one_point(task, quantized):
    result = quantized["fp8"]
    assert result.opset_after >= 19 and len(result.quantized_nodes) == len(quantized["int8"].quantized_nodes)
    score = accuracy(_outputs(result.output_path, task["val"]), task["labels"])
    assert score >= task["fp32"] - 1.0, (score, task["fp32"])


def test_int4_weight_only_and_the_clip_search(task, quantized):
    errors = {}
    for name in ("int4-rtn", "int4-awq"):
        result = quantized[name]
        assert result.opset_after == 21 and result.num_q == 0
        outputs = _outputs(result.output_path, task["val"])
        errors[name] = output_nrmse(outputs, task["reference"])
        # INT4 weights cost more than INT8; measured 0-1.2 points on this task.
        assert accuracy(outputs, task["labels"]) >= task["fp32"] - 2.5
    assert errors["int4-awq"] < errors["int4-rtn"], errors  # measured 0.026 vs 0.031


@pytest.mark.rtx
@pytest.mark.parametrize("variant,expect", [("int8", "int8"), ("fp8", "fp8"), ("int4-awq", "int4")])
def test_tensorrt_rtx_builds_each_form(quantized, tmp_path, variant, expect):
    engine = pytest.importorskip("optimizer.engine")
    from optimizer.shapes import parse_shapes

    result = quantized[variant]
    config = engine.BuildConfig(profiles=[parse_shapes(PROFILE)])
    built = engine.build_engine(result.output_path, tmp_path / "e.engine", config, builder="tensorrt-rtx")
    assert built.precision.compute_by_precision.get(expect) == len(result.quantized_nodes), built.precision.compute_by_precision
    assert np.isfinite(built.seconds) and (tmp_path / "e.engine").stat().st_size > 0
