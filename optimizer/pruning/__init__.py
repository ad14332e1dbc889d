"""Pruning without a training loop: 2:4 structured sparsity and channel pruning on ONNX graphs.

    result = prune("det.onnx", "det.pruned.onnx", channels=0.3, source=NpzFolderSource("calib/"))
    result = prune("rec.onnx", "rec.24.onnx", sparsity="2:4", source=calib, method="obs")
    result = prune("det.onnx", None, flops_target=0.25, source=calib, dry_run=True)  # report only

Calibration data makes pruning data-aware (activation-weighted saliency) and lets
least-squares reconstruction repair the kept weights (``reconstruct=True``); without data the
criteria fall back to weight magnitude and nothing is refit. The input file is never
modified; the output is written atomically, and only when ``dry_run`` is false.

Every prune measures itself (``check``): the pruned model runs next to the original on the
calibration data (or generated inputs) and its output error is recorded in ``result.check``;
beyond ``tolerance`` nothing is written unless ``force`` is set.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer.errors import ConfigError
from optimizer.feeds import check_feed_size
from optimizer.model import input_specs, load_model, refuse_overwrite, save_model
from calibration.data import Limited
from optimizer.pruning.allocation import allocate, flops_after
from optimizer.pruning.activations import LayerStats, collect_hessians, conv_geometry
from optimizer.pruning.channel_pruning import CRITERIA, apply_channel_pruning, channel_scores, kept_count
from optimizer.pruning.channels import ChannelGroup, find_groups
from optimizer.pruning.check import CHECK_SAMPLES, DEFAULT_TOLERANCE, measure_outputs, worst_groups
from optimizer.pruning.flops import count_parameters, model_flops, observe_shapes
from optimizer.pruning.layers import Layer, find_layers, prepare_model
from optimizer.pruning.sequential import refit_in_waves, refittable
from optimizer.pruning.semistructured import SALIENCY, LayerChoice, skip_reason, sparsify_layer
from optimizer.pruning.sparsity import satisfies_2_4, to_matrix, weight_satisfies_2_4

__all__ = ["PruneResult", "prune", "prune_model", "prune_within_error", "weights_2_4", "SPARSITY_PATTERNS", "SALIENCY", "CRITERIA"]

SPARSITY_PATTERNS = ("2:4",)


def prune_within_error(*args, **kwargs):
    """The largest FLOPs cut within an output-error budget on validation data (see ``budget``)."""
    from optimizer.pruning.budget import prune_within_error as search

    return search(*args, **kwargs)


def prune_model(
    model_path: str | Path,
    output_path: str | Path | None,
    *,
    max_error: float | None = None,
    val=None,
    channels: float | None = None,
    flops_target: float | None = None,
    dry_run: bool = False,
    tolerance: float | None = DEFAULT_TOLERANCE,
    force: bool = False,
    **options,
) -> PruneResult:
    """Prune by a given cut, or by the largest cut within ``max_error``: the one flow of ``trtforge prune`` and the prune stage.

    Without ``max_error`` this is ``prune`` with ``channels``/``flops_target``. With it,
    ``prune_within_error`` searches the FLOPs target itself on ``val`` and each trial's error
    there is its check, so the cut, ``dry_run``, ``tolerance`` and ``force`` play no part.
    ``options`` go to ``prune`` either way (sparsity, source, method, criterion, ...).
    """
    if max_error is not None:
        return prune_within_error(model_path, output_path, val=val, max_error=max_error, **options)
    return prune(model_path, output_path, channels=channels, flops_target=flops_target, dry_run=dry_run,
                 tolerance=tolerance, force=force, **options)


@dataclass
class GroupChoice:
    """One channel group: what was kept, or why it was left alone."""

    id: int
    channels: int
    kept: int
    roots: list[str]
    consumers: list[str]
    reason: str = ""
    #: With data: the readers' relative output error after the refit, in closed form (``allocation.refit_error``).
    estimated_error: float | None = None


@dataclass
class PruneResult:
    input: str
    output: str | None
    dry_run: bool
    sparsity: str | None
    channels: float | None
    method: str
    criterion: str
    reconstruct: bool
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    nonzero_after: int = 0
    #: Share of Conv/Gemm/MatMul FLOPs that run on 2:4 weights after pruning.
    sparse_flops_share: float = 0.0
    layers: list[LayerChoice] = field(default_factory=list)
    groups: list[GroupChoice] = field(default_factory=list)
    refits: dict[str, str] = field(default_factory=dict)
    data: dict | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: With an accuracy budget (``budget.prune_within_error``): the budget and every trial's error.
    budget: dict | None = None
    #: The pruned model against the original (``check``): error, tolerance, verdict, worst groups.
    check: dict | None = None

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["flops_reduction"] = self.flops_reduction
        return d


def weights_2_4(model: ir.Model) -> dict[str, bool]:
    """For each Conv/Gemm/MatMul with a constant weight: does it already satisfy 2:4 (TensorRT layout)?"""
    result = {}
    for layer in find_layers(model):
        w = layer.weight
        if layer.op_type == "Conv" and layer.group != 1:
            continue
        if layer.op_type != "Conv" and w.ndim != 2:
            continue
        result[layer.name] = weight_satisfies_2_4(layer.op_type, w, layer.trans_b) and bool(np.any(w))
    return result


def _shape_feed(model: ir.Model, source, input_shapes: dict[str, tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """One feed to learn every tensor's shape: the first data sample, else zeros of ``input_shapes``."""
    if source is not None:
        for feed in source:
            return dict(feed)
    for spec in input_specs(model):
        shape = (input_shapes or {}).get(spec.name) or spec.shape
        if shape is None or any(not isinstance(d, int) for d in shape):
            raise ConfigError(
                f"input '{spec.name}' has dynamic dims {spec.shape}: give calibration data (--calib DIR) "
                f"or a shape (--shapes {spec.name}:1x3x640x640) so FLOPs and channel counts can be measured"
            )
    specs = input_specs(model)
    shapes = {s.name: (input_shapes or {}).get(s.name) or s.shape for s in specs}
    check_feed_size(specs, shapes)  # before np.zeros: a hostile shape costs nothing
    return {s.name: np.zeros(shapes[s.name], dtype=np.dtype(s.dtype)) for s in specs}


