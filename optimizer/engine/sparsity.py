"""Which weights are 2:4 structured-sparse, so ``sparse_weights`` has something to use.

TensorRT's SPARSE_WEIGHTS flag lets it pick sparse tensor-core kernels for Conv/MatMul/Gemm
whose weights have at least two zeros in every group of four along the reduction axis
(input channels). The flag is harmless without such weights but does nothing, and such
weights without the flag waste the pruning: the build says which case it is in.

The layout rules live in one place, ``optimizer.pruning.sparsity``, so ``inspect``, the
pruner and the builder always agree on what counts as 2:4.
"""

from __future__ import annotations

from pathlib import Path


def two_four_sparse_weights(model_path: str | Path) -> list[str]:
    """Names of the Conv/MatMul/Gemm layers (main graph) whose constant weights are 2:4 sparse."""
    from optimizer.model import load_model  # lazy: onnx-ir; weights stay memory-mapped
    from optimizer.pruning import weights_2_4

    return [name for name, sparse in weights_2_4(load_model(model_path)).items() if sparse]
