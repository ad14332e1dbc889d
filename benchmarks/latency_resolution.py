"""Does the latency harness resolve the FP32 → INT8 difference? Spread of identical runs vs the effect.

    .venv/bin/python benchmarks/latency_resolution.py [--work build/bench-latency] [--iterations 60] [--no-write]

The PP-OCRv4 recognizer on the sample's rendered lines, FP32 against its INT8 Q/DQ form for
ONNX Runtime's CPU kernels (``--target onnxruntime-cpu``, U8S8), both at ORT's default level
on 1 thread, timed by ``optimizer.validate.measure_latency`` (interleaved, order flipped every
iteration). In the same loop a second, independent FP32 session of the same file ("FP32 copy")
gives the A/A ratio: what the harness reports when nothing differs. The whole measurement runs
twice (run 1, run 2) in one process, so the run-to-run spread of the speed-up is measured too.

The harness resolves the difference when |speed-up - 1| is many times both spreads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-latency")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="Do not update benchmarks/RESULTS.md.")
    args = parser.parse_args(argv)

    from calibration import NpzFolderSource, quantize
    from optimizer.runners import OrtRunner
    from optimizer.validate import measure_latency
    from samples.ppocr_rec.prepare import prepare

    work = args.work
    if not (work / "data" / "val").is_dir():
        prepare(work, calib=32, val=8, seed=0, log=lambda m: None)
    fp32 = work / "ppocr_rec.onnx"
    int8 = work / "ppocr_rec.int8-cpu.onnx"
    if not int8.exists():
        quantize(fp32, int8, NpzFolderSource(work / "data" / "calib"), target="onnxruntime-cpu", method="max")
    feeds = list(NpzFolderSource(work / "data" / "val"))[:4]

    runs = []
    for run in (1, 2):
        runners = {
            "FP32": OrtRunner(fp32, threads=1, optimization="all"),
            "FP32 copy": OrtRunner(fp32, threads=1, optimization="all"),
            "INT8": OrtRunner(int8, threads=1, optimization="all"),
        }
        lat = measure_latency(runners, feeds, warmup=3, iterations=args.iterations)
        p50 = {name: lat[name].p50_ms for name in runners}
        # Iteration i of every runner ran back to back on the same input: the per-iteration
        # ratio cancels drift slower than one iteration, so its median is the steadier estimate.
        fp32_ms, copy_ms, int8_ms = (np.asarray(lat[n].samples_ms) for n in ("FP32", "FP32 copy", "INT8"))
        runs.append(
            {
                "run": run,
                "aa_ratio": p50["FP32"] / p50["FP32 copy"],
                "speedup": p50["FP32"] / p50["INT8"],
                "aa_paired": float(np.median(fp32_ms / copy_ms)),
                "speedup_paired": float(np.median(fp32_ms / int8_ms)),
            }
        )
        r = runs[-1]
        print(f"run {run}: A/A p50 ratio {r['aa_ratio']:.3f} (paired {r['aa_paired']:.3f}), "
              f"FP32/INT8 p50 speed-up {r['speedup']:.3f} (paired {r['speedup_paired']:.3f})")

    lines = [
        "| run | A/A ratio, p50s | A/A ratio, paired median | FP32/INT8 speed-up, p50s | FP32/INT8 speed-up, paired median |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r['run']} | {r['aa_ratio']:.3f} | {r['aa_paired']:.3f} | {r['speedup']:.3f} | {r['speedup_paired']:.3f} |" for r in runs],
        "",
    ]
    for label, aa_key, key in (("p50s", "aa_ratio", "speedup"), ("paired median", "aa_paired", "speedup_paired")):
        aa_spread = max(abs(r[aa_key] - 1.0) for r in runs)
        run_spread = abs(runs[0][key] - runs[1][key])
        effect = float(np.mean([r[key] for r in runs])) - 1.0
        lines.append(
            f"- {label}: A/A spread (worst \\|ratio - 1\\|) **{aa_spread:.3f}**, run-to-run spread of the speed-up "
            f"**{run_spread:.3f}**; effect (mean speed-up - 1) **{effect:.3f}** = **{effect / max(aa_spread, run_spread, 1e-9):.1f}x** "
            "the larger spread"
        )
    print("\n".join(lines))
    if not args.no_write:
        _write_results(lines, args.iterations, len(feeds))
    return 0


def _write_results(lines: list[str], iterations: int, feeds: int) -> None:
    import onnxruntime
    from _results import replace_section

    date = datetime.date.today().isoformat()
    body = "\n".join(
        [
            f"PP-OCRv4 rec, FP32 vs INT8 (onnxruntime-cpu target, U8S8 MinMax), ONNX Runtime {onnxruntime.__version__} CPU, "
            f"1 thread, level \"all\", {iterations} interleaved iterations over {feeds} inputs per run, two runs in one process, {date}; "
            f"1-minute load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end (shared machine). "
            "Reproduce: `.venv/bin/python benchmarks/latency_resolution.py`.",
            "",
            *lines,
        ]
    )
    replace_section("latency_resolution", body)


if __name__ == "__main__":
    raise SystemExit(main())