def _stats_for(model, layers, source, samples, positions, progress) -> dict[str, LayerStats] | None:
    if source is None or not layers:
        return None
    usable = [l for l in layers if l.op_type != "Conv" or not isinstance(conv_geometry(l), str)]
    return collect_hessians(model, usable, Limited(source, samples), positions=positions, progress=progress)


def _flops_after_ratio(groups: list[ChannelGroup], flops: dict[str, int], ratio: float) -> int:
    """Analytic FLOPs when every prunable group loses the same ``ratio`` of its channels."""
    return flops_after({g.id: ratio for g in groups if g.prunable}, groups, flops)


def _ratio_for_flops(groups, flops: dict[str, int], target: float) -> float:
    """Smallest uniform channel ratio whose analytic FLOPs reduction reaches ``target`` (bisection)."""
    total = sum(flops.values())
    lo, hi = 0.0, 0.95
    if 1 - _flops_after_ratio(groups, flops, hi) / total < target:
        raise ConfigError(
            f"a FLOPs reduction of {target:.0%} is out of reach: pruning every prunable group by 95% "
            f"removes {1 - _flops_after_ratio(groups, flops, hi) / total:.0%} (the rest is in groups left alone)"
        )
    for _ in range(30):
        mid = (lo + hi) / 2
        if 1 - _flops_after_ratio(groups, flops, mid) / total >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _checked_options(sparsity, channels, flops_target, source, method, criterion, dry_run, output_path) -> tuple[str, str]:
    """Refuse contradictory or impossible options before any work; resolve the 'auto' method and criterion."""
    if sparsity is not None and sparsity not in SPARSITY_PATTERNS:
        raise ConfigError(f"sparsity '{sparsity}' is not supported; choose one of: {', '.join(SPARSITY_PATTERNS)}")
    if channels is not None and flops_target is not None:
        raise ConfigError("give either a channel ratio or a FLOPs target, not both")
    for name, value in (("channels", channels), ("flops_target", flops_target)):
        if value is not None and not 0.0 < value < 1.0:
            raise ConfigError(f"{name} must be a fraction between 0 and 1 (exclusive), got {value}")
    if sparsity is None and channels is None and flops_target is None:
        raise ConfigError("nothing to do: ask for sparsity='2:4', a channel ratio or a FLOPs target")
    if method == "auto":
        method = "obs" if source is not None else "magnitude"
    if method not in SALIENCY:
        raise ConfigError(f"method '{method}' is unknown; choose one of: auto, {', '.join(SALIENCY)}")
    if method in ("activation", "obs") and source is None and sparsity:
        raise ConfigError(f"method '{method}' needs calibration data (--calib DIR); use 'magnitude' without data")
    if criterion == "auto":
        criterion = "activation" if source is not None else "l2"
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion '{criterion}' is unknown; choose one of: auto, {', '.join(CRITERIA)}")
    if not dry_run and output_path is None:
        raise ConfigError("an output path is needed unless dry_run is set")
    return method, criterion


