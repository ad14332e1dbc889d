"""The real model: PP-OCRv4 recognizer (opset 12, weights in Constant nodes, variable width) to INT8.

Calibrated on 8 rendered text lines, checked on 24 others (the sample's data, see
``samples.ppocr_rec.prepare``). Thresholds were measured, not guessed: over data seeds 0, 1
and 2 the per-time-step argmax agreement with FP32 was 0.956-0.958 (tensorrt: symmetric
int8) and 0.966-0.968 (onnxruntime-cpu: asymmetric uint8), and INT8 CER against the ground
truth stayed within 0.5 points of FP32's. A collapsed model (all blanks) agrees on ~0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from calibration import NpzFolderSource, quantize
from optimizer.model import load_model
from optimizer.runners import OrtRunner

pytestmark = pytest.mark.slow

CALIB_SAMPLES = 8
MIN_STEP_AGREEMENT = {"tensorrt": 0.93, "onnxruntime-cpu": 0.94}
MAX_CER_INCREASE = 2.0  # percentage points over FP32's CER on the same lines


@pytest.fixture(scope="module")
def data(sample_dir):
    calib = list(NpzFolderSource(sample_dir / "data" / "calib"))[:CALIB_SAMPLES]
    val = NpzFolderSource(sample_dir / "data" / "val")
    return calib, list(val), val.labels


@pytest.fixture(scope="module")
def reference(sample_dir, data):
    from samples.ppocr_rec import metric

    path = sample_dir / "ppocr_rec.onnx"
    runner = OrtRunner(path)
    charset = metric.charset_from_metadata(dict(load_model(path).metadata_props))
    return runner, [runner.run(feed) for feed in data[1]], charset


@pytest.fixture(scope="module", params=["tensorrt", "onnxruntime-cpu"])
def quantized(request, sample_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppocr") / f"rec.{request.param}.onnx"
    return quantize(sample_dir / "ppocr_rec.onnx", out, data[0], target=request.param)


def test_everything_with_a_constant_weight_is_int8(quantized):
    assert (quantized.opset_before, quantized.opset_after) == (12, 13)
    assert len(quantized.quantized_nodes) >= 40 and quantized.quantized_weight_share == 1.0
    if quantized.target == "tensorrt":
        # TensorRT's form also quantizes the SVTR attention's activation x activation MatMuls.
        assert not quantized.skipped, quantized.skipped
    else:
        # ORT's CPU form leaves them float, each with its reason.
        assert quantized.skipped and all("not a constant" in r for r in quantized.skipped.values())
    assert quantized.fingerprint.count == CALIB_SAMPLES and len(quantized.fingerprint.inputs["x"].shapes) > 1


def test_runs_in_ort_and_agrees_with_fp32(quantized, reference, data):
    from samples.ppocr_rec import metric

    ref_runner, ref_outputs, charset = reference
    runner = OrtRunner(quantized.output_path)
    assert runner.output_names == ref_runner.output_names
    outputs = [runner.run(feed) for feed in data[1]]
    name = ref_runner.output_names[0]
    agree = []
    for out, ref in zip(outputs, ref_outputs):
        assert out[name].shape == ref[name].shape  # [1, T, 6625] with T following each line's width
        agree.append(out[name][0].argmax(-1) == ref[name][0].argmax(-1))
    agreement = float(np.mean(np.concatenate(agree)))
    assert agreement >= MIN_STEP_AGREEMENT[quantized.target], f"argmax agreement {agreement:.4f}"

    labels = [label.strip() for label in data[2]]

    def cer(outs):
        texts = [metric.ctc_greedy_decode(o[name], charset).strip() for o in outs]
        return 100 * metric.character_error_rate(texts, labels)

    assert cer(outputs) <= cer(ref_outputs) + MAX_CER_INCREASE


@pytest.mark.rtx
def test_tensorrt_target_parses_cleanly_in_tensorrt_rtx(quantized):
    engine = pytest.importorskip("optimizer.engine")
    if not hasattr(engine, "parse_check"):
        pytest.skip("optimizer.engine.parse_check is not available")
    check = engine.parse_check(quantized.output_path, builder="tensorrt-rtx")
    if quantized.target == "tensorrt":
        assert check.ok, check.issues[:3]
        from optimizer.engine.parse import parse_network

        trt, _ = engine.load_tensorrt("tensorrt-rtx")
        summary = engine.network_precision(parse_network(trt, quantized.output_path).network)
        # Every node we quantized reaches TensorRT as an INT8 compute layer.
        assert summary.compute_by_precision.get("int8") == len(quantized.quantized_nodes)
    else:
        # Asymmetric uint8 is ORT's form; TensorRT rejects it, which is why the target exists.
        assert not check.ok and "zero point" in check.issues[0].message.lower()
