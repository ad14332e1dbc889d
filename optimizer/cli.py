"""The ``trtforge`` command line: a thin layer over the Python API.

Every ``TrtforgeError`` becomes one line on stderr and its exit code (2: bad input or
config, 1: a gate or check failed). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console

from optimizer.errors import EXIT_GATE_FAILED, EXIT_OK, ConfigError, TrtforgeError

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrtforgeError as exc:
            message = " ".join(str(exc).split())
            click.echo(f"trtforge: error: {message}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _progress(quiet: bool, as_json: bool):
    from optimizer.progress import Progress

    return Progress("quiet" if quiet or as_json else "auto", console=_err)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trtforge")
def main() -> None:
    """trtforge: ONNX → TensorRT deployment optimizer.

    \b
    Typical use:
      trtforge inspect model.onnx
      trtforge optimize model.onnx -o out/ --recipe recipe.yaml --calib calib/ --val val/
    """


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
@click.option("--parse-check/--no-parse-check", default=True, show_default=True, help="Try TensorRT's ONNX parser (when installed).")
@click.option("--builder", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default=None, help="Which TensorRT to parse with.")
@_handle_errors
def inspect(model: Path, as_json: bool, parse_check: bool, builder: str | None) -> None:
    """Show opsets, I/O, dynamic dims, op histogram, parameters, and TensorRT parse status.

    \b
    Example:
      trtforge inspect model.onnx --json > model.json
    """
    from optimizer.inspect import inspect_model, print_inspect

    report = inspect_model(model, parse_check=parse_check, builder=builder)
    if as_json:
        _print_json(report.to_dict())
    else:
        print_inspect(report, _out)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for artifacts and the report.")
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="Recipe YAML (defaults apply without one).")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy).")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation data folder (.npz/.npy, labels.json).")
@click.option("--precision", type=click.Choice(["int8", "fp16", "bf16", "none"]), default=None, help="Override the recipe's precision mode (INT8 Q/DQ, or FP16/BF16 Casts).")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime-cpu"]), default=None, help="Q/DQ form: TensorRT's (default) or ORT CPU's.")
@click.option("--gate", "gates", multiple=True, help="Release gate, e.g. 'cer_increase<=0.5' (repeatable).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="Previous release's report.json: enables *_regression gates.")
@click.option("--divergence", type=click.Choice(["never", "on-failure", "always"]), default=None, help="First-divergent-layer search (recipe default: on-failure).")
@click.option("--synthetic", is_flag=True, help="Calibrate on random data (knowingly; the report says so).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def optimize(model, out_dir, recipe, calib, val, precision, target, gates, baseline, divergence, synthetic, no_cache, as_json, quiet) -> None:
    """Run the whole pipeline and write every artifact and one report.

    Exits 1 when a gate fails, 2 on bad input or config.

    \b
    Example:
      trtforge optimize model.onnx -o out/ --recipe recipe.yaml \\
          --calib data/calib --val data/val --gate "max_rel_error<=0.05"
    """
    from optimizer.pipeline import optimize as run_pipeline
    from optimizer.recipe import load_recipe
    from optimizer.report import print_summary

    config = load_recipe(recipe)
    if precision:
        config.precision.mode = precision
    if target:
        config.precision.target = target
    if baseline:  # a command-line path is relative to the working directory, not the recipe
        config.validate.baseline = str(baseline.resolve())
    if divergence:
        config.validate.divergence = divergence
    if synthetic:
        config.precision.synthetic = True
    report = run_pipeline(
        model,
        out_dir,
        config,
        calib=calib,
        val=val,
        gates=list(gates),
        use_cache=not no_cache,
        progress=_progress(quiet, as_json),
    )
    if as_json:
        _print_json(report.to_dict())
    elif not quiet:
        print_summary(report, _out)
        next_step = f"trtforge report {out_dir / 'report.json'}"
        _out.print(f"[bold]{'PASSED' if report.passed else 'FAILED'}[/]; next: {next_step}")
    sys.exit(EXIT_OK if report.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("--markdown", type=click.Path(path_type=Path), default=None, help="Write the Markdown summary here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="Write the self-contained HTML report here.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None, help="Write JUnit XML (one testcase per gate).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="A previous report.json: print every gate metric side by side.")
@_handle_errors
def report(report_path: Path, markdown: Path | None, html_path: Path | None, junit_path: Path | None, baseline: Path | None) -> None:
    """Re-render a saved report.json (terminal summary, Markdown, HTML, JUnit) or diff it with a baseline.

    Exits 1 when the saved report's gates failed, so CI can gate on a stored report.

    \b
    Example:
      trtforge report out/report.json --html report.html --junit junit.xml
      trtforge report out/report.json --baseline last_release/report.json
    """
    from optimizer.model import write_text_atomic
    from optimizer.report import load_report, print_diff, print_summary, to_markdown

    loaded = load_report(report_path)
    previous = load_report(baseline) if baseline else None
    wrote = []
    if markdown:
        wrote.append(write_text_atomic(markdown, to_markdown(loaded)))
    if html_path:
        from optimizer.html_report import to_html

        wrote.append(write_text_atomic(html_path, to_html(loaded)))
    if junit_path:
        from optimizer.junit import to_junit

        wrote.append(write_text_atomic(junit_path, to_junit(loaded)))
    if previous is not None:
        print_diff(previous, loaded, _out)
    elif not wrote:
        print_summary(loaded, _out)
    for path in wrote:
        _out.print(f"wrote {path}")
    sys.exit(EXIT_OK if loaded.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None, help="Output .onnx.")
@click.option("--passes", "names", default=None, help="Comma-separated pass names (default: the default order).")
@click.option("--skip", default="", help="Comma-separated pass names to leave out.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check outputs against the original after each pass.")
@click.option("--shapes", default=None, help="Pin dynamic dims for verification, e.g. 'x:1x3x48x320'.")
@click.option("--list", "list_passes", is_flag=True, help="List the available passes in default order.")
@click.option("--explain", is_flag=True, help="Print, per pass, each node a rule matched but refused, and why.")
@click.option("--opset", type=int, default=None, help="Upgrade to this opset first (onnx version converter, verified).")
@click.option("--specialize", is_flag=True, help="Pin the inputs to --shapes in the model itself (static shapes; folds shape subgraphs).")
@_handle_errors
def passes(model, out_path, names, skip, verify, shapes, list_passes, explain, opset, specialize) -> None:
    """Run graph passes (semantics-preserving) and write the result.

    \b
    Example:
      trtforge passes model.onnx -o opt.onnx --skip fold_constants --shapes x:1x3x224x224
      trtforge passes model.onnx -o opt.onnx --opset 17 --explain --shapes x:1x3x48x320
      trtforge passes model.onnx -o static.onnx --shapes x:1x3x48x320 --specialize
    """
    import graph_passes

    if list_passes:
        for name, doc in graph_passes.available_passes().items():
            _out.print(f"{name:34s} {doc}")
        return
    if model is None or out_path is None:
        raise ConfigError("give a MODEL and -o OUT.onnx (or --list)")
    from optimizer.model import count_nodes
    from optimizer.model import load_model, refuse_overwrite, save_model

    refuse_overwrite(model, out_path)
    loaded = load_model(model)
    before = count_nodes(loaded)
    fixed = _parse_fixed_shapes(shapes)
    if specialize and not fixed:
        raise ConfigError("--specialize pins the inputs to --shapes: give --shapes too, e.g. --shapes x:1x3x224x224")
    verifier = graph_passes.Verifier(loaded, shapes=fixed) if verify else None
    records = graph_passes.run_passes(
        loaded,
        [n for n in names.split(",") if n] if names else None,
        skip=[n for n in skip.split(",") if n],
        verifier=verifier,
        explain=explain,
        opset=opset,
        specialize=fixed if specialize else None,
    )
    save_model(loaded, out_path)
    for r in records:
        _out.print(f"{r.name:34s} {'changed' if r.modified else '-':8s} {r.nodes_before:5d} → {r.nodes_after:5d}  {r.seconds:.2f}s")
        if explain:
            for line in [*r.notes, *r.refusals]:
                _out.print(f"    {line}", markup=False)
    _out.print(f"{before} → {count_nodes(loaded)} nodes{' (verified)' if verify else ''}; wrote {out_path}")


def _parse_fixed_shapes(spec: str | None) -> dict[str, tuple[int, ...]] | None:
    if not spec:
        return None
    shapes = {}
    for part in spec.split(";"):
        name, sep, dims = part.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--shapes '{part}': expected name:1x3x224x224") from None
    return shapes


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Output .onnx with Q/DQ.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy).")
@click.option("--synthetic", type=int, default=None, help="Calibrate on N random samples instead (knowingly).")
@click.option("--shapes", default=None, help="Dims for synthetic data, e.g. 'x:1x3x48x320'.")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime-cpu"]), default="tensorrt", show_default=True)
@click.option(
    "--method", type=click.Choice(["max", "percentile", "entropy", "mse"]), default="max", show_default=True,
    help="Calibration method: max (MinMax), percentile, entropy (TensorRT KL) or mse.",
)
@click.option("--percentile", type=float, default=99.99, show_default=True, help="For --method percentile.")
@click.option("--exclude", default="", help="Comma-separated node names to keep in FP32.")
@click.option("--per-tensor", is_flag=True, help="One scale per weight tensor instead of per output channel.")
@click.option(
    "--budget", default=None,
    help="Keep the most sensitive layers in FP32 until this holds on --val, e.g. 'cer_increase<=0.1' (with --metric) "
    "or 'output_nrmse<=0.02'.",
)
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation folder (.npz + labels.json) for --budget.")
@click.option("--metric", "metric_spec", default=None, help="Task metric 'file.py:function' for --budget (executes that file).")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def quantize(
    model, out_path, calib, synthetic, shapes, target, method, percentile, exclude, per_tensor, budget, val, metric_spec, as_json
) -> None:
    """Insert INT8 Q/DQ calibrated on data (TensorRT 11 takes precision from the graph).

    \b
    Example:
      trtforge quantize model.onnx -o model.int8.onnx --calib data/calib --target tensorrt --method mse
      trtforge quantize model.onnx -o model.int8.onnx --calib data/calib --val data/val \\
          --metric samples/ppocr_rec/metric.py:cer --budget "cer_increase<=0.1"
    """
    from calibration import NpzFolderSource, quantize as run_quantize, synthetic_source
    from optimizer.model import input_specs, load_model

    if (calib is None) == (synthetic is None):
        raise ConfigError("give exactly one of --calib DIR or --synthetic N")
    if calib is not None:
        source = NpzFolderSource(calib)
    else:
        specs = input_specs(load_model(model))
        source = synthetic_source(specs, count=synthetic, shapes=_parse_fixed_shapes(shapes), seed=0)
    excluded = [n for n in exclude.split(",") if n]
    search = None
    if budget is not None:
        from calibration.sensitivity import budget_metric, quantize_with_budget, report

        if val is None:
            raise ConfigError("--budget is measured on validation data: pass --val DIR")
        val_source = NpzFolderSource(val)
        val_source.bind(input_specs(load_model(model)))
        metric_fn, higher = budget_metric(metric_spec, Path.cwd(), val_source.labels, model)
        search = quantize_with_budget(
            model, out_path, source, list(val_source), budget=budget, metric=metric_fn, higher_is_better=higher,
            target=target, method=method, percentile=percentile, per_channel=not per_tensor, exclude=excluded,
            progress=None if as_json else (lambda msg: _out.print(f"[dim]{msg}[/]")),
        )
        result = search.quantize
    elif val is not None or metric_spec is not None:
        raise ConfigError("--val and --metric are for --budget; give a budget or drop them")
    else:
        result = run_quantize(
            model, out_path, source, target=target, method=method, percentile=percentile, per_channel=not per_tensor,
            exclude=excluded,
        )
    if as_json:
        data = dataclasses.asdict(result)
        if search is not None:
            data["budget"] = report(search)
        _print_json(data)
        return
    if search is not None:
        status = "met" if search.met else "[red]NOT met[/]"
        _out.print(
            f"budget {search.budget} {status}: {search.final_change:.4g} (all INT8: {search.all_int8_change:.4g}); "
            f"kept in FP32: {', '.join(search.kept) or 'nothing'}"
        )
        for node, why in search.reasons.items():
            _out.print(f"  {node}: {why}")
    _out.print(
        f"quantized {len(result.quantized_nodes)} node(s) for {target} ({result.num_q} Q, {result.num_dq} DQ; "
        f"INT8 weight share {result.quantized_weight_share:.1%}); left in FP32: {len(result.skipped)}"
    )
    if result.fingerprint.synthetic:
        _out.print("[yellow]warning[/]: calibrated on synthetic random data")
    _out.print(f"wrote {out_path}; next: trtforge build {out_path} -o model.engine --expect int8")
    if search is not None and not search.met:
        sys.exit(EXIT_GATE_FAILED)  # the model is written, but it misses the budget the user set


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None, help="Pruned .onnx to write (not needed with --dry-run).")
@click.option("--sparsity", type=click.Choice(["2:4"]), default=None, help="2:4 structured sparsity (TensorRT's sparse-kernel layout).")
@click.option("--channels", type=float, default=None, help="Fraction of each prunable channel group to remove, e.g. 0.3.")
@click.option("--flops-target", type=float, default=None, help="Instead: fraction of Conv/Gemm/MatMul FLOPs to remove, e.g. 0.25.")
@click.option("--max-error", type=float, default=None, help="Instead: the largest FLOPs cut whose relative output error on --val stays below this, e.g. 0.05.")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation data folder for --max-error.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy): data-aware choice and least-squares repair.")
@click.option("--samples", type=int, default=32, show_default=True, help="Calibration samples used for statistics.")
@click.option("--method", type=click.Choice(["auto", "magnitude", "activation", "obs"]), default="auto", show_default=True, help="2:4 mask choice (auto: obs with data, magnitude without).")
@click.option("--criterion", type=click.Choice(["auto", "l1", "l2", "activation"]), default="auto", show_default=True, help="Channel ranking (auto: activation with data, l2 without).")
@click.option("--no-reconstruct", is_flag=True, help="Do not refit kept weights by least squares.")
@click.option("--exclude", default="", help="Comma-separated node-name globs to leave alone.")
@click.option("--shape", "shape", default=None, help="Input shape for FLOPs without data, e.g. 'x:1x3x640x640'.")
@click.option("--dry-run", is_flag=True, help="Report FLOPs, parameters and per-layer choices; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def prune(model, out_path, sparsity, channels, flops_target, max_error, val, calib, samples, method, criterion, no_reconstruct, exclude, shape, dry_run, as_json) -> None:
    """Prune a model: 2:4 sparsity and/or channel pruning, repaired on calibration data.

    \b
    Example:
      trtforge prune det.onnx -o det.pruned.onnx --flops-target 0.25 --calib data/calib
      trtforge prune rec.onnx -o rec.24.onnx --sparsity 2:4 --calib data/calib --method obs
      trtforge prune det.onnx --channels 0.3 --shape x:1x3x640x640 --dry-run
    """
    from calibration import NpzFolderSource
    from optimizer.pruning import prune as run_prune

    if out_path is None and not dry_run:
        raise ConfigError("give -o OUT.onnx, or --dry-run to only report")
    options = dict(
        sparsity=sparsity, source=NpzFolderSource(calib) if calib is not None else None, method=method,
        criterion=criterion, reconstruct=not no_reconstruct, exclude=[n for n in exclude.split(",") if n],
        samples=samples, input_shapes=_parse_fixed_shapes(shape),
    )
    if max_error is not None:
        from optimizer.pruning import prune_within_error

        if channels is not None or flops_target is not None or dry_run:
            raise ConfigError("--max-error searches the FLOPs cut itself: drop --channels/--flops-target/--dry-run")
        result = prune_within_error(model, out_path, val=NpzFolderSource(val) if val else None, max_error=max_error, **options)
    else:
        result = run_prune(model, out_path, channels=channels, flops_target=flops_target, dry_run=dry_run, **options)
    if as_json:
        _print_json(result.to_dict())
        return
    from rich.table import Table

    table = Table(show_edge=False, title="per-layer choices", title_justify="left")
    for col in ("layer", "op", "choice", "reason / effect"):
        table.add_column(col)
    for g in result.groups:
        if g.roots:
            choice = "left alone" if g.reason else ("pruned" if g.kept < g.channels else "kept whole")
            effect = g.reason or f"{g.channels} → {g.kept} channels"
            table.add_row(", ".join(g.roots[:2]) + ("…" if len(g.roots) > 2 else ""), "Conv group", choice, effect)
    for c in result.layers:
        effect = c.reason
        if c.action == "pruned" and c.output_mse is not None:
            effect = f"output MSE {c.output_mse:.3g}" + (f" → {c.output_mse_reconstructed:.3g} refit" if c.output_mse_reconstructed is not None else "")
        table.add_row(c.name, c.op_type, "2:4" if c.action == "pruned" else "dense", effect)
    _out.print(table)
    _out.print(
        f"FLOPs {result.flops_before / 1e9:.3g}G → {result.flops_after / 1e9:.3g}G (-{result.flops_reduction:.1%}); "
        f"parameters {result.params_before} → {result.nonzero_after} non-zero"
        + (f"; 2:4 weights carry {result.sparse_flops_share:.0%} of FLOPs" if sparsity else "")
    )
    if result.budget:
        tried = ", ".join(f"-{t['flops_reduction']:.0%} FLOPs: {t['relative_error']:.3g}" for t in result.budget["trials"])
        _out.print(f"error budget {result.budget['max_error']:.3g} on validation data; tried {tried}")
    for warning in result.warnings:
        _out.print(f"[yellow]warning[/]: {warning}")
    if dry_run:
        _out.print("dry run: nothing written")
    else:
        nxt = f"trtforge build {out_path} -o model.engine" + (" --sparse-weights" if sparsity else "")
        _out.print(f"wrote {out_path}; next: {nxt}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Engine file to write.")
@click.option("--shapes", "shapes", multiple=True, help="One optimization profile 'input:min,opt,max' (dims like 1x3x48x320; inputs joined by ';'). Repeat for several profiles.")
@click.option("--builder", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default=None)
@click.option("--expect", type=click.Choice(["int8", "fp16", "bf16", "fp8", "fp32"]), default=None, help="Fail unless the network carries this precision.")
@click.option("--workspace-mib", type=int, default=None)
@click.option("--builder-opt-level", "--opt-level", "opt_level", type=int, default=None, help="Builder optimization level 0..5 (TensorRT's default: 3).")
@click.option("--compute-capability", "compute_capabilities", multiple=True, help="TensorRT-RTX target, e.g. SM86 (repeatable).")
@click.option("--hardware-compat", type=click.Choice(["ampere_plus", "same_compute_capability"]), default=None, help="Let the engine run on other GPUs than the one building it.")
@click.option("--sparse-weights", is_flag=True, help="Let TensorRT use 2:4 sparse kernels where the weights are 2:4 sparse.")
@click.option("--refit", is_flag=True, help="Build a refittable engine (weights can be replaced later).")
@click.option("--strip-weights", is_flag=True, help="Leave weights out of the plan (refit them from the ONNX when deploying).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="Timing cache file (default: one per TensorRT version and GPU in the engine store).")
@click.option("--no-engine-store", is_flag=True, help="Always build; neither read nor write the engine store.")
@click.option("--rebuild", is_flag=True, help="Build even when the engine store has this engine, and replace the stored one.")
@click.option("--fp16", is_flag=True, hidden=True)
@click.option("--int8", is_flag=True, hidden=True)
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def build(
    model, out_path, shapes, builder, expect, workspace_mib, opt_level, compute_capabilities, hardware_compat,
    sparse_weights, refit, strip_weights, timing_cache, no_engine_store, rebuild, fp16, int8, as_json,
) -> None:
    """Build a TensorRT engine (precision comes from the graph: see `trtforge quantize`).

    Engines are kept in a content-addressed store (model + options + TensorRT version +
    target): the same build a second time is a copy. `trtforge cache engines` lists it.

    \b
    Example:
      trtforge build model.int8.onnx -o model.engine --expect int8 \\
          --shapes x:1x3x48x32,1x3x48x320,1x3x48x1280 --shapes x:8x3x48x320,8x3x48x320,8x3x48x320
    """
    from optimizer.engine import BuildConfig, build_engine, build_or_reuse, parse_shapes

    if no_engine_store and rebuild:
        raise ConfigError("--rebuild replaces a stored engine; it makes no sense with --no-engine-store (drop one)")
    config = BuildConfig(
        profiles=[parse_shapes(spec) for spec in shapes],
        workspace_mib=workspace_mib,
        optimization_level=opt_level,
        timing_cache=timing_cache,
        sparse_weights=sparse_weights,
        expect=expect,
        precision_flags=tuple(f for f, on in (("fp16", fp16), ("int8", int8)) if on),
        compute_capabilities=tuple(compute_capabilities),
        hardware_compatibility=hardware_compat,
        refit=refit,
        strip_weights=strip_weights,
    )
    if no_engine_store:
        from optimizer.engine.store import add_timing_cache

        result = build_engine(model, out_path, add_timing_cache(config, builder), builder=builder)
    else:
        result = build_or_reuse(model, out_path, config, builder=builder, rebuild=rebuild)
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    p = result.precision
    how = "reused from the engine store" if result.store_hit else f"built in {result.seconds:.1f}s"
    _out.print(
        f"{result.engine_path}: {how} with {result.builder} {result.version} for {result.target} "
        f"({result.engine_bytes / 1e6:.1f} MB); network carries {', '.join(p.carries)}; "
        f"{p.quantize_layers} Q / {p.dequantize_layers} DQ / {p.cast_layers} Cast layers"
    )
    for note in result.notes:
        _out.print(f"  note: {note}")
    _out.print(f"next: trtforge check-engine {result.engine_path} (on the machine that will run it)")


@main.command("check-engine")
@click.argument("engine", type=click.Path(path_type=Path))
@_handle_errors
def check_engine(engine: Path) -> None:
    """Check that an engine fits this machine (TensorRT flavour and version, GPU), from its sidecar.

    Exits 2 with the reason when it does not.

    \b
    Example:
      trtforge check-engine model.engine
    """
    from optimizer.engine import require_compatible

    record = require_compatible(engine)
    _out.print(f"{engine}: fits this machine (built with {record['builder']} {record['version']} for {record.get('target', '?')})")


@main.command()
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The FP32 model to compare against.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Validation data folder (.npz/.npy, labels.json).")
@click.option("--metric", default=None, help="Task metric 'file.py:function' (executes that file).")
@click.option("--gate", "gates", multiple=True, help="e.g. 'cer_increase<=0.5' (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--no-latency", is_flag=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write report JSON here.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A previous release's report.json: adds gate metrics such as cer_regression, p50_regression_pct.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None, help="Write JUnit XML (one testcase per gate).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="Write the self-contained HTML report.")
@click.option("--divergence", type=click.Choice(["never", "on-failure", "always"]), default="on-failure", show_default=True,
              help="First-divergent-layer search (needs the model the candidate was made from as --reference).")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def validate(candidate, reference, data, metric, gates, threads, iterations, no_latency, report_path, baseline, junit_path,
             html_path, divergence, as_json) -> None:
    """Compare a candidate ONNX model with the FP32 reference on real data; gate the result.

    Exits 0 when every gate passes, 1 when one fails, 2 on bad input.

    \b
    Example:
      trtforge validate model.int8.onnx --reference model.opt.onnx --data data/val \\
          --metric metric.py:cer --gate "cer_increase<=1.0" --baseline last/report.json \\
          --gate "cer_regression<=0.2" --junit junit.xml --html report.html
    """
    from optimizer.model import write_text_atomic
    from optimizer.pipeline import validate_only
    from optimizer.report import print_summary

    report = validate_only(
        candidate,
        reference,
        data,
        metric=metric,
        gates=list(gates),
        threads=threads,
        iterations=0 if no_latency else iterations,
        progress=_progress(False, as_json),
        baseline=baseline,
        divergence=divergence,
    )
    if report_path:
        report.save(report_path)
    if junit_path:
        from optimizer.junit import to_junit

        write_text_atomic(junit_path, to_junit(report))
    if html_path:
        from optimizer.html_report import to_html

        write_text_atomic(html_path, to_html(report))
    if as_json:
        _print_json(report.to_dict())
    else:
        print_summary(report, _out)
    sys.exit(EXIT_OK if report.passed else EXIT_GATE_FAILED)


@main.group()
def cache() -> None:
    """Manage the stage cache (under $TRTFORGE_CACHE_DIR or $XDG_CACHE_HOME/trtforge)."""


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached stage result."""
    from optimizer.cache import StageCache

    removed = StageCache().clear()
    _out.print(f"removed {removed} cached stage result(s)")


