"""Validation: a candidate against the FP32 reference on the same real data.

Per output: max/mean absolute error, max error relative to the reference's range, minimum
per-sample cosine similarity and signal-to-noise ratio. A task metric comes from a small
plugin (a Python function over the outputs and the labels). Latency runs both models in the
same process, interleaved iteration by iteration, so machine drift hits both alike.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import numpy as np

from optimizer.errors import ConfigError, ValidationError


# ---------------------------------------------------------------- task metrics


@dataclass
class MetricContext:
    """What a task metric may need besides outputs and labels."""

    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskMetric:
    name: str
    fn: Callable[[list[dict[str, np.ndarray]], list[Any], MetricContext], float]
    higher_is_better: bool
    unit: str = ""


def load_metric(spec: str, base_dir: Path | None = None) -> TaskMetric:
    """Load ``path/to/file.py:function``. Executes that file: the caller's explicit choice."""
    path_text, sep, func = spec.rpartition(":")
    if not sep or not path_text or not func:
        raise ConfigError(f"metric '{spec}': expected 'path/to/file.py:function'")
    path = Path(path_text)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"metric '{spec}': file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"trtforge_metric_{path.stem}", path)
    module: ModuleType = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"metric '{spec}': importing {path} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"metric '{spec}': {path} has no function '{func}'")
    return TaskMetric(
        name=getattr(module, "NAME", func),
        fn=fn,
        higher_is_better=bool(getattr(module, "HIGHER_IS_BETTER", True)),
        unit=getattr(module, "UNIT", ""),
    )


# ---------------------------------------------------------------- accuracy


class _OutputStats:
    """Streaming error statistics for one output: memory does not grow with the data."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.count = 0
        self.ref_absmax = 0.0
        self.cosine_min = 1.0
        self.signal = 0.0
        self.noise = 0.0
        self.nonfinite = 0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise ValidationError(f"output '{self.name}': reference shape {ref.shape} but candidate shape {cand.shape}")
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        finite = np.isfinite(c)
        self.nonfinite += int(finite.size - finite.sum())
        diff = np.abs(r - c)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.abs_sum += float(diff.sum())
        self.count += diff.size
        self.ref_absmax = max(self.ref_absmax, float(np.abs(r).max(initial=0.0)))
        denom = float(np.linalg.norm(r) * np.linalg.norm(c))
        cosine = float(r @ c) / denom if denom > 0 else (1.0 if not r.any() and not c.any() else 0.0)
        self.cosine_min = min(self.cosine_min, cosine)
        self.signal += float(r @ r)
        self.noise += float(diff @ diff)

    def result(self) -> dict[str, Any]:
        snr = math.inf if self.noise == 0 else 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf
        return {
            "name": self.name,
            "max_abs": self.max_abs,
            "mean_abs": self.abs_sum / max(self.count, 1),
            # Relative to the reference's range: element-wise relative error explodes near zero.
            "max_rel": self.max_abs / self.ref_absmax if self.ref_absmax > 0 else self.max_abs,
            "cosine_min": self.cosine_min,
            "snr_db": snr if math.isfinite(snr) else (999.0 if snr > 0 else -999.0),
            "nonfinite": self.nonfinite,
        }


def compare(
    reference,
    candidate,
    samples: Iterable[dict[str, np.ndarray]],
    *,
    labels: list[Any] | None = None,
    metric: TaskMetric | None = None,
    context: MetricContext | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run both runners on every sample; return error statistics and the task metric."""
    ref_names = reference.output_names
    missing = [n for n in ref_names if n not in candidate.output_names]
    if missing:
        raise ValidationError(f"the candidate lacks the reference's outputs {missing}; it has {candidate.output_names}")
    stats = {n: _OutputStats(n) for n in ref_names}
    keep = metric is not None
    ref_outputs: list[dict[str, np.ndarray]] = []
    cand_outputs: list[dict[str, np.ndarray]] = []
    count = 0
    for feeds in samples:
        r = reference.run(feeds)
        c = candidate.run(feeds, ref_names)
        for n in ref_names:
            stats[n].add(r[n], c[n])
        if keep:  # the task metric needs every output; only kept when one is asked for
            ref_outputs.append(r)
            cand_outputs.append(c)
        count += 1
        if progress:
            progress(count)
    if count == 0:
        raise ValidationError("no validation samples: the data folder is empty")
    result: dict[str, Any] = {"samples": count, "outputs": [s.result() for s in stats.values()]}
    if metric is not None:
        if labels is None or len(labels) < count:
            raise ValidationError(
                f"task metric '{metric.name}' needs one label per sample ({count}); found {0 if labels is None else len(labels)} "
                "(put a labels.json next to the data)"
            )
        ctx = context or MetricContext()
        try:
            ref_value = float(metric.fn(ref_outputs, labels[:count], ctx))
            cand_value = float(metric.fn(cand_outputs, labels[:count], ctx))
        except Exception as exc:
            raise ValidationError(f"task metric '{metric.name}' raised {type(exc).__name__}: {exc}") from None
        result["task"] = {
            "name": metric.name,
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            "reference": ref_value,
            "candidate": cand_value,
            "change": cand_value - ref_value,
        }
    return result


# ---------------------------------------------------------------- latency


def _percentiles(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_per_s": float(1e3 / ms.mean()) if ms.mean() > 0 else 0.0,
    }


def measure_latency(
    runners: dict[str, Any],
    feeds: list[dict[str, np.ndarray]],
    *,
    warmup: int = 3,
    iterations: int = 30,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Time each runner on the same inputs, alternating runners within every iteration.

    The order inside an iteration flips each time so neither runner always goes first
    (caches, frequency scaling). Returns percentiles per runner name.
    """
    if not feeds:
        raise ValidationError("latency needs at least one input sample")
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            for f in feeds:
                runners[name].run(f)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(iterations):
        order = names if i % 2 == 0 else names[::-1]
        f = feeds[i % len(feeds)]
        for name in order:
            t0 = time.perf_counter()
            runners[name].run(f)
            times[name].append(time.perf_counter() - t0)
        if progress:
            progress(i + 1)
    return {n: _percentiles(t) for n, t in times.items()}
