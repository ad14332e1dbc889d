"""Accuracy budget: measure how much each quantized layer hurts, keep the worst ones in FP32.

``quantize_model`` is the one flow behind ``trtforge quantize`` and the precision stage: a plain
``quantize``, or, with a budget, ``quantize_with_budget``. That calibrates once, then:

1. quantizes everything and scores it on the validation data; if the budget holds, done;
2. otherwise measures each layer's sensitivity: the output error (normalised RMS error over
   all outputs, on a few validation samples) when *only that layer* is quantized. Each layer
   is measured alone, so the ranking does not depend on the order layers are tried;
3. keeps the k most sensitive layers in FP32, with the smallest k that meets the budget,
   found by bisection over k (each probe scores the full validation set with the task
   metric, or the output error when no metric is given). Bisection assumes that keeping more
   layers in FP32 does not make things worse, which holds for the error itself up to noise;
   the k returned is always one that was scored and met the budget, and a budget that only
   holds with every layer in FP32 is an error, not a model with nothing quantized.

Budgets: ``<metric>_increase<=X`` (lower-is-better metric, e.g. ``cer_increase<=0.1``),
``<metric>_drop<=X`` (higher-is-better, e.g. ``accuracy_drop<=0.5``), or an output error
without a task metric: ``output_nrmse<=X`` or ``max_abs_diff<=X``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from calibration import QuantizeResult, quantize
from calibration.data import validate_source
from calibration.opset import upgrade_opset
from calibration.qdq import FP8_MIN_OPSET, MIN_OPSET, QDQ_MODES, insert_qdq, plan_qdq, target_format
from calibration.stats import collect_ranges
from calibration.subgraphs import inline_constant_ifs
from calibration.weight_only import DEFAULT_BLOCK_SIZE
from optimizer.conditions import parse_gate
from optimizer.errors import CalibrationError, ConfigError
from optimizer.model import input_specs, load_model
from optimizer.runners import OrtRunner, session_for

OUTPUT_ERRORS = ("output_nrmse", "max_abs_diff")
# Layers are ranked on this many validation samples: the ranking, not the final score, so a
# few samples suffice (each costs one ORT session per layer).
SENSITIVITY_SAMPLES = 8

@dataclass(frozen=True)
class Budget:
    key: str  # "cer_increase", "accuracy_drop", "output_nrmse", "max_abs_diff"
    limit: float

    @property
    def uses_metric(self) -> bool:
        return self.key not in OUTPUT_ERRORS

    def __str__(self) -> str:
        return f"{self.key}<={self.limit:g}"


def parse_budget(text: str) -> Budget:
    """A budget is a gate that must be an upper bound: one grammar for both (``optimizer.gates``)."""
    try:
        key, op, limit = parse_gate(text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("gate '", "budget '", 1)) from None
    if op != "<=":
        raise ConfigError(f"budget '{text}': expected 'name<=number' (a budget is an upper bound), e.g. 'cer_increase<=0.1'")
    if key not in OUTPUT_ERRORS and not key.endswith(("_increase", "_drop")):
        raise ConfigError(
            f"budget '{text}': '{key}' is neither <metric>_increase, <metric>_drop nor one of {list(OUTPUT_ERRORS)}"
        )
    if limit < 0:
        raise ConfigError(f"budget '{text}': the limit must be >= 0")
    return Budget(key, limit)


@dataclass
class BudgetResult:
    quantize: QuantizeResult
    budget: str
    met: bool
    kept: list[str]  # nodes left in FP32, most sensitive first
    reasons: dict[str, str]  # node -> why it was kept
    sensitivity: dict[str, float]  # node -> output NRMSE with only this node quantized (empty if not needed)
    fp32_score: float | None
    all_int8_change: float  # the budget quantity with every planned node quantized
    final_change: float  # ... with the kept nodes in FP32
    evaluations: int = 0
    history: list[dict] = field(default_factory=list)  # every probe: kept count -> budget quantity


@dataclass
class QuantizeOutcome:
    """What ``quantize_model`` wrote: the quantized model's record, and the budget search when one was asked for."""

    result: QuantizeResult
    search: BudgetResult | None = None

    def details(self) -> dict:
        """The record as ``trtforge quantize --json`` prints it and the report stores it: the search under 'budget'."""
        data = dataclasses.asdict(self.result)
        if self.search is not None:
            data["budget"] = report(self.search)
        return data