@cache.command("engines")
@click.option("--clear", "clear_all", is_flag=True, help="Delete every stored engine.")
@click.option("--remove", "keys", multiple=True, help="Delete the entry with this key (or key prefix; repeatable).")
@_handle_errors
def cache_engines(clear_all: bool, keys: tuple[str, ...]) -> None:
    """List the engine store, or invalidate entries (--remove KEY, --clear).

    \b
    Example:
      trtforge cache engines --remove 14fbb16c
    """
    from optimizer.engine import EngineStore

    store = EngineStore()
    if clear_all:
        _out.print(f"removed {store.clear()} stored engine(s) from {store.root}")
        return
    entries = store.entries()
    for prefix in keys:
        matches = [e for e in entries if e.key.startswith(prefix)]
        if len(matches) != 1:
            raise ConfigError(f"--remove {prefix}: matches {len(matches)} stored engines; give a longer key prefix (see `trtforge cache engines`)")
        store.remove(matches[0].key)
        _out.print(f"removed {matches[0].key[:12]} ({matches[0].model})")
    if keys:
        return
    for e in entries:
        _out.print(f"{e.key[:12]}  {e.builder} {e.version}  {e.target}  {e.engine_bytes / 1e6:.1f} MB  {e.model}")
    _out.print(f"{len(entries)} stored engine(s) in {store.root}")


if __name__ == "__main__":
    main()
