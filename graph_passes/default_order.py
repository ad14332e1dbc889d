"""The default pass order: one explicit list, and why each pass sits where it does.

Adding a pass: write ``graph_passes/<name>.py`` with one ``GraphPass`` subclass, import it
here and put it in ``DEFAULT_ORDER`` (or ``OPTIONAL_PASSES`` when it should run only on
request). No registration by import side effect, no priority numbers.
"""

from __future__ import annotations

from graph_passes._base import GraphPass
from graph_passes.common_subexpression_elimination import CommonSubexpressionElimination
from graph_passes.deduplicate_initializers import DeduplicateInitializers
from graph_passes.eliminate_dead_code import EliminateDeadCode
from graph_passes.fold_batchnorm_into_conv import FoldBatchnormIntoConv
from graph_passes.fold_constants import FoldConstants
from graph_passes.fold_conv_affine import FoldConvAffine
from graph_passes.fold_shape_computations import FoldShapeComputations
from graph_passes.fuse_hard_activations import FuseHardActivations
from graph_passes.fuse_layer_norm import FuseLayerNorm
from graph_passes.fuse_matmul_add_into_gemm import FuseMatmulAddIntoGemm
from graph_passes.fuse_pad_into_conv import FusePadIntoConv
from graph_passes.fuse_space_to_depth import FuseSpaceToDepth
from graph_passes.hoist_if_branch_common import HoistIfBranchCommon
from graph_passes.lift_constants import LiftConstants
from graph_passes.remove_dropout import RemoveDropout
from graph_passes.remove_identity import RemoveIdentity
from graph_passes.remove_initializer_inputs import RemoveInitializerInputs
from graph_passes.remove_noop_ops import RemoveNoopOps
from graph_passes.topological_sort import TopologicalSort
from graph_passes.upgrade_opset_for_fusions import UpgradeOpsetForFusions

DEFAULT_ORDER: list[type[GraphPass]] = [
    # First: on old exporters' models (IR 3) every weight is also a graph input, and a graph
    # input is never folded or fused (it could be fed at run time). Also raises IR 3 -> 4,
    # without which no later pass may add an initializer.
    RemoveInitializerInputs,
    # Before the fusions it enables and before the folds (the converter round-trips the whole
    # model through protobuf once, while it is still as exported): opset 13-16 models with a
    # decomposed LayerNorm (or, below 14, x * HardSigmoid(x)) go to opset 17. A no-op otherwise.
    UpgradeOpsetForFusions,
    # Before anything that reads weights: paddle2onnx/torch emit weights as Constant nodes;
    # BatchNorm folding and deduplication only see initializers.
    LiftConstants,
    # Cheap bypasses that expose constant chains (Identity(W) -> Mul) to the folder.
    RemoveIdentity,
    RemoveDropout,
    # Before the general folder: turns Shape->Slice->Concat chains with known dims into
    # constants and dynamic Reshape targets into [0, C, -1]-style constants; the folder then
    # evaluates what is left (Mul of two folded dims) and drops the dead chains.
    FoldShapeComputations,
    # Folds what the bypasses exposed; afterwards BN parameters computed by constant
    # subgraphs are plain initializers and scalar operands are literal 0/1.
    FoldConstants,
    # Needs constant initializers (lifted or folded above).
    FoldBatchnormIntoConv,
    # After BN folding (which gives bias-less Convs a bias): per-channel Add/Mul, and the BNs
    # onnxscript's rule cannot reach (ConvTranspose -> Add -> BN), in one fixed-point loop.
    FoldConvAffine,
    # After the folds: the Conv+Add+Clip+Div chains are whole, and the +3/0/6 constants are
    # literal initializers.
    FuseHardActivations,
    # After folding (epsilon and the power 2 are literal initializers); a no-op below opset 17.
    FuseLayerNorm,
    # Needs inferred ranks (it infers them itself); before CSE so that duplicate MatMul+Add
    # pairs become duplicate Gemms that CSE merges.
    FuseMatmulAddIntoGemm,
    # After folding: the pads must be literal initializers.
    FusePadIntoConv,
    # After folding: the Slices' starts/ends/steps must be literal; the Conv weight it
    # permutes must be a constant (folded, BN already folded into it).
    FuseSpaceToDepth,
    # After folding, so folded 1s and 0s are seen; leaves Identities it removes itself.
    RemoveNoopOps,
    # After the folds (what folds inside a branch, e.g. a Shape of a known value, is gone,
    # not hoisted), before CSE: what both branches of an If still compute from outer values
    # moves in front of the If, where CSE merges it with equal work outside.
    HoistIfBranchCommon,
    # After every pass that creates initializers (lift, fold, BN folding).
    DeduplicateInitializers,
    # After deduplication: CSE compares inputs by identity, so merged initializers make
    # more nodes equal.
    CommonSubexpressionElimination,
    # Collects everything the passes above orphaned (Constant/initializer leftovers).
    EliminateDeadCode,
    # Last: rewrites insert nodes where convenient; this restores a valid node order.
    TopologicalSort,
]

# Passes that exist but do not run unless named.
OPTIONAL_PASSES: list[type[GraphPass]] = []

DEFAULT_PASSES: list[str] = [p.name for p in DEFAULT_ORDER]
