"""Gates: parsing, evaluation against validation numbers, clear errors."""

from __future__ import annotations

import pytest

from optimizer.errors import ConfigError
from optimizer.gates import evaluate_gates, gate_metrics, parse_gate

VALIDATION = {
    "outputs": [
        {"name": "a", "max_abs": 0.2, "max_rel": 0.1, "cosine_min": 0.95, "snr_db": 20.0},
        {"name": "b", "max_abs": 0.5, "max_rel": 0.01, "cosine_min": 0.999, "snr_db": 40.0},
    ],
    "task": {"name": "cer", "reference": 1.0, "candidate": 1.6, "change": 0.6, "higher_is_better": False},
    "latency": {"p50_speedup": 1.5, "candidate": {"p50_ms": 2.0}},
}


def test_parse():
    assert parse_gate("cer_increase<=0.5") == ("cer_increase", "<=", 0.5)
    assert parse_gate(" p50_speedup >= 1.3 ") == ("p50_speedup", ">=", 1.3)
    for bad in ("cer_increase", "cer <= lots", "<= 3", "cer =< 1"):
        with pytest.raises(ConfigError, match="expected 'metric<=number'"):
            parse_gate(bad)


def test_metrics_take_the_worst_output():
    m = gate_metrics(VALIDATION)
    assert m["max_abs_error"] == 0.5 and m["max_rel_error"] == 0.1 and m["min_cosine"] == 0.95
    assert m["cer_increase"] == pytest.approx(0.6) and m["cer_drop"] == pytest.approx(-0.6)


def test_evaluate_pass_and_fail():
    results = evaluate_gates(["cer_increase<=0.5", "p50_speedup>=1.3", "min_cosine>0.9"], VALIDATION)
    assert [r.passed for r in results] == [False, True, True]
    assert "cer_increase = 0.6" in results[0].message


def test_unknown_metric_lists_what_exists():
    with pytest.raises(ConfigError, match="no metric 'wer' in this run; available: .*cer_increase"):
        evaluate_gates(["wer<=1"], VALIDATION)


def test_percent_sign_is_refused_not_silently_dropped():
    with pytest.raises(ConfigError, match="without '%'"):
        parse_gate("min_top1_agreement>=99%")


def test_nan_candidate_fails_every_gate(tmp_path):
    import numpy as np

    from optimizer.validate import OutputStats

    stats = OutputStats("y")
    stats.add(np.ones((2, 3), np.float32), np.array([[1, np.nan, 1], [1, 1, 1]], np.float32))
    out = stats.result()
    assert out["nonfinite"] == 1 and out["max_abs"] == float("inf")
    results = evaluate_gates(["max_abs_error<=1", "min_cosine>=-2"], {"outputs": [out]})
    assert [r.passed for r in results] == [False, False]
    assert "NaN/Inf" in results[1].message
