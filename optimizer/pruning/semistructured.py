"""Apply 2:4 sparsity to the eligible layers of a model, in place.

Per layer: decide eligibility (rules, then names), pick the mask by magnitude, by
activation-aware saliency (|w| × input column norm, as in Wanda) or by OBS saliency, then
optionally repair the kept weights by least squares (``reconstruct.obs_prune``) so the
layer's output on the calibration data moves as little as possible.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.pruning.activations import LayerStats, conv_geometry
from optimizer.pruning.layers import Layer
from optimizer.pruning.reconstruct import obs_prune, output_error
from optimizer.pruning.sparsity import GROUP, from_matrix, mask_2_4, reduction_channels, satisfies_2_4, to_matrix

# Below this many weights a layer's sparse kernel saves nothing worth the accuracy it costs.
MIN_WEIGHTS = 4096
SALIENCY = ("magnitude", "activation", "obs")


@dataclass
class LayerChoice:
    """What pruning did to one layer, for the report and the dry run."""

    name: str
    op_type: str
    action: str  # "pruned" | "skipped"
    reason: str = ""
    weights: int = 0
    zeros: int = 0
    flops: int = 0
    flops_after: int = 0
    # Mean squared output change on the calibration data (from H), without / with reconstruction.
    output_mse: float | None = None
    output_mse_reconstructed: float | None = None
    detail: str = ""


def skip_reason(layer: Layer, exclude: list[str], min_weights: int = MIN_WEIGHTS) -> str | None:
    """Why a layer gets no 2:4 pattern, or None when it is eligible."""
    if any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in exclude):
        return "excluded by name"
    w = layer.weight
    if w.dtype.kind != "f":
        return f"weight dtype {w.dtype} is not floating point"
    if layer.op_type == "Conv":
        if layer.group != 1:
            return f"grouped/depthwise convolution (group={layer.group}): no dense reduction to sparsify"
        if isinstance(conv_geometry(layer), str):
            return conv_geometry(layer)
    elif w.ndim != 2:
        return f"{w.ndim}-D {layer.op_type} weight (only 2-D)"
    channels = reduction_channels(layer.op_type, w.shape, layer.trans_b)
    if channels % GROUP:
        return f"{channels} input channels is not a multiple of {GROUP}"
    if w.size < min_weights:
        return f"too small ({w.size} weights < {min_weights})"
    return None


def _bias_column(layer: Layer) -> np.ndarray | None:
    """The bias as the extra reduction column (zeros when the op can take one), or None."""
    if not layer.has_bias_slot:
        return None
    if layer.op_type == "Gemm":
        alpha, beta = (layer.node.attributes.get(k) for k in ("alpha", "beta"))
        if (alpha is not None and alpha.as_float() != 1.0) or (beta is not None and beta.as_float() != 1.0):
            return None
    out = layer.weight.shape[0] if layer.op_type == "Conv" else to_matrix(layer.op_type, layer.weight, layer.trans_b).shape[0]
    bias = layer.bias
    if bias is None:
        return np.zeros(out, dtype=layer.weight.dtype) if len(layer.node.inputs) < 3 else None
    return bias if bias.shape == (out,) else None


def sparsify_layer(
    graph: ir.Graph,
    layer: Layer,
    *,
    method: str,
    stats: LayerStats | None,
    reconstruct: bool,
    damp: float,
) -> LayerChoice:
    w = layer.weight
    m = to_matrix(layer.op_type, w, layer.trans_b)
    choice = LayerChoice(layer.name, layer.op_type, "pruned", weights=int(w.size))
    if method == "magnitude":
        mask = mask_2_4(np.abs(m))
    elif method == "activation":
        mask = mask_2_4(np.abs(m) * stats.column_norms[None, :])
    else:  # "obs": the solver picks the mask
        mask = None
    new_bias = None
    if stats is not None:
        bias = _bias_column(layer)
        h = stats.hessian if bias is not None else stats.hessian[:-1, :-1]
        ref = np.concatenate([m, bias[:, None]], axis=1) if bias is not None else m
        if mask is not None:
            plain = ref.copy()
            plain[:, : m.shape[1]] *= mask
            choice.output_mse = output_error(plain, ref, h)
        if reconstruct or mask is None:
            fixed, mask = obs_prune(ref, h, mask=mask, prunable_columns=m.shape[1], damp=damp)
            choice.output_mse_reconstructed = output_error(fixed, ref, h)
            if mask is not None and choice.output_mse is None:
                plain = ref * np.concatenate([mask, np.ones((len(ref), ref.shape[1] - m.shape[1]), bool)], axis=1)
                choice.output_mse = output_error(plain, ref, h)
            new_m = fixed[:, : m.shape[1]]
            if bias is not None:
                new_bias = fixed[:, -1]
        else:
            new_m = m * mask
    else:
        new_m = m * mask
    assert satisfies_2_4(new_m), layer.name  # an internal invariant, not user input
    layer.set_weight(graph, from_matrix(layer.op_type, new_m.astype(w.dtype), w.shape, layer.trans_b))
    if new_bias is not None and np.any(new_bias != (layer.bias if layer.bias is not None else 0)):
        layer.set_bias(graph, new_bias.astype(w.dtype))
    choice.zeros = int(new_m.size - np.count_nonzero(new_m))
    return choice
