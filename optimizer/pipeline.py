"""The pipeline spine: load → passes → precision → build → validate → report.

A stage takes an artifact (a file), its section of the recipe and the run's data, and
returns a new artifact plus a record for the report; the input is never modified. Stage
results are cached by content (``optimizer.cache``), so a rerun with nothing changed does no
work. Validation is never cached: it is the gate, and it measures this machine, now.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from calibration.data import SYNTHETIC_SAMPLES, Limited
from optimizer.cache import StageCache, cache_key, restore, tool_versions
from optimizer.errors import ConfigError, InputError, NothingToQuantize, UnparsableModel, ValidationError
from optimizer.gates import check_syntax, evaluate_gates
from optimizer.model import artifact_files, content_hash, count_nodes, input_specs, load_model, metadata, opset_of, save_model
from optimizer.progress import Progress
from optimizer.recipe import Recipe, recipe_from_dict
from optimizer.shapes import ResolvedShapes, parse_dims, parse_profiles, parse_shapes, resolve_model_shapes
from optimizer.report import Report, StageRecord, environment
from optimizer.validation_record import Latency, NoiseFloor, ValidationResult


@dataclass
class RunData:
    """The data a run works on, validated against the model once, before any stage."""

    calib: Any | None = None  # a DataSource
    calib_fingerprint: dict | None = None
    val: Any | None = None
    val_fingerprint: dict | None = None
    metric: Any | None = None  # the loaded TaskMetric (its file executed once, before any stage)
    metric_sha256: str | None = None


@dataclass
class RunContext:
    recipe: Recipe
    out_dir: Path
    stem: str
    data: RunData
    cache: StageCache
    progress: Progress
    shapes: ResolvedShapes = field(default_factory=lambda: ResolvedShapes())
    op_types: frozenset[str] = frozenset()  # of the input model, subgraphs included
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- stages


class Stage:
    """One step of the pipeline. Subclasses set ``name`` and implement ``check``/``enabled``/``config``/``run``."""

    name = "stage"
    produces_model = True  # False: the artifact (an engine) does not feed later stages
    # True for the stage whose input is what the first-divergent-layer search compares against.
    sets_precision = False
    # True when the stage fits something to the calibration data (the report warns when that was random).
    calibrates = False

    def check(self, ctx: RunContext) -> None:
        """Raise ConfigError when the recipe asks this stage for something it cannot do; runs before any stage."""

    def enabled(self, ctx: RunContext) -> str | None:
        """None when the stage should run, else the reason it is skipped (never raises: see ``check``)."""
        return None

    def validation_note(self, ctx: RunContext) -> str | None:
        """Why the candidate cannot be validated on this machine after this stage, if it cannot."""
        return None

    def skippable(self, ctx: RunContext) -> tuple[type[Exception], ...]:
        """Errors that mean "nothing for this stage to do on this model": the run goes on without
        the stage and the report says why (a warning), instead of the run failing."""
        return ()

    def reads(self, ctx: RunContext) -> tuple[str, ...]:
        """What the result depends on besides the input artifact: names of ``KEY_INPUTS``.

        The cache key is derived from exactly these, valued in one place (``stage_key``);
        ``tests/test_stage_keys.py`` changes each one and checks that the key moves.
        """
        return ()

    def run(self, ctx: RunContext, model_path: Path) -> tuple[list[Path], StageRecord]:
        """Return the files written (artifact first) and the record."""
        raise NotImplementedError


class PassesStage(Stage):
    name = "passes"

    def enabled(self, ctx):
        return None if ctx.recipe.passes.enabled else "disabled in the recipe"

    def reads(self, ctx):
        if not ctx.recipe.passes.verify:
            return ("recipe.passes",)
        # The verifier runs on the calibration data, else on random inputs at the resolved shapes.
        return ("recipe.passes", "calib_data" if ctx.data.calib is not None else "shapes.opt")

    def run(self, ctx, model_path):
        from graph_passes import DEFAULT_PASSES, Verifier, run_passes

        cfg = ctx.recipe.passes
        model = load_model(model_path)
        before = count_nodes(model)
        verifier = None
        if cfg.verify:
            feeds = list(Limited(ctx.data.calib, 4)) if ctx.data.calib is not None else None
            verifier = Verifier(model, feeds=feeds, shapes=ctx.shapes.opt())
        records = run_passes(
            model, cfg.names, skip=cfg.skip, verifier=verifier, explain=cfg.explain, opset=cfg.opset, strict=cfg.strict
        )
        out = ctx.out_dir / f"{ctx.stem}.opt.onnx"
        save_model(model, out)
        after = count_nodes(model)
        fired = [r.name for r in records if r.modified]
        partial = verifier.describe_partial() if verifier is not None else None
        warnings = [f"pass {r.name} rolled back: {r.warning}" for r in records if r.warning]
        warnings += [partial] if partial else []
        verified = "partial" if partial else bool(verifier)
        record = StageRecord(
            name=self.name,
            status="ran",
            artifact=str(out),
            warnings=warnings,
            summary={"nodes": f"{before} → {after}", "passes fired": len(fired), "verified": verified},
            details={
                "nodes_before": before,
                "nodes_after": after,
                "passes": [dataclasses.asdict(r) for r in records],
                "order": cfg.names or DEFAULT_PASSES,
            },
        )
        return artifact_files(out), record


class PruneStage(Stage):
    """2:4 sparsity and/or channel pruning (``optimizer.pruning``), repaired on the calibration data."""

    name = "prune"
    calibrates = True

    def enabled(self, ctx):
        return None if ctx.recipe.prune.enabled else "disabled in the recipe"

    def check(self, ctx):
        cfg = ctx.recipe.prune
        if not cfg.enabled:
            return
        if cfg.sparsity is None and cfg.channels is None and cfg.flops_target is None and cfg.max_error is None:
            raise ConfigError(
                "prune.enabled is true but no budget is set: give prune.sparsity: '2:4', prune.channels, "
                "prune.flops_target or prune.max_error"
            )
        if cfg.max_error is not None and ctx.data.val is None:
            raise ConfigError("prune.max_error is measured on validation data: pass --val DIR or set validate.data")

    def reads(self, ctx):
        # FLOPs without data are measured at the resolved opt shapes; max_error on the validation data.
        base = ("recipe.prune", "calib_data", "shapes.opt")
        if ctx.data.metric is not None and ctx.data.val is not None:  # the record carries the task metric on the val data
            return base + ("val_data", "metric")
        return base + ("val_data",) if ctx.recipe.prune.max_error is not None else base

    def run(self, ctx, model_path):
        from optimizer.pruning import prune_model

        cfg = ctx.recipe.prune
        out = ctx.out_dir / f"{ctx.stem}.pruned.onnx"
        source = ctx.data.calib
        total = min(len(source), cfg.max_samples or len(source)) if source is not None else 0
        with ctx.progress.task("pruning statistics", total) as update:
            result = prune_model(
                model_path, out, max_error=cfg.max_error, val=ctx.data.val, channels=cfg.channels, flops_target=cfg.flops_target,
                force=cfg.force, sparsity=cfg.sparsity, source=source, method=cfg.method, criterion=cfg.criterion,
                reconstruct=cfg.reconstruct, exclude=cfg.exclude, samples=cfg.max_samples, input_shapes=ctx.shapes.opt(),
                progress=update,
            )
        if result.check is not None and not result.check["passed"] and result.output is None:
            from optimizer.errors import GateFailed
            from optimizer.pruning.check import check_summary, failure_advice

            # Pruning that destroys the model stops the run: nothing later would be worth measuring.
            raise GateFailed(f"prune stage: {check_summary(result.check)}; {failure_advice(result.check, cfg.channels, cfg.flops_target)}; "
                             "nothing written (prune.force: true keeps it anyway)")
        pruned = sum(1 for layer in result.layers if layer.action == "pruned")
        groups = [g for g in result.groups if g.roots]
        summary = {"FLOPs": f"{result.flops_before / 1e9:.3g}G → {result.flops_after / 1e9:.3g}G (-{result.flops_reduction:.1%})",
                   "params": f"{result.params_before} → {result.nonzero_after} non-zero"}
        if cfg.sparsity:
            summary["2:4 layers"] = f"{pruned} ({result.sparse_flops_share:.0%} of FLOPs)"
        if groups:
            summary["channel groups cut"] = f"{sum(1 for g in groups if g.kept < g.channels)}/{len(groups)}"
        details = result.to_dict()
        if check := result.check:
            summary["output error"] = f"{check['relative_error']:.3g} (tolerance {check['tolerance']:g}, {check['data']} data)"
            if not check["passed"]:
                result.warnings.append(f"kept by prune.force although the output error {check['relative_error']:.3g} is beyond {check['tolerance']:g}")
        if ctx.data.metric is not None and ctx.data.val is not None:
            details["task"] = _pruned_task_metric(ctx, model_path, out)
            task = details["task"]
            summary[f"{task['name']} original → pruned"] = f"{task['reference']:.3g} → {task['candidate']:.3g}{task.get('unit', '')}"
        record = StageRecord(name=self.name, status="ran", artifact=str(out), summary=summary, details=details,
                             warnings=list(result.warnings))
        return artifact_files(out), record


def _pruned_task_metric(ctx: RunContext, original: Path, pruned: Path) -> dict:
    """The recipe's task metric on the validation data, original against pruned."""
    from optimizer.runners import OrtRunner
    from optimizer.validate import MetricContext, compare

    with ctx.progress.task("task metric of the pruned model", len(ctx.data.val)) as update:
        result = compare(OrtRunner(original), OrtRunner(pruned), ctx.data.val, labels=ctx.data.val.labels, metric=ctx.data.metric,
                         context=MetricContext(metadata=metadata(load_model(original))), progress=update)
    return dataclasses.asdict(result.task)  # stage details are plain JSON


