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
from graph_passes.lift_constants import LiftConstants
from graph_passes.remove_dropout import RemoveDropout
from graph_passes.remove_identity import RemoveIdentity
from graph_passes.remove_initializer_inputs import RemoveInitializerInputs
from graph_passes.remove_noop_ops import RemoveNoopOps
from graph_passes.topological_sort import TopologicalSort

DEFAULT_ORDER: list[type[GraphPass]] = [
    # First: on old exporters' models (IR 3) every weight is also a graph input, and a graph
    # input is never folded or fused (it could be fed at run time). Also raises IR 3 -> 4,
    # without which no later pass may add an initializer.
    RemoveInitializerInputs,
    # Before anything that reads weights: paddle2onnx/torch emit weights as Constant nodes;
    # BatchNorm folding and deduplication only see initializers.
    LiftConstants,
    # Cheap bypasses that expose constant chains (Identity(W) -> Mul) to the folder.
    RemoveIdentity,
    RemoveDropout,
    # Folds what the bypasses exposed; afterwards BN parameters computed by constant
    # subgraphs are plain initializers and scalar operands are literal 0/1.
    FoldConstants,
    # Needs constant initializers (lifted or folded above).
    FoldBatchnormIntoConv,
    # After folding, so folded 1s and 0s are seen; leaves Identities it removes itself.
    RemoveNoopOps,
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
