"""Which weights are 2:4 structured-sparse, so ``sparse_weights`` has something to use.

TensorRT's SPARSE_WEIGHTS flag lets it pick sparse tensor-core kernels for Conv/MatMul/Gemm
whose weights have at least two zeros in every group of four along the reduction axis
(input channels). The flag is harmless without such weights but does nothing, and such
weights without the flag waste the pruning: the build says which case it is in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def is_two_four_sparse(weight: np.ndarray, axis: int) -> bool:
    """At least 2 zeros in every consecutive group of 4 along ``axis`` (its length a multiple of 4)."""
    if weight.ndim < 2 or weight.shape[axis] % 4:
        return False
    groups = np.moveaxis(weight, axis, -1).reshape(-1, 4)
    return bool(((groups == 0).sum(axis=1) >= 2).all())


def _reduction_axis(op: str, index: int, node) -> int | None:
    if op == "Conv" and index == 1:
        return 1  # [K, C/groups, kh, kw]: the input channels
    if op == "MatMul" and index == 1:
        return -2  # [..., K, N]
    if op == "Gemm" and index == 1:
        trans_b = node.attributes.get("transB")
        return 1 if (trans_b is not None and trans_b.as_int()) else 0
    return None


def two_four_sparse_weights(model_path: str | Path) -> list[str]:
    """Names of Conv/MatMul/Gemm weight initializers (main graph) that are 2:4 sparse."""
    from optimizer.model import load_model  # lazy: onnx-ir; weights stay memory-mapped

    model = load_model(model_path)
    found = []
    for node in model.graph:
        for index, value in enumerate(node.inputs):
            axis = _reduction_axis(node.op_type, index, node)
            tensor = value.const_value if value is not None else None
            if axis is None or tensor is None:
                continue
            array = tensor.numpy()
            if np.issubdtype(array.dtype, np.floating) and is_two_four_sparse(array, axis):
                found.append(value.name)
    return found
