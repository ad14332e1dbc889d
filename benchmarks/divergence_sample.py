"""The first-divergent-layer search on the sample: a bad INT8 candidate, its diagnosis, its fix.

    .venv/bin/python benchmarks/divergence_sample.py [--work build/bench-divergence] [--no-write]

1. ``optimize`` the PP-OCRv4 recognizer with per-tensor MinMax INT8 (``precision.per_channel:
   false``, tensorrt target) and the sample's gate ``cer_increase<=1.0``: the gate fails and the
   search runs (``validate.divergence: on-failure``).
2. ``optimize`` again with the search's recommendation as ``precision.exclude``: the gate passes.
3. The search alone, in fresh child processes, with 8 / 32 / all tensors per ORT session: peak
   RssAnon (``/proc/self/status``, sampled after every session build and run) against chunk size.
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
    args = parser.parse_args(argv)

    from optimizer.pipeline import optimize
    from samples.ppocr_rec.prepare import prepare

    work = args.work
    if not (work / "data" / "val").is_dir():
        prepare(work, calib=64, val=200, seed=0, log=lambda m: None)
    model, calib, val = work / "ppocr_rec.onnx", work / "data" / "calib", work / "data" / "val"

    bad = optimize(model, work / "bad", _recipe(False, []), calib=calib, val=val, use_cache=False)
    div = bad.validation["divergence"]
    fixed = optimize(model, work / "fixed", _recipe(False, div["recommend_exclude"]), calib=calib, val=val, use_cache=False)
    good = optimize(model, work / "per-channel", _recipe(True, []), calib=calib, val=val, use_cache=False)

    def row(label: str, report) -> str:
        task, prec = report.validation["task"], report.stage("precision")
        gate = report.gates[0]
        return (f"| {label} | {prec.summary['quantized nodes']} | {task['reference']:.3f} | {task['candidate']:.3f} | "
                f"{task['change']:+.3f} | {'pass' if gate.passed else 'FAIL'} |")

    ctx = multiprocessing.get_context("spawn")
    memory = []
    for chunk in (8, 32, 100000):
        queue = ctx.Queue()
        proc = ctx.Process(target=_search, args=(bad.artifacts["passes"], bad.artifacts["precision"], str(val), chunk, queue))
        proc.start()
        sessions, base, peak, seconds = queue.get()
        proc.join()
        memory.append(f"| {chunk if chunk < 100000 else 'all'} | {sessions} | {base:.0f} | {peak:.0f} | {peak - base:.0f} | {seconds:.1f} |")

    lines = [
        "| candidate | INT8 nodes | CER FP32 (%) | CER INT8 (%) | change | gate cer_increase<=1.0 |",
        "|---|---:|---:|---:|---:|---|",
        row("per-tensor MinMax", bad),
        row(f"per-tensor MinMax, exclude {len(div['recommend_exclude'])} recommended", fixed),
        row("per-channel MinMax (for comparison)", good),
        "",
        f"- first divergent: `{div['first']['node']}` ({div['first']['op_type']}), tensor `{div['first']['tensor']}`, "
        f"SNR {div['first']['snr_db']:.1f} dB; recommended `--exclude {','.join(div['recommend_exclude'])}`",
        f"- search in the pipeline: {div['compared']} tensors, {div['samples']} samples, {div['sessions']} sessions of "
        f"{div['chunk']} tensors, {div['seconds']:.1f} s, peak RssAnon {div['peak_rss_anon_mb']:.0f} MB",
        "",
        "| tensors per session | sessions | RssAnon before (MB) | peak RssAnon (MB) | growth (MB) | s |",
        "|---:|---:|---:|---:|---:|---:|",
        *memory,
    ]
    print("\n".join(lines))
    if not args.no_write:
        _write_results(lines)
    return 0


def _write_results(lines: list[str]) -> None:
    from _results import replace_section

    replace_section("divergence_sample", "\n".join([
        f"PP-OCRv4 rec, sample data (64 calibration, 200 validation lines), tensorrt target, {datetime.date.today().isoformat()}. "
        "Reproduce: `.venv/bin/python benchmarks/divergence_sample.py`.",
        "",
        *lines,
    ]))


if __name__ == "__main__":
    raise SystemExit(main())
