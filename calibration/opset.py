"""Opset upgrade before quantization, checked by running the model before and after.

Per-channel DequantizeLinear needs opset 13, and many exported models are older (PP-OCRv4 is
opset 12). ONNX's version converter rewrites ops whose semantics changed (Softmax's axis,
Squeeze's axes...), and an adapter bug would silently change the model, so the upgrade is
accepted only when both versions give the same outputs on a real sample.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import version_converter

from optimizer.errors import CalibrationError
from optimizer.model import opset_of, to_proto_bytes
from optimizer.runners import OrtRunner

# Both runs use the same ORT kernels; only rewritten ops may differ, and only by float
# reassociation (e.g. Softmax computed on a reshaped view).
RTOL, ATOL = 1e-4, 1e-5




def upgrade_opset(model: ir.Model, target: int, sample: dict[str, np.ndarray]) -> ir.Model:
    """Return ``model`` converted to opset ``target`` (the same object when already there)."""
    before = opset_of(model)
    if before >= target:
        return model
    original = to_proto_bytes(model)
    if original is None:
        raise CalibrationError(
            f"the model is opset {before} and too large (> 2 GB) for ONNX's version converter; "
            f"upgrade it to opset >= {target} yourself and retry"
        )
    try:
        converted = version_converter.convert_version(onnx.load_from_string(original), target)
    except Exception as exc:  # the converter raises plain RuntimeErrors with C++ messages
        raise CalibrationError(
            f"cannot upgrade the model from opset {before} to {target} ({' '.join(str(exc).split())[:200]}); "
            f"per-channel INT8 needs opset >= {target}: re-export the model at a newer opset"
        ) from None
    upgraded = ir.serde.deserialize_model(converted)
    _check_same_outputs(original, converted.SerializeToString(), sample, before, target)
    return upgraded


def _check_same_outputs(original: bytes, converted: bytes, sample: dict, before: int, after: int) -> None:
    ref = OrtRunner(original).run(sample)
    new = OrtRunner(converted).run(sample)
    for name, expected in ref.items():
        got = new.get(name)
        if got is None or got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
            detail = "missing" if got is None else (
                f"shape {list(got.shape)} vs {list(expected.shape)}" if got.shape != expected.shape
                else f"max abs diff {float(np.max(np.abs(got.astype(np.float64) - expected))):.3g}"
            )
            raise CalibrationError(
                f"upgrading the model from opset {before} to {after} changed output '{name}' ({detail}); "
                f"re-export the model at opset >= {after} and retry"
            )
