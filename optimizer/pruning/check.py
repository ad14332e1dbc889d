"""Pruning measures itself: the pruned model against the original, before anything is written.

Channel pruning and 2:4 sparsity change what a model computes; how much depends on the model,
and a uniform ratio can wipe out a detector while reporting a tidy FLOPs cut. So after every
prune both models run in ONNX Runtime on the calibration data (or, without any, on generated
inputs at the shapes FLOPs were measured at) and the output error is recorded. Beyond
``DEFAULT_TOLERANCE`` the result says so and the model is written only when forced.

The error is ``relative_error`` (mean |pruned − original| / mean |original| over all outputs,
the measure ``--max-error`` budgets), plus worst-sample cosine and SNR per output.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.runners import OrtRunner
from optimizer.validate import OutputStats
from optimizer.validation_record import to_json

# Measured on PP-OCRv4 det/rec and the mobile angle classifier (benchmarks/RESULTS.md, section
# "pruning"): every cut that kept the task metric (det F1 >= 0.99, rec CER <= 1.2%, cls 100%)
# changed the outputs by at most 0.11; every cut that broke it (det F1 0.87 and below, rec CER
# 3.9%, cls 50-62%) by 0.17 or more. 0.15 sits between.
DEFAULT_TOLERANCE = 0.15
CHECK_SAMPLES = 8  # samples the check runs (the calibration data's first ones)


def measure_outputs(reference: str | Path, candidate: str | Path, samples: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Both models on the same feeds: ``relative_error`` over all outputs and streaming stats per output."""
    ref, cand = OrtRunner(reference), OrtRunner(candidate)
    stats = {n: OutputStats(n) for n in ref.output_names}
    num = den = 0.0
    count = 0
    for feed in samples:
        a, b = ref.run(feed), cand.run(feed)
        for name, s in stats.items():
            s.add(a[name], b[name])
            r = a[name].astype(np.float64)
            if not r.size:  # an empty output (a zero-sized dim) carries no error, and its mean would warn
                continue
            with np.errstate(all="ignore"):  # a NaN candidate is counted by OutputStats, not warned about
                num += float(np.abs(r - b[name]).mean())
            den += float(np.abs(r).mean())
        count += 1
    outputs = [to_json(s.result()) for s in stats.values()]  # the check is a plain record in the stage details
    nonfinite = sum(o["nonfinite"] for o in outputs)
    rel = float("inf") if nonfinite or not np.isfinite(num) else (num / den if den else 0.0)
    return {"samples": count, "relative_error": rel, "outputs": outputs, "nonfinite": nonfinite}


def worst_groups(groups: list, limit: int = 3) -> list[dict[str, Any]]:
    """The pruned channel groups most likely to blame: by estimated refit error, else by how much they lost."""
    cut = [g for g in groups if g.roots and g.kept < g.channels]
    def key(g):
        return (g.estimated_error if g.estimated_error is not None else -1.0, 1.0 - g.kept / g.channels, g.channels)
    return [
        {"roots": g.roots[:2], "channels": g.channels, "kept": g.kept, "estimated_error": g.estimated_error}
        for g in sorted(cut, key=key, reverse=True)[:limit]
    ]


def check_summary(check: dict[str, Any]) -> str:
    """One line: the measured error against the tolerance, on what data."""
    worst_cos = min((o["cosine_min"] for o in check["outputs"]), default=1.0)
    worst_snr = min((o["snr_db"] for o in check["outputs"]), default=999.0)
    verdict = "within" if check["passed"] else "BEYOND"
    return (
        f"pruned vs original on {check['samples']} {check['data']} sample(s): output error {check['relative_error']:.3g} "
        f"(relative; {verdict} the tolerance {check['tolerance']:g}), worst-sample cosine {worst_cos:.4f}, SNR {worst_snr:.1f} dB"
        + (f", {check['nonfinite']} NaN/Inf values" if check["nonfinite"] else "")
    )


def failure_advice(check: dict[str, Any], channels: float | None, flops_target: float | None) -> str:
    """What to do when the check fails: the worst groups, and the options that keep accuracy."""
    parts = []
    if check.get("worst_groups"):
        named = "; ".join(
            f"{', '.join(g['roots'])} ({g['channels']} → {g['kept']} channels"
            + (f", estimated error {g['estimated_error']:.3g})" if g["estimated_error"] is not None else ")")
            for g in check["worst_groups"]
        )
        parts.append(f"worst groups: {named}")
    if channels is not None and flops_target is None:
        parts.append("a uniform --channels ratio cuts sensitive groups as hard as redundant ones: try --flops-target 0.25 "
                     "with --calib DIR (spread by measured sensitivity), or --max-error 0.05 --val DIR (the largest cut within "
                     "that error)")
    else:
        parts.append("try a smaller cut (--flops-target 0.1), or --max-error 0.05 --val DIR (the largest cut within that error)"
                     + ("" if check["data"] == "calibration" else ", and give --calib DIR so channels are chosen and refit on data"))
    parts.append("--force writes the model anyway")
    return "; ".join(parts)
