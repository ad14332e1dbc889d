"""2:4 structured sparsity in the layout TensorRT's sparse kernels read.

TensorRT's sparse Tensor Core kernels need, in every group of four consecutive weights along
the reduction (input-channel) dimension, at most two non-zeros:

* Conv ``W[O, I, kh, kw]``: groups along ``I`` for each ``(o, kh, kw)``;
* MatMul ``B[K, N]``: groups along ``K`` for each ``n``;
* Gemm ``B``: along ``K`` as well, i.e. along axis 0, or axis 1 when ``transB=1``.

Everything here works on the *reduction matrix* ``M[out, reduction]`` of a weight, with the
reduction columns ordered so that each run of four consecutive columns is one TensorRT group
(for Conv: columns ordered ``(kh, kw, I)``). ``to_matrix``/``from_matrix`` convert both ways.
"""

from __future__ import annotations

import numpy as np

GROUP = 4
KEEP = 2


def to_matrix(op_type: str, weight: np.ndarray, trans_b: bool = False) -> np.ndarray:
    """The weight as ``M[out, reduction]``, groups of four consecutive along the reduction."""
    if op_type == "Conv":
        o = weight.shape[0]
        return np.ascontiguousarray(weight.transpose(0, *range(2, weight.ndim), 1).reshape(o, -1))
    if op_type == "Gemm" and trans_b:
        return weight
    return np.ascontiguousarray(weight.T)  # MatMul / Gemm: B[K, N] → [N, K]


def from_matrix(op_type: str, matrix: np.ndarray, shape: tuple[int, ...], trans_b: bool = False) -> np.ndarray:
    """Inverse of ``to_matrix``."""
    if op_type == "Conv":
        o, i, *spatial = shape
        nd = len(spatial)
        return np.ascontiguousarray(matrix.reshape(o, *spatial, i).transpose(0, nd + 1, *range(1, nd + 1)))
    if op_type == "Gemm" and trans_b:
        return matrix
    return np.ascontiguousarray(matrix.T)


def reduction_channels(op_type: str, shape: tuple[int, ...], trans_b: bool = False) -> int:
    """Length of the dimension the groups run along (input channels / K)."""
    if op_type == "Conv":
        return shape[1]
    if op_type == "Gemm" and trans_b:
        return shape[1]
    return shape[0]


def mask_2_4(score: np.ndarray) -> np.ndarray:
    """Boolean keep-mask over ``score[out, reduction]``: the two highest of every group of four."""
    rows, cols = score.shape
    if cols % GROUP:
        raise ValueError(f"reduction length {cols} is not a multiple of {GROUP}")
    groups = score.reshape(rows, cols // GROUP, GROUP)
    # argsort is stable: ties keep the earlier weights, so the mask is deterministic.
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :KEEP], True, axis=-1)
    return keep.reshape(rows, cols)


def satisfies_2_4(matrix: np.ndarray) -> bool:
    """True when every group of four along the reduction has at most two non-zeros."""
    rows, cols = matrix.shape
    if cols % GROUP:
        return False
    nonzero = (matrix.reshape(rows, cols // GROUP, GROUP) != 0).sum(-1)
    return bool((nonzero <= KEEP).all())


def weight_satisfies_2_4(op_type: str, weight: np.ndarray, trans_b: bool = False) -> bool:
    return satisfies_2_4(to_matrix(op_type, weight, trans_b))
