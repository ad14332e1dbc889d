"""fuse_matmul_add_into_gemm: ``Add(MatMul(A, B), C)`` on 2-D operands becomes one ``Gemm(A, B, C)``.

TensorRT maps a 2-D Gemm with a constant ``B`` to one fully connected layer with its bias
fused; the pair costs two layers and an intermediate tensor. The rewrite is onnxscript's
``matmul_add_to_gemm_rule``; we add the checks it leaves out: floating point only (Gemm
takes no int8/bool), and ``C`` must broadcast *to* the MatMul's ``[M, N]`` output without
growing it (Gemm's C is unidirectionally broadcast, an Add is bidirectional).
"""

from __future__ import annotations

import onnx_ir as ir

from graph_passes._base import GraphPass
from graph_passes._rules import RulePass

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _gemm_rule():
    from onnxscript.rewriter._basics import MatchResult
    from onnxscript.rewriter.rules.common._matmul_add_to_gemm import MatMulAddToGemm

    class CheckedMatMulAddToGemm(MatMulAddToGemm):
        def check(self, context, input_a, input_b, input_c, **_):
            result = super().check(context, input_a, input_b)
            if not result:
                return result
            if input_a.dtype not in _FLOATS:
                return MatchResult().fail(f"dtype {input_a.dtype} is not a floating point type Gemm takes")
            if input_c.shape is None:
                return MatchResult().fail("the bias has unknown shape")
            m, n = input_a.shape[0], input_b.shape[1]
            c = tuple(input_c.shape)
            if len(c) > 2:
                return MatchResult().fail(f"the bias of rank {len(c)} would raise the output's rank")
            for want, got in zip((m, n)[2 - len(c):], c):
                if got != 1 and got != want:
                    return MatchResult().fail(f"the bias of shape {list(c)} may broadcast the [M, N] output")
            return result

    return CheckedMatMulAddToGemm().rule()


class FuseMatmulAddIntoGemm(RulePass, GraphPass):
    """Fuse Add(MatMul(A, B), C) on 2-D floating point operands into Gemm."""

    name = "fuse_matmul_add_into_gemm"
    preconditions = (
        "A and B have inferred rank 2 and a floating point dtype; C broadcasts to the [M, N] product "
        "without changing its shape (rank <= 2, each dim 1 or equal); the MatMul's output feeds only the Add"
    )

    reads_shapes = True  # the rank and broadcast checks read shapes: trust inferred ones only

    def rules(self, model: ir.Model) -> list:
        return [_gemm_rule()]
