"""The precision stage: calibration data, activation ranges, explicit INT8 Q/DQ, FP16/BF16 autocast.

Modules: ``data`` (sources, validation), ``stats`` + ``histogram`` (ranges: max, percentile,
entropy, mse), ``qdq`` (placement and insertion per target), ``opset`` and ``subgraphs``
(preparation), ``sensitivity`` (per-layer sensitivity and the accuracy budget:
``quantize_with_budget``), ``autocast`` (FP16/BF16 Casts: ``autocast``).

``quantize`` is the Python twin of ``trtforge quantize``: load, upgrade the opset if needed,
validate the data, plan, calibrate, insert Q/DQ, save atomically. The input file is never
modified, and a model where nothing could be quantized is an error, never a silent copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.checks import check_runs
from calibration.data import DataFingerprint, NpzFolderSource, synthetic_source, validate_source
from calibration.opset import opset_of, upgrade_opset
from calibration.qdq import (
    MIN_OPSET,
    SUPPORTED_OP_TYPES,
    QdqPlan,
    QdqRecord,
    insert_qdq,
    plan_qdq,
    target_format,
)
from calibration.stats import COLLECTORS, TensorRange, collect_ranges
from calibration.subgraphs import inline_constant_ifs
from optimizer.errors import CalibrationError, ConfigError, InputError
from optimizer.model import input_specs, load_model, refuse_overwrite, save_model

__all__ = [
    "DataFingerprint",
    "NpzFolderSource",
    "QdqPlan",
    "QdqRecord",
    "QuantizeResult",
    "TensorRange",
    "collect_ranges",
    "insert_qdq",
    "plan_qdq",
    "quantize",
    "synthetic_source",
    "validate_source",
]


@dataclass
class QuantizeResult:
    output_path: str
    target: str
    method: str
    per_channel: bool
    quantized_nodes: list[str]
    skipped: dict[str, str]
    num_q: int
    num_dq: int
    opset_before: int
    opset_after: int
    fingerprint: DataFingerprint
    # Share of Conv/Gemm/MatMul weight parameters now stored as INT8: the speed proxy for
    # the tensorrt target, whose kernels cannot be timed on a machine without a GPU.
    quantized_weight_share: float
    # Constant-condition If nodes replaced by their taken branch before planning (so it is quantized).
    inlined_ifs: int = 0


def quantize(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    source,
    *,
    target: str = "tensorrt",
    method: str = "max",
    op_types: Iterable[str] = SUPPORTED_OP_TYPES,
    exclude: Iterable[str] = (),
    opset_min: int = MIN_OPSET,
    per_channel: bool = True,
    percentile: float = 99.99,
    ranges: dict[str, TensorRange] | None = None,
    progress: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """Write an INT8 Q/DQ version of ``model_path`` to ``output_path`` for ``target``.

    ``source`` must be re-iterable (it is read for validation, then for calibration);
    ``per_channel=False`` uses one scale per weight tensor instead of one per output channel
    (coarser, so less accurate; for runtimes or experiments that need it).
    ``ranges`` reuses ranges already collected on the same data with the same method (the
    budget search calibrates once); tensors it lacks are an error, not a silent recalibration.
    ``progress(done)`` is called after each calibration sample.
    """
    # Cheap checks first: a typo in an option must not cost a calibration run.
    target_format(target)
    if method not in COLLECTORS:
        raise ConfigError(f"calibration method '{method}' is not available yet; choose one of {sorted(COLLECTORS)}")
    if opset_min < MIN_OPSET:
        raise ConfigError(f"opset_min must be >= {MIN_OPSET} (per-channel DequantizeLinear), got {opset_min}")
    model_path, output_path = Path(model_path), Path(output_path)
    refuse_overwrite(model_path, output_path)

    model = load_model(model_path)
    fingerprint = validate_source(source, input_specs(model))
    opset_before = opset_of(model)
    model = upgrade_opset(model, opset_min, _first(source))
    inlined_ifs = inline_constant_ifs(model)

    plan = plan_qdq(model, target=target, op_types=op_types, exclude=exclude)
    if not plan.nodes:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(plan.skipped.items())[:5]) or "the model has no Conv/Gemm/MatMul"
        raise CalibrationError(f"{model_path}: nothing to quantize ({reasons})")
    if ranges is None:
        ranges = collect_ranges(
            model, plan.activations, source, method=method, percentile=percentile,
            symmetric=target_format(target).symmetric_activations, progress=progress,
        )
    elif missing := [t for t in plan.activations if t not in ranges]:
        raise CalibrationError(f"the given ranges lack {len(missing)} tensor(s) the plan needs, e.g. '{missing[0]}'")
    if (seen := min(r.count for r in ranges.values())) != fingerprint.count:
        raise CalibrationError(
            f"the data source yielded {fingerprint.count} samples when validated but {seen} when calibrating; "
            "pass a re-iterable source (a list or a folder source), not a one-shot generator"
        )
    record = insert_qdq(model, plan, ranges, target=target, per_channel=per_channel)
    check_runs(model, _first(source), "quantized")
    save_model(model, output_path)

    return QuantizeResult(
        output_path=str(output_path),
        target=target,
        method=method,
        per_channel=per_channel,
        quantized_nodes=record.quantized_nodes,
        skipped=plan.skipped,
        num_q=record.num_q,
        num_dq=record.num_dq,
        opset_before=opset_before,
        opset_after=opset_of(model),
        fingerprint=fingerprint,
        quantized_weight_share=record.quantized_weight_params / plan.total_weight_params if plan.total_weight_params else 0.0,
        inlined_ifs=inlined_ifs,
    )


def _first(source) -> dict[str, np.ndarray]:
    for feed in source:
        return feed
    raise InputError(
        "the calibration data source yielded no samples on its second pass; pass a re-iterable source "
        "(a list or a folder source), not a one-shot generator"
    )
