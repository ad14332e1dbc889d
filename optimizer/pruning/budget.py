"""Accuracy budget: the largest FLOPs cut whose output error on validation data stays in budget.

Error is measured, not estimated: each candidate is pruned for real and run in ONNX Runtime
next to the original on the validation samples; ``relative_error`` is
``mean |candidate − reference| / mean |reference|`` over all outputs. Candidates are tried
from the smallest cut up and the search stops at the first one over budget (error grows
with the cut), so the cost is one prune per candidate that fits plus one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from optimizer.errors import ConfigError
from optimizer.model import refuse_overwrite, save_model

CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5)


def relative_error(reference: Path, candidate: Path, val: Iterable) -> float:
    from optimizer.pruning.check import measure_outputs

    return measure_outputs(reference, candidate, val)["relative_error"]


def prune_within_error(
    model_path: str | Path,
    output_path: str | Path,
    *,
    val,
    max_error: float,
    candidates: Sequence[float] = CANDIDATES,
    **kwargs,
):
    """``prune(..., flops_target=t)`` for the largest ``t`` in ``candidates`` within ``max_error``.

    Returns the ``PruneResult`` of the chosen cut with ``budget`` filled in (every trial's error);
    raises ConfigError when even the smallest cut is over budget.
    """
    from optimizer.pruning import prune

    if val is None:
        raise ConfigError("an accuracy budget needs validation data (--val DIR)")
    refuse_overwrite(model_path, output_path)
    if max_error <= 0:
        raise ConfigError(f"the error budget must be positive, got {max_error}")
    trials, best = [], None
    with tempfile.TemporaryDirectory(prefix="trtforge-prune-budget-") as tmp:
        for target in sorted(candidates):
            trial = Path(tmp) / f"cut{target:.3f}.onnx"
            # The budget is this search's own check: each trial is measured on the validation data below.
            result = prune(model_path, trial, flops_target=target, tolerance=None, **kwargs)
            err = relative_error(Path(model_path), trial, val)
            trials.append({"flops_target": target, "flops_reduction": result.flops_reduction, "relative_error": err})
            if err > max_error:
                break
            best = (result, trial)
        if best is None:
            raise ConfigError(
                f"even a {min(candidates):.0%} FLOPs cut changes the outputs by {trials[0]['relative_error']:.3g} "
                f"(relative), over the budget of {max_error:.3g}; raise the budget or use 2:4 sparsity"
            )
        result, trial = best
        from optimizer.model import load_model

        save_model(load_model(trial), output_path)
    result.output = str(output_path)
    result.budget = {"max_error": max_error, "trials": trials}
    return result