def quantize_model(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calib,
    *,
    budget: str | Budget | None = None,
    val=None,
    metric: Callable[[list[dict[str, np.ndarray]]], float] | None = None,
    higher_is_better: bool = False,
    target: str = "tensorrt",
    method: str = "max",
    per_channel: bool = True,
    percentile: float = 99.99,
    exclude=(),
    mode: str = "int8",
    block_size: int = DEFAULT_BLOCK_SIZE,
    int4_method: str = "awq",
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> QuantizeOutcome:
    """Quantize, within ``budget`` when one is given: the one flow of ``trtforge quantize`` and the precision stage.

    Without a budget this is ``quantize`` (``progress`` counts calibration samples); with one,
    ``quantize_with_budget`` on ``val`` with ``metric`` (``progress`` counts the models tried,
    ``log`` narrates the search). ``block_size`` and ``int4_method`` apply to ``int4-weight``,
    which takes no budget.
    """
    if budget is None:
        result = quantize(
            model_path, output_path, calib, target=target, method=method, per_channel=per_channel, percentile=percentile,
            exclude=exclude, progress=progress, mode=mode, block_size=block_size, int4_method=int4_method,
        )
        return QuantizeOutcome(result)
    if val is None:
        raise ConfigError(f"budget '{budget}' is measured on validation data: pass --val DIR")
    search = quantize_with_budget(
        model_path, output_path, calib, val, budget=budget, metric=metric, higher_is_better=higher_is_better,
        target=target, method=method, per_channel=per_channel, percentile=percentile, exclude=exclude,
        progress=progress, log=log, mode=mode,
    )
    return QuantizeOutcome(search.quantize, search)


def quantize_with_budget(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calib,
    val,
    *,
    budget: str | Budget,
    metric: Callable[[list[dict[str, np.ndarray]]], float] | None = None,
    higher_is_better: bool = False,
    target: str = "tensorrt",
    method: str = "max",
    per_channel: bool = True,
    percentile: float = 99.99,
    exclude=(),
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    mode: str = "int8",
) -> BudgetResult:
    """INT8 (or FP8: ``mode``) with as many layers quantized as ``budget`` allows, measured on ``val`` (a list of feeds).

    ``metric(outputs per val sample) -> score`` is the task metric (labels are the caller's
    business: close over them); it is required for ``*_increase``/``*_drop`` budgets.
    ``progress(done)`` counts the partially quantized models run so far (like every other
    progress callback, a count); ``log(message)`` gets one line per step of the search.
    """
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if budget.uses_metric and metric is None:
        raise ConfigError(f"budget '{budget}' needs a task metric (--metric file.py:function); or use output_nrmse<=X")
    if budget.uses_metric and budget.key.endswith("_drop") != higher_is_better:
        want = "_drop" if higher_is_better else "_increase"
        raise ConfigError(f"budget '{budget}': the metric is {'higher' if higher_is_better else 'lower'}-is-better, use '{budget.key.rsplit('_', 1)[0]}{want}'")
    if mode not in QDQ_MODES:
        raise ConfigError(f"an accuracy budget applies to Q/DQ modes {list(QDQ_MODES)}, not '{mode}'; drop the budget")
    target_format(target, mode)
    say = log or (lambda _msg: None)
    val = list(val)
    model = load_model(model_path)
    specs = input_specs(model)
    validate_source(val, specs)
    calib_fp = validate_source(calib, specs)
    first = next(iter(calib))
    model = upgrade_opset(model, FP8_MIN_OPSET if mode == "fp8" else MIN_OPSET, first)
    inline_constant_ifs(model)  # as quantize() does, so node names and the plan match
    plan = plan_qdq(model, target=target, exclude=exclude)
    if not plan.quantized_nodes:
        raise CalibrationError(f"{model_path}: nothing to quantize")
    say(f"calibrating {len(plan.activations)} tensors on {calib_fp.count} samples")
    ranges = collect_ranges(
        model, plan.activations, calib, method=method, percentile=percentile,
        symmetric=target_format(target, mode).symmetric_activations,
    )
    base = ir.serde.serialize_model(model).SerializeToString()
    reference_runner = OrtRunner(base)
    reference = [reference_runner.run(f) for f in val]
    fp32_score = metric(reference) if metric is not None else None
    evaluator = _Evaluator(
        base, plan, list(exclude), ranges, target, per_channel, val, reference, budget, metric, fp32_score, higher_is_better,
        mode, progress,
    )

    full = evaluator.change(kept=[])
    result = BudgetResult(
        quantize=None, budget=str(budget), met=False, kept=[], reasons={}, sensitivity={}, fp32_score=fp32_score,
        all_int8_change=full, final_change=full,
    )
    if full <= budget.limit:
        say(f"all {len(plan.quantized_nodes)} layers in INT8 meet {budget} ({full:.4g})")
        result.met = True
    else:
        say(f"all-INT8 misses {budget} ({full:.4g}); measuring {len(plan.quantized_nodes)} layers one at a time")
        _keep_fewest(evaluator, budget, result, val[:SENSITIVITY_SAMPLES], say)
    result.evaluations, result.history = evaluator.evaluations, evaluator.history
    result.quantize = quantize(
        model_path, output_path, calib, target=target, method=method, per_channel=per_channel,
        percentile=percentile, exclude=list(exclude) + result.kept, ranges=ranges, mode=mode,
    )
    return result


def _keep_fewest(evaluator: _Evaluator, budget: Budget, result: BudgetResult, samples: list, say) -> None:
    """Rank the layers by sensitivity, then bisect for the fewest kept in FP32 that meet ``budget``; fills ``result``."""
    result.sensitivity = evaluator.sensitivities(samples)
    order = sorted(result.sensitivity, key=result.sensitivity.get, reverse=True)
    lo, hi = 0, len(order)  # invariant: keeping `hi` meets the budget (checked below), `lo` does not
    if evaluator.change(kept=order) > budget.limit:
        say(f"even with every quantized layer in FP32 the budget is missed: {budget} cannot be met")
        result.kept, result.final_change = order, evaluator.history[-1]["change"]
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if evaluator.change(kept=order[:mid]) <= budget.limit:
                hi = mid
            else:
                lo = mid
            say(f"keeping {lo}..{hi} layers in FP32")
        if hi == len(order):
            raise CalibrationError(
                f"budget {budget} holds only with every layer in FP32 (all INT8: {result.all_int8_change:.4g}); "
                "nothing would be quantized: loosen the budget or use FP16 (calibration.autocast)"
            )
        result.kept, result.met = order[:hi], True
        result.final_change = next(h["change"] for h in reversed(evaluator.history) if h["kept"] == hi)
    for rank, node in enumerate(result.kept, 1):
        result.reasons[node] = (
            f"sensitivity rank {rank} of {len(order)}: output NRMSE {result.sensitivity[node]:.3g} when only this layer is INT8"
        )


class _Evaluator:
    """Builds partially quantized models in memory and measures the budget quantity on them."""

    def __init__(self, base, plan, exclude, ranges, target, per_channel, val, reference, budget, metric, fp32_score, higher_is_better, mode,
                 progress):
        self.base, self.plan, self.exclude, self.ranges = base, plan, exclude, ranges
        self.target, self.per_channel = target, per_channel
        self.val, self.reference, self.budget = val, reference, budget
        self.metric, self.fp32_score, self.higher_is_better = metric, fp32_score, higher_is_better
        self.mode, self.progress = mode, progress
        self.evaluations, self.history = 0, []
        self.trials = 0  # partially quantized models run: scored probes and per-layer sensitivities

    def _runner(self, kept: list[str]) -> OrtRunner:
        """The model as ``quantize(exclude=kept)`` would write it (same planner, so the same fusion Q/DQ)."""
        model = ir.serde.deserialize_model(_proto(self.base))  # a fresh copy: insert_qdq works in place
        sub = plan_qdq(model, target=self.target, exclude=self.exclude + list(kept))
        insert_qdq(model, sub, self.ranges, target=self.target, per_channel=self.per_channel, mode=self.mode)
        return session_for(model)  # any size: through a file with external data above 2 GB

    def _tried(self) -> None:
        self.trials += 1
        if self.progress is not None:
            self.progress(self.trials)

    def change(self, kept: list[str]) -> float:
        runner = self._runner(kept)
        outputs = [runner.run(f) for f in self.val]
        self.evaluations += 1
        if self.budget.key == "output_nrmse":
            value = output_nrmse(outputs, self.reference)
        elif self.budget.key == "max_abs_diff":
            value = max(float(np.max(np.abs(o[k] - r[k]))) for o, r in zip(outputs, self.reference) for k in r)
        else:
            score = self.metric(outputs)
            value = self.fp32_score - score if self.higher_is_better else score - self.fp32_score
        self.history.append({"kept": len(kept), "change": value})
        self._tried()
        return value

    def sensitivities(self, samples: list) -> dict[str, float]:
        reference = self.reference[: len(samples)]
        result = {}
        names = self.plan.quantized_nodes
        for node in names:
            runner = self._runner([n for n in names if n != node])
            result[node] = output_nrmse([runner.run(f) for f in samples], reference)
            self._tried()
        return result


def _proto(data: bytes):
    import onnx

    return onnx.load_from_string(data)


def output_nrmse(outputs: list[dict], reference: list[dict]) -> float:
    """sqrt(sum of squared errors / sum of squared reference values) over every float output and sample."""
    err = ref = 0.0
    for o, r in zip(outputs, reference):
        for k, v in r.items():
            if v.dtype.kind != "f":
                continue
            err += float(np.sum((o[k].astype(np.float64) - v) ** 2))
            ref += float(np.sum(v.astype(np.float64) ** 2))
    return float(np.sqrt(err / ref)) if ref > 0 else float(np.sqrt(err))


def report(result: BudgetResult) -> dict:
    """The report's view: everything but the nested QuantizeResult's bulk."""
    data = dataclasses.asdict(result)
    data["quantize"] = {k: data["quantize"][k] for k in ("output_path", "target", "method", "num_q", "num_dq", "quantized_weight_share")}
    return data
