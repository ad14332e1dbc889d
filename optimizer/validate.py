"""Validation: a candidate against the FP32 reference on the same real data.

Per output: max/mean absolute error, max error relative to the reference's range, minimum
per-sample cosine similarity and signal-to-noise ratio. A task metric comes from a small
plugin (a Python function over the outputs and the labels). Latency runs both models in the
same process, interleaved iteration by iteration, so machine drift hits both alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from optimizer.errors import ConfigError, ValidationError
from optimizer.validation_record import NoiseFloor, OutputError, TaskResult, Timing, ValidationResult


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
    from optimizer.user_code import load_callable

    module, fn = load_callable(spec, what="metric", base_dir=base_dir)
    return TaskMetric(
        name=getattr(module, "NAME", fn.__name__),
        fn=fn,
        higher_is_better=bool(getattr(module, "HIGHER_IS_BETTER", True)),
        unit=getattr(module, "UNIT", ""),
    )


# ---------------------------------------------------------------- accuracy


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))


class OutputStats:
    """Streaming error statistics for one output: memory does not grow with the data."""

    def __init__(self, name: str, *, topk: bool = False) -> None:
        self.name = name
        self.topk = topk  # class-like output: also count top-1 / top-5 agreement per row
        self.rows = 0
        self.top1 = 0
        self.top5 = 0
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
        # One float64 copy each and four inner products: this runs for every tensor of the
        # divergence search. einsum, not BLAS dot: OpenBLAS threads spin badly on a loaded
        # 2-core machine (measured 10x slower than einsum there).
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        diff = r - c
        dd = _inner(diff, diff)
        if not math.isfinite(dd):
            self.nonfinite += int(c.size - np.isfinite(c).sum())
        if diff.size:
            ad = np.abs(diff)
            # max() with a NaN keeps the old value: a NaN candidate must look infinitely wrong.
            self.max_abs = math.inf if self.nonfinite else max(self.max_abs, float(ad.max()))
            self.abs_sum += float(ad.sum())
            self.ref_absmax = max(self.ref_absmax, float(max(r.max(), -r.min())))
        self.count += diff.size
        rr, cc, rc = _inner(r, r), _inner(c, c), _inner(r, c)
        denom = math.sqrt(rr * cc)
        cosine = rc / denom if denom > 0 else (1.0 if rr == 0 and cc == 0 else 0.0)
        self.cosine_min = min(self.cosine_min, cosine)
        self.signal += rr
        self.noise += dd
        if self.topk and ref.ndim >= 2 and ref.shape[-1] >= 2:
            self._add_topk(ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1]))

    def _add_topk(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Rows are positions (a CTC time step, an image): does the candidate pick the same class?"""
        best = cand.argmax(axis=1)
        self.rows += ref.shape[0]
        self.top1 += int((best == ref.argmax(axis=1)).sum())
        k = min(5, ref.shape[1])
        top = np.argpartition(ref, -k, axis=1)[:, -k:]
        self.top5 += int((top == best[:, None]).any(axis=1).sum())

    def result(self) -> OutputError:
        snr = math.inf if self.noise == 0 else 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf
        topk = self.topk and self.rows
        return OutputError(
            name=self.name,
            max_abs=self.max_abs,
            mean_abs=self.abs_sum / max(self.count, 1),
            # Relative to the reference's range: element-wise relative error explodes near zero.
            max_rel=self.max_abs / self.ref_absmax if self.ref_absmax > 0 else self.max_abs,
            cosine_min=self.cosine_min,
            snr_db=snr if math.isfinite(snr) else (999.0 if snr > 0 else -999.0),
            nonfinite=self.nonfinite,
            top1_agreement=self.top1 / self.rows if topk else None,
            top5_agreement=self.top5 / self.rows if topk else None,
        )


def _class_like(runner, name: str) -> bool:
    """A float output whose last dimension is a fixed class count of at least 2 (logits, probabilities)."""
    spec = next((o for o in getattr(runner, "outputs", []) if o.name == name), None)
    if spec is None or not spec.shape or len(spec.shape) < 2 or "float" not in str(spec.dtype):
        return False
    last = spec.shape[-1]
    return isinstance(last, int) and last >= 2


# Ops whose output is class scores: probabilities, or logits straight out of a linear layer.
_SCORE_OPS = {"Softmax", "LogSoftmax", "Gemm", "MatMul"}
# Ops that carry scores through unchanged in meaning (layout, a bias, a temperature).
_SCORE_CARRIERS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Add", "Mul", "Div", "Identity", "Cast",
                   "QuantizeLinear", "DequantizeLinear"}


