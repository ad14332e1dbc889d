"""Release gates: ``metric<=value`` expressions checked against a report's numbers.

With no gate given, ``default_gates`` applies (see ``DEFAULT_GATES_DOC``): a release gate must
fail a broken candidate when it runs with no flags.
"""

from __future__ import annotations

import math

from optimizer.conditions import OPERATORS, parse_gate
from optimizer.errors import ConfigError
from optimizer.report import GateResult
from optimizer.validation_record import ValidationResult



def gate_metrics(validation: ValidationResult | None) -> dict[str, float]:
    """The numbers a gate can name, flattened from the validation record."""
    if not validation:
        return {}
    metrics: dict[str, float] = {}
    outputs = validation.outputs
    if outputs:
        metrics["nonfinite_values"] = sum(o.nonfinite for o in outputs)
        metrics["max_abs_error"] = max(o.max_abs for o in outputs)
        metrics["max_rel_error"] = max(o.max_rel for o in outputs)
        metrics["min_cosine"] = min(o.cosine_min for o in outputs)
        metrics["min_snr_db"] = min(o.snr_db for o in outputs)
    if task := validation.task:
        metrics[task.name] = task.candidate
        metrics[f"{task.name}_reference"] = task.reference
        # "increase" reads naturally for lower-is-better metrics (error rates), "drop" for the rest.
        metrics[f"{task.name}_increase"] = task.change
        metrics[f"{task.name}_drop"] = -task.change
    if lat := validation.latency:
        metrics["p50_speedup"] = lat.p50_speedup
        if lat.paired_speedup is not None:
            metrics["paired_speedup"] = lat.paired_speedup
        metrics["candidate_p50_ms"] = lat.candidate.p50_ms
    if class_like := validation.class_like():
        metrics["min_top1_agreement"] = min(o.top1_agreement for o in class_like)
        metrics["min_top5_agreement"] = min(o.top5_agreement for o in class_like)
    if noise := validation.noise:
        metrics["noise_max_abs"] = noise.max_abs
        if outputs:
            # How many times the reference's own run-to-run spread the candidate's error is.
            metrics["error_to_noise"] = _ratio(metrics["max_abs_error"], noise.max_abs)
    return metrics


def _ratio(error: float, floor: float) -> float:
    """``error / floor`` in Python floats: inf for an infinite error or a zero floor, never a numpy overflow warning."""
    error, floor = float(error), float(floor)
    if error == 0.0:
        return 0.0
    if floor <= 0.0 or math.isinf(error):
        return math.inf
    try:
        return error / floor
    except OverflowError:  # pragma: no cover - Python floats return inf instead; kept for clarity
        return math.inf


# ---------------------------------------------------------------- default gates

# Floors from the measured noise floor (benchmarks/RESULTS.md, section "default_gates"). The
# reference against itself (other threads, ORT level "all") sits at SNR ~114 dB, cosine 1.0:
# INT8 noise, not run-to-run noise, decides. Sound INT8 candidates of PP-OCRv4 rec (per-channel
# MSE: CER 0.11%; per-channel MinMax: CER 0.74%; FP32 0.16%) keep worst-sample cosine >= 0.84,
# SNR >= 11.8 dB and top-1 >= 0.95; the broken ones (per-tensor MinMax: CER 100%; one Conv
# weight corrupted: CER 98.5%) fall to cosine <= 0.37, SNR <= 0.8 dB and top-1 <= 0.53. The
# floors sit between, with margin on both sides: a default gate fails what is obviously broken
# and never a sound INT8 model.
DEFAULT_MIN_COSINE = 0.7
DEFAULT_MIN_SNR_DB = 6.0  # noise at half the signal's amplitude
DEFAULT_MIN_TOP1 = 0.8  # class-like outputs: the candidate's argmax agrees on 80% of the rows
DEFAULT_TASK_POINTS = 1.0  # task metric in percent (UNIT '%'): at most 1 point worse than FP32
DEFAULT_TASK_FRACTION = 0.01  # any other unit: at most 0.01 worse (1 point of a 0..1 score)