# Ops that mean the model already carries its own integer precision: quantizing again would
# stack a second set of scales on the first.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "QGemm", "QAttention",
})


class PrecisionStage(Stage):
    name = "precision"
    sets_precision = True
    calibrates = True

    def skippable(self, ctx):
        return (NothingToQuantize,)

    def enabled(self, ctx):
        if ctx.recipe.precision.mode == "none":
            return "precision mode is 'none'"
        already = sorted(ctx.op_types & QUANTIZED_OPS)
        if already:
            return f"the model is already quantized ({', '.join(already)}); precision stage left it as it is"
        return None

    def check(self, ctx):
        from calibration import MODES

        cfg = ctx.recipe.precision
        if cfg.mode != "none" and cfg.budget and ctx.data.val is None:
            raise ConfigError(f"precision.budget '{cfg.budget}' is measured on validation data: pass --val DIR or set validate.data")
        if cfg.mode in MODES and ctx.data.calib is None and self.enabled(ctx) is None:
            # Every quantize mode calibrates (int4-weight checks the quantized model on the data too).
            raise ConfigError(
                f"{cfg.mode.upper()} needs calibration data: pass --calib DIR (a folder of .npz samples) or set precision.calib "
                "in the recipe (or --synthetic to calibrate on random data, knowingly; or --precision none)"
            )

    def validation_note(self, ctx):
        if ctx.recipe.precision.mode == "bf16":
            return "ONNX Runtime's CPU kernels have no BF16: validate the engine on a GPU"
        return None

    def reads(self, ctx):
        # A budget is measured on the validation data (and labels) with the task metric.
        base = ("recipe.precision", "calib_data")
        return base + ("val_data", "metric") if ctx.recipe.precision.budget else base

    def run(self, ctx, model_path):
        cfg = ctx.recipe.precision
        if cfg.mode in ("fp16", "bf16"):
            return self._autocast(ctx, model_path)
        from calibration import CARRIED_PRECISION
        from calibration.sensitivity import quantize_model

        out = ctx.out_dir / f"{ctx.stem}.{CARRIED_PRECISION[cfg.mode]}.onnx"
        label, total = ("budget search", None) if cfg.budget else ("calibrating", len(ctx.data.calib))
        with ctx.progress.task(label, total) as update:
            outcome = quantize_model(
                model_path, out, ctx.data.calib, target=cfg.target, method=cfg.method, per_channel=cfg.per_channel,
                percentile=cfg.percentile, exclude=cfg.exclude, mode=cfg.mode, block_size=cfg.block_size,
                int4_method=cfg.int4_method, progress=update, **self._budget_options(ctx, model_path),
            )
        return artifact_files(out), self._record(cfg, out, outcome)

    def _budget_options(self, ctx, model_path) -> dict:
        """``quantize_model``'s budget arguments from the recipe and the run's data (none without a budget)."""
        cfg = ctx.recipe.precision
        if not cfg.budget:
            return {}
        from optimizer.validate import metric_scorer

        # The metric file was executed once, before any stage (RunData.metric): not again here.
        metric, higher = metric_scorer(ctx.data.metric, ctx.data.val.labels, model_path)
        return dict(budget=cfg.budget, val=list(ctx.data.val), metric=metric, higher_is_better=higher)

    def _record(self, cfg, out: Path, outcome) -> StageRecord:
        """The report's view of a quantize run: summary, details (the budget search under 'budget'), warnings."""
        from calibration import CARRIED_PRECISION

        result, search = outcome.result, outcome.search
        warnings = []
        if result.fingerprint.synthetic:
            warnings.append("calibrated on SYNTHETIC random data: accuracy numbers do not reflect real inputs")
        if result.skipped:
            warnings.append(f"{len(result.skipped)} compute node(s) left in FP32 (see details.skipped for why)")
        if search is not None and not search.met:
            warnings.append(f"precision budget {search.budget} NOT met even with {len(search.kept)} layer(s) in FP32")
        summary = {
            "target": cfg.target,
            "mode": cfg.mode,
            "method": result.method,
            "quantized nodes": len(result.quantized_nodes),
            f"{CARRIED_PRECISION[cfg.mode].upper()} weight share": round(result.quantized_weight_share, 4),
            "samples": result.fingerprint.count,
        }
        if search is not None:
            summary["budget"] = f"{search.budget} {'met' if search.met else 'NOT met'}, {len(search.kept)} layer(s) kept FP32"
        return StageRecord(name=self.name, status="ran", artifact=str(out), summary=summary, details=outcome.details(), warnings=warnings)

    def _autocast(self, ctx, model_path):
        """FP16/BF16 through Casts in the graph (TensorRT 11 is strongly typed: no builder flag does this)."""
        from calibration.autocast import autocast

        cfg = ctx.recipe.precision
        out = ctx.out_dir / f"{ctx.stem}.{cfg.mode}.onnx"
        dtype = {"fp16": "float16", "bf16": "bfloat16"}[cfg.mode]
        # With calibration data, tensors observed beyond the low dtype's range stay FP32.
        result = autocast(model_path, out, dtype=dtype, keep_fp32_nodes=cfg.exclude, source=ctx.data.calib)
        warnings = [] if result.ranges_observed else ["no calibration data: FP32 islands chosen by op type only, not by observed ranges"]
        record = StageRecord(
            name=self.name,
            status="ran",
            artifact=str(out),
            summary={
                "mode": cfg.mode,
                "lowered share": round(result.lowered_share, 4),
                "kept FP32": len(result.kept_fp32),
                "Casts": result.num_casts,
            },
            details=dataclasses.asdict(result),
            warnings=warnings,
        )
        return artifact_files(out), record


