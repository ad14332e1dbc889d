"""Graph passes vs onnxslim vs ONNX Runtime's BASIC-level saved model, over the public corpus.

    .venv/bin/python benchmarks/graph_passes.py                # the corpus (about 20 min on 2 busy cores)
    .venv/bin/python benchmarks/graph_passes.py --only common,silero_vad --no-write
    .venv/bin/python benchmarks/graph_passes.py --big          # verification cost on the 2.5 GB model

The corpus (``benchmarks/corpus_models.py``): PP-OCRv4 det/rec/cls, ddddocr common/common_old/
common_det, the four openWakeWord models, the nine onnx ``light_*`` zoo topologies as shipped
(weights made by ``ConstantOfShape``) and six of them with seeded random weights (``*_rand``),
and the exported ``torch.nn.TransformerEncoder``. Per model: nodes (subgraphs included) of the
original, ours (``run_passes`` defaults, no verifier: what ``passes --no-verify`` does),
onnxslim and ORT's BASIC-level saved model (standard ops only); the max output difference of
each against the original (ONNX Runtime CPU, optimisations off, the corpus's reference inputs,
relative to each output's scale); and load+optimize+save time of ours and onnxslim measured in
the same run, a fresh process per tool, alternating.

``--big`` runs the default passes on the 2.5 GB external-data model
(``benchmarks/make_big_model.py``) with the default verification and without, in fresh
processes, and reports time and peak RssAnon/RssFile of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = ("ours", "onnxslim", "ort_basic")
FAMILIES = ("ppocr", "ddddocr", "openwakeword", "light", "transformer")
# The light_* models that also run with seeded random weights (vgg19/alexnet/zfnet512 carry
# 0.2-0.6 GB of weights and mostly measure weight generation).
RANDOMIZED = ("squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50", "densenet121")


# --- worker: one tool on one model, in its own process --------------------------------------


class _PeakRss:
    """Samples RssAnon / RssFile of this process every few ms; VmHWM gives the true total peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def status() -> dict[str, int]:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM"):
                    fields[key] = int(rest.split()[0]) * 1024
        return fields

    def _loop(self) -> None:
        while not self._stop.is_set():
            s = self.status()
            self.anon, self.file = max(self.anon, s["RssAnon"]), max(self.file, s["RssFile"])
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        s = self.status()
        self.anon, self.file = max(self.anon, s["RssAnon"]), max(self.file, s["RssFile"])
        self.hwm = s["VmHWM"]


def _run_ours(src: str, dst: str, verify: bool = False) -> dict:
    from graph_passes import Verifier, run_passes
    from optimizer.model import load_model, save_model

    model = load_model(src)
    verifier = Verifier(model) if verify else None
    records = run_passes(model, verifier=verifier)
    save_model(model, dst)
    return {"fired": [r.name for r in records if r.modified], "warnings": [r.warning for r in records if r.warning]}


def _run_ours_verified(src: str, dst: str) -> dict:
    return _run_ours(src, dst, verify=True)


def _run_onnxslim(src: str, dst: str) -> dict:
    import onnx
    import onnxslim

    from optimizer.model import PROTOBUF_LIMIT

    model = onnxslim.slim(src)
    big = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT
    onnx.save(model, dst, save_as_external_data=big, location=Path(dst).name + ".data" if big else None)
    return {}


def _run_ort_basic(src: str, dst: str) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = dst
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return {}


WORKERS = {"ours": _run_ours, "ours_verified": _run_ours_verified, "onnxslim": _run_onnxslim, "ort_basic": _run_ort_basic}


def worker(tool: str, src: str, dst: str) -> None:
    import logging

    logging.disable(logging.WARNING)  # onnxscript's folder logs per node it skips
    with _PeakRss() as rss:
        start = time.perf_counter()
        extra = WORKERS[tool](src, dst)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_anon": rss.anon, "rss_file": rss.file, "vm_hwm": rss.hwm, **extra}))


def run_tool(tool: str, src: Path, dst: Path, timeout: float = 1800) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", tool, str(src), str(dst)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- models ---------------------------------------------------------------------------------


