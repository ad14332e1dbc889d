"""Second-order input statistics of layers from calibration data: ``H = XᵀX`` per layer.

``X`` holds one row per output position: the layer's input patch (im2col for Conv, in the
``(kh, kw, I)`` column order of ``sparsity.to_matrix``) followed by a constant 1 for the
bias. Everything pruning needs from data derives from ``H``: per-column activation norms
(its diagonal) for saliency, and the normal equations for least-squares reconstruction.

The FP32 model runs once over the data in ONNX Runtime with every layer input exposed as an
output; each sample contributes at most ``positions`` randomly chosen rows per layer, so a
640×640 detector image costs the same as a 48×320 text line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.errors import CalibrationError
from optimizer.pruning.layers import Layer


@dataclass
class LayerStats:
    """``H = XᵀX`` over ``rows`` sampled input rows (last row/column: the bias's constant 1)."""

    hessian: np.ndarray
    rows: int

    @property
    def column_norms(self) -> np.ndarray:
        """L2 norm of each input column over the data (without the bias column)."""
        return np.sqrt(np.maximum(np.diag(self.hessian)[:-1], 0.0))


def conv_geometry(layer: Layer) -> tuple[list[int], list[int], list[int]] | str:
    """(strides, dilations, pads[top, left, bottom, right]) of a 2-D Conv, or why it is unsupported."""
    w = layer.weight
    if w.ndim != 4:
        return f"{w.ndim - 2}-D convolution (only 2-D is supported)"
    auto_pad = layer.node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"):
        return f"auto_pad={auto_pad.as_string()}"
    return layer.ints("strides", [1, 1]), layer.ints("dilations", [1, 1]), layer.ints("pads", [0, 0, 0, 0])


def _positions(total: int, rng: np.random.Generator, positions: int) -> np.ndarray:
    return np.sort(rng.choice(total, size=positions, replace=False)) if total > positions else np.arange(total)


def im2col_rows(x: np.ndarray, layer: Layer, rng: np.random.Generator, positions: int, flat: np.ndarray | None = None) -> np.ndarray:
    """Sampled im2col rows ``[P, kh*kw*I]`` of a 2-D, group-1 Conv input ``x[N, I, H, W]``.

    ``flat`` (output positions) overrides the random choice, so two models' inputs of the same
    layer can be sampled at the same places.
    """
    strides, dilations, pads = conv_geometry(layer)
    kh, kw = layer.weight.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, _, hp, wp = xp.shape
    ho = (hp - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (wp - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if flat is None:
        flat = _positions(n * ho * wo, rng, positions)
    b, rest = np.divmod(flat, ho * wo)
    yo, xo = np.divmod(rest, wo)
    rows = yo[:, None] * strides[0] + np.arange(kh)[None, :] * dilations[0]  # [P, kh]
    cols = xo[:, None] * strides[1] + np.arange(kw)[None, :] * dilations[1]  # [P, kw]
    patches = xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [P, kh, kw, I]
    return patches.reshape(len(flat), -1)


def output_positions(x: np.ndarray, layer: Layer) -> int:
    """How many rows the layer's input yields (output positions for Conv, rows for Gemm/MatMul)."""
    if layer.op_type == "Conv":
        strides, dilations, pads = conv_geometry(layer)
        kh, kw = layer.weight.shape[2:]
        ho = (x.shape[2] + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
        wo = (x.shape[3] + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
        return x.shape[0] * ho * wo
    return int(np.prod(x.shape[:-1])) if not (layer.op_type == "Gemm" and layer.trans_a) else x.shape[-1]


def input_rows(x: np.ndarray, layer: Layer, rng: np.random.Generator, positions: int, flat: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``X`` one sample contributes to ``layer``."""
    if layer.op_type == "Conv":
        return im2col_rows(x, layer, rng, positions, flat)
    if layer.op_type == "Gemm" and layer.trans_a:
        x = x.T
    x = x.reshape(-1, x.shape[-1])
    if flat is None:
        flat = _positions(len(x), rng, positions)
    return x[flat]


def collect_hessians(
    model: ir.Model,
    layers: list[Layer],
    source: Iterable,
    *,
    positions: int = 1024,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LayerStats]:
    """``LayerStats`` per layer name, from one ONNX Runtime pass of the FP32 model over ``source``."""
    from optimizer.runners import session_for

    rng = np.random.default_rng(seed)
    graph_inputs = {v.name for v in model.graph.inputs}
    wanted = {layer.name: layer.node.inputs[0].name for layer in layers}
    fetched = sorted({t for t in wanted.values() if t not in graph_inputs})
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    samples = 0
    with session_for(model, outputs=fetched) as runner:
        for feed in source:
            outputs = runner.run(feed, fetched) if fetched else {}
            for layer in layers:
                tensor = wanted[layer.name]
                x = np.asarray(feed[tensor] if tensor in graph_inputs else outputs[tensor], dtype=np.float64)
                if not np.isfinite(x).all():
                    raise CalibrationError(f"input '{tensor}' of layer '{layer.name}' has NaN/Inf values on the calibration data")
                rows = input_rows(x, layer, rng, positions)
                rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
                gram = rows.T @ rows
                sums[layer.name] = sums[layer.name] + gram if layer.name in sums else gram
                counts[layer.name] = counts.get(layer.name, 0) + len(rows)
            samples += 1
            if progress is not None:
                progress(samples)
    if samples == 0:
        raise CalibrationError("the calibration data source yielded no samples")
    return {name: LayerStats(sums[name] / counts[name], counts[name]) for name in sums}


@dataclass
class CrossStats:
    """For refitting against the original: ``H = X'ᵀX'`` of the pruned model's input rows and
    ``C = X'ᵀX`` with the original model's rows at the same positions (bias column last in both)."""

    hessian: np.ndarray
    cross: np.ndarray
    rows: int


def collect_cross(
    reference: ir.Model,
    current: ir.Model,
    pairs: list[tuple[Layer, Layer]],
    source: Iterable,
    *,
    positions: int = 1024,
    seed: int = 0,
) -> dict[str, CrossStats]:
    """``CrossStats`` per layer name for (reference layer, current layer) pairs, from one pass of each model."""
    from optimizer.runners import session_for

    rng = np.random.default_rng(seed)
    def fetch(model, layers):
        inputs = {v.name for v in model.graph.inputs}
        return sorted({l.node.inputs[0].name for l in layers} - inputs)

    ref_names = fetch(reference, [p[0] for p in pairs])
    cur_names = fetch(current, [p[1] for p in pairs])
    sums: dict[str, list] = {}
    with session_for(reference, outputs=ref_names) as ref_run, session_for(current, outputs=cur_names) as cur_run:
        for feed in source:
            ref_out = ref_run.run(feed, ref_names) if ref_names else {}
            cur_out = cur_run.run(feed, cur_names) if cur_names else {}
            for ref_layer, cur_layer in pairs:
                x = np.asarray(ref_out.get(ref_layer.node.inputs[0].name, feed.get(ref_layer.node.inputs[0].name)), np.float64)
                xc = np.asarray(cur_out.get(cur_layer.node.inputs[0].name, feed.get(cur_layer.node.inputs[0].name)), np.float64)
                flat = _positions(output_positions(x, ref_layer), rng, positions)
                a = input_rows(x, ref_layer, rng, positions, flat)
                b = input_rows(xc, cur_layer, rng, positions, flat)
                ones = np.ones((len(a), 1))
                a, b = np.concatenate([a, ones], 1), np.concatenate([b, ones], 1)
                acc = sums.setdefault(ref_layer.name, [0.0, 0.0, 0])
                acc[0] = acc[0] + b.T @ b
                acc[1] = acc[1] + b.T @ a
                acc[2] += len(a)
    return {name: CrossStats(h / n, c / n, n) for name, (h, c, n) in sums.items()}
