"""The ``trtforge`` command line: a thin layer over the Python API.

Every ``TrtforgeError`` becomes one line on stderr and its exit code (2: bad input or
config, 1: a gate or check failed). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from optimizer.errors import EXIT_GATE_FAILED, EXIT_OK, ConfigError, TrtforgeError
from optimizer.recipe import QUANTIZE_MODES, choices

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


def _print_shape_sources(shapes: dict | None) -> None:
    """One line: each input's range and where it came from (flags, recipe, data, metadata, default)."""
    if not shapes or not shapes.get("inputs"):
        return
    from optimizer.shapes import describe_inputs

    _out.print("shapes: " + describe_inputs(shapes["inputs"]), markup=False)


def _shape_options(fn):
    """``--shapes`` and ``--dim``: the one shape language (``optimizer.shapes``) on every command."""
    fn = click.option(
        "--dim", "dims", multiple=True, metavar="NAME=SIZE",
        help="Size a named dynamic dim wherever the model uses it: 'batch=1' or 'seq=16,128,512' (min,opt,max). Repeatable.",
    )(fn)
    return click.option(
        "--shapes", "shapes", multiple=True, metavar="SPEC",
        help="Input shapes: 'x:1x3x48x320', or 'x:min,opt,max' with dims joined by x and inputs by ';'. "
        "Repeat for another engine profile. Default: from the data, the model's metadata, else probed.",
    )(fn)


_ALONE = "default"  # what `--synthetic` given alone becomes: the command's own count


class _SampleCount(click.ParamType):
    """A count >= 1, or ``True`` for the option given alone (the command picks the count)."""

    name = "N"

    def convert(self, value, param, ctx):
        if value in (True, _ALONE):  # True: already converted (click converts defaults and flag values too)
            return True
        return click.IntRange(min=1).convert(value, param, ctx)


class _SyntheticCountCommand(click.Command):
    """A command with ``--synthetic [N]``: a word after the flag that is not a count stays where it was.

    Click gives an option with an optional value the next word whatever it is, so
    ``optimize --synthetic model.onnx -o out`` (right when the flag took no value) would read the
    model path as N. Here such a ``--synthetic`` becomes ``--synthetic=default`` first.
    """

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, [
            f"--synthetic={_ALONE}" if arg == "--synthetic" and (i + 1 == len(args) or not args[i + 1].isdigit()) else arg
            for i, arg in enumerate(args)
        ])


def _synthetic_option(fn):
    """``--synthetic [N]``: random calibration data, asked for by name; N samples, or ``True`` alone."""
    return click.option(
        "--synthetic", type=_SampleCount(), is_flag=False, flag_value=_ALONE, default=None, metavar="[N]",
        help="Calibrate on N random samples (alone: 16; optimize: the recipe's precision.max_samples if set) instead of data, knowingly: "
        "the report says so.",
    )(fn)


def _resolve_shapes(model, shapes=(), dims=(), fingerprints=(), probe=True):
    """Every input's shape for ``model`` (an onnx-ir Model) from the flags, the data, metadata, defaults."""
    from optimizer.shapes import parse_dims, parse_profiles, resolve_model_shapes

    return resolve_model_shapes(
        model, profiles=parse_profiles(shapes), dims=parse_dims(dims), fingerprints=fingerprints, probe=probe
    )


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
@click.option("--builder", type=click.Choice(choices("build.builder")), default=None, help="Which TensorRT to parse with.")
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


@main.command(cls=_SyntheticCountCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for artifacts and the report.")
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="Recipe YAML (defaults apply without one).")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy).")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation data folder (.npz/.npy, labels.json).")
@click.option("--precision", type=click.Choice(choices("precision.mode")), default=None,
              help="Override the recipe's precision mode (INT8/FP8 Q/DQ, INT4 weights, or FP16/BF16 Casts).")
