"""Pruning on real models: FLOPs, parameters, task metric, output error and CPU latency, in one run.

    .venv/bin/python benchmarks/pruning.py                  # PP-OCRv4 det + rec + mobile cls
    .venv/bin/python benchmarks/pruning.py --markdown t.md  # also write the tables as Markdown
    .venv/bin/python benchmarks/pruning.py --check          # det: uniform --channels ratios vs the self-check

Models and data (all offline):
* PP-OCRv4 det: text pages rendered with PIL (lines drawn by ``samples.ppocr_rec.render``);
  metric = line-detection F1 of the candidate's boxes against the FP32 model's own boxes
  (IoU >= 0.5), plus the FP32 model's F1 against the true line boxes as a sanity check.
* PP-OCRv4 rec: the sample's rendered text lines (``samples.ppocr_rec.prepare``); metric = CER.
* PP-OCR mobile v2 angle classifier: rendered lines, half rotated 180°; metric = accuracy.

Per model: channel pruning to a 25% FLOPs cut, once with one uniform ratio for every group
and once spread over groups by measured sensitivity (with and without least-squares
reconstruction), and 2:4 sparsity by magnitude, magnitude + reconstruction, and OBS. Output error = mean |cand - ref| / mean |ref| on held-out data.
Latency: ONNX Runtime CPU, 1 thread, reference and candidate interleaved in the same run;
only ratios are quoted (of the p50s, and the median of per-iteration ratios), next to an A/A
ratio (the FP32 model against a second session of itself) that shows the noise floor. 2:4 weights run dense on the CPU (no speed-up there by design:
the win is TensorRT's sparse kernels on Ampere+ GPUs, which this machine does not have).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.model import load_model, metadata  # noqa: E402
from optimizer.pruning import prune  # noqa: E402
from optimizer.runners import OrtRunner  # noqa: E402
from optimizer.validate import MetricContext, measure_latency, paired_speedup  # noqa: E402
from samples.ppocr_rec import render  # noqa: E402


def models_dir() -> Path:
    return Path(importlib.util.find_spec("rapidocr_onnxruntime").origin).parent / "models"


# ------------------------------------------------------------------ det: pages, boxes, F1

PAGE_W, PAGE_H = 640, 480
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def render_page(seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A page of text lines at random x offsets; returns (feed array, true boxes x0,y0,x1,y1)."""
    rng = np.random.default_rng(seed)
    texts = render.generate_lines(10, seed=seed, stream="page")
    page = Image.new("RGB", (PAGE_W, PAGE_H), (245, 243, 238))
    boxes, y = [], 12
    for text in texts:
        line = render.render_line(text, rng)
        if line.width > PAGE_W - 20:
            line = line.resize((PAGE_W - 20, max(8, line.height * (PAGE_W - 20) // line.width)))
        if y + line.height > PAGE_H - 8:
            break
        x = int(rng.integers(8, PAGE_W - line.width - 8 + 1))
        page.paste(line, (x, y))
        boxes.append((x, y, x + line.width, y + line.height))
        y += line.height + int(rng.integers(10, 28))
    pixels = np.asarray(page, np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0  # BGR, as RapidOCR feeds it
    return ((pixels - MEAN) / STD)[None].astype(np.float32), boxes


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels by min-propagation (no OpenCV/SciPy here)."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        new = np.where(mask, neighbours, big)
        # Pointer jumping: a pixel adopts its label's label, so long lines converge in log steps.
        new = np.where(mask, new.ravel()[np.minimum(new, h * w - 1)].reshape(h, w), big)
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def detect_boxes(prob: np.ndarray, threshold: float = 0.3, min_area: int = 16) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of the text regions (components of prob > threshold), found at half resolution."""
    p = prob[0, 0]
    h, w = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
    small = p[:h, :w].reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3)) > threshold
    labels = label_components(small)
    ys, xs = np.nonzero(labels >= 0)
    if not len(ys):
        return []
    ids, inverse, counts = np.unique(labels[ys, xs], return_inverse=True, return_counts=True)
    x0 = np.full(len(ids), 1 << 30); y0 = x0.copy(); x1 = np.zeros(len(ids), int); y1 = x1.copy()
    np.minimum.at(x0, inverse, xs); np.minimum.at(y0, inverse, ys)
    np.maximum.at(x1, inverse, xs); np.maximum.at(y1, inverse, ys)
    keep = counts * 4 >= min_area
    return [(2 * a, 2 * b, 2 * c + 2, 2 * d + 2) for a, b, c, d in zip(x0[keep], y0[keep], x1[keep], y1[keep])]


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def f1(pred: list, truth: list, iou: float = 0.5) -> tuple[int, int, int]:
    """(matched, predicted, true) with greedy one-to-one matching at IoU >= ``iou``."""
    used, matched = set(), 0
    for p in pred:
        best = max(((i, _iou(p, t)) for i, t in enumerate(truth) if i not in used), key=lambda x: x[1], default=None)
        if best and best[1] >= iou:
            used.add(best[0])
            matched += 1
    return matched, len(pred), len(truth)


def center_matches(pred: list, truth: list) -> tuple[int, int, int]:
    """Like ``f1`` but a match is a predicted box whose centre lies in a true box: DB shrinks
    text regions, so its raw boxes sit inside the padded, rotated line crops we pasted."""
    used, matched = set(), 0
    for p in pred:
        cx, cy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
        for i, t in enumerate(truth):
            if i not in used and t[0] <= cx <= t[2] and t[1] <= cy <= t[3]:
                used.add(i)
                matched += 1
                break
    return matched, len(pred), len(truth)


def _f1_score(counts) -> float:
    m = sum(c[0] for c in counts)
    p = sum(c[1] for c in counts)
    t = sum(c[2] for c in counts)
    return 2 * m / (p + t) if p + t else 1.0


# ------------------------------------------------------------------ tasks


class Task:
    name: str
    model: Path
    metric_name: str
    higher_is_better: bool
    calib: list
    val: list

    def metric(self, outputs: list[dict]) -> float:
        raise NotImplementedError


class DetTask(Task):
    name, metric_name, higher_is_better = "PP-OCRv4 det", "F1 vs FP32", True

    def __init__(self, n_calib: int, n_val: int) -> None:
        self.model = models_dir() / "ch_PP-OCRv4_det_infer.onnx"
        self.calib = [{"x": render_page(1000 + i)[0]} for i in range(n_calib)]
        pages = [render_page(i) for i in range(n_val)]
        self.val = [{"x": p[0]} for p in pages]
        self.truth = [p[1] for p in pages]
        self.reference_boxes = None

    def metric(self, outputs):
        boxes = [detect_boxes(next(iter(o.values()))) for o in outputs]
        if self.reference_boxes is None:  # the first call is the FP32 model
            self.reference_boxes = boxes
            self.truth_f1 = _f1_score([center_matches(b, t) for b, t in zip(boxes, self.truth)])
            return 1.0
        return _f1_score([f1(b, r) for b, r in zip(boxes, self.reference_boxes)])


class RecTask(Task):
    name, metric_name, higher_is_better = "PP-OCRv4 rec", "CER %", False

    def __init__(self, n_calib: int, n_val: int, work: Path) -> None:
        from calibration import NpzFolderSource
        from samples.ppocr_rec.prepare import prepare

        self.model = prepare(work / "rec", calib=n_calib, val=n_val, seed=0, log=lambda *_: None)
        calib = NpzFolderSource(work / "rec" / "data" / "calib")
        val = NpzFolderSource(work / "rec" / "data" / "val")
        self.calib, self.val, self.labels = list(calib), list(val), val.labels
        self.context = MetricContext(metadata=metadata(load_model(self.model)))

    def metric(self, outputs):
        from samples.ppocr_rec.metric import cer

        return cer(outputs, self.labels, self.context)


def _cls_feed(img: Image.Image) -> np.ndarray:
    h, w = 48, 192
    width = min(w, max(1, round(img.width * h / img.height)))
    pixels = np.asarray(img.resize((width, h)), np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :width] = (pixels - 0.5) / 0.5
    return out[None]


class ClsTask(Task):
    name, metric_name, higher_is_better = "PP-OCR cls (mobile v2)", "accuracy %", True

    def __init__(self, n_calib: int, n_val: int) -> None:
        self.model = models_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        self.calib = self._make(n_calib, "cls-calib")[0]
        self.val, self.labels = self._make(n_val, "cls-val")

    @staticmethod
    def _make(n, stream):
        texts = render.generate_lines(n, seed=0, stream=stream)
        feeds, labels = [], []
        for i, img in enumerate(render.render_lines(texts, seed=0, stream=stream)):
            flip = i % 2 == 1
            feeds.append({"x": _cls_feed(img.rotate(180) if flip else img)})
            labels.append(int(flip))
        return feeds, labels

    def metric(self, outputs):
        pred = [int(np.argmax(next(iter(o.values()))[0])) for o in outputs]
        return 100.0 * float(np.mean([p == t for p, t in zip(pred, self.labels)]))


# ------------------------------------------------------------------ the run


def evaluate(task: Task, path: Path, ref_outputs: list[dict] | None):
    runner = OrtRunner(path)
    outputs = [runner.run(f) for f in task.val]
    err = None
    if ref_outputs is not None:
        num = sum(float(np.abs(o[k] - r[k]).mean()) for o, r in zip(outputs, ref_outputs) for k in r)
        den = sum(float(np.abs(r[k]).mean()) for r in ref_outputs for k in r)
        err = num / den
    return task.metric(outputs), err, outputs


def run_task(task: Task, work: Path, args) -> list[dict]:
    rows = []
    base, _, ref_outputs = evaluate(task, task.model, None)
    # A/A: the FP32 model against a second session of itself, timed like every candidate: the noise floor.
    noise = measure_latency({"a": OrtRunner(task.model, threads=1), "b": OrtRunner(task.model, threads=1)},
                            task.val[: args.latency_samples], warmup=2, iterations=args.iterations)
    rows.append({"model": task.name, "variant": "FP32 (speed-up column: A/A noise floor)", "metric": base, "err": 0.0,
                 "flops": None, "params": None, "speedup": _ratios(noise["a"], noise["b"]), "seconds": 0.0})
    # The uniform ratio that removes 25% of FLOPs (no data: every prunable group cut alike) ...
    uniform = prune(task.model, None, flops_target=0.25, dry_run=True, input_shapes={"x": task.val[0]["x"].shape}).channels
    variants = [
        (f"channels uniform {uniform:.0%} + LS refit", dict(channels=uniform, criterion="activation", reconstruct=True)),
        # ... against the same FLOPs target spread by measured sensitivity.
        ("channels −25% FLOPs, no refit", dict(flops_target=0.25, criterion="activation", reconstruct=False)),
        ("channels −25% FLOPs + LS refit", dict(flops_target=0.25, criterion="activation", reconstruct=True)),
        ("2:4 magnitude", dict(sparsity="2:4", method="magnitude", reconstruct=False)),
        ("2:4 magnitude + LS", dict(sparsity="2:4", method="magnitude", reconstruct=True)),
        ("2:4 OBS", dict(sparsity="2:4", method="obs", reconstruct=True)),
    ]
    for index, (label, kwargs) in enumerate(variants):
        out = work / f"{task.name.split()[-1]}_{index}.onnx"
        t0 = time.perf_counter()
        # force: the table measures the destructive variants too (prune's self-check would refuse to write them).
        result = prune(task.model, out, source=task.calib, samples=args.calib, force=True, **kwargs)
        seconds = time.perf_counter() - t0
        metric, err, _ = evaluate(task, out, ref_outputs)
        speedup = None
        if "sparsity" not in kwargs:
            feeds = task.val[: args.latency_samples]
            times = measure_latency({"ref": OrtRunner(task.model, threads=1), "cand": OrtRunner(out, threads=1)},
                                    feeds, warmup=2, iterations=args.iterations)
            speedup = _ratios(times["ref"], times["cand"])
        rows.append({
            "model": task.name, "variant": label, "metric": metric, "err": err,
            "flops": (result.flops_before, result.flops_after), "params": (result.params_before, result.nonzero_after),
            "sparse_share": result.sparse_flops_share if "sparsity" in kwargs else None,
            "speedup": speedup, "seconds": seconds,
            "left_alone": sum(1 for g in result.groups if g.reason and g.roots),
            "groups": sum(1 for g in result.groups if g.roots),
        })
        print(_format_row(rows[-1], task), flush=True)
    if isinstance(task, DetTask):
        rows[0]["note"] = f"FP32 det: F1 vs the true lines (centre-in-box match) {task.truth_f1:.3f}"
    return rows


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _ratios(ref, cand) -> tuple[float, float]:
    """(ratio of p50s, median of per-iteration ratios): the second pairs runs made back to back."""
    return ref.p50_ms / cand.p50_ms, paired_speedup(ref, cand)


def _format_row(r, task=None) -> str:
    flops = f"{r['flops'][0] / 1e9:.2f} → {r['flops'][1] / 1e9:.2f} G (−{1 - r['flops'][1] / r['flops'][0]:.0%})" if r["flops"] else ""
    params = f"{r['params'][0] / 1e6:.3f} → {r['params'][1] / 1e6:.3f} M nz" if r["params"] else ""
    speed = "" if r["speedup"] is None else f"{r['speedup'][0]:.2f}x / {r['speedup'][1]:.2f}x"
    extra = []
    if r.get("sparse_share") is not None:
        extra.append(f"2:4 share of FLOPs {r['sparse_share']:.0%}")
    if r.get("groups"):
        extra.append(f"{r['groups'] - r['left_alone']}/{r['groups']} groups prunable")
    return (f"| {r['model']} | {r['variant']} | {r['metric']:.3f} | {r['err']:.4f} | {flops} | {params} | "
            f"{speed} | "
            f"{r['seconds']:.1f} | {'; '.join(extra)} |")


HEADER = ("| model | variant | metric | output err | FLOPs (Conv/Gemm/MatMul) | params (non-zero) | "
          "ORT CPU 1-thread speed-up (p50s / paired median) | prune s | notes |\n|---|---|---|---|---|---|---|---|---|")


CHECK_RATIOS = (0.1, 0.2, 0.3)


def check_table(args) -> list[str]:
    """``trtforge prune det --channels R --calib`` (the CLI's defaults) for uniform ratios, and a FLOPs target.

    Per variant: the self-check's verdict (relative output error on the calibration data against
    the default tolerance), whether the model would be written, and the held-out truth: F1 of
    the pruned detector's boxes against the FP32 model's own boxes on pages the check never saw.
    """
    from optimizer.pruning.check import DEFAULT_TOLERANCE

    task = DetTask(args.calib, args.val)
    _, _, ref_outputs = evaluate(task, task.model, None)
    rows = []
    variants = [(f"--channels {r}", dict(channels=r)) for r in CHECK_RATIOS] + [("--flops-target 0.25", dict(flops_target=0.25))]
    with tempfile.TemporaryDirectory(prefix="trtforge-prune-check-") as tmp:
        for label, kwargs in variants:
            out = Path(tmp) / "p.onnx"
            result = prune(task.model, out, source=task.calib, samples=args.calib, force=True, **kwargs)
            check = result.check
            metric, err, _ = evaluate(task, out, ref_outputs)
            worst_cos = min(o["cosine_min"] for o in check["outputs"])
            rows.append(f"| {label} | −{result.flops_reduction:.0%} | {check['relative_error']:.3f} | {worst_cos:.3f} | "
                        f"{'pass: written, exit 0' if check['passed'] else 'FAIL: exit 1, nothing written'} | {err:.3f} | {metric:.3f} |")
            print(rows[-1], flush=True)
            out.unlink()
    return [
        f"PP-OCRv4 det, {args.calib} calibration pages (the check runs on them), {args.val} held-out pages; CLI defaults "
        f"(criterion activation, least-squares refit); default tolerance {DEFAULT_TOLERANCE:g}. "
        f"Reproduce: `.venv/bin/python benchmarks/pruning.py --check --calib {args.calib} --val {args.val}`.",
        "",
        "| variant | FLOPs | check: output err (calib) | check: worst cosine | verdict | held-out output err | held-out F1 vs FP32 |",
        "|---|---:|---:|---:|---|---:|---:|",
        *rows,
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=16, help="calibration samples per model")
    ap.add_argument("--val", type=int, default=24, help="held-out samples per model")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--latency-samples", type=int, default=4)
    ap.add_argument("--models", default="det,rec,cls")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--check", action="store_true", help="only the det table: uniform ratios against the pruning self-check")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        lines = check_table(args)
        print("\n".join(lines))
        if not args.no_write:
            from _results import replace_section

            replace_section("pruning_check", "\n".join([f"{time.strftime('%Y-%m-%d')}, onnxruntime {_ort_version()}. " + lines[0], *lines[1:]]))
        return 0
    with tempfile.TemporaryDirectory(prefix="trtforge-prune-bench-") as tmp:
        work = Path(tmp)
        tasks = []
        wanted = args.models.split(",")
        if "det" in wanted:
            tasks.append(DetTask(args.calib, args.val))
        if "rec" in wanted:
            tasks.append(RecTask(args.calib, args.val, work))
        if "cls" in wanted:
            tasks.append(ClsTask(args.calib, args.val))
        print(HEADER)
        rows = []
        for task in tasks:
            task_rows = run_task(task, work, args)
            print(_format_row(task_rows[0]) + (f" {task_rows[0].get('note')}" if task_rows[0].get("note") else ""))
            rows += task_rows
    if args.markdown:
        lines = [HEADER] + [_format_row(r) for r in rows]
        notes = [r["note"] for r in rows if r.get("note")]
        args.markdown.write_text("\n".join(lines + [""] + notes) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