def class_like_outputs(model) -> set[str]:
    """Graph outputs that carry class scores (Softmax/LogSoftmax, or Gemm/MatMul logits, through layout ops).

    Top-1 agreement means something only there: an encoder's hidden features (a LayerNorm
    output) also have a fixed last dim, but their argmax is not a prediction.
    """
    names = set()
    for value in model.graph.outputs:
        node, hops = value.producer(), 0
        while node is not None and node.op_type in _SCORE_CARRIERS and node.inputs and hops < 8:
            node, hops = (node.inputs[0].producer() if node.inputs[0] is not None else None), hops + 1
        if node is not None and node.op_type in _SCORE_OPS:
            names.add(value.name)
    return names


def reference_noise(runners: dict[str, Any], samples: Iterable[dict[str, np.ndarray]], limit: int = 8) -> NoiseFloor:
    """The reference against itself under two ORT configurations: the floor no candidate can beat.

    Different thread counts and graph optimisation levels reorder float reductions, so the
    spread between them is the run-to-run noise of the reference; a tolerance derived from it
    (``error_to_noise``) needs no guess about the model's scale.
    """
    (first_name, first), (second_name, second) = runners.items()
    stats = {n: OutputStats(n) for n in first.output_names}
    count = 0
    for feeds in samples:
        a, b = first.run(feeds), second.run(feeds)
        for n in stats:
            stats[n].add(a[n], b[n])
        count += 1
        if count >= limit:
            break
    outputs = [s.result() for s in stats.values()]
    return NoiseFloor(samples=count, configurations=[first_name, second_name], outputs=outputs,
                      max_abs=max((o.max_abs for o in outputs), default=0.0))


def compare(
    reference,
    candidate,
    samples: Iterable[dict[str, np.ndarray]],
    *,
    labels: list[Any] | None = None,
    metric: TaskMetric | None = None,
    context: MetricContext | None = None,
    progress: Callable[[int], None] | None = None,
    class_like: set[str] | None = None,
) -> ValidationResult:
    """Run both runners on every sample; return error statistics and the task metric.

    ``class_like``: the outputs that carry class scores (``class_like_outputs``); top-1/top-5
    agreement is counted for those. None: every float output with a fixed last dim >= 2.
    """
    ref_names = reference.output_names
    missing = [n for n in ref_names if n not in candidate.output_names]
    if missing:
        raise ValidationError(f"the candidate lacks the reference's outputs {missing}; it has {candidate.output_names}")
    stats = {n: OutputStats(n, topk=_class_like(reference, n) and (class_like is None or n in class_like)) for n in ref_names}
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
    result = ValidationResult(samples=count, outputs=[s.result() for s in stats.values()])
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
        result.task = TaskResult(name=metric.name, unit=metric.unit, higher_is_better=metric.higher_is_better,
                                 reference=ref_value, candidate=cand_value, change=cand_value - ref_value)
    return result


# ---------------------------------------------------------------- latency


def _percentiles(times_s: list[float]) -> Timing:
    ms = np.asarray(times_s) * 1e3
    return Timing(
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        throughput_per_s=float(1e3 / ms.mean()) if ms.mean() > 0 else 0.0,
        # Every timed iteration, for the report's histogram (a few hundred numbers at most).
        samples_ms=[round(float(t), 4) for t in ms],
    )


def measure_latency(
    runners: dict[str, Any],
    feeds: list[dict[str, np.ndarray]],
    *,
    warmup: int = 3,
    iterations: int = 30,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Timing]:
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


def paired_speedup(reference: Timing, candidate: Timing) -> float:
    """Median over iterations of reference time / candidate time (``measure_latency`` interleaves them)."""
    ref, cand = np.asarray(reference.samples_ms), np.asarray(candidate.samples_ms)
    return float(np.median(ref / cand))


def metric_scorer(task: TaskMetric | None, labels, reference_model) -> tuple[Callable | None, bool]:
    """A loaded task metric as ``score(outputs) -> float`` on the validation labels, for the
    accuracy budget; (None, False) without one (the budget is then an output error)."""
    if task is None:
        return None, False
    if labels is None:
        raise ConfigError(f"the task metric '{task.name}' needs labels: the validation folder has no labels.json")
    from optimizer.model import load_model, metadata

    context = MetricContext(metadata=metadata(load_model(reference_model)))

    def score(outputs) -> float:
        try:
            return float(task.fn(outputs, list(labels), context))
        except Exception as exc:  # the user's code: one clear line, as validation reports it
            raise ValidationError(f"task metric '{task.name}' raised {type(exc).__name__}: {exc}") from None

    return score, task.higher_is_better
