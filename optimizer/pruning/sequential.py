"""Sequential least-squares repair against the original model (the SparseGPT/OBC order).

Pruning one layer changes the inputs of every layer after it. Refitting each layer on the
*original* model's inputs ignores that; here layers are refit in graph order, in a few
waves, each on the inputs the already-pruned model now produces, towards the outputs the
original model produced on the same data:

    W' = argmin ‖X'·W'ᵀ − X·Wᵀ‖²  ⇒  W' = (X'ᵀX')⁻¹ X'ᵀX Wᵀ      (bias as a constant column)

and, for 2:4 layers, the OBS solver then sparsifies ``W'`` under ``H = X'ᵀX'``. Each wave
costs one pass of both models over the calibration samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from optimizer.pruning.activations import collect_cross, conv_geometry
from optimizer.pruning.layers import Layer
from optimizer.pruning.reconstruct import _damped, obs_prune, output_error
from optimizer.pruning.sparsity import from_matrix, mask_2_4, to_matrix


def refittable(layer: Layer) -> bool:
    """Layers whose output can be refit: dense Conv (2-D, group 1), Gemm (alpha=beta=1, 1-D bias) and MatMul."""
    w = layer.weight
    if layer.op_type == "Conv":
        return layer.group == 1 and w.ndim == 4 and not isinstance(conv_geometry(layer), str)
    if layer.op_type == "Gemm":
        for key in ("alpha", "beta"):
            attr = layer.node.attributes.get(key)
            if attr is not None and attr.as_float() != 1.0:
                return False
        return w.ndim == 2 and (layer.bias is None or layer.bias.ndim == 1)
    return w.ndim == 2


def _augmented(layer: Layer) -> np.ndarray:
    """``[W | b]`` in reduction-matrix form (b = 0 when absent or impossible)."""
    m = to_matrix(layer.op_type, layer.weight, layer.trans_b).astype(np.float64)
    b = layer.bias if layer.bias is not None else np.zeros(len(m))
    return np.concatenate([m, b.reshape(len(m), 1)], axis=1)


def refit_in_waves(
    reference: ir.Model,
    current: ir.Model,
    names: list[str],
    source: Iterable,
    *,
    rows_kept: dict[str, np.ndarray] | None = None,
    sparsify: dict[str, str] | None = None,
    waves: int = 4,
    positions: int = 1024,
    damp: float = 0.01,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict]:
    """Refit layers ``names`` of ``current`` (in place) towards ``reference``; returns a record per layer.

    ``rows_kept[name]``: output channels of the reference layer that the current one keeps.
    ``sparsify[name]``: "magnitude" | "activation" | "obs" to also make that layer 2:4.
    """
    rows_kept = rows_kept or {}
    sparsify = sparsify or {}
    ref_layers = {n.name: Layer(n) for n in reference.graph}
    cur_layers = {n.name: Layer(n) for n in current.graph}
    order = [n.name for n in current.graph if n.name in set(names)]
    chunks = [list(c) for c in np.array_split(np.array(order, dtype=object), min(waves, len(order))) if len(c)] if order else []
    records: dict[str, dict] = {}
    done = 0
    for chunk in chunks:
        pairs = [(ref_layers[n], cur_layers[n]) for n in chunk]
        stats = collect_cross(reference, current, pairs, source, positions=positions)
        for name in chunk:
            s = stats[name]
            ref, cur = ref_layers[name], cur_layers[name]
            method = sparsify.get(name)
            if name not in rows_kept and not method and s.hessian.shape == s.cross.shape and np.allclose(
                s.hessian, s.cross, rtol=1e-7, atol=1e-12 * float(np.abs(s.cross).max())
            ):
                records[name] = {"rows": s.rows, "refit": False}  # its inputs did not change: leave it exact
                continue
            target = _augmented(ref)
            if name in rows_kept:
                target = target[rows_kept[name]]
            h = _damped(s.hessian, damp)
            has_bias_slot = cur.has_bias_slot
            if not has_bias_slot:  # MatMul: no bias column to fit
                h, cross = h[:-1, :-1], s.cross[:-1]
            else:
                cross = s.cross
            fitted = np.linalg.solve(h, cross @ target.T).T  # [O', d'(+1)]
            shape = cur.weight.shape
            d = fitted.shape[1] - (1 if has_bias_slot else 0)
            record = {"rows": s.rows, "refit": True}
            if method:
                m = fitted[:, :d]
                if method == "magnitude":
                    mask = mask_2_4(np.abs(m))
                elif method == "activation":
                    mask = mask_2_4(np.abs(m) * np.sqrt(np.maximum(np.diag(s.hessian)[:d], 0))[None, :])
                else:
                    mask = None
                h_fit = s.hessian if has_bias_slot else s.hessian[:-1, :-1]
                sparse, _ = obs_prune(fitted, h_fit, mask=mask, prunable_columns=d, damp=damp)
                record["output_mse_dense_refit"] = output_error(sparse, fitted, h_fit)
                fitted = sparse
            matrix = fitted[:, :d].astype(cur.weight.dtype)
            cur.set_weight(current.graph, from_matrix(cur.op_type, matrix, shape, cur.trans_b))
            if has_bias_slot:
                cur.set_bias(current.graph, fitted[:, d].astype(cur.weight.dtype))
            records[name] = record
            done += 1
            if progress is not None:
                progress(done)
    return records