def prune(
    model_path: str | Path,
    output_path: str | Path | None,
    *,
    sparsity: str | None = None,
    channels: float | None = None,
    flops_target: float | None = None,
    source=None,
    method: str = "auto",
    criterion: str = "auto",
    reconstruct: bool = True,
    exclude: list[str] | tuple[str, ...] = (),
    min_weights: int | None = None,
    samples: int | None = 32,
    positions: int = 1024,
    damp: float = 0.01,
    waves: int = 0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    dry_run: bool = False,
    tolerance: float | None = DEFAULT_TOLERANCE,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PruneResult:
    """Prune ``model_path`` into ``output_path``; see the module docstring.

    ``sparsity="2:4"``: 2:4 on eligible Conv/Gemm/MatMul weights; ``method`` picks the mask
    ("magnitude", "activation" = |w|·‖x‖, "obs" = OBS saliency with reconstruction built in).
    ``channels``: fraction of each prunable channel group to remove; ``flops_target``: instead,
    the fraction of Conv/Gemm/MatMul FLOPs to remove (without data: one uniform ratio is searched for).
    ``criterion`` ranks channels ("l1", "l2", "activation"). ``exclude``: node-name globs.
    With data, a FLOPs target is spread over groups by measured sensitivity (``allocation``).
    ``reconstruct``: refit each pruned layer (2:4) or each reader of pruned channels by least
    squares on the original model's activations; ``waves > 0`` instead refits every layer in
    graph order on the pruned model's own activations (slower; see ``sequential``).
    ``tolerance``: the largest relative output error (``check``) at which the model is written
    (None: no check); ``force`` writes it beyond that too. ``result.output`` is None when nothing was written.
    """
    start = time.perf_counter()
    from optimizer.pruning.semistructured import MIN_WEIGHTS

    method, criterion = _checked_options(sparsity, channels, flops_target, source, method, criterion, dry_run, output_path)
    model_path = Path(model_path)
    if output_path is not None:
        refuse_overwrite(model_path, output_path)

    model = load_model(model_path)
    prepare_model(model)
    result = PruneResult(
        input=str(model_path), output=None if dry_run else str(output_path), dry_run=dry_run, sparsity=sparsity,
        channels=channels, method=method, criterion=criterion, reconstruct=reconstruct and source is not None,
    )
    if source is not None:
        from calibration import validate_source

        result.data = dataclasses.asdict(validate_source(source, input_specs(model)))
    elif reconstruct:
        result.warnings.append("no calibration data: criteria use weights only and nothing is reconstructed")
    feed = _shape_feed(model, source, input_shapes)
    shapes = observe_shapes(model, feed)
    flops = model_flops(model, shapes)
    result.flops_before = sum(flops.values())
    result.params_before, _ = count_parameters(model)

    if channels is not None or flops_target is not None:
        _prune_channels(model, result, feed, flops, channels, flops_target, source, criterion, reconstruct,
                        list(exclude), samples, positions, damp, waves, progress)
    if sparsity is not None:
        _sparsify(model, result, source, method, reconstruct, list(exclude), MIN_WEIGHTS if min_weights is None else min_weights,
                  samples, positions, damp, waves, progress)

    shapes_after = observe_shapes(model, feed)  # also proves the pruned graph runs
    flops_after = model_flops(model, shapes_after)
    result.flops_after = sum(flops_after.values())
    sparse = {l.name for l in result.layers if l.action == "pruned"}
    result.sparse_flops_share = sum(f for n, f in flops_after.items() if n in sparse) / max(result.flops_after, 1)
    for choice in result.layers:
        choice.flops = flops.get(choice.name, 0)
        choice.flops_after = flops_after.get(choice.name, 0)
    result.params_after, result.nonzero_after = count_parameters(model)
    if tolerance is not None:
        result.check = _check(model, model_path, source, feed, tolerance, result)
    if not dry_run and (result.check is None or result.check["passed"] or force):
        save_model(model, output_path)
    else:
        result.output = None
    result.seconds = time.perf_counter() - start
    return result


def _check(model: ir.Model, model_path: Path, source, feed, tolerance: float, result: PruneResult) -> dict:
    """Run the pruned model next to the original (``check.measure_outputs``) before anything is written."""
    import tempfile

    from calibration import synthetic_source

    if tolerance <= 0:
        raise ConfigError(f"the pruning tolerance must be positive, got {tolerance}")
    if source is not None:
        samples, kind = Limited(source, CHECK_SAMPLES), "calibration"
    else:
        shapes = {name: np.shape(value) for name, value in feed.items()}
        samples, kind = synthetic_source(input_specs(model), count=4, shapes=shapes, seed=0), "generated"
    with tempfile.TemporaryDirectory(prefix="trtforge-prune-check-") as tmp:
        measured = measure_outputs(model_path, save_model(model, Path(tmp) / "pruned.onnx"), samples)
    passed = measured["relative_error"] <= tolerance
    return {**measured, "data": kind, "tolerance": tolerance, "passed": passed,
            "worst_groups": [] if passed else worst_groups(result.groups)}


def _prune_channels(model, result, feed, flops, channels, flops_target, source, criterion, reconstruct,
                    exclude, samples, positions, damp, waves, progress) -> None:
    from optimizer.runners import session_for

    names = [v.name for node in model.graph for v in node.outputs if v.name and isinstance(v.type, ir.TensorType | None)]
    with session_for(model, outputs=names) as runner:
        outputs = runner.run(feed, names)
    # Sequence and optional values come back as lists: they have no shape to prune by.
    shapes = {k: tuple(v.shape) for k, v in outputs.items() if hasattr(v, "shape")}
    shapes.update({k: tuple(np.shape(v)) for k, v in feed.items()})
    groups = find_groups(model, shapes, exclude)
    prunable = [g for g in groups if g.prunable]
    if not prunable:
        result.warnings.append("no channel group can be pruned (every group is pinned by a shape contract)")
    consumers = {n.name: n for g in prunable for n in g.consumers if n.op_type == "Conv"}
    stats = None
    if source is not None:
        stats = _stats_for(model, [Layer(n) for n in consumers.values()], source, samples, positions, progress)
    scores = {g.id: channel_scores(g, criterion, stats) for g in prunable}
    if channels is not None:
        ratios = {g.id: channels for g in prunable}
    elif stats:
        ratios = allocate(groups, scores, stats, flops, flops_target)  # data-aware: least error per FLOP
        if 1 - flops_after(ratios, groups, flops) / max(sum(flops.values()), 1) < flops_target:
            raise ConfigError(f"a FLOPs reduction of {flops_target:.0%} is out of reach with the groups that can be pruned")
    else:
        uniform = _ratio_for_flops(groups, flops, flops_target)
        ratios = {g.id: uniform for g in prunable}
        channels = uniform  # reported: the uniform ratio that meets the target
    result.channels = channels
    from optimizer.pruning.allocation import refit_error

    plan = {}
    for g in groups:
        choice = GroupChoice(g.id, g.channels, g.channels, [n.name for n in g.roots], [n.name for n in g.consumers])
        if g.prunable:
            keep = kept_count(g.channels, ratios.get(g.id, 0.0))
            if keep < g.channels:
                plan[g.id] = np.sort(np.argsort(-scores[g.id], kind="stable")[:keep])
                if stats:  # before the weights are sliced: the estimate reads the original readers
                    choice.estimated_error = refit_error(g, plan[g.id], stats)
            choice.kept = keep
        else:
            choice.reason = "; ".join(dict.fromkeys(g.pinned))[:300] or "no prunable root"
        result.groups.append(choice)
    sequential = reconstruct and source is not None and waves > 0
    result.refits = apply_channel_pruning(model, plan, groups, stats, reconstruct=reconstruct and not sequential, damp=damp)
    if sequential:
        rows_kept = {n.name: plan[g.id] for g in groups if g.id in plan for n in g.roots}
        names = [l.name for l in find_layers(model) if refittable(l)]
        records = refit_in_waves(_reference(result), model, names, Limited(source, samples), rows_kept=rows_kept,
                                 waves=waves, positions=positions, damp=damp, progress=progress)
        result.refits = {n: ("refit by least squares against the original" if r["refit"] else "inputs unchanged")
                         for n, r in records.items()}


def _reference(result: PruneResult) -> ir.Model:
    """The original model, prepared the same way (node names match), as the refit target."""
    model = load_model(result.input)
    prepare_model(model)
    return model


def _sparsify(model, result, source, method, reconstruct, exclude, min_weights, samples, positions, damp, waves, progress) -> None:
    layers = find_layers(model)
    eligible = []
    for layer in layers:
        reason = skip_reason(layer, exclude, min_weights)
        if reason:
            result.layers.append(LayerChoice(layer.name, layer.op_type, "skipped", reason, weights=int(layer.weight.size)))
        else:
            eligible.append(layer)
    if source is not None and reconstruct and waves > 0:
        # Sequential repair: every refittable layer after a sparsified one is refit as well,
        # so dense layers soak up what the sparse ones lost.
        by_name = {l.name: l for l in eligible}
        names = [l.name for l in find_layers(model) if refittable(l)]
        records = refit_in_waves(_reference(result), model, names, Limited(source, samples),
                                 sparsify={n: method for n in by_name}, waves=waves, positions=positions, damp=damp,
                                 progress=progress)
        for layer in eligible:
            matrix = to_matrix(layer.op_type, layer.weight, layer.trans_b)
            choice = LayerChoice(layer.name, layer.op_type, "pruned", weights=int(matrix.size),
                                 zeros=int(matrix.size - np.count_nonzero(matrix)),
                                 detail=f"refit in sequence on {records[layer.name]['rows']} rows")
            assert satisfies_2_4(matrix), layer.name
            result.layers.append(choice)
        result.refits = {n: "refit by least squares against the original" for n, r in records.items() if r.get("refit") and n not in by_name}
        return
    stats = None
    if source is not None and (reconstruct or method != "magnitude"):
        stats = _stats_for(model, eligible, source, samples, positions, progress)
    for layer in eligible:
        s = stats.get(layer.name) if stats else None
        if s is None and method != "magnitude":
            result.layers.append(LayerChoice(layer.name, layer.op_type, "skipped", "no input statistics", weights=int(layer.weight.size)))
            continue
        result.layers.append(sparsify_layer(model.graph, layer, method=method, stats=s, reconstruct=reconstruct, damp=damp))
