"""Graph passes vs onnxslim vs ONNX Runtime's EXTENDED-level saved model, on real models.

    .venv/bin/python benchmarks/graph_passes.py            # PP-OCRv4 det/rec/cls + onnx light_* zoo
    .venv/bin/python benchmarks/graph_passes.py --big      # ... plus the >2 GB external-data model
    .venv/bin/python benchmarks/graph_passes.py --markdown table.md

Per model it prints nodes (original / ours / onnxslim / ORT EXTENDED, with ORT's
``com.microsoft`` contrib ops counted separately: TensorRT cannot parse them, and we never
emit them), wall time of load+optimize+save for ours and onnxslim measured in the same run
(and their ratio), peak RSS of each tool's run (RssAnon and RssFile separately, sampled from
``/proc/self/status`` in a fresh subprocess per tool), and the max output difference of each
result against the original (ONNX Runtime CPU, optimisations off, the same inputs; relative
to the output's scale). Zoo models get seeded random weights, and their final Softmax is
dropped so that the logits (not a saturated one-hot) are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = ("ours", "onnxslim", "ort_extended", "ours_opset17")

PPOCR = {
    # name: (file, input shape used for the numeric comparison)
    "ppocr_det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 160, 160)),
    "ppocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "ppocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}
# The light_* zoo models that run in a few seconds each on 2 cores (vgg19/alexnet/zfnet512
# carry 0.2-0.6 GB of random weights and mostly measure weight generation).
ZOO = ("squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50", "densenet121")


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


def _run_ours(src: str, dst: str, opset: int | None = None) -> dict:
    from graph_passes import run_passes
    from optimizer.model import load_model, save_model

    model = load_model(src)
    records = run_passes(model, opset=opset)
    save_model(model, dst)
    return {"fired": [r.name for r in records if r.modified]}


def _run_ours_opset17(src: str, dst: str) -> dict:
    """The default passes after ``--opset 17``: LayerNormalization and HardSwish become available."""
    return _run_ours(src, dst, opset=17)


def _run_onnxslim(src: str, dst: str) -> dict:
    import onnx
    import onnxslim

    from optimizer.model import PROTOBUF_LIMIT

    model = onnxslim.slim(src)
    big = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT
    onnx.save(model, dst, save_as_external_data=big, location=Path(dst).name + ".data" if big else None)
    return {}


def _run_ort_extended(src: str, dst: str) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = dst
    if os.path.getsize(src) > (1 << 30) or Path(src + ".data").exists():
        # Models over 2 GB must be written with external data.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(dst).name + ".data"
        )
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return {}


def worker(tool: str, src: str, dst: str) -> None:
    fn = {
        "ours": _run_ours,
        "onnxslim": _run_onnxslim,
        "ort_extended": _run_ort_extended,
        "ours_opset17": _run_ours_opset17,
    }[tool]
    with _PeakRss() as rss:
        start = time.perf_counter()
        _import_stack(tool)
        imported = time.perf_counter()
        extra = fn(src, dst)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "warm_seconds": time.perf_counter() - imported,
                "rss_anon": rss.anon,
                "rss_file": rss.file,
                "vm_hwm": rss.hwm,
                **extra,
            }
        )
    )


def _import_stack(tool: str) -> None:
    """Import what a tool needs, so its time splits into imports and the work itself."""
    if tool.startswith("ours"):
        import onnxscript.optimizer  # noqa: F401  (the folder and rewriter load lazily in the passes)
        import onnxscript.rewriter.rules.common  # noqa: F401

        import graph_passes  # noqa: F401
        import optimizer.model  # noqa: F401
    elif tool == "onnxslim":
        import onnxslim  # noqa: F401
    else:
        import onnxruntime  # noqa: F401


def run_tool(tool: str, src: Path, dst: Path, timeout: float = 1800) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", tool, str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- models ---------------------------------------------------------------------------------


def _rapidocr_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        sys.exit("rapidocr_onnxruntime is not installed (make venv installs it)")
    return Path(spec.origin).parent / "models"


def prepare_models(work: Path, big: bool) -> list[tuple[str, Path, dict]]:
    """(name, model file, inputs) for every benchmarked model; zoo models get random weights."""
    import onnx

    sys.path.insert(0, str(ROOT / "tests" / "graph_passes"))
    from gp_helpers import drop_final_softmax as drop_softmax
    from gp_helpers import randomize_constant_of_shape_weights, text_image

    from graph_passes import run_passes
    from optimizer.model import load_model, save_model

    models = []
    for name, (file, shape) in PPOCR.items():
        models.append((name, _rapidocr_dir() / file, {"x": text_image(shape, seed=0)}))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    rng = np.random.default_rng(0)
    for name in ZOO:
        model = load_model(light / f"light_{name}.onnx")
        randomize_constant_of_shape_weights(model, seed=1)
        drop_softmax(model)
        # IR 3 lists every weight as a graph input, which no tool may fold (it could be fed at
        # run time); ORT even saves them as required inputs. Give every tool IR 4 weights.
        run_passes(model, ["remove_initializer_inputs"])
        path = save_model(model, work / f"{name}.onnx")
        (x,) = [v for v in model.graph.inputs if not v.is_initializer()]
        models.append((name, path, {x.name: rng.standard_normal(tuple(x.shape)).astype(np.float32)}))
    if big:
        from benchmarks.make_big_model import make_big_model

        path, feeds = make_big_model(work / "big" / "big.onnx")
        models.append(("big_2.7GB", path, feeds))
    return models


# --- measurement ----------------------------------------------------------------------------


# How many standard ONNX ops each ORT contrib fusion stands for (the least it replaced), to
# compare node counts in ops TensorRT can parse. Unlisted contrib ops count as 1 (in ORT's favour).
CONTRIB_STANDARD_OPS = {
    "FusedConv": 2,  # Conv + activation (+1 with a residual Z input)
    "FusedGemm": 2,  # Gemm + activation
    "FusedMatMul": 2,  # MatMul + Transpose or scale
    "QuickGelu": 3,  # x * Sigmoid(alpha * x)
    "BiasGelu": 2,
    "FastGelu": 2,
    "SkipLayerNormalization": 2,  # Add + LayerNormalization
    "SkipSimplifiedLayerNormalization": 2,
}


def node_counts(path: Path) -> tuple[int, int, int]:
    """(nodes including subgraphs, of which contrib ops, nodes in standard-op equivalents)."""
    import onnx_ir as ir

    from optimizer.model import load_model

    model = load_model(path)
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    contrib = [n for n in nodes if n.domain not in ("", "ai.onnx")]
    standard = len(nodes) - len(contrib)
    for n in contrib:
        extra = 1 if n.op_type == "FusedConv" and len(n.inputs) > 3 and n.inputs[3] is not None else 0
        standard += CONTRIB_STANDARD_OPS.get(n.op_type, 1) + extra
    return len(nodes), len(contrib), standard


def max_rel_diff(reference: dict, path: Path, feeds: dict) -> float:
    """Worst over outputs of max|got - ref| / max|ref|; inf when an output's shape or dtype changed."""
    from optimizer.runners import OrtRunner

    got = OrtRunner(path, optimization="disable").run(feeds)
    worst = 0.0
    for name, ref in reference.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape or out.dtype != ref.dtype:
            return float("inf")
        r, o = ref.astype(np.float64), out.astype(np.float64)
        scale = np.abs(r).max() if r.size else 0.0
        err = np.abs(o - r).max() if r.size else 0.0
        worst = max(worst, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
    return worst


def benchmark(models, work: Path, repeat: int = 3) -> list[dict]:
    from optimizer.runners import OrtRunner

    rows = []
    for name, path, feeds in models:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        row = {"model": name, "nodes_original": node_counts(path)[0]}
        reference = OrtRunner(path, optimization="disable").run(feeds)
        outs = {tool: work / tool / f"{name}.onnx" for tool in TOOLS}
        for out in outs.values():
            out.parent.mkdir(parents=True, exist_ok=True)
        # Ours and onnxslim alternate run by run, so machine noise hits both alike; the
        # fastest run of each is kept, RSS is the worst run's. ORT runs once (nodes only).
        runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
        for _ in range(1 if name.startswith("big") else repeat):
            for tool in ("ours", "onnxslim"):
                runs[tool].append(run_tool(tool, path, outs[tool]))
        for tool in ("ort_extended", "ours_opset17"):  # node counts and numerics only
            runs[tool].append(run_tool(tool, path, outs[tool]))
        for tool in TOOLS:
            out, results = outs[tool], runs[tool]
            result = dict(min(results, key=lambda r: r.get("seconds", float("inf"))))
            if any("warm_seconds" in r for r in results):
                result["warm_seconds"] = min(r.get("warm_seconds", float("inf")) for r in results)
            result["rss_anon"] = max((r.get("rss_anon", 0) for r in results), default=0)
            result["rss_file"] = max((r.get("rss_file", 0) for r in results), default=0)
            row[tool] = result
            if "error" in result:
                continue
            result["nodes"], result["contrib"], result["standard"] = node_counts(out)
            try:
                result["max_rel_diff"] = max_rel_diff(reference, out, feeds)
            except Exception as exc:  # a peer's output that ORT cannot run is a finding, not a crash
                result["max_rel_diff"] = float("nan")
                result["diff_error"] = str(exc)[:200]
        rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
    return rows


# --- output ---------------------------------------------------------------------------------

HEADER = (
    "| model | nodes orig | ours | onnxslim | ORT ext: all (contrib) / std-op equiv | fewest nodes (vs std-op peers) "
    "| ours --opset 17 | load+opt+save ours / slim (ratio) | same, imports excluded "
    "| peak RSS anon+file ours / slim (MiB) "
    "| max rel diff ours / slim / ORT / ours-17 |"
)
SEP = "|" + "---|" * 11


def _mib(b: int) -> str:
    return f"{b / 2**20:.0f}"


def format_row(row: dict) -> str:
    ours, slim, ort, o17 = row["ours"], row["onnxslim"], row["ort_extended"], row["ours_opset17"]

    def nodes(r):
        return "error" if "error" in r else str(r["nodes"])

    ort_nodes = "error" if "error" in ort else f"{ort['nodes']} ({ort['contrib']}) / {ort['standard']}"
    # Peers in ops TensorRT parses: onnxslim's graph, ORT's with contrib fusions counted as
    # the standard ops they replace. Raw ORT counts are shown beside, and compared in words.
    peers = [r["standard"] for r in (slim, ort) if "error" not in r]
    if "error" in ours:
        met = "error"
    else:
        met = "yes" if not peers or ours["nodes"] <= min(peers) else f"no (+{ours['nodes'] - min(peers)})"
        if "error" not in ort and ours["nodes"] > ort["nodes"]:
            met += f"; raw ORT fewer by {ours['nodes'] - ort['nodes']}"
    if "error" in ours or "error" in slim:
        times = f"{ours.get('seconds', float('nan')):.2f}s / {slim.get('seconds', float('nan')):.2f}s"
    else:
        times = f"{ours['seconds']:.2f}s / {slim['seconds']:.2f}s ({ours['seconds'] / slim['seconds']:.2f}x)"

    if "error" in ours or "error" in slim or "warm_seconds" not in ours:
        warm = "-"
    else:
        warm = f"{ours['warm_seconds']:.2f}s / {slim['warm_seconds']:.2f}s ({ours['warm_seconds'] / slim['warm_seconds']:.2f}x)"

    def rss(r):
        return "-" if "error" in r else f"{_mib(r['rss_anon'])}+{_mib(r['rss_file'])}"

    def diff(r):
        if "error" in r:
            return "-"
        return "runs? no" if r.get("diff_error") else f"{r['max_rel_diff']:.1e}"

    return (
        f"| {row['model']} | {row['nodes_original']} | {nodes(ours)} | {nodes(slim)} | {ort_nodes} | {met} | {nodes(o17)} "
        f"| {times} | {warm} | {rss(ours)} / {rss(slim)} | {diff(ours)} / {diff(slim)} / {diff(ort)} / {diff(o17)} |"
    )


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("onnx", "onnx-ir", "onnxscript", "onnxruntime", "onnxslim"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also the >2 GB external-data model (~3 GB of disk)")
    parser.add_argument("--only", default="", help="comma-separated model names to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and model (fastest kept; 1 for --big)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-gp-") as tmp:
        work = Path(tmp)
        models = prepare_models(work, args.big)
        if args.only:
            keep = set(args.only.split(","))
            models = [m for m in models if m[0] in keep]
        rows = benchmark(models, work, args.repeat)
    command = " ".join([".venv/bin/python", "benchmarks/graph_passes.py", *sys.argv[1:]])
    lines = [
        f"{time.strftime('%Y-%m-%d')} · {versions()} · `{command}`",
        "",
        NOTES,
        "",
        HEADER,
        SEP,
        *(format_row(r) for r in rows),
        "",
        MISSES,
    ]
    text = "\n".join(lines)
    print(text)
    from optimizer.model import write_text_atomic

    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")
    if not args.no_write and not args.only:  # a partial run does not replace the table
        write_results(text)


NOTES = """\
Nodes include subgraphs. *ours*: `run_passes(model)` with the default passes (no opset change);
*ours --opset 17*: the same after onnx's version converter (LayerNormalization, HardSwish become
available). *ORT ext*: the model ONNX Runtime saves at ORT_ENABLE_EXTENDED; its `com.microsoft`
ops (FusedConv = Conv+activation, QuickGelu, FusedMatMul) cannot be parsed by TensorRT, so
*fewest nodes* compares ours with onnxslim and with ORT's graph counted in the standard ops each
contrib op replaces; how far the raw ORT count is below ours is stated beside. Time: load +
optimize + save in a fresh process per run, ours and onnxslim alternating, fastest of 3 each
(1 for the big model); once with the tool's imports (onnx-ir pulls in sympy, onnxscript's
folder onnx.reference: ~1 s fixed), once without. Peak RSS: RssAnon + RssFile sampled from
/proc/self/status in that process. Max rel diff: max |out - ref| / max |ref| over outputs,
ONNX Runtime CPU without optimizations, same inputs (PP-OCR: rendered text-like pages; zoo:
seeded random weights and inputs, final Softmax dropped, IR raised to 4 before any tool runs)."""


MISSES = """\
Where we miss: (1) raw ORT EXTENDED counts are lower wherever ORT fuses Conv/Gemm with their
activation into `com.microsoft` FusedConv/FusedGemm; standard ONNX has no such op, TensorRT
fuses those pairs itself at build time, and in standard ops we tie onnxslim (zoo, big model)
or beat both (PP-OCR). (2) On the smallest zoo models the cold time (imports included) can be
slower than onnxslim's: importing onnx-ir (which imports sympy) and onnxscript's folder (which
imports onnx.reference) costs a fixed ~0.5-1 s. With imports excluded we are faster except on
shufflenet (1.04x and 1.20x in two runs; 0.4 s spent mostly in onnx-ir bookkeeping: the
rollback clone after each changing pass, node counts, four shape inferences). (3) LayerNormalization (opset 17) and HardSwish (opset 14) fusions need
`--opset 17` on these opset 11/12 models; the default keeps the model's opset."""


def write_results(body: str) -> None:
    """Replace (or append) the ``## graph_passes`` section of benchmarks/RESULTS.md."""
    from _results import replace_section

    replace_section("graph_passes", body)

if __name__ == "__main__":
    main()
