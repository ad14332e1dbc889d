"""Least-squares repair of pruned weights from input statistics ``H = XᵀX``.

Two solvers, both on the reduction matrix ``W[out, d]`` (bias as an optional last column,
matching the constant-1 column of ``H``):

* ``obs_prune``: Optimal Brain Surgeon, column by column as in SparseGPT (Frantar & Alistarh,
  2023). Each weight that is zeroed has its error spread over the not-yet-visited weights of
  its row through the Cholesky factor of ``H⁻¹``, so the layer output ``XWᵀ`` moves as little
  as possible. With ``pattern="2:4"`` and no fixed mask it also chooses the mask, by the OBS
  saliency ``w² / [H⁻¹]ᵢᵢ²``, four columns at a time.
* ``refit_columns``: exact least squares when whole input columns disappear (channel pruning):
  ``W'_S = argmin ‖X_S W'_Sᵀ − X Wᵀ‖``, i.e. ``W'_S = W H[:, S] (H_SS)⁻¹``.

``damp`` is added to the diagonal as a fraction of its mean: it keeps ``H`` invertible when
inputs are collinear or dead (a ReLU channel that is always zero) and acts as a ridge.
"""

from __future__ import annotations

import numpy as np

from optimizer.pruning.sparsity import GROUP, KEEP


def _damped(hessian: np.ndarray, damp: float) -> np.ndarray:
    h = hessian.astype(np.float64, copy=True)
    diag = np.diag(h)
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * max(float(np.mean(np.diag(h))), 1e-12)
    return h


def obs_prune(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    prunable_columns: int | None = None,
    damp: float = 0.01,
    block: int = 128,
    refine: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero weights 2:4 (or by ``mask``) and update the kept ones; returns (new weight, keep-mask).

    ``prunable_columns``: columns past it (the bias) are never pruned but still absorb error.
    """
    w = weight.astype(np.float64, copy=True)
    rows, d = w.shape
    prunable = d if prunable_columns is None else prunable_columns
    h = _damped(hessian, damp)
    # Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): row i of U is the OBS update direction.
    hinv = np.linalg.inv(h)
    u = np.linalg.cholesky((hinv + hinv.T) / 2).T
    keep = np.ones_like(w, dtype=bool) if mask is None else np.concatenate(
        [mask.astype(bool), np.ones((rows, d - mask.shape[1]), dtype=bool)], axis=1
    )
    for start in range(0, d, block):
        end = min(start + block, d)
        w1 = w[:, start:end].copy()
        err1 = np.zeros_like(w1)
        u1 = u[start:end, start:end]
        for i in range(end - start):
            col = start + i
            if mask is None and col < prunable and col % GROUP == 0:
                span = slice(i, i + GROUP)
                saliency = w1[:, span] ** 2 / np.diag(u1)[span][None, :] ** 2
                order = np.argsort(saliency, axis=1, kind="stable")
                group_keep = np.ones_like(saliency, dtype=bool)
                np.put_along_axis(group_keep, order[:, : GROUP - KEEP], False, axis=1)
                keep[:, col : col + GROUP] = group_keep
            q = np.where(keep[:, col], w1[:, i], 0.0)
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, start:end] = w1
        w[:, end:] -= err1 @ u[start:end, end:]
    w[~keep] = 0.0  # exact zeros, whatever rounding did
    # Sequential OBS freezes each column once visited, so errors of late columns cannot flow
    # back into early ones; on strongly correlated inputs that leaves much on the table. A
    # few conjugate-gradient steps on the fixed mask finish the exact least-squares solve.
    w = refine_masked(weight.astype(np.float64), h, keep, w, iterations=refine)
    return w.astype(weight.dtype), keep[:, :prunable]


def refine_masked(
    weight: np.ndarray, hessian: np.ndarray, keep: np.ndarray, start: np.ndarray, *, iterations: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """Row-wise ``argmin_x (x − w) H (x − w)ᵀ`` with ``x = 0`` off ``keep``: batched projected CG from ``start``."""
    x = np.where(keep, start, 0.0)
    r = np.where(keep, (weight - x) @ hessian, 0.0)  # minus half the gradient
    p = r.copy()
    rs = (r * r).sum(1)
    scale = max(float(rs.max()), 1e-30)
    for _ in range(iterations):
        if rs.max() <= tol * scale:
            break
        ap = np.where(keep, p @ hessian, 0.0)
        curvature = (p * ap).sum(1)
        alpha = np.divide(rs, curvature, out=np.zeros_like(rs), where=curvature > 0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
        p = r + beta[:, None] * p
        rs = rs_new
    return x


def refit_columns(weight: np.ndarray, hessian: np.ndarray, keep: np.ndarray, *, damp: float = 0.01) -> np.ndarray:
    """Least-squares weights over the kept columns ``keep`` (bool over ``d``) of ``weight[out, d]``."""
    w = weight.astype(np.float64)
    h = _damped(hessian, damp)
    s = np.flatnonzero(keep)
    rhs = h[s, :] @ w.T  # H_S: Wᵀ — what the dropped columns contributed, seen through their correlation
    solved = np.linalg.solve(h[np.ix_(s, s)], rhs)
    return solved.T.astype(weight.dtype)


def output_error(weight: np.ndarray, reference: np.ndarray, hessian: np.ndarray) -> float:
    """Mean squared output difference ``‖X(W − W_ref)ᵀ‖² / rows`` from ``H`` alone."""
    diff = (weight - reference).astype(np.float64)
    return float(np.einsum("od,de,oe->", diff, hessian, diff))