DEFAULT_GATES_DOC = (
    f"Default gates (when no --gate and no recipe gates are given; --no-default-gates drops them): "
    f"every output finite (nonfinite_values==0); min_cosine>={DEFAULT_MIN_COSINE:g}; min_snr_db>={DEFAULT_MIN_SNR_DB:g}; "
    f"min_top1_agreement>={DEFAULT_MIN_TOP1:g} for class-like outputs; with a task metric, "
    f"at most {DEFAULT_TASK_POINTS:g} point worse (or {DEFAULT_TASK_FRACTION:g} for metrics not in %)."
)


def default_gates(validation: ValidationResult | None) -> list[str]:
    """The gates that apply when none is given, for what this validation measured."""
    if not validation or not validation.outputs:
        return []
    gates = ["nonfinite_values==0", f"min_cosine>={DEFAULT_MIN_COSINE:g}", f"min_snr_db>={DEFAULT_MIN_SNR_DB:g}"]
    if validation.class_like():
        gates.append(f"min_top1_agreement>={DEFAULT_MIN_TOP1:g}")
    if task := validation.task:
        bound = DEFAULT_TASK_POINTS if task.unit == "%" else DEFAULT_TASK_FRACTION
        gates.append(f"{task.name}_{'drop' if task.higher_is_better else 'increase'}<={bound:g}")
    return gates


def regression_metrics(validation: ValidationResult | None, baseline: ValidationResult | None) -> dict[str, float]:
    """Gate metrics against a previous release's report: positive numbers are regressions.

    ``{metric}_regression``: the task metric got worse by this much (in its own unit, whichever
    direction is better). ``p50_regression_pct``: the candidate's p50 got slower by this many
    percent; ``speedup_regression_pct``: the p50 speed-up over FP32 shrank by this many percent
    (steadier across machines, since both models were timed side by side in each run).
    """
    if not validation or not baseline:
        return {}
    now, before = gate_metrics(validation), gate_metrics(baseline)
    metrics: dict[str, float] = {}
    task, old_task = validation.task, baseline.task
    if task and old_task and task.name == old_task.name:
        sign = -1.0 if task.higher_is_better else 1.0
        metrics[f"{task.name}_regression"] = sign * (task.candidate - old_task.candidate)
    if "candidate_p50_ms" in now and "candidate_p50_ms" in before:
        metrics["p50_regression_pct"] = 100.0 * (now["candidate_p50_ms"] / before["candidate_p50_ms"] - 1.0)
        metrics["speedup_regression_pct"] = 100.0 * (1.0 - now["p50_speedup"] / before["p50_speedup"])
    if "min_snr_db" in now and "min_snr_db" in before:
        metrics["snr_regression_db"] = before["min_snr_db"] - now["min_snr_db"]
    return metrics


def diff_metrics(old: ValidationResult | None, new: ValidationResult | None) -> list[tuple[str, float | None, float | None]]:
    """Every gate metric of two validation records side by side (release N-1 vs N)."""
    a, b = gate_metrics(old), gate_metrics(new)
    return [(name, a.get(name), b.get(name)) for name in sorted(set(a) | set(b))]


def check_syntax(expressions: list[str]) -> None:
    for e in expressions:
        parse_gate(e)


def evaluate_gates(
    expressions: list[str],
    validation: ValidationResult | None,
    baseline: ValidationResult | None = None,
    *,
    defaults: bool = False,
) -> list[GateResult]:
    """Check each gate; ``baseline`` (a previous report's validation record) adds the regression metrics.

    ``defaults``: with no ``expressions``, check ``default_gates(validation)`` instead (marked ``default``).
    """
    metrics = gate_metrics(validation) | regression_metrics(validation, baseline)
    is_default = defaults and not expressions
    if is_default:
        expressions = default_gates(validation)
    results = []
    for expression in expressions:
        name, op, threshold = parse_gate(expression)
        if name not in metrics:
            available = ", ".join(sorted(metrics)) or "none (validation did not run)"
            raise ConfigError(f"gate '{expression}': no metric '{name}' in this run; available: {available}")
        value = metrics[name]
        passed = bool(OPERATORS[op](value, threshold)) and not math.isnan(value)
        message = f"{name} = {value:.4g}, required {op} {threshold:g}"
        if metrics.get("nonfinite_values"):
            # No gate passes a candidate that computes NaN/Inf, whatever the gate measures.
            passed = False
            message += f"; the candidate produced {int(metrics['nonfinite_values'])} NaN/Inf values"
        results.append(
            GateResult(expression=expression, metric=name, value=value, passed=passed, message=message, default=is_default)
        )
    return results
