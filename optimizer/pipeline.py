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
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.data import Limited
from optimizer.cache import StageCache, cache_key, restore, tool_versions
from optimizer.errors import ConfigError, InputError, ValidationError
from optimizer.gates import check_syntax, evaluate_gates
from optimizer.model import artifact_files, content_hash, count_nodes, input_specs, load_model, metadata, save_model
from optimizer.progress import Progress
from optimizer.recipe import Recipe
from optimizer.report import Report, StageRecord, environment


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
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- stages


class Stage:
    """One step of the pipeline. Subclasses set ``name`` and implement ``enabled``/``config``/``run``."""

    name = "stage"
    produces_model = True  # False: the artifact (an engine) does not feed later stages

    def enabled(self, ctx: RunContext) -> str | None:
        """None when the stage should run, else the reason it is skipped."""
        return None

    def config(self, ctx: RunContext) -> dict[str, Any]:
        """Everything besides the input artifact that determines the result (the cache key)."""
        return {}

    def run(self, ctx: RunContext, model_path: Path) -> tuple[list[Path], StageRecord]:
        """Return the files written (artifact first) and the record."""
        raise NotImplementedError


class PassesStage(Stage):
    name = "passes"

    def enabled(self, ctx):
        return None if ctx.recipe.passes.enabled else "disabled in the recipe"

    def config(self, ctx):
        cfg = dataclasses.asdict(ctx.recipe.passes)
        cfg["verify_data"] = ctx.data.calib_fingerprint["sha256"] if (cfg["verify"] and ctx.data.calib_fingerprint) else None
        # Without data the verifier generates inputs at the profile's opt shapes: then they count.
        cfg["verify_shapes"] = list(ctx.recipe.build.shapes) if cfg["verify"] and ctx.data.calib is None else None
        return cfg

    def run(self, ctx, model_path):
        from graph_passes import DEFAULT_PASSES, Verifier, run_passes

        cfg = ctx.recipe.passes
        model = load_model(model_path)
        before = count_nodes(model)
        verifier = None
        if cfg.verify:
            feeds = list(Limited(ctx.data.calib, 4)) if ctx.data.calib is not None else None
            verifier = Verifier(model, feeds=feeds, shapes=_opt_shapes(ctx.recipe))
        records = run_passes(model, cfg.names, skip=cfg.skip, verifier=verifier, explain=cfg.explain, opset=cfg.opset)
        out = ctx.out_dir / f"{ctx.stem}.opt.onnx"
        save_model(model, out)
        after = count_nodes(model)
        fired = [r.name for r in records if r.modified]
        record = StageRecord(
            name=self.name,
            status="ran",
            artifact=str(out),
            summary={"nodes": f"{before} → {after}", "passes fired": len(fired), "verified": bool(verifier)},
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

    def enabled(self, ctx):
        cfg = ctx.recipe.prune
        if not cfg.enabled:
            return "disabled in the recipe"
        if cfg.sparsity is None and cfg.channels is None and cfg.flops_target is None and cfg.max_error is None:
            raise ConfigError(
                "prune.enabled is true but no budget is set: give prune.sparsity: '2:4', prune.channels, "
                "prune.flops_target or prune.max_error"
            )
        if cfg.max_error is not None and ctx.data.val is None:
            raise ConfigError("prune.max_error is measured on validation data: pass --val DIR or set validate.data")
        return None

    def config(self, ctx):
        cfg = dataclasses.asdict(ctx.recipe.prune)
        cfg["data"] = ctx.data.calib_fingerprint["sha256"] if ctx.data.calib_fingerprint else None
        if cfg["max_error"] is not None:  # the budget is checked on the validation data: its content counts
            cfg["val_data"] = ctx.data.val_fingerprint["sha256"] if ctx.data.val_fingerprint else None
        cfg["shapes"] = list(ctx.recipe.build.shapes)  # FLOPs without data are measured at the profile's opt shape
        return cfg

    def run(self, ctx, model_path):
        from optimizer.pruning import prune

        cfg = ctx.recipe.prune
        out = ctx.out_dir / f"{ctx.stem}.pruned.onnx"
        source = ctx.data.calib
        total = min(len(source), cfg.max_samples or len(source)) if source is not None else 0
        options = dict(
            sparsity=cfg.sparsity,
            source=source,
            method=cfg.method,
            criterion=cfg.criterion,
            reconstruct=cfg.reconstruct,
            exclude=cfg.exclude,
            samples=cfg.max_samples,
            input_shapes=_opt_shapes(ctx.recipe),
        )
        with ctx.progress.task("pruning statistics", total) as update:
            if cfg.max_error is not None:
                from optimizer.pruning import prune_within_error

                result = prune_within_error(model_path, out, val=ctx.data.val, max_error=cfg.max_error, progress=update, **options)
            else:
                result = prune(model_path, out, channels=cfg.channels, flops_target=cfg.flops_target, progress=update, **options)
        pruned = sum(1 for layer in result.layers if layer.action == "pruned")
        groups = [g for g in result.groups if g.roots]
        summary = {"FLOPs": f"{result.flops_before / 1e9:.3g}G → {result.flops_after / 1e9:.3g}G (-{result.flops_reduction:.1%})",
                   "params": f"{result.params_before} → {result.nonzero_after} non-zero"}
        if cfg.sparsity:
            summary["2:4 layers"] = f"{pruned} ({result.sparse_flops_share:.0%} of FLOPs)"
        if groups:
            summary["channel groups cut"] = f"{sum(1 for g in groups if g.kept < g.channels)}/{len(groups)}"
        record = StageRecord(name=self.name, status="ran", artifact=str(out), summary=summary, details=result.to_dict(),
                             warnings=list(result.warnings))
        return artifact_files(out), record


class PrecisionStage(Stage):
    name = "precision"

    def enabled(self, ctx):
        cfg = ctx.recipe.precision
        if cfg.mode == "none":
            return "precision mode is 'none'"
        if cfg.budget and ctx.data.val is None:
            raise ConfigError(f"precision.budget '{cfg.budget}' is measured on validation data: pass --val DIR or set validate.data")
        return None

    def config(self, ctx):
        cfg = dataclasses.asdict(ctx.recipe.precision)
        cfg.pop("calib")  # the data's content counts, not where it lies
        cfg["data"] = ctx.data.calib_fingerprint["sha256"] if ctx.data.calib_fingerprint else None
        if cfg["budget"]:  # the budget is measured on the validation data (and labels) with the task metric
            fp = ctx.data.val_fingerprint or {}
            cfg["val_data"] = (fp.get("sha256"), fp.get("labels_sha256"))
            cfg["metric"] = (ctx.recipe.validate.metric, ctx.data.metric_sha256)
        return cfg

    def run(self, ctx, model_path):
        cfg = ctx.recipe.precision
        if cfg.mode in ("fp16", "bf16"):
            return self._autocast(ctx, model_path)
        from calibration import quantize

        out = ctx.out_dir / f"{ctx.stem}.int8.onnx"
        budget = None
        if cfg.budget:
            from calibration.sensitivity import budget_metric, quantize_with_budget, report

            if ctx.data.val is None:
                raise ConfigError(f"precision.budget '{cfg.budget}' is measured on validation data: pass --val DIR")
            val = list(ctx.data.val)
            metric, higher = budget_metric(ctx.recipe.validate.metric, ctx.recipe.base_dir, ctx.data.val.labels, model_path)
            with ctx.progress.task("budget search", None):
                budget = quantize_with_budget(
                    model_path, out, ctx.data.calib, val, budget=cfg.budget, metric=metric, higher_is_better=higher,
                    target=cfg.target, method=cfg.method, per_channel=cfg.per_channel, percentile=cfg.percentile,
                    exclude=cfg.exclude,
                )
            result = budget.quantize
        else:
            with ctx.progress.task("calibrating", len(ctx.data.calib)) as update:
                result = quantize(
                    model_path,
                    out,
                    ctx.data.calib,
                    target=cfg.target,
                    method=cfg.method,
                    per_channel=cfg.per_channel,
                    percentile=cfg.percentile,
                    exclude=cfg.exclude,
                    progress=update,
                )
        details = dataclasses.asdict(result)
        if budget is not None:
            details["budget"] = report(budget)
        warnings = []
        if details.get("fingerprint", {}).get("synthetic"):
            warnings.append("calibrated on SYNTHETIC random data: accuracy numbers do not reflect real inputs")
        if result.skipped:
            warnings.append(f"{len(result.skipped)} Conv/Gemm/MatMul node(s) left in FP32 (see details.skipped)")
        if budget is not None and not budget.met:
            warnings.append(f"precision budget {budget.budget} NOT met even with {len(budget.kept)} layer(s) in FP32")
        record = StageRecord(
            name=self.name,
            status="ran",
            artifact=str(out),
            summary={
                "target": cfg.target,
                "method": cfg.method,
                "quantized nodes": len(result.quantized_nodes),
                "INT8 weight share": round(result.quantized_weight_share, 4),
                "samples": result.fingerprint.count,
                **({"budget": f"{budget.budget} {'met' if budget.met else 'NOT met'}, {len(budget.kept)} layer(s) kept FP32"}
                   if budget is not None else {}),
            },
            details=details,
            warnings=warnings,
        )
        return artifact_files(out), record


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

    def enabled(self, ctx):
        cfg = ctx.recipe.build
        if cfg.enabled == "no":
            return "disabled in the recipe"
        from optimizer.engine import available_builders

        builders = available_builders()
        if cfg.builder is not None and cfg.builder not in builders:
            raise ConfigError(f"build.builder is '{cfg.builder}' but it is not installed (installed: {', '.join(builders) or 'none'})")
        if not builders:
            if cfg.enabled == "yes":
                raise ConfigError("build.enabled is 'yes' but no TensorRT module is installed: pip install 'trtforge[rtx]'")
            return "no TensorRT module installed (pip install 'trtforge[rtx]' builds engines without a GPU)"
        return None

    def config(self, ctx):
        from optimizer.engine import BuildConfig, available_builders, load_tensorrt
        from optimizer.engine.build import build_target

        build = ctx.recipe.build
        cfg = dataclasses.asdict(build)
        trt, flavour = load_tensorrt(build.builder or available_builders()[0])
        cfg["builder_resolved"] = f"{flavour} {trt.__version__}"
        # The hardware the engine is for (this GPU for datacenter TensorRT): a stage cache
        # shared between machines must not hand one GPU's engine to another.
        target_cfg = BuildConfig(compute_capabilities=tuple(build.compute_capabilities), hardware_compatibility=build.hardware_compatibility)
        cfg["target"] = build_target(trt, flavour, target_cfg)
        return cfg

    def run(self, ctx, model_path):
        from optimizer.engine import BuildConfig, build_engine, build_or_reuse, parse_shapes
        from optimizer.engine.sparsity import two_four_sparse_weights

        cfg = ctx.recipe.build
        profiles = ([parse_shapes(cfg.shapes)] if cfg.shapes else []) + [parse_shapes(p) for p in cfg.profiles]
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
        if cfg.engine_store:  # also gives datacenter TensorRT its timing cache per (version, GPU)
            result = build_or_reuse(model_path, engine_path, build_cfg, builder=cfg.builder)
        else:
            from optimizer.engine.store import add_timing_cache

            result = build_engine(model_path, engine_path, add_timing_cache(build_cfg, cfg.builder), builder=cfg.builder)
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
        record = StageRecord(name=self.name, status="ran", artifact=str(result.engine_path), summary=summary, details=dataclasses.asdict(result))
        return files, record


STAGES: list[Stage] = [PassesStage(), PruneStage(), PrecisionStage(), BuildStage()]


def _opt_shapes(recipe: Recipe) -> dict[str, tuple[int, ...]] | None:
    """The 'opt' shape of each input from the build profile: the shapes traffic is expected to have."""
    if not recipe.build.shapes:
        return None
    from optimizer.engine import parse_shapes

    profile = parse_shapes(recipe.build.shapes)
    return {name: tuple(dims[1]) for name, dims in profile.shapes.items()}


# ---------------------------------------------------------------- data


def _open_data(folder: Path | None, specs, limit: int | None):
    if folder is None:
        return None, None
    from calibration import NpzFolderSource, validate_source
    from calibration.data import bind_source

    folder_source = NpzFolderSource(folder)
    bind_source(folder_source, specs)  # .npy samples learn the input name before any wrapping
    source = Limited(folder_source, limit)
    fingerprint = dataclasses.asdict(validate_source(source, specs))
    if source.labels is not None:  # labels decide task metrics and budgets: they belong in cache keys
        fingerprint["labels_sha256"] = hashlib.sha256(json.dumps(source.labels, default=str).encode()).hexdigest()
    return source, fingerprint


def _metric_sha256(recipe: Recipe) -> str:
    path = recipe.resolve(recipe.validate.metric.rpartition(":")[0])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _synthetic(specs, recipe: Recipe):
    from calibration import synthetic_source, validate_source

    source = synthetic_source(specs, count=recipe.precision.max_samples or 16, shapes=_opt_shapes(recipe), seed=0)
    return source, dataclasses.asdict(validate_source(source, specs))


# ---------------------------------------------------------------- validation


def validate_stage(ctx: RunContext, reference: Path, candidate: Path) -> tuple[StageRecord, dict | None]:
    from optimizer.runners import OrtRunner
    from optimizer.validate import MetricContext, compare, load_metric, measure_latency, paired_speedup

    cfg = ctx.recipe.validate
    if ctx.data.val is None:
        return StageRecord(name="validate", status="skipped", reason="no validation data (--val DIR or validate.data)"), None
    start = time.perf_counter()
    metric = ctx.data.metric or (load_metric(cfg.metric, ctx.recipe.base_dir) if cfg.metric else None)
    ref_model = load_model(reference)
    threads = cfg.latency.threads
    ref = OrtRunner(reference, threads=threads)
    cand = OrtRunner(candidate, threads=threads)
    with ctx.progress.task("validating", len(ctx.data.val)) as update:
        result = compare(
            ref,
            cand,
            ctx.data.val,
            labels=ctx.data.val.labels,
            metric=metric,
            context=MetricContext(metadata=metadata(ref_model)),
            progress=update,
        )
    result["data"] = ctx.data.val_fingerprint
    if cfg.noise_samples > 0:
        from optimizer.validate import reference_noise

        # The second configuration reorders float reductions (other thread count, ORT's fusions):
        # the spread is the reference's own noise floor, the scale for 'error_to_noise'.
        second = OrtRunner(reference, threads=2, optimization="all")
        result["noise"] = reference_noise(
            {f"ORT basic, {threads or 'default'} thread(s)": ref, "ORT all, 2 threads": second},
            ctx.data.val,
            cfg.noise_samples,
        )
    if cfg.latency.enabled:
        feeds = list(Limited(ctx.data.val, cfg.latency.samples))
        # Timed at ONNX Runtime's default level ("all"), what a CPU deployment runs: only there
        # does ORT fuse Q/DQ into integer kernels. Accuracy above used "basic" (our graph as is).
        level = cfg.latency.ort_level
        timed = {
            "reference": OrtRunner(reference, threads=threads, optimization=level),
            "candidate": OrtRunner(candidate, threads=threads, optimization=level),
        }
        with ctx.progress.task("timing (interleaved)", cfg.latency.iterations) as update:
            times = measure_latency(
                timed,
                feeds,
                warmup=cfg.latency.warmup,
                iterations=cfg.latency.iterations,
                progress=update,
            )
        lat = {
            "runtime": "onnxruntime-cpu",
            "ort_level": level,
            "threads": threads,
            "iterations": cfg.latency.iterations,
            "reference": times["reference"],
            "candidate": times["candidate"],
            "p50_speedup": times["reference"]["p50_ms"] / times["candidate"]["p50_ms"],
            # Iteration i of both models ran back to back on the same input: the median of the
            # per-iteration ratios cancels slow drift (benchmarks/latency_resolution.py).
            "paired_speedup": paired_speedup(times["reference"], times["candidate"]),
        }
        if ctx.recipe.precision.mode == "int8" and ctx.recipe.precision.target == "tensorrt":
            lat["note"] = (
                "tensorrt target: symmetric S8S8 Q/DQ is TensorRT's form and runs slower than FP32 on ONNX Runtime's x86 "
                "kernels; CPU latency here is informational. CPU speed is measured on the onnxruntime-cpu target; "
                "the TensorRT speed proxy is the INT8 weight share and the engine build."
            )
        result["latency"] = lat
    summary = {"samples": result["samples"]}
    if task := result.get("task"):
        summary[f"{task['name']} ref → cand"] = f"{task['reference']:.3g} → {task['candidate']:.3g}{task.get('unit', '')}"
    if lat := result.get("latency"):
        summary["p50 speed-up"] = f"{lat['p50_speedup']:.2f}x"
    record = StageRecord(name="validate", status="ran", seconds=time.perf_counter() - start, summary=summary)
    return record, result


# ---------------------------------------------------------------- the run


def optimize(
    model_path: str | Path,
    out_dir: str | Path,
    recipe: Recipe,
    *,
    calib: str | Path | None = None,
    val: str | Path | None = None,
    gates: list[str] = (),
    use_cache: bool = True,
    progress: Progress | None = None,
    command: str | None = None,
) -> Report:
    """Run the whole pipeline; write every artifact and ``report.json``/``report.md`` to ``out_dir``.

    Raises TrtforgeError subclasses for bad input or config before any artifact is written.
    Gates are evaluated into the report (``report.passed``); the caller decides the exit code.
    """
    progress = progress or Progress("quiet")
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    all_gates = list(recipe.validate.gates) + list(gates)
    check_syntax(all_gates)
    baseline = load_baseline(recipe.resolve(recipe.validate.baseline))

    model = load_model(model_path)
    specs = input_specs(model)
    model_info = {
        "path": str(model_path),
        "sha256": content_hash(model_path),
        "nodes": count_nodes(model),
        "opset": model.opset_imports.get("", None),
        "inputs": [s.to_dict() for s in specs],
    }
    del model

    # Data first: a wrong input name or a NaN must stop the run before any work.
    data = RunData()
    calib_dir = Path(calib) if calib else recipe.resolve(recipe.precision.calib)
    val_dir = Path(val) if val else recipe.resolve(recipe.validate.data)
    if recipe.precision.synthetic and calib_dir is None:
        data.calib, data.calib_fingerprint = _synthetic(specs, recipe)
    else:
        data.calib, data.calib_fingerprint = _open_data(calib_dir, specs, recipe.precision.max_samples)
    if recipe.precision.mode == "int8" and data.calib is None:
        # INT8 without data is a config error, never a silent skip or a silent random calibration.
        raise ConfigError(
            "INT8 needs calibration data: pass --calib DIR (a folder of .npz samples) or set precision.calib in the recipe "
            "(or precision.synthetic: true to calibrate on random data, knowingly; or --precision none)"
        )
    data.val, data.val_fingerprint = _open_data(val_dir, specs, recipe.validate.max_samples)
    if recipe.validate.metric and data.val is not None and data.val.labels is None:
        raise InputError(f"{val_dir}: the task metric needs labels, but the folder has no labels.json")
    if all_gates and data.val is None:
        raise ConfigError(f"gates {all_gates} are checked on validation data: pass --val DIR or set validate.data")
    if recipe.validate.metric and data.val is not None:
        # A bad metric path or a metric file that fails to import stops the run before any stage.
        from optimizer.validate import load_metric

        data.metric = load_metric(recipe.validate.metric, recipe.base_dir)
        data.metric_sha256 = _metric_sha256(recipe)

    ctx = RunContext(
        recipe=recipe,
        out_dir=out_dir,
        stem=model_path.stem,
        data=data,
        cache=StageCache(enabled=use_cache),
        progress=progress,
    )
    report = Report(
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
        model=model_info,
        recipe=recipe.to_dict(),
        environment=environment(),
    )
    # Every stage says now whether it can run, so a missing builder or a bad profile stops the
    # run before the first artifact is written.
    skip_reasons = {stage.name: stage.enabled(ctx) for stage in STAGES}
    if recipe.build.shapes and skip_reasons["build"] is None:
        _opt_shapes(recipe)  # parse the profile now: a malformed one is a config error up front
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = tool_versions(("tensorrt", "tensorrt-rtx"))
    current = model_path
    current_hash = model_info["sha256"]
    precision_input = model_path
    for stage in STAGES:
        reason = skip_reasons[stage.name]
        if reason is not None:
            report.stages.append(StageRecord(name=stage.name, status="skipped", reason=reason))
            progress.info(f"{stage.name}: skipped ({reason})")
            continue
        key = cache_key(stage.name, {"input": current_hash, "config": stage.config(ctx), "versions": versions})
        start = time.perf_counter()
        hit = ctx.cache.get(stage.name, key)
        if hit is not None:
            entry, stored = hit
            files = restore(entry, stored["_files"], out_dir)
            record = StageRecord(**{k: v for k, v in stored.items() if not k.startswith("_")})
            record.status = "cached"
            record.artifact = str(files[0])
            record.seconds = time.perf_counter() - start
            progress.info(f"{stage.name}: cached ({record.seconds:.2f}s)")
        else:
            progress.info(f"{stage.name}: running")
            files, record = stage.run(ctx, current)
            record.seconds = time.perf_counter() - start
            ctx.cache.put(stage.name, key, files, dataclasses.asdict(record))
            progress.info(f"{stage.name}: done in {record.seconds:.1f}s")
        report.stages.append(record)
        report.artifacts[stage.name] = record.artifact
        if stage.name == "precision":
            precision_input = current
        if stage.produces_model:
            current = Path(record.artifact)
            current_hash = content_hash(current)

    if current != model_path and recipe.precision.mode == "bf16":
        report.stages.append(
            StageRecord(name="validate", status="skipped", reason="ONNX Runtime's CPU kernels have no BF16: validate the engine on a GPU")
        )
    elif current != model_path:
        record, validation = validate_stage(ctx, model_path, current)
        report.stages.append(record)
        report.validation = validation
    else:
        report.stages.append(StageRecord(name="validate", status="skipped", reason="no stage changed the model"))
    report.gates = evaluate_gates(all_gates, report.validation, baseline.validation if baseline else None)
    if current != model_path and report.validation is not None:
        # The search compares against the precision stage's input: the graph the candidate was made
        # from (after passes and pruning), so only precision changes are blamed on quantized nodes.
        search_divergence(ctx, report, precision_input, current)
    report.warnings.extend(ctx.warnings)
    if data.calib_fingerprint and data.calib_fingerprint.get("synthetic"):
        report.warnings.append("calibration used synthetic random data (--synthetic)")
    report.artifacts["report"] = str(out_dir / "report.json")
    report.artifacts["summary"] = str(out_dir / "report.md")
    report.artifacts["html"] = str(out_dir / "report.html")
    report.artifacts["junit"] = str(out_dir / "junit.xml")
    report.save(out_dir / "report.json")
    write_renderings(report, out_dir)
    return report


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
    """First-divergent-layer search into ``report.validation['divergence']``, per validate.divergence."""
    cfg = ctx.recipe.validate
    if cfg.divergence == "never" or (cfg.divergence == "on-failure" and report.passed) or ctx.data.val is None:
        return
    from optimizer.divergence import divergence_to_dict, find_divergence

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
    report.validation["divergence"] = divergence_to_dict(result)


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
) -> Report:
    """``trtforge validate``: the validation stage alone, on two existing models.

    ``baseline``: a previous report.json (adds the *_regression gate metrics);
    ``divergence``: "never" | "on-failure" | "always" run the first-divergent-layer search.
    """
    check_syntax(list(gates))
    previous = load_baseline(Path(baseline) if baseline else None)
    candidate, reference = Path(candidate), Path(reference)
    ref_model = load_model(reference)
    load_model(candidate)  # fail early and clearly on a bad candidate file
    specs = input_specs(ref_model)
    recipe = Recipe()
    recipe.base_dir = Path.cwd()
    recipe.precision.mode = "none"
    recipe.validate.metric = metric
    recipe.validate.latency.threads = threads
    recipe.validate.latency.iterations = iterations
    recipe.validate.latency.enabled = iterations > 0
    recipe.validate.divergence = divergence
    recipe.validate.divergence_samples = divergence_samples
    recipe.validate.__post_init__()
    data = RunData()
    data.val, data.val_fingerprint = _open_data(Path(data_dir), specs, None)
    if metric and data.val.labels is None:
        raise InputError(f"{data_dir}: the task metric needs labels, but the folder has no labels.json")
    ctx = RunContext(recipe, Path("."), reference.stem, data, StageCache(enabled=False), progress or Progress("quiet"))
    record, validation = validate_stage(ctx, reference, candidate)
    report = Report(
        command=" ".join(shlex.quote(a) for a in sys.argv),
        model={"path": str(reference), "sha256": content_hash(reference), "nodes": count_nodes(ref_model)},
        stages=[record],
        validation=validation,
        environment=environment(),
    )
    report.artifacts["candidate"] = str(candidate)
    report.gates = evaluate_gates(list(gates), validation, previous.validation if previous else None)
    search_divergence(ctx, report, reference, candidate)
    return report