class BuildStage(Stage):
    name = "build"
    produces_model = False

    def skippable(self, ctx):
        # "auto": a model TensorRT's parser does not take skips the build, said loudly; "yes": an error.
        return (UnparsableModel,) if ctx.recipe.build.enabled == "auto" else ()

    def enabled(self, ctx):
        from optimizer.engine import available_builders

        if ctx.recipe.build.enabled == "no":
            return "disabled in the recipe"
        if not available_builders():
            return "no TensorRT module installed (pip install 'trtforge[rtx]' builds engines without a GPU)"
        return None

    def check(self, ctx):
        from optimizer.engine import available_builders

        cfg = ctx.recipe.build
        builders = available_builders() if cfg.enabled != "no" else []
        if cfg.enabled != "no" and cfg.builder is not None and cfg.builder not in builders:
            raise ConfigError(f"build.builder is '{cfg.builder}' but it is not installed (installed: {', '.join(builders) or 'none'})")
        if cfg.enabled == "yes" and not builders:
            raise ConfigError("build.enabled is 'yes' but no TensorRT module is installed: pip install 'trtforge[rtx]'")

    def reads(self, ctx):
        return ("recipe.build", "builder", "shapes.profiles")

    def run(self, ctx, model_path):
        from optimizer.engine import BuildConfig
        from optimizer.engine.sparsity import two_four_sparse_weights

        cfg = ctx.recipe.build
        profiles = ctx.shapes.profiles()
        engine_path = ctx.out_dir / f"{ctx.stem}.engine"
        build_cfg = BuildConfig(
            profiles=profiles,
            workspace_mib=cfg.workspace_mib,
            optimization_level=cfg.optimization_level,
            expect=cfg.expect,
            compute_capabilities=tuple(cfg.compute_capabilities),
            hardware_compatibility=cfg.hardware_compatibility,
            # 2:4 weights (from the prune stage or the user's own pruning) turn sparse kernels on.
            sparse_weights=cfg.sparse_weights or bool(two_four_sparse_weights(model_path)),
            refit=cfg.refit,
            strip_weights=cfg.strip_weights,
        )
        ctx.progress.info(f"building the engine from {model_path.name} ...")
        result, warnings = self._build_on_resolved_shapes(ctx, model_path, engine_path, build_cfg)
        if any(s.source == "default" for s in ctx.shapes.inputs.values()):
            warnings.append(
                f"the engine profile comes from default shapes ({ctx.shapes.describe()}); give --shapes or data to cover real traffic"
            )
        precision = result.precision
        summary = {
            "builder": f"{result.builder} {result.version}",
            "engine MB": round(result.engine_bytes / 1e6, 2),
            "carries": ", ".join(precision.carries),
            "Q/DQ layers": precision.quantize_layers + precision.dequantize_layers,
            "engine store": "hit" if result.store_hit else ("miss" if result.store_hit is False else "off"),
        }
        files = [Path(result.engine_path)]
        sidecar = Path(str(result.engine_path) + ".json")
        if sidecar.exists():
            files.append(sidecar)
        details = {**dataclasses.asdict(result), "shapes": ctx.shapes.to_dict()}  # after any move off a refused default
        record = StageRecord(name=self.name, status="ran", artifact=str(result.engine_path), summary=summary,
                             details=details, warnings=warnings)
        return files, record

    def _build_on_resolved_shapes(self, ctx, model_path: Path, engine_path: Path, build_cfg):
        """Build; when the profile came from default sizes and the builder refuses it, try the next
        default sizes ONNX Runtime also ran (TensorRT and ORT disagree on some pooling shapes)."""
        from optimizer.errors import BuildError

        alternatives = list(ctx.shapes.alternatives)
        warnings: list[str] = []
        while True:
            try:
                return self._build(ctx, model_path, engine_path, build_cfg), warnings
            except BuildError as exc:
                if not alternatives or isinstance(exc, UnparsableModel):  # no shape fixes a parse failure
                    raise
                refused = ctx.shapes.describe()
                ctx.shapes = ctx.shapes.with_ranges(
                    alternatives.pop(0), f"the builder refused the default shapes {refused} ({str(exc)[-160:]})"
                )
                warnings.append(f"TensorRT refused default shapes {refused}; built at {ctx.shapes.describe()} instead")
                build_cfg = dataclasses.replace(build_cfg, profiles=ctx.shapes.profiles())

    @staticmethod
    def _build(ctx, model_path: Path, engine_path: Path, build_cfg):
        from optimizer.engine import build_engine, build_or_reuse

        cfg = ctx.recipe.build
        if cfg.engine_store:  # also gives datacenter TensorRT its timing cache per (version, GPU)
            return build_or_reuse(model_path, engine_path, build_cfg, builder=cfg.builder)
        from optimizer.engine.store import add_timing_cache

        return build_engine(model_path, engine_path, add_timing_cache(build_cfg, cfg.builder), builder=cfg.builder)


