"""Typed validation records for tests: only the numbers a test is about, sensible values for the rest."""

from __future__ import annotations

from optimizer.validation_record import Latency, NoiseFloor, OutputError, TaskResult, Timing, ValidationResult


def output(name: str = "y", **numbers) -> OutputError:
    """An output that matches its reference exactly, except for ``numbers``."""
    values = dict(max_abs=0.0, mean_abs=0.0, max_rel=0.0, cosine_min=1.0, snr_db=999.0, nonfinite=0) | numbers
    return OutputError(name=name, **values)


def task(name: str, reference: float, candidate: float, *, higher_is_better: bool, unit: str = "") -> TaskResult:
    return TaskResult(name=name, unit=unit, higher_is_better=higher_is_better, reference=reference, candidate=candidate,
                      change=candidate - reference)


def timing(p50_ms: float, samples_ms: list[float] | None = None) -> Timing:
    return Timing(p50_ms=p50_ms, p90_ms=p50_ms, p99_ms=p50_ms, mean_ms=p50_ms, throughput_per_s=1e3 / p50_ms,
                  samples_ms=samples_ms or [])


def latency(reference_ms: float, candidate_ms: float, **extra) -> Latency:
    return Latency(runtime="onnxruntime-cpu", ort_level="all", threads=1, iterations=30, reference=timing(reference_ms),
                   candidate=timing(candidate_ms), p50_speedup=reference_ms / candidate_ms, **extra)


def noise(max_abs: float) -> NoiseFloor:
    return NoiseFloor(samples=8, configurations=["a", "b"], outputs=[], max_abs=max_abs)


def record(*outputs: OutputError, samples: int = 10, **parts) -> ValidationResult:
    return ValidationResult(samples=samples, outputs=list(outputs), **parts)