def prepare_models(work: Path, only: set[str] | None) -> list[tuple[str, Path, dict]]:
    """(name, model file, feeds) for every corpus model; ``*_rand`` zoo models get random weights."""
    from benchmarks.corpus_models import iter_corpus, load_reference

    sys.path.insert(0, str(ROOT / "tests" / "graph_passes"))
    from gp_helpers import drop_final_softmax, randomize_constant_of_shape_weights

    from graph_passes import run_passes
    from optimizer.model import load_model, save_model

    models = []
    skipped = lambda family, why: print(f"skipping {family}: {why}", file=sys.stderr)  # noqa: E731
    for entry in iter_corpus(FAMILIES, on_unavailable=skipped):
        reference = load_reference(entry)
        if reference is None or not reference.data_sets:
            continue
        if not only or entry.name in only:
            models.append((entry.name, entry.path, reference.data_sets[0][0]))
        if entry.family == "light" and entry.name in RANDOMIZED and (not only or f"{entry.name}_rand" in only):
            model = load_model(entry.path)
            randomize_constant_of_shape_weights(model, seed=1)
            drop_final_softmax(model)
            # IR 3 lists every weight as a graph input, which no tool may fold (it could be fed
            # at run time); ORT even saves them as required inputs. Give every tool IR 4 weights.
            run_passes(model, ["remove_initializer_inputs"])
            path = save_model(model, work / f"{entry.name}_rand.onnx")
            (x,) = [v for v in model.graph.inputs if not v.is_initializer()]
            feed = {x.name: np.random.default_rng(0).standard_normal(tuple(x.shape)).astype(np.float32)}
            models.append((f"{entry.name}_rand", path, feed))
    return models


# --- measurement ----------------------------------------------------------------------------


def node_count(path: Path) -> int:
    """Nodes including subgraphs: the one count (optimizer.model.count_nodes)."""
    from optimizer.model import count_nodes, load_model

    return count_nodes(load_model(path))


def max_rel_diff(reference: dict, path: Path, feeds: dict) -> float:
    """Worst over outputs of max|got - ref| / max|ref|; inf when an output's shape or dtype changed."""
    from optimizer.runners import OrtRunner

    got = OrtRunner(path, optimization="disable").run(feeds)
    worst = 0.0
    for name, ref in reference.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape or out.dtype != ref.dtype:
            return float("inf")
        if ref.dtype.kind not in "fiub":
            worst = max(worst, 0.0 if np.array_equal(out, ref) else float("inf"))
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        scale = np.abs(r).max() if r.size else 0.0
        err = np.abs(o - r).max() if r.size else 0.0
        worst = max(worst, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
    return worst


def benchmark(models, work: Path, repeat: int = 2) -> list[dict]:
    from optimizer.runners import OrtRunner

    rows = []
    for name, path, feeds in models:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        row = {"model": name, "nodes_original": node_count(path)}
        reference = OrtRunner(path, optimization="disable").run(feeds)
        outs = {tool: work / tool / f"{name}.onnx" for tool in TOOLS}
        for out in outs.values():
            out.parent.mkdir(parents=True, exist_ok=True)
        # Ours and onnxslim alternate run by run, so machine noise hits both alike; the
        # fastest run of each is kept. ORT runs once (nodes only).
        runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
        for _ in range(repeat):
            for tool in ("ours", "onnxslim"):
                runs[tool].append(run_tool(tool, path, outs[tool]))
        runs["ort_basic"].append(run_tool("ort_basic", path, outs["ort_basic"]))
        for tool in TOOLS:
            result = dict(min(runs[tool], key=lambda r: r.get("seconds", float("inf"))))
            row[tool] = result
            if "error" in result:
                continue
            result["nodes"] = node_count(outs[tool])
            try:
                result["max_rel_diff"] = max_rel_diff(reference, outs[tool], feeds)
            except Exception as exc:  # a peer's output that ORT cannot run is a finding, not a crash
                result["max_rel_diff"] = float("nan")
                result["diff_error"] = str(exc)[:200]
        rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
    return rows


# --- the big model: verification cost ---------------------------------------------------------


def big_model(work: Path) -> list[str]:
    """Default passes on the 2.5 GB model with and without verification: time and peak RSS."""
    from benchmarks.make_big_model import make_big_model

    path, _ = make_big_model(work / "big" / "big.onnx")
    weights = (path.parent / (path.name + ".data")).stat().st_size
    results = {}
    for tool in ("ours", "ours_verified", "ours", "ours_verified"):  # alternating, fastest kept
        r = run_tool(tool, path, work / f"{tool}.onnx", timeout=3600)
        if "error" in r:
            return [f"big model: {tool} failed: {r['error']}"]
        if tool not in results or r["seconds"] < results[tool]["seconds"]:
            results[tool] = r
    plain, verified = results["ours"], results["ours_verified"]
    lines = [
        "| big model (weights %.2f GiB) | time | peak RssAnon | peak RssFile | VmHWM / weights |" % (weights / 2**30),
        "|---|---|---|---|---|",
    ]
    for label, r in (("`passes --no-verify`", plain), ("`passes` (default verification)", verified)):
        lines.append(
            f"| {label} | {r['seconds']:.1f} s | {r['rss_anon'] / 2**30:.2f} GiB | {r['rss_file'] / 2**30:.2f} GiB "
            f"| {r['vm_hwm'] / weights:.2f}x |"
        )
    lines.append("")
    lines.append(f"Verification costs {verified['seconds'] / plain['seconds']:.2f}x the `--no-verify` time (same run).")
    return lines


# --- output ---------------------------------------------------------------------------------

HEADER = (
    "| model | nodes orig | ours | onnxslim | ORT BASIC | fewest? | max rel diff ours / slim / ORT "
    "| load+opt+save ours / slim (ratio) |"
)
SEP = "|" + "---|" * 8


def format_row(row: dict) -> str:
    ours, slim, ort = row["ours"], row["onnxslim"], row["ort_basic"]

    def nodes(r):
        return "error" if "error" in r else str(r["nodes"])

    peers = [r["nodes"] for r in (slim, ort) if "error" not in r]
    if "error" in ours:
        met = "error"
    else:
        met = "yes" if not peers or ours["nodes"] <= min(peers) else f"no (+{ours['nodes'] - min(peers)})"
        if ours.get("warnings"):
            met += f"; {len(ours['warnings'])} pass warnings"

    def diff(r):
        if "error" in r:
            return "-"
        return "runs? no" if r.get("diff_error") else f"{r['max_rel_diff']:.1e}"

    if "error" in ours or "error" in slim:
        times = f"{ours.get('seconds', float('nan')):.2f}s / {slim.get('seconds', float('nan')):.2f}s"
    else:
        times = f"{ours['seconds']:.2f}s / {slim['seconds']:.2f}s ({ours['seconds'] / slim['seconds']:.2f}x)"
    return (
        f"| {row['model']} | {row['nodes_original']} | {nodes(ours)} | {nodes(slim)} | {nodes(ort)} | {met} "
        f"| {diff(ours)} / {diff(slim)} / {diff(ort)} | {times} |"
    )


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("onnx", "onnx-ir", "onnxscript", "onnxruntime", "onnxslim"))


