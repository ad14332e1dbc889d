"""A written precision artifact must load and run: one check for Q/DQ and autocast models."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.errors import CalibrationError
from optimizer.model import to_proto_bytes
from optimizer.runners import OrtRunner


def check_runs(model: ir.Model, sample: dict[str, np.ndarray] | None, what: str, hint: str = "") -> None:
    """Load (and, given a sample, run) ``model`` in ONNX Runtime; NaN/Inf outputs are errors.

    An artifact ORT rejects or that computes NaN is a bug to report, not a result to save.
    Models over 2 GB are checked later from the saved file by the validation stage.
    """
    payload = to_proto_bytes(model)
    if payload is None:
        return
    try:
        runner = OrtRunner(payload)
        outputs = runner.run(sample) if sample is not None else {}
    except Exception as exc:
        raise CalibrationError(f"the {what} model does not run in ONNX Runtime: {exc}") from None
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CalibrationError(f"the {what} model produces NaN/Inf in output '{name}'{hint}")
