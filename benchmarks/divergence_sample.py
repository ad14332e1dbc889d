"""The first-divergent-layer search: a bad INT8 candidate, its diagnosis, its measured fix.

    .venv/bin/python benchmarks/divergence_sample.py [--work build/bench-divergence] [--no-write]
        [--parts sample,transformer,memory]

1. ``optimize`` the PP-OCRv4 recognizer with per-tensor INT8 (the sample recipe's method, MSE;
   ``precision.per_channel: false``, tensorrt target) and the sample's gate ``cer_increase<=1.0``: the gate fails, the
   search runs (``validate.divergence: on-failure``) and measures its recommendation by re-running
   the candidate with it applied (``divergence.measure_fix``).
2. ``optimize`` again with the search's recommendation as ``precision.exclude``: the gate passes.
3. A transformer encoder (``torch.nn.TransformerEncoder``, pre-LN, GELU, outlier LayerNorm
   channels as trained transformers have them; exported with ``torch.onnx.export`` here),
   quantized per-tensor MinMax with ``calibration.quantize`` and validated with
   ``min_cosine>=0.99``: the error is spread over every layer, and the search must say so.
4. The search alone, in fresh child processes, with 8 / 32 / all tensors per ORT session: peak
   RssAnon (``/proc/self/status``, sampled after every session build and run) against chunk size.
5. ``--parts floor`` (its own RESULTS.md section, ``default_gates``): the measurements the default
   gates' floors come from: the reference against itself (the run-to-run noise floor), sound and
   broken INT8 candidates of the recognizer, and one corrupted Conv, with the default gates' verdicts.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _recipe(per_channel: bool, exclude: list[str]):
    from optimizer.recipe import load_recipe

    recipe = load_recipe(ROOT / "samples" / "ppocr_rec" / "recipe.yaml")
    recipe.precision.per_channel = per_channel
    recipe.precision.exclude = list(exclude)
    recipe.build.enabled = "no"  # the engine is not what is measured here
    recipe.validate.divergence = "on-failure"
    return recipe


def _search(reference: str, candidate: str, val: str, chunk: int, queue) -> None:
    from calibration import NpzFolderSource
    from optimizer.divergence import find_divergence

    result = find_divergence(reference, candidate, NpzFolderSource(val), chunk=chunk, max_samples=2)
    queue.put((result.sessions, result.baseline_rss_anon_mb, result.peak_rss_anon_mb, result.seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-divergence")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--parts", default="sample,transformer,memory",
                        help="which parts to run (comma-separated; 'floor' is the default-gates table, a section of its own)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if "floor" in parts:
        table = _floor(args.work)
        print("\n".join(table))
        if not args.no_write:
            from _results import replace_section

            replace_section("default_gates", "\n".join(table))
        parts.discard("floor")
        if not parts:
            return 0
    lines = []
    if "sample" in parts or "memory" in parts:
        lines += _sample(args.work, memory="memory" in parts)
    if "transformer" in parts:
        lines += ["", *_transformer(args.work / "transformer")]
    print("\n".join(lines))
    if not args.no_write and parts == {"sample", "transformer", "memory"}:
        _write_results(lines)
    return 0


def _fix_lines(label: str, divergence) -> list[str]:
    """The measured fix as the report has it: before, every trial, and the verdict."""
    from optimizer.validation_record import to_json

    div = to_json(divergence)
    fix = div.get("fix")
    if not fix:
        return [f"- {label}: no fix measured"]
    names = list(fix["before"])
    rows = [f"| {label}: as quantized | 0 | " + " | ".join(f"{fix['before'][n]:.4g}" for n in names) + " | fail |"]
    for i, t in enumerate(fix["trials"], start=1):
        rows.append(f"| {label}: trial {i} | {len(t['exclude'])} | " + " | ".join(f"{t['metrics'][n]:.4g}" for n in names)
                    + f" | {'pass' if t['passed'] else 'fail'} |")
    return ["", f"| candidate | nodes kept FP32 | {' | '.join(names)} | failing gates |", "|---|---:|" + "---:|" * len(names) + "---|",
            *rows, "", f"- {label}, first divergent `{div['first']['node']}` ({div['first']['op_type']}); verdict ({fix['seconds']:.0f} s): "
            f"{fix['verdict']}"]


def _sample(work: Path, memory: bool) -> list[str]:
    from optimizer.pipeline import optimize
    from samples.ppocr_rec.prepare import prepare

    if not (work / "data" / "val").is_dir():
        prepare(work, calib=64, val=200, seed=0, log=lambda m: None)
    model, calib, val = work / "ppocr_rec.onnx", work / "data" / "calib", work / "data" / "val"

    bad = optimize(model, work / "bad", _recipe(False, []), calib=calib, val=val, use_cache=False)
    from optimizer.validation_record import to_json

    div = to_json(bad.validation.divergence)  # the JSON form: what report.json shows
    fixed = optimize(model, work / "fixed", _recipe(False, div["recommend_exclude"]), calib=calib, val=val, use_cache=False)
    good = optimize(model, work / "per-channel", _recipe(True, []), calib=calib, val=val, use_cache=False)

    method = {"max": "MinMax", "mse": "MSE"}.get(_recipe(False, []).precision.method, _recipe(False, []).precision.method)

    def row(label: str, report) -> str:
        task, prec = report.validation.task, report.stage("precision")
        gate = report.gates[0]
        return (f"| {label} | {prec.summary['quantized nodes']} | {task.reference:.3f} | {task.candidate:.3f} | "
                f"{task.change:+.3f} | {'pass' if gate.passed else 'FAIL'} |")

    ctx = multiprocessing.get_context("spawn")
    rows = []
    for chunk in (8, 32, 100000) if memory else ():
        queue = ctx.Queue()
        proc = ctx.Process(target=_search, args=(bad.artifacts["passes"], bad.artifacts["precision"], str(val), chunk, queue))
        proc.start()
        sessions, base, peak, seconds = queue.get()
        proc.join()
        rows.append(f"| {chunk if chunk < 100000 else 'all'} | {sessions} | {base:.0f} | {peak:.0f} | {peak - base:.0f} | {seconds:.1f} |")

    return [
        "| candidate | INT8 nodes | CER FP32 (%) | CER INT8 (%) | change | gate cer_increase<=1.0 |",
        "|---|---:|---:|---:|---:|---|",
        row(f"per-tensor {method}", bad),
        row(f"per-tensor {method}, exclude {len(div['recommend_exclude'])} recommended", fixed),
        row(f"per-channel {method} (the sample recipe, for comparison)", good),
        "",
        f"- first divergent: `{div['first']['node']}` ({div['first']['op_type']}), tensor `{div['first']['tensor']}`, "
        f"SNR {div['first']['snr_db']:.1f} dB; recommended `--exclude {','.join(div['recommend_exclude'])}`",
        f"- search in the pipeline: {div['compared']} tensors, {div['samples']} samples, {div['sessions']} sessions of "
        f"{div['chunk']} tensors, {div['seconds']:.1f} s, peak RssAnon {div['peak_rss_anon_mb']:.0f} MB",
        *_fix_lines(f"PP-OCRv4 rec per-tensor {method}", div),
        "",
        "| tensors per session | sessions | RssAnon before (MB) | peak RssAnon (MB) | growth (MB) | s |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _broken_conv(model: Path, out: Path) -> Path:
    """The recognizer with one middle Conv's weight multiplied by -3: a deliberately broken candidate."""
    import onnx_ir as ir
    from onnx_ir.convenience import get_const_tensor

    from optimizer.model import load_model, save_model

    m = load_model(model)
    convs = [n for n in m.graph if n.op_type == "Conv"]
    node = convs[len(convs) // 2]
    array = get_const_tensor(node.inputs[1]).numpy() * -3.0
    value = ir.Value(name="broken_weight", shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(array, name="broken_weight"))
    m.graph.register_initializer(value)
    node.replace_input_with(1, value)
    return save_model(m, out)


def _floor(work: Path) -> list[str]:
    """The reference's noise floor, sound and broken INT8 candidates: where the default gates' floors come from."""
    from calibration import NpzFolderSource, quantize
    from optimizer.gates import DEFAULT_GATES_DOC, evaluate_gates
    from optimizer.model import load_model, metadata
    from optimizer.runners import OrtRunner
    from optimizer.validate import MetricContext, class_like_outputs, compare, load_metric, reference_noise
    from samples.ppocr_rec.prepare import prepare

    model = prepare(work, calib=64, val=200, seed=0, log=lambda m: None)
    calib, val = NpzFolderSource(work / "data" / "calib"), NpzFolderSource(work / "data" / "val")
    metric = load_metric(str(ROOT / "samples" / "ppocr_rec" / "metric.py") + ":cer")
    context = MetricContext(metadata=metadata(load_model(model)))
    floor_dir = work / "floor"
    floor_dir.mkdir(parents=True, exist_ok=True)
    candidates = {}
    for label, kwargs in (("INT8 per-channel MSE (the demo's recipe)", dict(method="mse", per_channel=True)),
                          ("INT8 per-channel MinMax", dict(method="max", per_channel=True)),
                          ("INT8 per-tensor MinMax", dict(method="max", per_channel=False))):
        out = floor_dir / f"rec.{kwargs['method']}.{'pc' if kwargs['per_channel'] else 'pt'}.onnx"
        quantize(model, out, calib, target="tensorrt", **kwargs)
        candidates[label] = out
    candidates["FP32 with one Conv weight x(-3)"] = _broken_conv(model, floor_dir / "rec.broken.onnx")
    reference = OrtRunner(model)
    noise = reference_noise({"a": reference, "b": OrtRunner(model, threads=2, optimization="all")}, val, 8).outputs[0]
    rows = [f"| FP32 vs itself (2 threads, ORT level all; 8 lines): the noise floor | {noise.cosine_min:.6f} | {noise.snr_db:.1f} | "
            f"{noise.max_abs:.2g} max abs | | |"]
    for label, path in candidates.items():
        result = compare(reference, OrtRunner(path), val, labels=val.labels, metric=metric, context=context,
                         class_like=class_like_outputs(load_model(model)))
        o, task = result.outputs[0], result.task
        gates = evaluate_gates([], result, defaults=True)
        failed = [g.expression for g in gates if not g.passed]
        top1 = o.top1_agreement if o.top1_agreement is not None else float("nan")
        rows.append(f"| {label} | {o.cosine_min:.4f} | {o.snr_db:.1f} | {top1:.4f} | "
                    f"{task.candidate:.3f} | {'FAIL: ' + ', '.join(failed) if failed else 'pass'} |")
        print(rows[-1], flush=True)
    return [
        f"PP-OCRv4 rec, the sample's 200 validation lines (FP32 CER {task.reference:.3f}%), tensorrt target, "
        f"{datetime.date.today().isoformat()}, onnxruntime {_version('onnxruntime')}. "
        "Reproduce: `.venv/bin/python benchmarks/divergence_sample.py --parts floor`.",
        "",
        "| candidate vs FP32 | worst-sample cosine | SNR (dB) | top-1 agreement | CER (%) | default gates |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        DEFAULT_GATES_DOC,
        "The floors sit between the sound candidates (CER within 1 point of FP32) and the broken ones, with margin on both "
        "sides; the run-to-run noise floor is orders of magnitude above both, so INT8 error, not ORT noise, sets them.",
    ]


def export_encoder(path: Path, layers: int = 4, d: int = 128, heads: int = 4, ff: int = 512) -> Path:
    """A seeded pre-LN ``TransformerEncoder`` over token ids, with outlier LayerNorm channels, via ``torch.onnx.export``."""
    import torch

    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, d)
            self.pos = torch.nn.Parameter(torch.randn(1, 64, d) * 0.1)
            layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, layers, norm=torch.nn.LayerNorm(d), enable_nested_tensor=False)
            with torch.no_grad():  # a few LayerNorm channels 30x larger: what makes per-tensor activation scales coarse
                for block in self.enc.layers:
                    block.norm1.weight[:4] *= 30.0
                    block.norm2.weight[:4] *= 30.0

        def forward(self, ids):
            return self.enc(self.emb(ids) + self.pos[:, : ids.shape[1]])

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Encoder().eval(), (torch.zeros(2, 32, dtype=torch.long),), str(path), input_names=["ids"],
                      output_names=["hidden"], dynamic_axes={"ids": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"}},
                      opset_version=17, dynamo=False)
    return path


