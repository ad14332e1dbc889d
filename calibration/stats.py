"""Activation statistics: run the FP32 model over the calibration data and record tensor ranges.

The tensors to calibrate are exposed as extra graph outputs and the model runs once per
sample in ONNX Runtime on the CPU. Each tensor feeds a small collector that keeps only its
summary, so memory stays bounded however many samples there are, and variable input shapes
need no special care: a running min/max for "max", a fixed-size streaming histogram
(``calibration.histogram``) for "percentile", "entropy" and "mse".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Protocol

import numpy as np
import onnx_ir as ir

from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import input_specs, load_model
from optimizer.runners import session_for

from calibration.data import bind_source, sample_label
from calibration.histogram import (
    DEFAULT_BINS,
    MagnitudeHistogram,
    entropy_threshold,
    mse_threshold,
    percentile_threshold,
)


@dataclass
class TensorRange:
    """The calibrated range of one tensor and the number of samples it was seen in."""

    min: float
    max: float
    count: int


class RangeCollector(Protocol):
    """Summarises the values of one tensor across samples into a TensorRange."""

    def update(self, values: np.ndarray) -> None: ...

    def result(self) -> TensorRange: ...


class MinMaxCollector:
    """``method="max"``: the extreme values seen, so every calibration value is in range."""

    def __init__(self, **_options) -> None:
        self.min, self.max, self.count = np.inf, -np.inf, 0

    def update(self, values: np.ndarray) -> None:
        self.count += 1
        if values.size:
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))

    def result(self) -> TensorRange:
        if self.min > self.max:  # only empty tensors were seen
            return TensorRange(0.0, 0.0, self.count)
        return TensorRange(self.min, self.max, self.count)


class HistogramCollector:
    """Percentile / entropy / MSE: a streaming magnitude histogram, the clipping threshold chosen at the end.

    ``symmetric`` (the TensorRT form) picks one threshold t on |x| and clips to [-t, t];
    otherwise each sign gets its own threshold, so a one-sided tensor (after ReLU) spends all
    255 uint8 levels on its one side. The result never widens the observed range.
    """

    method = ""

    def __init__(self, *, percentile: float = 99.99, symmetric: bool = True, num_bins: int = DEFAULT_BINS, **_options) -> None:
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile, self.symmetric = percentile, symmetric
        self.hist = MagnitudeHistogram(num_bins)
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        self.count += 1
        self.hist.update(values)

    def result(self) -> TensorRange:
        h = self.hist
        if h.min > h.max:
            return TensorRange(0.0, 0.0, self.count)
        if h.amax == 0.0:
            return TensorRange(h.min, h.max, self.count)
        total = int(h.pos.sum() + h.neg.sum())
        if self.symmetric:
            t = self._threshold(h.pos + h.neg, h.width, total, levels=127)
            return TensorRange(max(h.min, -t), min(h.max, t), self.count)
        two_sided = h.min < 0 and h.max > 0
        levels = 127 if two_sided else 255  # a one-sided tensor gets every uint8 level
        hi = self._threshold(h.pos, h.width, total, levels) if h.max > 0 else 0.0
        lo = self._threshold(h.neg, h.width, total, levels) if h.min < 0 else 0.0
        return TensorRange(max(h.min, -lo), min(h.max, hi), self.count)

    def _threshold(self, hist: np.ndarray, width: float, total: int, levels: int) -> float:
        raise NotImplementedError


class PercentileCollector(HistogramCollector):
    """``method="percentile"``: clip the rarest (100 - percentile)% of the values."""

    def _threshold(self, hist, width, total, levels):
        return percentile_threshold(hist, width, self.percentile, total)


class EntropyCollector(HistogramCollector):
    """``method="entropy"``: TensorRT's KL-divergence calibration."""

    def _threshold(self, hist, width, total, levels):
        return entropy_threshold(hist, width, levels=levels + 1)


class MseCollector(HistogramCollector):
    """``method="mse"``: least expected squared quantization error."""

    def _threshold(self, hist, width, total, levels):
        return mse_threshold(hist, width, levels=levels)


COLLECTORS: dict[str, type] = {
    "max": MinMaxCollector,
    "percentile": PercentileCollector,
    "entropy": EntropyCollector,
    "mse": MseCollector,
}


def collect_ranges(
    model: ir.Model | str | os.PathLike,
    tensor_names: list[str],
    source,
    *,
    method: str = "max",
    percentile: float = 99.99,
    symmetric: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, TensorRange]:
    """Range of each tensor in ``tensor_names`` over every sample of ``source`` (one ORT pass).

    ``model`` is not modified: the extra outputs are added to a serialized copy.
    ``symmetric`` tells the histogram methods that the range will be used as [-t, t].
    ``progress(done)`` is called after each sample.
    """
    if method not in COLLECTORS:
        raise ConfigError(f"calibration method '{method}' is unknown; choose one of {sorted(COLLECTORS)}")
    if not isinstance(model, ir.Model):
        model = load_model(model)
    graph_inputs = {v.name for v in model.graph.inputs}
    values = _main_graph_values(model)
    unknown = [n for n in tensor_names if n not in values and n not in graph_inputs]
    if unknown:
        raise CalibrationError(f"cannot calibrate {unknown}: no such tensor in the main graph")
    # Graph inputs are read straight from the feeds; everything else becomes an extra output.
    fetched = [n for n in dict.fromkeys(tensor_names) if n not in graph_inputs]
    collectors = {n: COLLECTORS[method](percentile=percentile, symmetric=symmetric) for n in dict.fromkeys(tensor_names)}

    bind_source(source, input_specs(model))
    with session_for(model, outputs=fetched) as runner:
        samples = 0
        for index, feed in enumerate(source):
            outputs = runner.run(feed, fetched) if fetched else {}
            for name, collector in collectors.items():
                array = np.asarray(feed[name] if name in graph_inputs else outputs[name])
                if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
                    fix = ("random --synthetic inputs drive the model there: calibrate on real data with --calib DIR"
                           if getattr(source, "synthetic", False) else "check the input preprocessing")
                    raise CalibrationError(
                        f"{sample_label(index, feed)}: tensor '{name}' has NaN/Inf values in the FP32 model; "
                        f"it cannot be calibrated ({fix})"
                    )
                collector.update(array)
            samples += 1
            if progress is not None:
                progress(samples)
    if samples == 0:
        raise CalibrationError("the calibration data source yielded no samples (a one-shot generator used twice?)")
    return {n: c.result() for n, c in collectors.items()}


def _main_graph_values(model: ir.Model) -> dict[str, ir.Value]:
    values = {}
    for node in model.graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    return values