@click.option("--target", type=click.Choice(choices("precision.target")), default=None, help="Q/DQ form: TensorRT's (default) or ORT CPU's.")
@click.option("--gate", "gates", multiple=True, help="Release gate, e.g. 'cer_increase<=0.5' (repeatable).")
@click.option("--no-default-gates", is_flag=True, help="Without --gate, check no gate at all (report only).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="Previous release's report.json: enables *_regression gates.")
@click.option("--divergence", type=click.Choice(choices("validate.divergence")), default=None, help="First-divergent-layer search (recipe default: on-failure).")
@_shape_options
@_synthetic_option
@click.option("--no-cache", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def optimize(model, out_dir, recipe, calib, val, precision, target, gates, no_default_gates, baseline, divergence, shapes, dims, synthetic, no_cache, as_json, quiet) -> None:
    """Run the whole pipeline and write every artifact and one report.

    Works with no recipe: passes, INT8 Q/DQ for TensorRT, an engine (when TensorRT-RTX is
    installed) whose profile covers the data's shapes, and validation. Each input's shape
    comes from --shapes/--dim, the recipe, the data, the model's metadata, or defaults that
    ONNX Runtime runs; the report says which. Exits 1 when a gate fails, 2 on bad input or config.

    \b
    Example:
      trtforge optimize model.onnx -o out/ --calib data/calib --val data/val
      trtforge optimize model.onnx -o out/ --synthetic            # random calibration (16 samples), knowingly
      trtforge optimize model.onnx -o out/ --recipe recipe.yaml --dim batch=1,4,8 \\
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
    if no_default_gates:
        config.validate.default_gates = False
    if synthetic is not None:
        _use_synthetic(config, synthetic, calib)
    report = run_pipeline(
        model,
        out_dir,
        config,
        calib=calib,
        val=val,
        gates=list(gates),
        shapes=list(shapes),
        dims=list(dims),
        use_cache=not no_cache,
        progress=_progress(quiet, as_json),
        command=shlex.join(["trtforge", *sys.argv[1:]]),
    )
    if as_json:
        _print_json(report.to_dict())
    elif not quiet:
        print_summary(report, _out)
        _print_shape_sources(report.model.get("shapes"))
        next_step = f"trtforge report {out_dir / 'report.json'}"
        _out.print(f"[bold]{'PASSED' if report.passed else 'FAILED'}[/]; next: {next_step}")
    sys.exit(EXIT_OK if report.passed else EXIT_GATE_FAILED)


def _use_synthetic(config, count: int | bool, calib: Path | None) -> None:
    """``optimize --synthetic [N]``: random calibration data, N samples of it (``precision.max_samples``
    sizes the synthetic source; alone, the recipe's or 16). Real calibration data, when given, still
    wins and keeps its own limit."""
    config.precision.synthetic = True
    if count is not True and calib is None and config.precision.calib is None:
        config.precision.max_samples = count


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
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check outputs against the original (ONNX Runtime).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Verify on these real samples (.npz/.npy folder) instead of random inputs.")
@_shape_options
@click.option("--strict", is_flag=True, help="A pass that fails is an error (default: rolled back, named, skipped).")
@click.option("--list", "list_passes", is_flag=True, help="List the available passes in default order.")
@click.option("--explain", is_flag=True, help="Print, per pass, each node a rule matched but refused, and why.")
@click.option("--opset", type=int, default=None, help="Upgrade to this opset first (onnx version converter, verified).")
@click.option("--specialize", is_flag=True, help="Pin the inputs to --shapes in the model itself (static shapes; folds shape subgraphs).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-pass records and shape sources as JSON.")
@_handle_errors
def passes(model, out_path, names, skip, verify, data, shapes, dims, strict, list_passes, explain, opset, specialize, as_json) -> None:
    """Run graph passes (semantics-preserving) and write the result, verified in ONNX Runtime.

    With no flags every input's shape is resolved: from --data, the model's metadata, else
    batch-like dims 1 and the first size ONNX Runtime runs. Where random inputs cannot run
    the model, verification is partial (checker, shape inference, signature) and says so.

    \b
    Example:
      trtforge passes model.onnx -o opt.onnx
      trtforge passes model.onnx -o opt.onnx --data calib/ --explain
      trtforge passes model.onnx -o opt.onnx --dim batch=1 --shapes 'x:1x3x224x224' --skip fold_constants
      trtforge passes model.onnx -o static.onnx --shapes x:1x3x48x320 --specialize
    """
    import graph_passes

    if list_passes:
        for name, doc in graph_passes.available_passes().items():
            _out.print(f"{name:34s} {doc}")
        return
    if model is None or out_path is None:
        raise ConfigError("give a MODEL and -o OUT.onnx (or --list)")
    from optimizer.model import count_nodes, input_specs, load_model, refuse_overwrite, save_model

    refuse_overwrite(model, out_path)
    loaded = load_model(model)
    before = count_nodes(loaded)
    if specialize and not shapes and not dims:
        raise ConfigError("--specialize pins the inputs to --shapes: give --shapes too, e.g. --shapes x:1x3x224x224")
    feeds, fingerprints = None, ()
    if data is not None:
        feeds, fingerprint = _open_samples(data, input_specs(loaded), limit=4)
        fingerprints = (fingerprint,)
    resolved = _resolve_shapes(loaded, shapes, dims, fingerprints, probe=verify and feeds is None)
    if specialize:
        resolved.require()
    verifier = graph_passes.Verifier(loaded, feeds=feeds, shapes=resolved.opt()) if verify else None
    records = graph_passes.run_passes(
        loaded,
        [n for n in names.split(",") if n] if names else None,
        skip=[n for n in skip.split(",") if n],
        verifier=verifier,
        explain=explain,
        opset=opset,
        specialize=resolved.opt() if specialize else None,
        strict=strict,
    )
    save_model(loaded, out_path)
    partial = verifier.describe_partial() if verifier is not None else None
    if as_json:
        _print_json({
            "nodes_before": before, "nodes_after": count_nodes(loaded), "output": str(out_path),
            "verified": "partial" if partial else bool(verifier), "partial": partial,
            "shapes": resolved.to_dict(), "passes": [dataclasses.asdict(r) for r in records],
        })
        return
    for r in records:
        _out.print(f"{r.name:34s} {'changed' if r.modified else '-':8s} {r.nodes_before:5d} → {r.nodes_after:5d}  {r.seconds:.2f}s", markup=False)
        if explain:
            for line in [*r.notes, *r.refusals]:
                _out.print(f"    {line}", markup=False)
        elif r.refused:
            _out.print(f"    refused {r.refused} match{'es' if r.refused > 1 else ''} (--explain lists which and why)", markup=False)
        if getattr(r, "warning", None):
            _out.print(f"[yellow]warning[/]: {escape(r.warning)}")
    if verifier is not None and verifier.numeric:
        _out.print(f"verified on {'your data' if feeds else 'random inputs'}: {resolved.describe()}", markup=False)
    if partial:
        _out.print(f"[yellow]warning[/]: {escape(partial)}")
    status = " (verified)" if verifier is not None and not partial else (" (partly verified)" if partial else "")
    _out.print(f"{before} → {count_nodes(loaded)} nodes{status}; wrote {out_path}; next: trtforge optimize {out_path} -o out/")


def _open_samples(folder: Path, specs, limit: int | None = None):
    """A data folder checked against the model's inputs: (the first ``limit`` feeds, its fingerprint)."""
    from calibration.data import open_folder

    source, fingerprint = open_folder(folder, specs)
    return list(itertools.islice(source, limit)), fingerprint


def _prune_shapes(model: Path, calib: Path | None, shapes, dims) -> dict[str, tuple[int, ...]] | None:
    """The shapes pruning measures FLOPs at when it has no data (with data, its first sample)."""
    if calib is not None and not shapes and not dims:
        return None
    from optimizer.model import load_model

    return _resolve_shapes(load_model(model), shapes, dims).require().opt()


@main.command(cls=_SyntheticCountCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Output .onnx with Q/DQ.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy).")
@_synthetic_option
@_shape_options
@click.option("--target", type=click.Choice(choices("precision.target")), default="tensorrt", show_default=True)
@click.option(
    "--method", type=click.Choice(choices("precision.method")), default="max", show_default=True,
    help="Calibration method: max (MinMax), percentile, entropy (TensorRT KL) or mse.",
)
@click.option("--percentile", type=float, default=99.99, show_default=True, help="For --method percentile.")
@click.option(
    "--mode", type=click.Choice(QUANTIZE_MODES), default="int8", show_default=True,
    help="int8 Q/DQ; fp8 (E4M3 Q/DQ, TensorRT on Hopper/Ada/Blackwell); int4-weight (block-wise INT4 MatMul/Gemm weights).",
)
@click.option("--block-size", type=int, default=128, show_default=True, help="For --mode int4-weight: input channels per scale.")
@click.option(
    "--int4-method", type=click.Choice(choices("precision.int4_method")), default="awq", show_default=True,
    help="For --mode int4-weight: activation-aware clip search on --calib (awq) or round-to-nearest (rtn).",
)
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
    model, out_path, calib, synthetic, shapes, dims, target, method, percentile, mode, block_size, int4_method, exclude,
    per_tensor, budget, val, metric_spec, as_json
) -> None:
    """Insert INT8 (or FP8, or INT4 weight-only) Q/DQ calibrated on data (TensorRT 11 takes precision from the graph).

    \b
    Example:
      trtforge quantize model.onnx -o model.int8.onnx --calib data/calib --target tensorrt --method mse
      trtforge quantize model.onnx -o model.fp8.onnx --calib data/calib --mode fp8
      trtforge quantize model.onnx -o model.int4.onnx --calib data/calib --mode int4-weight --block-size 128
      trtforge quantize model.onnx -o model.int8.onnx --calib data/calib --val data/val \\
          --metric samples/ppocr_rec/metric.py:cer --budget "cer_increase<=0.1"
    """
    from calibration.sensitivity import quantize_model

    loaded, source = _calibration_source(model, calib, synthetic, shapes, dims)
    outcome = quantize_model(
        model, out_path, source, target=target, method=method, percentile=percentile, per_channel=not per_tensor,
        exclude=[n for n in exclude.split(",") if n], mode=mode, block_size=block_size, int4_method=int4_method,
        log=None if as_json else (lambda msg: _out.print(f"[dim]{msg}[/]")), **_budget_options(loaded, model, budget, val, metric_spec),
    )
    if as_json:
        _print_json(outcome.details())
        return
    _print_quantized(outcome, target, out_path)
    if outcome.search is not None and not outcome.search.met:
        sys.exit(EXIT_GATE_FAILED)  # the model is written, but it misses the budget the user set


def _calibration_source(model: Path, calib: Path | None, synthetic: int | None, shapes, dims):
    """(the loaded model, its calibration source): the --calib folder, or --synthetic random samples at the resolved shapes."""
    from calibration import NpzFolderSource, synthetic_source
    from calibration.data import open_folder
    from optimizer.model import input_specs, load_model

    if (calib is None) == (synthetic is None):
        raise ConfigError("give exactly one of --calib DIR or --synthetic [N]")
    loaded = load_model(model)
    if calib is None:
        resolved = _resolve_shapes(loaded, shapes, dims).require()
        from calibration.data import SYNTHETIC_SAMPLES

        count = SYNTHETIC_SAMPLES if synthetic is True else synthetic
        return loaded, synthetic_source(input_specs(loaded), count=count, shapes=resolved.opt(), seed=0)
    if shapes or dims:  # with real data they only check that the data fits the ranges given
        _resolve_shapes(loaded, shapes, dims, (open_folder(calib, input_specs(loaded))[1],), probe=False)
    return loaded, NpzFolderSource(calib)


def _budget_options(loaded, model: Path, budget: str | None, val: Path | None, metric_spec: str | None) -> dict:
    """``quantize_model``'s budget arguments from --budget/--val/--metric (none without --budget)."""
    if budget is None:
        if val is not None or metric_spec is not None:
            raise ConfigError("--val and --metric are for --budget; give a budget or drop them")
        return {}
    from calibration import NpzFolderSource
    from optimizer.model import input_specs
    from optimizer.validate import load_metric, metric_scorer

    if val is None:
        raise ConfigError("--budget is measured on validation data: pass --val DIR")
    val_source = NpzFolderSource(val)
    val_source.bind(input_specs(loaded))
    task = load_metric(metric_spec, Path.cwd()) if metric_spec else None
    metric_fn, higher = metric_scorer(task, val_source.labels, model)
    return dict(budget=budget, val=list(val_source), metric=metric_fn, higher_is_better=higher)


def _print_quantized(outcome, target: str, out_path: Path) -> None:
    """The budget search's verdict and kept layers (with a budget), then the quantized model and the next step."""
    from calibration import CARRIED_PRECISION

    result, search = outcome.result, outcome.search
    if search is not None:
        status = "met" if search.met else "[red]NOT met[/]"
        _out.print(
            f"budget {search.budget} {status}: {search.final_change:.4g} (all INT8: {search.all_int8_change:.4g}); "
            f"kept in FP32: {', '.join(search.kept) or 'nothing'}"
        )
        for node, why in search.reasons.items():
            _out.print(f"  {node}: {why}")
    expect = CARRIED_PRECISION[result.mode]
    _out.print(
        f"quantized {len(result.quantized_nodes)} node(s) for {target} ({result.num_q} Q, {result.num_dq} DQ; "
        f"{expect.upper()} weight share {result.quantized_weight_share:.1%}); left in FP32: {len(result.skipped)}"
    )
    if result.fingerprint.synthetic:
        _out.print("[yellow]warning[/]: calibrated on synthetic random data")
    _out.print(f"wrote {out_path}; next: trtforge build {out_path} -o model.engine --expect {expect}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None, help="Pruned .onnx to write (not needed with --dry-run).")
@click.option("--sparsity", type=click.Choice(choices("prune.sparsity")), default=None, help="2:4 structured sparsity (TensorRT's sparse-kernel layout).")
@click.option("--channels", type=float, default=None, help="Fraction of each prunable channel group to remove, e.g. 0.3.")
@click.option("--flops-target", type=float, default=None, help="Instead: fraction of Conv/Gemm/MatMul FLOPs to remove, e.g. 0.25.")
@click.option("--max-error", type=float, default=None, help="Instead: the largest FLOPs cut whose relative output error on --val stays below this, e.g. 0.05.")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation data folder for --max-error.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder (.npz/.npy): data-aware choice and least-squares repair.")
@click.option("--samples", type=int, default=32, show_default=True, help="Calibration samples used for statistics.")
@click.option("--method", type=click.Choice(choices("prune.method")), default="auto", show_default=True, help="2:4 mask choice (auto: obs with data, magnitude without).")
@click.option("--criterion", type=click.Choice(choices("prune.criterion")), default="auto", show_default=True, help="Channel ranking (auto: activation with data, l2 without).")
@click.option("--no-reconstruct", is_flag=True, help="Do not refit kept weights by least squares.")
@click.option("--exclude", default="", help="Comma-separated node-name globs to leave alone.")
@_shape_options
@click.option("--shape", "legacy_shape", default=None, hidden=True, help="Old spelling of --shapes (one release).")
@click.option("--dry-run", is_flag=True, help="Report FLOPs, parameters and per-layer choices; write nothing.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest relative output error (pruned vs original, measured after pruning) at which the model is written  [default: 0.15].")
@click.option("--force", is_flag=True, help="Write the pruned model even when its measured output error is beyond --tolerance.")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def prune(model, out_path, sparsity, channels, flops_target, max_error, val, calib, samples, method, criterion, no_reconstruct, exclude, shapes, dims, legacy_shape, dry_run, tolerance, force, as_json) -> None:
    """Prune a model: 2:4 sparsity and/or channel pruning, repaired on calibration data.

    The pruned model then runs next to the original on the calibration data (generated inputs
    without --calib); beyond --tolerance (relative output error, default 0.15) it exits 1,
    names the worst channel groups and writes nothing unless --force.

    \b
    Example:
      trtforge prune det.onnx -o det.pruned.onnx --flops-target 0.25 --calib data/calib
      trtforge prune rec.onnx -o rec.24.onnx --sparsity 2:4 --calib data/calib --method obs
      trtforge prune det.onnx --channels 0.3 --shapes x:1x3x640x640 --dry-run
    """
    from calibration import NpzFolderSource
    from optimizer.pruning import prune_model
    from optimizer.pruning.check import DEFAULT_TOLERANCE

    if out_path is None and not dry_run:
        raise ConfigError("give -o OUT.onnx, or --dry-run to only report")
    if max_error is not None and (channels is not None or flops_target is not None or dry_run):
        raise ConfigError("--max-error searches the FLOPs cut itself: drop --channels/--flops-target/--dry-run")
    result = prune_model(
        model, out_path, max_error=max_error, val=NpzFolderSource(val) if val else None, channels=channels,
        flops_target=flops_target, dry_run=dry_run, tolerance=tolerance or DEFAULT_TOLERANCE, force=force,
        sparsity=sparsity, source=NpzFolderSource(calib) if calib is not None else None, method=method,
        criterion=criterion, reconstruct=not no_reconstruct, exclude=[n for n in exclude.split(",") if n],
        samples=samples, input_shapes=_prune_shapes(model, calib, shapes + ((legacy_shape,) if legacy_shape else ()), dims),
    )
    check_failed = result.check is not None and not result.check["passed"]
    if as_json:
        _print_json(result.to_dict())
        sys.exit(EXIT_GATE_FAILED if check_failed and not force else EXIT_OK)
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
    if result.check is not None:
        from optimizer.pruning.check import check_summary, failure_advice

        _out.print(check_summary(result.check), markup=False)
        if check_failed:
            _out.print(failure_advice(result.check, channels, flops_target), markup=False)
    if dry_run:
        _out.print("dry run: nothing written")
    elif result.output is None:
        _out.print(f"[red]FAILED[/]: the pruned model changes the outputs beyond the tolerance; nothing written to {out_path}")
    else:
        nxt = f"trtforge build {out_path} -o model.engine" + (" --sparse-weights" if sparsity else "")
        _out.print(f"wrote {out_path}" + (" (forced, beyond the tolerance)" if check_failed else "") + f"; next: {nxt}")
    if check_failed and not force:
        sys.exit(EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Engine file to write.")
@_shape_options
@click.option("--builder", type=click.Choice(choices("build.builder")), default=None)
@click.option("--expect", type=click.Choice(choices("build.expect")), default=None, help="Fail unless the network carries this precision (int4: INT4 weight-only GEMMs).")
@click.option("--workspace-mib", type=int, default=None)
@click.option("--builder-opt-level", "--opt-level", "opt_level", type=int, default=None, help="Builder optimization level 0..5 (TensorRT's default: 3).")
@click.option("--compute-capability", "compute_capabilities", multiple=True, help="TensorRT-RTX target, e.g. SM86 (repeatable).")
@click.option("--hardware-compat", type=click.Choice(choices("build.hardware_compatibility")), default=None, help="Let the engine run on other GPUs than the one building it.")
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
    model, out_path, shapes, dims, builder, expect, workspace_mib, opt_level, compute_capabilities, hardware_compat,
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
    from optimizer.engine import BuildConfig, build_engine, build_or_reuse
    from optimizer.model import load_model

    if no_engine_store and rebuild:
        raise ConfigError("--rebuild replaces a stored engine; it makes no sense with --no-engine-store (drop one)")
    config = BuildConfig(
        profiles=_resolve_shapes(load_model(model), shapes, dims).require().profiles(),
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
@click.option("--val", "data", type=click.Path(path_type=Path), default=None, help="Validation data folder (.npz/.npy, labels.json).")
@click.option("--data", "legacy_data", type=click.Path(path_type=Path), default=None, hidden=True, help="Old spelling of --val (one release).")
@click.option("--metric", default=None, help="Task metric 'file.py:function' (executes that file).")
@click.option("--gate", "gates", multiple=True, help="e.g. 'cer_increase<=0.5' (repeatable); replaces the default gates.")
@click.option("--no-default-gates", is_flag=True, help="Without --gate, check no gate at all (report only; exits 0).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--no-latency", is_flag=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write report JSON here.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A previous release's report.json: adds gate metrics such as cer_regression, p50_regression_pct.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None, help="Write JUnit XML (one testcase per gate).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="Write the self-contained HTML report.")
@click.option("--divergence", type=click.Choice(choices("validate.divergence")), default="on-failure", show_default=True,
              help="First-divergent-layer search (needs the model the candidate was made from as --reference).")
@_shape_options
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def validate(candidate, reference, data, legacy_data, metric, gates, no_default_gates, threads, iterations, no_latency, report_path, baseline,
             junit_path, html_path, divergence, shapes, dims, as_json) -> None:
    """Compare a candidate ONNX model with the FP32 reference on real data; gate the result.

    Exits 0 when every gate passes, 1 when one fails, 2 on bad input. When a gate fails,
    the first-divergent-layer search names the node and measures its recommended fix.

    \b
    Default gates (no --gate given; --gate replaces them, --no-default-gates drops them):
      nonfinite_values==0        every output finite
      min_cosine>=0.7            worst-sample cosine of every output
      min_snr_db>=6              signal-to-noise ratio of every output
      min_top1_agreement>=0.8    class scores (Softmax, Gemm/MatMul logits)
      <metric>_increase<=1       with --metric in % (0.01 otherwise; _drop if higher is better)
    Sound INT8 sits far above these floors; a broken candidate falls far below.

    \b
    Example:
      trtforge validate model.int8.onnx --reference model.opt.onnx --val data/val \\
          --metric metric.py:cer --gate "cer_increase<=1.0" --baseline last/report.json \\
          --gate "cer_regression<=0.2" --junit junit.xml --html report.html
    """
    from optimizer.model import write_text_atomic
    from optimizer.pipeline import validate_only
    from optimizer.report import print_summary

    data = data or legacy_data
    if data is None:
        raise ConfigError("give the validation data: --val DIR (a folder of .npz/.npy samples, optionally labels.json)")
    if shapes or dims:  # the data must fit the ranges the deployment will serve
        from optimizer.model import input_specs, load_model

        ref_model = load_model(reference)
        _resolve_shapes(ref_model, shapes, dims, (_open_samples(data, input_specs(ref_model), limit=0)[1],), probe=False)
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
        default_gates=not no_default_gates,
        command=shlex.join(["trtforge", *sys.argv[1:]]),
    )
    wrote = []
    if report_path:
        wrote.append(report.save(report_path))
    if junit_path:
        from optimizer.junit import to_junit

        wrote.append(write_text_atomic(junit_path, to_junit(report)))
    if html_path:
        from optimizer.html_report import to_html

        wrote.append(write_text_atomic(html_path, to_html(report)))
    if as_json:
        _print_json(report.to_dict())
    else:
        print_summary(report, _out)
        for path in wrote:
            _out.print(f"wrote {path}", markup=False)
    sys.exit(EXIT_OK if report.passed else EXIT_GATE_FAILED)


@main.command("matrix")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for every variant's reports, index.html, junit.xml, summary.md.")
@click.option("--recipe", "recipes", multiple=True, type=click.Path(path_type=Path), help="Recipe YAML (repeatable; a recipe may list engine 'targets:'). Default: the default recipe.")
@click.option("--plan", type=click.Path(path_type=Path), default=None, help="Plan YAML: models with their own data folders, recipes and gates (instead of MODEL...).")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data folder for every model (.npz/.npy).")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation data folder for every model (.npz/.npy, labels.json).")
@click.option("--synthetic", is_flag=True, help="Calibrate on random data (knowingly; every report says so).")
@click.option("--gate", "gates", multiple=True, help="Release gate for every variant, e.g. 'min_cosine>=0.99' (repeatable).")
@_shape_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local Ray CPUs (default: this machine's CPUs; 1 runs in-process, without Ray).")
@click.option("--address", default=None, help="Join an existing Ray cluster instead (e.g. 'auto' or 'ray://head:10001').")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of a task whose worker died or that raised.")
@click.option("--no-cache", is_flag=True, help="Recompute every stage (shared stages then run once per variant).")
@click.option("--json", "as_json", is_flag=True, help="Print every variant's row as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def matrix(models, out_dir, recipes, plan, calib, val, synthetic, gates, shapes, dims, workers, address, retries, no_cache, as_json, quiet) -> None:
    """Optimize many models × recipes × engine targets as one release job, on Ray.

    Each variant writes OUT/<model>/<recipe>[/<target>]/report.json and friends; OUT/index.html,
    OUT/junit.xml (one testsuite per model) and OUT/summary.md cover them all. Every model,
    recipe and data folder is checked before the first task. Exits 1 when a gate fails or a
    variant cannot finish, 2 on bad input.

    \b
    Example:
      trtforge matrix det.onnx rec.onnx -o release/ --recipe int8.yaml --recipe fp16.yaml \\
          --calib data/calib --val data/val --gate "min_cosine>=0.99" --workers 4
      trtforge matrix --plan plan.yaml -o release/ --address auto
    """
    from optimizer.matrix_run import matrix as run_matrix

    result = run_matrix(
        models, out_dir, recipes, plan=plan, calib=calib, val=val, gates=list(gates), shapes=list(shapes), dims=list(dims),
        synthetic=synthetic,
        workers=workers, address=address, retries=retries, use_cache=not no_cache, progress=_progress(quiet, as_json),
    )
    if as_json:
        _print_json({"mode": result.mode, "seconds": result.seconds, "passed": result.passed, "rows": result.rows})
    elif not quiet:
        counts = ", ".join(f"{result.count(s)} {s}" for s in ("passed", "failed", "error"))
        _out.print(f"[bold]{'PASSED' if result.passed else 'FAILED'}[/]: {len(result.rows)} variants ({counts}) in "
                   f"{result.seconds:.1f}s, {result.mode}; wrote {out_dir / 'index.html'}, junit.xml, summary.md")
        for note in result.notes:
            _out.print(f"  note: {note}", markup=False)
    sys.exit(EXIT_OK if result.passed else EXIT_GATE_FAILED)


@main.command("export")
@click.argument("factory", metavar="FILE.py:FACTORY")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="The .onnx to write (replaced if it exists).")
@_shape_options
@click.option("--dtypes", default=None, help="Non-float inputs, e.g. 'ids:int64,mask:int64' (default: float32, or the example inputs').")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--input-names", default=None, help="Comma-separated input names (default: forward's parameter names).")
@click.option("--output-names", default=None, help="Comma-separated output names (default: derived from what forward returns).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True, help="auto: dynamo, falling back to TorchScript when dynamo fails or does not verify.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Verify on these samples (.npz/.npy) too; without --shapes, the ranges come from them.")
@click.option("--passes", "run_passes", is_flag=True, help="Also write <out>.opt.onnx through the default graph passes (verified); the raw export stays.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Verification: fail when max|ort - eager| > atol + rtol * max|eager|.")
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the export record as JSON.")
@_handle_errors
def export_cmd(factory, out_path, shapes, dims, dtypes, opset, input_names, output_names, exporter, data, run_passes, rtol, atol, as_json) -> None:
    """Export a PyTorch model to ONNX, verified against eager PyTorch in ONNX Runtime.

    FACTORY is a function in FILE.py (executing that file is your explicit choice) returning a
    torch.nn.Module or a (module, example_inputs) pair. Inputs are named after forward's
    parameters. A dim whose min and max differ in --shapes is exported dynamic; --dim NAME=min,opt,max
    names every dim with that range (one shared torch.export.Dim). The ranges are stored in the
    model's metadata ('trtforge.shapes'), so optimize and build need no shapes afterwards.
    Exits 1 when ONNX Runtime disagrees with eager beyond tolerance, 2 on bad input; nothing is
    written in either case. Needs the [torch] extra.

    \b
    Example:
      trtforge export net.py:build -o model.onnx --shapes 'x:1x3x32x32,4x3x32x128,8x3x32x256'
      trtforge export lm.py:make -o lm.onnx --shapes 'ids:1x16,4x128,8x512;mask:1x16,4x128,8x512' \\
          --dim batch=1,4,8 --dim seq=16,128,512 --dtypes ids:int64,mask:int64
      trtforge optimize model.onnx -o out/ --synthetic     # next: the exported ranges become the engine profile
    """
    from optimizer.torch_export import export, load_factory

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
    module, example_inputs = load_factory(factory)
    if not as_json and sys.stderr.isatty():  # a terminal waits a minute for dynamo; logs keep one error line
        _err.print(f"exporting {factory} ({exporter} exporter; verifying against eager PyTorch) ...", markup=False)
    record = export(
        module,
        example_inputs,
        out=out_path,
        shapes=list(shapes),
        dims=list(dims),
        dtypes=dtypes,
        opset=opset,
        input_names=split(input_names),
        output_names=split(output_names),
        exporter=exporter,
        data=data,
        passes=run_passes,
        rtol=rtol,
        atol=atol,
    )
    if as_json:
        _print_json(record.to_dict())
        return
    why = f" ({record.fallback_reason})" if record.fallback_reason else ""
    _out.print(f"exporter: {record.exporter}{why}; opset {record.opset}; {record.export_seconds:.1f}s", markup=False)
    for check in record.checks:
        shapes_text = ";".join(f"{n}:{'x'.join(map(str, s))}" for n, s in check.shapes.items())
        worst = max(check.max_rel.items(), key=lambda kv: kv[1], default=("-", 0.0))
        _out.print(f"  verified {check.label:8s} {shapes_text}  worst rel error {worst[1]:.2e} ({worst[0]})", markup=False)
    for note in record.notes:
        _out.print(f"note: {note}", markup=False)
    written = out_path if not record.optimized_path else f"{out_path} and {record.optimized_path}"
    _out.print(f"wrote {written}; shapes {' | '.join(record.profiles)}", markup=False)
    _out.print(f"next: trtforge optimize {record.optimized_path or out_path} -o out/", markup=False)


@main.group()
def cache() -> None:
    """Manage the stage cache and the engine store (under $TRTFORGE_CACHE_DIR or $XDG_CACHE_HOME/trtforge).

    Both are capped; the least recently used entries go first. Caps: $TRTFORGE_STAGE_CACHE_LIMIT
    (default 10G) and $TRTFORGE_ENGINE_STORE_LIMIT (default 20G).

    \b
    Example:
      trtforge cache info
      TRTFORGE_ENGINE_STORE_LIMIT=5G trtforge cache trim
    """


@cache.command("clear")
@_handle_errors
def cache_clear() -> None:
    """Delete every cached stage result (engines: `trtforge cache engines --clear`).

    \b
    Example:
      trtforge cache clear
    """
    from optimizer.cache import StageCache

    removed = StageCache().clear()
    _out.print(f"removed {removed} cached stage result(s)", markup=False)


@cache.command("info")
@_handle_errors
def cache_info() -> None:
    """Show where the stage cache and the engine store are, their sizes and caps.

    \b
    Example:
      trtforge cache info
    """
    from optimizer.cache import StageCache
    from optimizer.engine import EngineStore

    for label, box in (("stage cache", StageCache()), ("engine store", EngineStore())):
        _out.print(f"{label}: {box.size() / 1e6:.1f} MB of {box.max_bytes / 1e6:.0f} MB cap in {box.root}", markup=False)


@cache.command("trim")
@click.option("--max-size", default=None, help="Trim to this size instead of the caps, e.g. 2G (both caches).")
@_handle_errors
def cache_trim(max_size: str | None) -> None:
    """Evict least recently used entries until each cache fits its cap; remove stale locks and temp files.

    Runs by itself after every store; use it after lowering a cap.

    \b
    Example:
      trtforge cache trim --max-size 2G
    """
    from optimizer.cache import StageCache, parse_size
    from optimizer.engine import EngineStore

    limit = parse_size(max_size, "--max-size") if max_size is not None else None
    for label, box in (("stage cache", StageCache()), ("engine store", EngineStore())):
        removed = box.evict(limit)
        _out.print(f"{label}: evicted {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}; now {box.size() / 1e6:.1f} MB", markup=False)


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
        _out.print(f"removed {store.clear()} stored engine(s) from {store.root}", markup=False)
        return
    entries = store.entries()
    for prefix in keys:
        matches = [e for e in entries if e.key.startswith(prefix)]
        if len(matches) != 1:
            raise ConfigError(f"--remove {prefix}: matches {len(matches)} stored engines; give a longer key prefix (see `trtforge cache engines`)")
        store.remove(matches[0].key)
        _out.print(f"removed {matches[0].key[:12]} ({matches[0].model})", markup=False)
    if keys:
        return
    for e in entries:
        _out.print(f"{e.key[:12]}  {e.builder} {e.version}  {e.target}  {e.engine_bytes / 1e6:.1f} MB  {e.model}", markup=False)
    _out.print(f"{len(entries)} stored engine(s) in {store.root}", markup=False)


if __name__ == "__main__":
    main()