STAGES: list[Stage] = [PassesStage(), PruneStage(), PrecisionStage(), BuildStage()]


# ---------------------------------------------------------------- cache keys


def _builder_identity(ctx: RunContext) -> dict:
    """The builder and the hardware the engine is for (this GPU for datacenter TensorRT): a stage
    cache shared between machines must not hand one GPU's engine to another."""
    from optimizer.engine import BuildConfig, available_builders, load_tensorrt
    from optimizer.engine.build import build_target

    build = ctx.recipe.build
    trt, flavour = load_tensorrt(build.builder or available_builders()[0])
    target = BuildConfig(compute_capabilities=tuple(build.compute_capabilities), hardware_compatibility=build.hardware_compatibility)
    return {"builder": f"{flavour} {trt.__version__}", "target": build_target(trt, flavour, target)}


def _fingerprint(fp: dict | None, *keys: str) -> tuple:
    return tuple((fp or {}).get(k) for k in keys)


#: Everything a stage can read besides its input artifact, each valued in one place.
KEY_INPUTS: dict[str, Any] = {
    "recipe.passes": lambda ctx: dataclasses.asdict(ctx.recipe.passes),
    "recipe.prune": lambda ctx: dataclasses.asdict(ctx.recipe.prune),
    # Where the calibration folder lies does not count, only its content ("calib_data").
    "recipe.precision": lambda ctx: {k: v for k, v in dataclasses.asdict(ctx.recipe.precision).items() if k != "calib"},
    "recipe.build": lambda ctx: dataclasses.asdict(ctx.recipe.build),
    "calib_data": lambda ctx: _fingerprint(ctx.data.calib_fingerprint, "sha256"),
    "val_data": lambda ctx: _fingerprint(ctx.data.val_fingerprint, "sha256", "labels_sha256"),
    "metric": lambda ctx: (ctx.recipe.validate.metric, ctx.data.metric_sha256),
    "shapes.opt": lambda ctx: ctx.shapes.opt(),
    "shapes.profiles": lambda ctx: [p.spec() for p in ctx.shapes.profiles()],
    "builder": _builder_identity,
}


