"""Release gates: ``metric<=value`` expressions checked against a report's numbers."""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from optimizer.errors import ConfigError
from optimizer.report import GateResult

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|<|>)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")


def parse_gate(expression: str) -> tuple[str, str, float]:
    match = _GATE.match(expression)
    if not match:
        raise ConfigError(f"gate '{expression}': expected 'metric<=number' (operators <=, >=, <, >, ==), e.g. 'cer_increase<=0.5'")
    name, op, number, _percent = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"gate '{expression}': '{number}' is not a number") from None
    return name, op, value


def gate_metrics(validation: dict[str, Any] | None) -> dict[str, float]:
    """The numbers a gate can name, flattened from the validation record."""
    if not validation:
        return {}
    metrics: dict[str, float] = {}
    outputs = validation.get("outputs", [])
    if outputs:
        metrics["max_abs_error"] = max(o["max_abs"] for o in outputs)
        metrics["max_rel_error"] = max(o["max_rel"] for o in outputs)
        metrics["min_cosine"] = min(o["cosine_min"] for o in outputs)
        metrics["min_snr_db"] = min(o["snr_db"] for o in outputs)
    if task := validation.get("task"):
        name = task["name"]
        metrics[name] = task["candidate"]
        metrics[f"{name}_reference"] = task["reference"]
        # "increase" reads naturally for lower-is-better metrics (error rates), "drop" for the rest.
        metrics[f"{name}_increase"] = task["change"]
        metrics[f"{name}_drop"] = -task["change"]
    if lat := validation.get("latency"):
        metrics["p50_speedup"] = lat["p50_speedup"]
        metrics["candidate_p50_ms"] = lat["candidate"]["p50_ms"]
    return metrics


def check_syntax(expressions: list[str]) -> None:
    for e in expressions:
        parse_gate(e)


def evaluate_gates(expressions: list[str], validation: dict[str, Any] | None) -> list[GateResult]:
    metrics = gate_metrics(validation)
    results = []
    for expression in expressions:
        name, op, threshold = parse_gate(expression)
        if name not in metrics:
            available = ", ".join(sorted(metrics)) or "none (validation did not run)"
            raise ConfigError(f"gate '{expression}': no metric '{name}' in this run; available: {available}")
        value = metrics[name]
        passed = bool(_OPS[op](value, threshold)) and not math.isnan(value)
        message = f"{name} = {value:.4g}, required {op} {threshold:g}"
        results.append(GateResult(expression=expression, metric=name, value=value, passed=passed, message=message))
    return results