NOTES = """\
Nodes include subgraphs. *ours*: `run_passes(model)` with the default passes, no verifier
(`trtforge passes --no-verify`); *ORT BASIC*: the model ONNX Runtime saves at
ORT_ENABLE_BASIC (standard ops only). *fewest?*: ours <= min(onnxslim, ORT BASIC). Max rel
diff: max |out - ref| / max |ref| over outputs, ONNX Runtime CPU without optimizations, the
corpus's reference inputs (zoo `*_rand`: seeded random weights and input, final Softmax
dropped, IR raised to 4 first; "runs? no" for ORT on the raw zoo models: ORT saves their IR-3
weights as required graph inputs). Time: load + optimize + save in a fresh process per run, ours
and onnxslim alternating, fastest of 2 each, imports included."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="verification cost on the 2.5 GB model (~3 GB of disk)")
    parser.add_argument("--only", default="", help="comma-separated model names to run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool and model (fastest kept)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    command = " ".join([".venv/bin/python", "benchmarks/graph_passes.py", *sys.argv[1:]])
    head = f"{time.strftime('%Y-%m-%d')} · {versions()} · `{command}`"
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-gp-") as tmp:
        work = Path(tmp)
        if args.big:
            text = "\n".join([head, "", *big_model(work)])
            section = "graph_passes_big"
        else:
            only = set(args.only.split(",")) if args.only else None
            rows = benchmark(prepare_models(work, only), work, args.repeat)
            text = "\n".join([head, "", NOTES, "", HEADER, SEP, *(format_row(r) for r in rows), "", summary(rows)])
            section = "graph_passes"
    print(text)
    if not args.no_write and not args.only:  # a partial run does not replace the table
        from _results import replace_section

        replace_section(section, text)


def summary(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r["ours"]]
    met = [r for r in ok if all("error" in r[t] or r["ours"]["nodes"] <= r[t]["nodes"] for t in ("onnxslim", "ort_basic"))]
    misses = [r["model"] for r in ok if r not in met]
    worst = max((r["ours"].get("max_rel_diff", 0.0) for r in ok), default=0.0)
    return (
        f"Fewest nodes (<= min(onnxslim, ORT BASIC)) on {len(met)} of {len(rows)} models"
        + (f"; behind on: {', '.join(misses)}" if misses else "")
        + f". Worst max rel diff of ours: {worst:.1e}."
    )


if __name__ == "__main__":
    main()