def stage_key(ctx: RunContext, stage: Stage, input_hash: str, versions: dict) -> str:
    """The cache key: the input artifact, what the stage declares it reads, tool versions."""
    reads = {name: KEY_INPUTS[name](ctx) for name in stage.reads(ctx)}
    return cache_key(stage.name, {"input": input_hash, "reads": reads, "versions": versions})


# ---------------------------------------------------------------- data


def _open_data(folder: Path | None, specs, limit: int | None):
    if folder is None:
        return None, None
    from calibration.data import open_folder

    source, fingerprint = open_folder(folder, specs, limit)
    fingerprint = dataclasses.asdict(fingerprint)
    if source.labels is not None:  # labels decide task metrics and budgets: they belong in cache keys
        fingerprint["labels_sha256"] = hashlib.sha256(json.dumps(source.labels, default=str).encode()).hexdigest()
    return source, fingerprint


def _metric_sha256(recipe: Recipe) -> str:
    path = recipe.resolve(recipe.validate.metric.rpartition(":")[0])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _synthetic(specs, recipe: Recipe, shapes: ResolvedShapes):
    from calibration import synthetic_source, validate_source

    source = synthetic_source(specs, count=recipe.precision.max_samples or SYNTHETIC_SAMPLES, shapes=shapes.opt(), seed=0)
    return source, dataclasses.asdict(validate_source(source, specs))


# ---------------------------------------------------------------- validation


def validate_stage(ctx: RunContext, reference: Path, candidate: Path) -> tuple[StageRecord, ValidationResult | None]:
    from optimizer.runners import OrtRunner
    from optimizer.validate import MetricContext, class_like_outputs, compare, load_metric

    cfg = ctx.recipe.validate
    if ctx.data.val is None:
        return StageRecord(name="validate", status="skipped", reason="no validation data (--val DIR or validate.data)"), None
    start = time.perf_counter()
    metric = ctx.data.metric or (load_metric(cfg.metric, ctx.recipe.base_dir) if cfg.metric else None)
    ref_model = load_model(reference)
    ref = OrtRunner(reference, threads=cfg.latency.threads)
    cand = OrtRunner(candidate, threads=cfg.latency.threads)
    with ctx.progress.task("validating", len(ctx.data.val)) as update:
        result = compare(
            ref,
            cand,
            ctx.data.val,
            labels=ctx.data.val.labels,
            metric=metric,
            context=MetricContext(metadata=metadata(ref_model)),
            progress=update,
            class_like=class_like_outputs(ref_model),
        )
    result.data = ctx.data.val_fingerprint
    if cfg.noise_samples > 0:
        result.noise = _noise_floor(ctx, reference, ref)
    if cfg.latency.enabled:
        result.latency = _latency(ctx, reference, candidate)
    summary = {"samples": result.samples}
    if task := result.task:
        summary[f"{task.name} ref → cand"] = f"{task.reference:.3g} → {task.candidate:.3g}{task.unit}"
    if lat := result.latency:
        summary["p50 speed-up"] = f"{lat.p50_speedup:.2f}x"
    record = StageRecord(name="validate", status="ran", seconds=time.perf_counter() - start, summary=summary)
    return record, result


def _noise_floor(ctx: RunContext, reference: Path, first) -> NoiseFloor:
    """The reference against itself under a second configuration: the scale for 'error_to_noise'.

    The second configuration reorders float reductions (another thread count, ORT's fusions),
    so the spread is the reference's own run-to-run noise.
    """
    from optimizer.runners import OrtRunner
    from optimizer.validate import reference_noise

    threads = ctx.recipe.validate.latency.threads
    second = OrtRunner(reference, threads=2, optimization="all")
    return reference_noise(
        {f"ORT basic, {threads or 'default'} thread(s)": first, "ORT all, 2 threads": second},
        ctx.data.val,
        ctx.recipe.validate.noise_samples,
    )


def _latency(ctx: RunContext, reference: Path, candidate: Path) -> Latency:
    """Both models timed side by side, interleaved, at ORT's deployment level."""
    from optimizer.runners import OrtRunner
    from optimizer.validate import measure_latency, paired_speedup

    cfg = ctx.recipe.validate.latency
    feeds = list(Limited(ctx.data.val, cfg.samples))
    # Timed at ONNX Runtime's default level ("all"), what a CPU deployment runs: only there
    # does ORT fuse Q/DQ into integer kernels. Accuracy used "basic" (our graph as is).
    timed = {
        "reference": OrtRunner(reference, threads=cfg.threads, optimization=cfg.ort_level),
        "candidate": OrtRunner(candidate, threads=cfg.threads, optimization=cfg.ort_level),
    }
    with ctx.progress.task("timing (interleaved)", cfg.iterations) as update:
        times = measure_latency(timed, feeds, warmup=cfg.warmup, iterations=cfg.iterations, progress=update)
    note = None
    if ctx.recipe.precision.mode == "int8" and ctx.recipe.precision.target == "tensorrt":
        note = (
            "tensorrt target: symmetric S8S8 Q/DQ is TensorRT's form and runs slower than FP32 on ONNX Runtime's x86 "
            "kernels; CPU latency here is informational. CPU speed is measured on the onnxruntime-cpu target; "
            "the TensorRT speed proxy is the INT8 weight share and the engine build."
        )
    return Latency(
        runtime="onnxruntime-cpu",
        ort_level=cfg.ort_level,
        threads=cfg.threads,
        iterations=cfg.iterations,
        reference=times["reference"],
        candidate=times["candidate"],
        p50_speedup=times["reference"].p50_ms / times["candidate"].p50_ms,
        # Iteration i of both models ran back to back on the same input: the median of the
        # per-iteration ratios cancels slow drift (benchmarks/latency_resolution.py).
        paired_speedup=paired_speedup(times["reference"], times["candidate"]),
        note=note,
    )