def _token_folder(folder: Path, count: int, seed: int) -> Path:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):  # Zipf-distributed token ids, as text has them
        np.savez(folder / f"{i:04d}.npz", ids=np.minimum(rng.zipf(1.3, (2, 32)), 999).astype(np.int64))
    return folder


def _transformer(work: Path) -> list[str]:
    import warnings

    from calibration import NpzFolderSource, quantize
    from optimizer.pipeline import validate_only

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's exporter deprecation notes
        model = export_encoder(work / "encoder.onnx")
    calib, val = _token_folder(work / "calib", 16, 1), _token_folder(work / "val", 16, 2)
    rows = []
    reports = {}
    for label, kwargs in (("per-tensor MinMax", dict(method="max", per_channel=False)),
                          ("per-channel MSE (the default method for the tensorrt target)", dict(method="mse", per_channel=True))):
        out = work / f"encoder.{kwargs['method']}.onnx"
        quantize(model, out, NpzFolderSource(calib), **kwargs)
        report = validate_only(out, model, val, gates=["min_cosine>=0.99"], iterations=0, divergence="on-failure")
        reports[label] = report
        o = report.validation.outputs[0]
        rows.append(f"| {label} | {o.cosine_min:.4f} | {o.snr_db:.1f} | {'pass' if report.passed else 'FAIL'} |")
    fixes = []
    for label, report in reports.items():
        div = report.validation.divergence
        fixes += _fix_lines(f"encoder {label.split(' (')[0]}", div) if div else [f"- encoder {label}: the search did not run"]
    return [
        "Transformer encoder (4 pre-LN layers, d=128, GELU, 4 outlier LayerNorm channels; seeded, exported with torch.onnx.export), "
        "16 calibration / 16 held-out batches of 2x32 Zipf token ids, gate `min_cosine>=0.99`:",
        "",
        "| candidate | worst-sample cosine | SNR (dB) | gate |",
        "|---|---:|---:|---|",
        *rows,
        *fixes,
    ]


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _write_results(lines: list[str]) -> None:
    from _results import replace_section

    replace_section("divergence_sample", "\n".join([
        f"PP-OCRv4 rec, sample data (64 calibration, 200 validation lines), tensorrt target, {datetime.date.today().isoformat()}, "
        f"onnxruntime {_version('onnxruntime')}, torch {_version('torch')}. Reproduce: `.venv/bin/python benchmarks/divergence_sample.py`.",
        "",
        *lines,
    ]))


if __name__ == "__main__":
    raise SystemExit(main())
