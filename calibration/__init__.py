"""The precision stage: calibration data, activation ranges, explicit INT8/FP8 Q/DQ, INT4 weights, FP16/BF16 autocast.

Modules: ``data`` (sources, validation), ``stats`` + ``histogram`` (ranges: max, percentile,
entropy, mse), ``qdq`` (placement and insertion per target), ``opset`` and ``subgraphs``
(preparation), ``weight_only`` (INT4 block-wise weights), ``sensitivity`` (per-layer sensitivity and the accuracy budget:
``quantize_with_budget``; ``quantize_model``, quantize within an optional budget, behind the CLI and the pipeline),
``autocast`` (FP16/BF16 Casts: ``autocast``).

``quantize`` is the Python twin of ``trtforge quantize``: load, upgrade the opset if needed,
validate the data, plan, calibrate, insert Q/DQ, save atomically. The input file is never
modified, and a model where nothing could be quantized is an error, never a silent copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.checks import check_runs
from calibration.data import DataFingerprint, NpzFolderSource, synthetic_source, validate_source
from calibration.opset import upgrade_opset
from calibration.qdq import (
    FP8_MIN_OPSET,
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
from calibration.weight_only import (
    DEFAULT_BLOCK_SIZE,
    INT4_METHODS,
    INT4_MIN_OPSET,
    collect_grams,
    insert_int4,
    plan_int4,
)
from optimizer.errors import CalibrationError, ConfigError, InputError, NothingToQuantize
from optimizer.model import input_specs, load_model, opset_of, refuse_overwrite, save_model

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
    mode: str = "int8"  # "int8" | "fp8" | "int4-weight"
    block_size: int | None = None  # int4-weight: input channels per scale
    clip_ratios: dict[str, float] = field(default_factory=dict)  # int4-weight: mean clip / max per weight


# Each mode and the precision its network carries: the artifact's suffix and `trtforge build --expect`.
CARRIED_PRECISION = {"int8": "int8", "fp8": "fp8", "int4-weight": "int4"}
MODES = tuple(CARRIED_PRECISION)


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
    mode: str = "int8",
    block_size: int = DEFAULT_BLOCK_SIZE,
    int4_method: str = "awq",
) -> QuantizeResult:
    """Write a Q/DQ version of ``model_path`` to ``output_path`` for ``target``.

    ``mode``: ``int8`` (default), ``fp8`` (E4M3 Q/DQ, TensorRT target, opset >= 19) or
    ``int4-weight`` (block-wise INT4 DequantizeLinear on MatMul/Gemm weights, activations
    float, opset >= 21; ``block_size`` and ``int4_method`` "awq"|"rtn", see
    ``calibration.weight_only``).
    ``source`` must be re-iterable (it is read for validation, then for calibration);
    ``per_channel=False`` uses one scale per weight tensor instead of one per output channel
    (coarser, so less accurate; for runtimes or experiments that need it).
    ``ranges`` reuses ranges already collected on the same data with the same method (the
    budget search calibrates once); tensors it lacks are an error, not a silent recalibration.
    ``progress(done)`` is called after each calibration sample.
    """
    # Cheap checks first: a typo in an option must not cost a calibration run.
    if mode not in MODES:
        raise ConfigError(f"unknown precision mode '{mode}'; choose one of {list(MODES)}")
    if mode == "int4-weight":
        if int4_method not in INT4_METHODS:
            raise ConfigError(f"unknown INT4 method '{int4_method}'; choose one of {list(INT4_METHODS)}")
    else:
        target_format(target, mode)
    if method not in COLLECTORS:
        raise ConfigError(f"calibration method '{method}' is unknown; choose one of {sorted(COLLECTORS)}")
    if opset_min < MIN_OPSET:
        raise ConfigError(f"opset_min must be >= {MIN_OPSET} (per-channel DequantizeLinear), got {opset_min}")
    opset_min = max(opset_min, {"fp8": FP8_MIN_OPSET, "int4-weight": INT4_MIN_OPSET}.get(mode, MIN_OPSET))
    model_path, output_path = Path(model_path), Path(output_path)
    refuse_overwrite(model_path, output_path)

    model = load_model(model_path)
    fingerprint = validate_source(source, input_specs(model))
    opset_before = opset_of(model)
    model = upgrade_opset(model, opset_min, _first(source))
    inlined_ifs = inline_constant_ifs(model)
    result = QuantizeResult(
        output_path=str(output_path), target=target, method=method, per_channel=per_channel, quantized_nodes=[],
        skipped={}, num_q=0, num_dq=0, opset_before=opset_before, opset_after=opset_of(model),
        fingerprint=fingerprint, quantized_weight_share=0.0, inlined_ifs=inlined_ifs, mode=mode,
    )
    if mode == "int4-weight":
        _insert_int4(model, model_path, source, result, exclude, block_size, int4_method, progress)
    else:
        _insert_qdq(model, model_path, source, result, op_types, exclude, ranges, percentile, progress)
    check_runs(model, _first(source), "quantized")
    save_model(model, output_path)
    return result


def _nothing_to_quantize(model_path, skipped: dict[str, str]) -> CalibrationError:
    reasons = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:5]) or "the model has no Conv/Gemm/MatMul"
    return NothingToQuantize(f"{model_path}: nothing to quantize ({reasons})")


def _insert_qdq(model, model_path, source, result: QuantizeResult, op_types, exclude, ranges, percentile, progress) -> None:
    """INT8/FP8: plan, calibrate (unless ``ranges`` are given), insert Q/DQ; fills ``result``."""
    target, mode = result.target, result.mode
    plan = plan_qdq(model, target=target, op_types=op_types, exclude=exclude)
    result.skipped = plan.skipped
    if not plan.quantized_nodes:
        raise _nothing_to_quantize(model_path, plan.skipped)
    if ranges is None:
        ranges = collect_ranges(
            model, plan.activations, source, method=result.method, percentile=percentile,
            symmetric=target_format(target, mode).symmetric_activations, progress=progress,
        )
    elif missing := [t for t in plan.activations if t not in ranges]:
        raise CalibrationError(f"the given ranges lack {len(missing)} tensor(s) the plan needs, e.g. '{missing[0]}'")
    if (seen := min(r.count for r in ranges.values())) != result.fingerprint.count:
        raise CalibrationError(
            f"the data source yielded {result.fingerprint.count} samples when validated but {seen} when calibrating; "
            "pass a re-iterable source (a list or a folder source), not a one-shot generator"
        )
    record = insert_qdq(model, plan, ranges, target=target, per_channel=result.per_channel, mode=mode)
    result.quantized_nodes, result.num_q, result.num_dq = record.quantized_nodes, record.num_q, record.num_dq
    if plan.total_weight_params:
        result.quantized_weight_share = record.quantized_weight_params / plan.total_weight_params


def _insert_int4(model, model_path, source, result: QuantizeResult, exclude, block_size, int4_method, progress) -> None:
    """INT4 weight-only: plan, collect input Gram matrices (awq), insert blocked DQ; fills ``result``."""
    plan = plan_int4(model, block_size=block_size, exclude=exclude)
    result.skipped = plan.skipped
    if not plan.nodes:
        raise _nothing_to_quantize(model_path, plan.skipped)
    grams = collect_grams(model, plan, source, progress) if int4_method == "awq" else None
    record = insert_int4(model, plan, grams, int4_method)
    result.quantized_nodes, result.num_dq = record.quantized_nodes, record.num_dq
    result.method, result.per_channel = f"int4-{int4_method}", False
    result.block_size, result.clip_ratios = block_size, record.clip_ratios
    if plan.total_weight_params:
        result.quantized_weight_share = record.quantized_weight_params / plan.total_weight_params


def _first(source) -> dict[str, np.ndarray]:
    for feed in source:
        return feed
    raise InputError(
        "the calibration data source yielded no samples on its second pass; pass a re-iterable source "
        "(a list or a folder source), not a one-shot generator"
    )
