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
@click.option("--precision", type=click.Choice(["int8", "none"]), default=None, help="Override the recipe's precision mode.")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime-cpu"]), default=None, help="Q/DQ form: TensorRT's (default) or ORT CPU's.")
@click.option("--gate", "gates", multiple=True, help="Release gate, e.g. 'cer_increase<=0.5' (repeatable).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def optimize(model, out_dir, recipe, calib, val, precision, target, gates, no_cache, as_json, quiet) -> None:
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
@_handle_errors
def report(report_path: Path, markdown: Path | None) -> None:
    """Re-render a saved report.json (terminal summary, or Markdown with --markdown).

    \b
    Example:
      trtforge report out/report.json --markdown summary.md
    """
    from optimizer.model import write_text_atomic
    from optimizer.report import load_report, print_summary, to_markdown

    loaded = load_report(report_path)
    if markdown:
        write_text_atomic(markdown, to_markdown(loaded))
        _out.print(f"wrote {markdown}")
    else:
        print_summary(loaded, _out)


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None, help="Output .onnx.")
@click.option("--passes", "names", default=None, help="Comma-separated pass names (default: the default order).")
@click.option("--skip", default="", help="Comma-separated pass names to leave out.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check outputs against the original after each pass.")
@click.option("--shapes", default=None, help="Pin dynamic dims for verification, e.g. 'x:1x3x48x320'.")
@click.option("--list", "list_passes", is_flag=True, help="List the available passes in default order.")
@_handle_errors
def passes(model, out_path, names, skip, verify, shapes, list_passes) -> None:
    """Run graph passes (semantics-preserving) and write the result.

    \b
    Example:
      trtforge passes model.onnx -o opt.onnx --skip fold_constants --shapes x:1x3x224x224
    """
    import graph_passes

    if list_passes:
        for name, doc in graph_passes.available_passes().items():
            _out.print(f"{name:34s} {doc}")
        return
    if model is None or out_path is None:
        raise ConfigError("give a MODEL and -o OUT.onnx (or --list)")
    from optimizer.inspect import count_nodes
    from optimizer.model import load_model, save_model

    loaded = load_model(model)
    before = count_nodes(loaded.graph)
    verifier = graph_passes.Verifier(loaded, shapes=_parse_fixed_shapes(shapes)) if verify else None
    records = graph_passes.run_passes(
        loaded,
        [n for n in names.split(",") if n] if names else None,
        skip=[n for n in skip.split(",") if n],
        verifier=verifier,
    )
    save_model(loaded, out_path)
    for r in records:
        _out.print(f"{r.name:34s} {'changed' if r.modified else '-':8s} {r.nodes_before:5d} → {r.nodes_after:5d}  {r.seconds:.2f}s")
    _out.print(f"{before} → {count_nodes(loaded.graph)} nodes{' (verified)' if verify else ''}; wrote {out_path}")


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
@click.option("--method", type=click.Choice(["max"]), default="max", show_default=True, help="Calibration method.")
@click.option("--exclude", default="", help="Comma-separated node names to keep in FP32.")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def quantize(model, out_path, calib, synthetic, shapes, target, method, exclude, as_json) -> None:
    """Insert INT8 Q/DQ calibrated on data (TensorRT 11 takes precision from the graph).

    \b
    Example:
      trtforge quantize model.onnx -o model.int8.onnx --calib data/calib --target tensorrt
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
    result = run_quantize(model, out_path, source, target=target, method=method, exclude=[n for n in exclude.split(",") if n])
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    _out.print(
        f"quantized {len(result.quantized_nodes)} node(s) for {target} ({result.num_q} Q, {result.num_dq} DQ; "
        f"INT8 weight share {result.quantized_weight_share:.1%}); left in FP32: {len(result.skipped)}"
    )
    if result.fingerprint.synthetic:
        _out.print("[yellow]warning[/]: calibrated on synthetic random data")
    _out.print(f"wrote {out_path}; next: trtforge build {out_path} -o model.engine --expect int8")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Engine file to write.")
@click.option("--shapes", "shapes", multiple=True, help="Profile 'input:min,opt,max' with dims like 1x3x48x320 (repeatable).")
@click.option("--builder", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default=None)
@click.option("--expect", type=click.Choice(["int8", "fp16", "fp32"]), default=None, help="Fail unless the network carries this precision.")
@click.option("--workspace-mib", type=int, default=None)
@click.option("--opt-level", type=int, default=None, help="Builder optimization level.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None)
@click.option("--fp16", is_flag=True, hidden=True)
@click.option("--int8", is_flag=True, hidden=True)
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def build(model, out_path, shapes, builder, expect, workspace_mib, opt_level, timing_cache, fp16, int8, as_json) -> None:
    """Build a TensorRT engine (precision comes from the graph: see `trtforge quantize`).

    \b
    Example:
      trtforge build model.int8.onnx -o model.engine --shapes x:1x3x48x32,1x3x48x320,1x3x48x1280 --expect int8
    """
    from optimizer.engine import BuildConfig, build_engine, parse_shapes

    config = BuildConfig(
        profiles=[parse_shapes(list(shapes))] if shapes else [],
        workspace_mib=workspace_mib,
        optimization_level=opt_level,
        timing_cache=timing_cache,
        expect=expect,
        precision_flags=tuple(f for f, on in (("fp16", fp16), ("int8", int8)) if on),
    )
    result = build_engine(model, out_path, config, builder=builder)
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    p = result.precision
    _out.print(
        f"built {result.engine_path} with {result.builder} {result.version} in {result.seconds:.1f}s "
        f"({result.engine_bytes / 1e6:.1f} MB); network carries {', '.join(p.carries)}; "
        f"{p.quantize_layers} Q / {p.dequantize_layers} DQ / {p.cast_layers} Cast layers"
    )


@main.command()
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The FP32 model to compare against.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Validation data folder (.npz/.npy, labels.json).")
@click.option("--metric", default=None, help="Task metric 'file.py:function' (executes that file).")
@click.option("--gate", "gates", multiple=True, help="e.g. 'cer_increase<=0.5' (repeatable).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--iterations", type=int, default=30, show_default=True)
@click.option("--no-latency", is_flag=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write report JSON here.")
@click.option("--json", "as_json", is_flag=True)
@_handle_errors
def validate(candidate, reference, data, metric, gates, threads, iterations, no_latency, report_path, as_json) -> None:
    """Compare a candidate ONNX model with the FP32 reference on real data; gate the result.

    \b
    Example:
      trtforge validate model.int8.onnx --reference model.onnx --data data/val --gate "min_cosine>=0.99"
    """
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
    )
    if report_path:
        report.save(report_path)
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


if __name__ == "__main__":
    main()