# ---------------------------------------------------------------- the run


def optimize(
    model_path: str | Path,
    out_dir: str | Path,
    recipe: Recipe,
    *,
    calib: str | Path | None = None,
    val: str | Path | None = None,
    gates: list[str] = (),
    shapes: list[str] = (),
    dims: list[str] = (),
    use_cache: bool = True,
    progress: Progress | None = None,
    command: str | None = None,
) -> Report:
    """Run the whole pipeline; write every artifact and ``report.json``/``report.md`` to ``out_dir``.

    ``shapes``/``dims`` are ``--shapes``/``--dim`` options (``optimizer.shapes``); without them
    each input's shape comes from the recipe, the data, the model's metadata or the defaults,
    and the report says which. Raises TrtforgeError subclasses for bad input or config before
    any artifact is written; a stage that fails later takes this run's artifacts with it.
    Gates are evaluated into the report (``report.passed``); the caller decides the exit code.
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    all_gates = list(recipe.validate.gates) + list(gates)
    check_syntax(all_gates)
    baseline = load_baseline(recipe.resolve(recipe.validate.baseline))
    ctx, model_info = _open_run(model_path, out_dir, recipe, calib, val, shapes, dims, use_cache, progress or Progress("quiet"))
    if all_gates and ctx.data.val is None:
        raise ConfigError(f"gates {all_gates} are checked on validation data: pass --val DIR or set validate.data")
    report = Report(
        command=command or f"optimizer.optimize({str(model_path)!r}, {str(out_dir)!r})",
        model=model_info,
        recipe=recipe.to_dict(),
        environment=environment(),
    )
    # Every stage says now whether it can run, so a missing builder or a bad profile stops the
    # run before the first artifact is written.
    for stage in STAGES:
        stage.check(ctx)
    skip_reasons = {stage.name: stage.enabled(ctx) for stage in STAGES}
    out_dir.mkdir(parents=True, exist_ok=True)
    current, precision_input = _run_stages(ctx, report, model_path, model_info["sha256"], skip_reasons)
    built = next((r for r in report.stages if r.name == "build" and r.status in ("ran", "cached")), None)
    if built is not None:  # the build may have moved off a refused default (cached runs too)
        report.model["shapes"] = built.details.get("shapes", report.model["shapes"])
    _validate_and_gate(ctx, report, model_path, current, skip_reasons, all_gates, baseline)
    if current != model_path and report.validation is not None:
        # The search compares against the precision stage's input: the graph the candidate was made
        # from (after passes and pruning), so only precision changes are blamed on quantized nodes.
        search_divergence(ctx, report, precision_input, current)
    report.warnings.extend(ctx.warnings)
    ran = {r.name for r in report.stages if r.status in ("ran", "cached")}
    fingerprint = ctx.data.calib_fingerprint
    if any(s.calibrates and s.name in ran for s in STAGES) and fingerprint and fingerprint.get("synthetic"):
        report.warnings.append("calibration used synthetic random data (--synthetic)")
    write_report(report, out_dir)
    return report


def _open_run(model_path: Path, out_dir: Path, recipe: Recipe, calib, val, shapes, dims, use_cache: bool,
              progress: Progress) -> tuple[RunContext, dict]:
    """The run's context (data, shapes, cache) and the model's record, before any stage: a wrong
    input name, a NaN in the data or a shape the model cannot take stops the run here."""
    model = load_model(model_path)
    specs = input_specs(model)
    model_info = _model_info(model_path, model)
    data = _open_run_data(recipe, specs, calib, val)
    resolved = _resolve_run_shapes(model, recipe, data, shapes, dims)
    model_info["shapes"] = resolved.to_dict()
    op_types = frozenset(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))
    del model
    if recipe.precision.synthetic and data.calib is None:
        data.calib, data.calib_fingerprint = _synthetic(specs, recipe, resolved)
    ctx = RunContext(recipe=recipe, out_dir=out_dir, stem=model_path.stem, data=data, cache=StageCache(enabled=use_cache),
                     progress=progress, shapes=resolved, op_types=op_types)
    return ctx, model_info


def _validate_and_gate(ctx: RunContext, report: Report, model_path: Path, current: Path, skip_reasons: dict,
                       gates: list[str], baseline: Report | None) -> None:
    """Validate the last model against the input (unless a stage says it cannot be validated here),
    then check the gates: the given ones, else the defaults."""
    notes = [n for stage in STAGES if skip_reasons[stage.name] is None and (n := stage.validation_note(ctx))]
    if current != model_path and notes:
        report.stages.append(StageRecord(name="validate", status="skipped", reason=notes[0]))
    elif current != model_path:
        record, report.validation = validate_stage(ctx, model_path, current)
        report.stages.append(record)
    else:
        report.stages.append(StageRecord(name="validate", status="skipped", reason="no stage changed the model"))
    report.gates = evaluate_gates(gates, report.validation, baseline.validation if baseline else None,
                                  defaults=ctx.recipe.validate.default_gates)


def _model_info(model_path: Path, model) -> dict:
    return {
        "path": str(model_path),
        "sha256": content_hash(model_path),
        "nodes": count_nodes(model),
        "opset": opset_of(model) or None,
        "inputs": [s.to_dict() for s in input_specs(model)],
    }


def write_report(report: Report, out_dir: Path) -> None:
    """report.json plus its renderings, each named in ``report.artifacts``."""
    for key, name in (("report", "report.json"), ("summary", "report.md"), ("html", "report.html"), ("junit", "junit.xml")):
        report.artifacts[key] = str(out_dir / name)
    report.save(out_dir / "report.json")
    write_renderings(report, out_dir)


def _run_stages(ctx: RunContext, report: Report, model_path: Path, model_hash: str, skip_reasons: dict) -> tuple[Path, Path]:
    """Run (or take from the cache) every enabled stage in order; return (last model, precision's input).

    A stage that fails removes what this run wrote, so the folder never holds a half-finished run.
    """
    versions = tool_versions(("tensorrt", "tensorrt-rtx"))
    current, current_hash, precision_input = model_path, model_hash, model_path
    written: list[Path] = []
    try:
        for stage in STAGES:
            reason = skip_reasons[stage.name]
            if reason is not None:
                report.stages.append(StageRecord(name=stage.name, status="skipped", reason=reason))
                ctx.progress.info(f"{stage.name}: skipped ({reason})")
                continue
            key = stage_key(ctx, stage, current_hash, versions)
            try:
                record, files = _run_or_restore(ctx, stage, key, current)
            except stage.skippable(ctx) as exc:
                reason = " ".join(str(exc).split())
                report.stages.append(StageRecord(name=stage.name, status="skipped", reason=reason))
                ctx.warnings.append(f"{stage.name} skipped: {reason}")
                continue
            written.extend(files)
            report.stages.append(record)
            report.artifacts[stage.name] = record.artifact
            if stage.sets_precision:
                precision_input = current
            if stage.produces_model:
                current = Path(record.artifact)
                current_hash = content_hash(current)
    except BaseException:
        for path in written:
            if path.resolve() != model_path.resolve():
                path.unlink(missing_ok=True)
        raise
    return current, precision_input


def _run_or_restore(ctx: RunContext, stage: Stage, key: str, current: Path) -> tuple[StageRecord, list[Path]]:
    """The stage's result from the cache, else run it and cache it; one process per key at a time,
    so parallel runs (``trtforge matrix``) sharing a stage compute it once and the rest reuse it."""
    if not ctx.cache.enabled:
        return _restore_or_run(ctx, stage, key, current)
    from filelock import FileLock

    locks = ctx.cache.root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{stage.name}-{key[:32]}.lock")):
        return _restore_or_run(ctx, stage, key, current)


def _restore_or_run(ctx: RunContext, stage: Stage, key: str, current: Path) -> tuple[StageRecord, list[Path]]:
    start = time.perf_counter()
    hit = ctx.cache.get(stage.name, key)
    if hit is not None:
        entry, stored = hit
        files = restore(entry, stored["_files"], ctx.out_dir)
        record = StageRecord(**{k: v for k, v in stored.items() if not k.startswith("_")})
        record.status = "cached"
        record.artifact = str(files[0])
        record.seconds = time.perf_counter() - start
        ctx.progress.info(f"{stage.name}: cached ({record.seconds:.2f}s)")
        return record, [Path(f) for f in files]
    ctx.progress.info(f"{stage.name}: running")
    files, record = stage.run(ctx, current)
    record.seconds = time.perf_counter() - start
    ctx.cache.put(stage.name, key, files, dataclasses.asdict(record))
    ctx.progress.info(f"{stage.name}: done in {record.seconds:.1f}s")
    return record, [Path(f) for f in files]


def _open_run_data(recipe: Recipe, specs, calib, val) -> RunData:
    """The run's real data, each folder checked against the model's inputs before any work."""
    data = RunData()
    calib_dir = Path(calib) if calib else recipe.resolve(recipe.precision.calib)
    val_dir = Path(val) if val else recipe.resolve(recipe.validate.data)
    data.calib, data.calib_fingerprint = _open_data(calib_dir, specs, recipe.precision.max_samples)
    data.val, data.val_fingerprint = _open_data(val_dir, specs, recipe.validate.max_samples)
    if recipe.validate.metric and data.val is not None and data.val.labels is None:
        raise InputError(f"{val_dir}: the task metric needs labels, but the folder has no labels.json")
    if recipe.validate.metric and data.val is not None:
        # A bad metric path or a metric file that fails to import stops the run before any stage.
        from optimizer.validate import load_metric

        data.metric = load_metric(recipe.validate.metric, recipe.base_dir)
        data.metric_sha256 = _metric_sha256(recipe)
    return data


def _resolve_run_shapes(model, recipe: Recipe, data: RunData, shapes, dims) -> ResolvedShapes:
    """Every input's range: --shapes/--dim, else the recipe, else the data, metadata, defaults.

    Resolved (and checked against the model and the data) before the first stage, so a build
    profile that cannot work stops the run before any artifact is written.
    """
    recipe_profiles = ([recipe.build.shapes] if recipe.build.shapes else []) + list(recipe.build.profiles)
    if shapes:
        profiles, source = parse_profiles(shapes), "--shapes"
    else:
        profiles = [parse_shapes(p) for p in recipe_profiles]
        # Sizes from a --dim on the command line are labelled "--dim", not "recipe".
        source = "recipe" if recipe_profiles or (recipe.build.dims and not dims) else "--shapes"
    named = {**parse_dims(recipe.build.dims), **parse_dims(dims)}
    return resolve_model_shapes(
        model,
        profiles=profiles,
        dims=named,
        explicit_source=source,
        fingerprints=[fp for fp in (data.calib_fingerprint, data.val_fingerprint) if fp],
        alternatives=3,  # default sizes ORT runs but a builder may still refuse (BuildStage tries the next)
    ).require()


def write_renderings(report: Report, out_dir: Path) -> None:
    """report.md, report.html (self-contained, plots inline) and junit.xml (one testcase per gate)."""
    from optimizer.html_report import to_html
    from optimizer.junit import to_junit
    from optimizer.model import write_text_atomic
    from optimizer.report import to_markdown

    write_text_atomic(out_dir / "report.md", to_markdown(report))
    write_text_atomic(out_dir / "report.html", to_html(report))
    write_text_atomic(out_dir / "junit.xml", to_junit(report))


def load_baseline(path: Path | None) -> Report | None:
    """A previous release's report; its validation record is what the *_regression gates compare with."""
    if path is None:
        return None
    from optimizer.report import load_report

    baseline = load_report(path)
    if baseline.validation is None:
        raise InputError(f"{path}: the baseline report has no validation results to compare with (run it with --val)")
    return baseline


def search_divergence(ctx: RunContext, report: Report, reference: Path, candidate: Path) -> None:
    """First-divergent-layer search into ``report.validation.divergence``, per validate.divergence."""
    cfg = ctx.recipe.validate
    if cfg.divergence == "never" or (cfg.divergence == "on-failure" and report.passed) or ctx.data.val is None:
        return
    from optimizer.divergence import find_divergence

    ctx.progress.info(f"searching the first divergent layer ({cfg.divergence_samples} samples, {cfg.divergence_chunk} tensors per session)")
    try:
        with ctx.progress.task("divergence search (chunks)", None) as update:
            result = find_divergence(
                reference,
                candidate,
                ctx.data.val,
                chunk=cfg.divergence_chunk,
                max_samples=cfg.divergence_samples,
                progress=update,
            )
    except ValidationError as exc:
        if cfg.divergence == "always":
            raise
        # On failure the gate verdict stands; an unrelated reference only costs the diagnosis.
        report.warnings.append(f"divergence search not possible: {exc}")
        return
    # Every rendering (terminal, Markdown, HTML) shows it in its own section, with the fix.
    report.validation.divergence = result
    failing = [g.expression for g in report.gates if not g.passed]
    if failing and result.recommend_exclude:
        _measure_fix(ctx, report, result, failing)


def _measure_fix(ctx: RunContext, report: Report, result, failing: list[str]) -> None:
    """Re-run the candidate with the recommendation applied (and extended greedily) before printing it."""
    from optimizer.divergence import measure_fix
    from optimizer.validate import MetricContext, load_metric

    cfg = ctx.recipe.validate
    metric = ctx.data.metric or (load_metric(cfg.metric, ctx.recipe.base_dir) if cfg.metric else None)
    precision = ctx.recipe.precision
    from optimizer.errors import TrtforgeError

    try:
        with ctx.progress.task("measuring the recommended fix (trials)", None) as update:
            fix = measure_fix(
                result,
                report.model["path"],  # the reference the gates were checked against
                ctx.data.val,
                failing,
                report.validation,
                labels=ctx.data.val.labels,
                metric=metric,
                context=MetricContext(metadata=metadata(load_model(report.model["path"]))) if metric else None,
                method=precision.method if precision.mode == "int8" else None,
                progress=update,
            )
    except TrtforgeError as exc:  # the gate verdict stands; only the measurement of the fix is lost
        report.warnings.append(f"the recommended fix could not be measured: {exc}")
        return
    report.validation.divergence.fix = fix


def validate_only(
    candidate: str | Path,
    reference: str | Path,
    data_dir: str | Path,
    *,
    metric: str | None = None,
    gates: list[str] = (),
    threads: int = 1,
    iterations: int = 30,
    progress: Progress | None = None,
    baseline: str | Path | None = None,
    divergence: str = "never",
    divergence_samples: int = 2,
    default_gates: bool = True,
    command: str | None = None,
) -> Report:
    """``trtforge validate``: the validation stage alone, on two existing models.

    ``baseline``: a previous report.json (adds the *_regression gate metrics);
    ``divergence``: "never" | "on-failure" | "always" run the first-divergent-layer search;
    ``default_gates``: with no ``gates``, check ``optimizer.gates.default_gates`` (finite, cosine, SNR, top-1, task).
    """
    check_syntax(list(gates))
    previous = load_baseline(Path(baseline) if baseline else None)
    candidate, reference = Path(candidate), Path(reference)
    ref_model = load_model(reference)
    load_model(candidate)  # fail early and clearly on a bad candidate file
    specs = input_specs(ref_model)
    # Through the recipe's own checks, as if a recipe file had said it.
    recipe = recipe_from_dict({
        "precision": {"mode": "none"},
        "validate": {"metric": metric, "divergence": divergence, "divergence_samples": divergence_samples,
                     "latency": {"threads": threads, "enabled": iterations > 0, **({"iterations": iterations} if iterations else {})}},
    }, base_dir=Path.cwd())
    data = RunData()
    data.val, data.val_fingerprint = _open_data(Path(data_dir), specs, None)
    if metric and data.val.labels is None:
        raise InputError(f"{data_dir}: the task metric needs labels, but the folder has no labels.json")
    ctx = RunContext(recipe, Path("."), reference.stem, data, StageCache(enabled=False), progress or Progress("quiet"))
    record, validation = validate_stage(ctx, reference, candidate)
    report = Report(
        command=command or f"optimizer.validate_only({str(candidate)!r}, {str(reference)!r}, {str(data_dir)!r})",
        model={"path": str(reference), "sha256": content_hash(reference), "nodes": count_nodes(ref_model)},
        stages=[record],
        validation=validation,
        environment=environment(),
    )
    report.model["candidate"] = str(candidate)  # read, not written: not an artifact
    report.gates = evaluate_gates(list(gates), validation, previous.validation if previous else None, defaults=default_gates)
    search_divergence(ctx, report, reference, candidate)
    return report
