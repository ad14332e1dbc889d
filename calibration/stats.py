"""Activation statistics: run the FP32 model over the calibration data and record tensor ranges.

The tensors to calibrate are exposed as extra graph outputs and the model runs once per
sample in ONNX Runtime on the CPU. Each tensor feeds a small collector that keeps only its
summary (a running min/max for "max"), so memory stays bounded however many samples there
are, and variable input shapes need no special care. A histogram collector for
percentile/entropy/MSE slots in as another entry of ``COLLECTORS``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Protocol

import numpy as np
import onnx_ir as ir

from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import input_specs, load_model, save_model, to_proto_bytes
from optimizer.runners import OrtRunner

from calibration.data import bind_source, sample_label


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


COLLECTORS: dict[str, type] = {"max": MinMaxCollector}


def collect_ranges(
    model: ir.Model | str | os.PathLike,
    tensor_names: list[str],
    source,
    *,
    method: str = "max",
    percentile: float = 99.99,
    progress: Callable[[int], None] | None = None,
) -> dict[str, TensorRange]:
    """Range of each tensor in ``tensor_names`` over every sample of ``source`` (one ORT pass).

    ``model`` is not modified: the extra outputs are added to a serialized copy.
    ``progress(done)`` is called after each sample.
    """
    if method not in COLLECTORS:
        raise ConfigError(f"calibration method '{method}' is not available yet; choose one of {sorted(COLLECTORS)}")
    if not isinstance(model, ir.Model):
        model = load_model(model)
    graph_inputs = {v.name for v in model.graph.inputs}
    values = _main_graph_values(model)
    unknown = [n for n in tensor_names if n not in values and n not in graph_inputs]
    if unknown:
        raise CalibrationError(f"cannot calibrate {unknown}: no such tensor in the main graph")
    # Graph inputs are read straight from the feeds; everything else becomes an extra output.
    fetched = [n for n in dict.fromkeys(tensor_names) if n not in graph_inputs]
    collectors = {n: COLLECTORS[method](percentile=percentile) for n in dict.fromkeys(tensor_names)}

    bind_source(source, input_specs(model))
    with _session_with_outputs(model, fetched) as runner:
        samples = 0
        for index, feed in enumerate(source):
            outputs = runner.run(feed, fetched) if fetched else {}
            for name, collector in collectors.items():
                array = np.asarray(feed[name] if name in graph_inputs else outputs[name])
                if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
                    raise CalibrationError(
                        f"{sample_label(index, feed)}: tensor '{name}' has NaN/Inf values in the FP32 model; "
                        "it cannot be calibrated (check the input preprocessing)"
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


class _session_with_outputs:
    """An OrtRunner over ``model`` with ``names`` as extra outputs, built from a copy.

    In memory when the model fits one protobuf; otherwise through a temporary file with
    external data (deleted on exit).
    """

    def __init__(self, model: ir.Model, names: list[str]) -> None:
        self.model, self.names, self.tmpdir = model, names, None

    def __enter__(self) -> OrtRunner:
        values = _main_graph_values(self.model)
        existing = {v.name for v in self.model.graph.outputs}
        added = [values[n] for n in self.names if n not in existing]
        outputs = self.model.graph.outputs
        # Appending then removing the outputs is cheaper than deep-copying a large graph;
        # the serialized bytes (or the temp file) are the copy ORT sees.
        outputs.extend(added)
        try:
            payload = to_proto_bytes(self.model)
            if payload is None:
                self.tmpdir = tempfile.TemporaryDirectory(prefix="trtforge-calib-")
                payload = save_model(self.model, Path(self.tmpdir.name) / "calib.onnx", external_data=True)
        finally:
            for _ in added:
                outputs.pop()
        return OrtRunner(payload)

    def __exit__(self, *exc) -> None:
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
