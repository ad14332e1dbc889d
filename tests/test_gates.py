"""Gates: parsing, evaluation against validation numbers, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.errors import ConfigError
from optimizer.gates import evaluate_gates, gate_metrics, parse_gate
from validation_fixtures import latency, noise, output, record, task

VALIDATION = record(
    output("a", max_abs=0.2, max_rel=0.1, cosine_min=0.95, snr_db=20.0),
    output("b", max_abs=0.5, max_rel=0.01, cosine_min=0.999, snr_db=40.0),
    task=task("cer", 1.0, 1.6, higher_is_better=False),
    latency=latency(3.0, 2.0),
)


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
    assert out.nonfinite == 1 and out.max_abs == float("inf")
    results = evaluate_gates(["max_abs_error<=1", "min_cosine>=-2"], record(out))
    assert [r.passed for r in results] == [False, False]
    assert "NaN/Inf" in results[1].message


# ---------------------------------------------------------------- default gates


def test_default_gates_cover_finite_cosine_snr_top1_and_task():
    from optimizer.gates import DEFAULT_MIN_COSINE, DEFAULT_MIN_SNR_DB, DEFAULT_MIN_TOP1, default_gates

    validation = dataclasses.replace(VALIDATION, task=task("cer", 1.0, 1.6, higher_is_better=False, unit="%"))
    validation.outputs = [dataclasses.replace(VALIDATION.outputs[0], top1_agreement=0.99, top5_agreement=1.0), VALIDATION.outputs[1]]
    gates = default_gates(validation)
    assert gates == ["nonfinite_values==0", f"min_cosine>={DEFAULT_MIN_COSINE:g}", f"min_snr_db>={DEFAULT_MIN_SNR_DB:g}",
                     f"min_top1_agreement>={DEFAULT_MIN_TOP1:g}", "cer_increase<=1"]
    # A higher-is-better metric outside percent gets a bound on its drop in its own unit.
    validation.task = task("acc", 0.9, 0.8, higher_is_better=True)
    assert default_gates(validation)[-1] == "acc_drop<=0.01"
    assert default_gates(None) == [] and default_gates(record()) == []


def test_defaults_apply_only_without_explicit_gates():
    results = evaluate_gates([], VALIDATION, defaults=True)
    assert results and all(r.default for r in results)
    assert {r.metric for r in results} >= {"nonfinite_values", "min_cosine", "min_snr_db", "cer_increase"}
    explicit = evaluate_gates(["min_cosine>0.9"], VALIDATION, defaults=True)
    assert [(r.expression, r.default) for r in explicit] == [("min_cosine>0.9", False)]
    assert evaluate_gates([], VALIDATION, defaults=False) == []
    assert evaluate_gates([], None, defaults=True) == []  # nothing was validated: nothing to gate


def test_default_gates_fail_a_broken_candidate_and_pass_a_sound_one():
    """Numbers from PP-OCRv4 rec (benchmarks/RESULTS.md, default_gates): per-channel MSE INT8 vs per-tensor MinMax."""
    sound = record(output(max_abs=1.0, max_rel=1.0, cosine_min=0.917, snr_db=15.3, top1_agreement=0.974, top5_agreement=0.999))
    broken = record(output(max_abs=1.0, max_rel=1.0, cosine_min=0.366, snr_db=0.8, top1_agreement=0.533, top5_agreement=0.7))
    assert all(r.passed for r in evaluate_gates([], sound, defaults=True))
    failed = [r.metric for r in evaluate_gates([], broken, defaults=True) if not r.passed]
    assert failed == ["min_cosine", "min_snr_db", "min_top1_agreement"]


def test_error_to_noise_never_warns_or_overflows():
    import math
    import warnings

    worst = output(max_abs=3e38, max_rel=1.0, cosine_min=0.3, snr_db=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning would raise here
        huge = gate_metrics(record(worst, noise=noise(1e-30)))
        zero_floor = gate_metrics(record(worst, noise=noise(0.0)))
        exact = gate_metrics(record(output(max_abs=0.0), noise=noise(0.0)))
    assert math.isinf(huge["error_to_noise"]) or huge["error_to_noise"] > 1e60
    assert math.isinf(zero_floor["error_to_noise"]) and exact["error_to_noise"] == 0.0
