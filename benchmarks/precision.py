"""INT8 accuracy and CPU speed: trtforge's calibration vs ONNX Runtime's quantize_static, in one run.

    .venv/bin/python benchmarks/precision.py [--work build/bench-precision] [--no-write] [--models rec,det,cls]

Three real models, each with data whose ground truth is known:

- PP-OCRv4 rec (CRNN + SVTR attention): the sample's rendered text lines (64 calibration,
  200 validation), character error rate (%) against the rendered text;
- PP-OCRv2 cls (MobileNetV3 classifier, 0 vs 180 degrees): the same kind of rendered lines,
  every other one turned upside down, accuracy (%) against that label;
- PP-OCRv4 det (DB segmentation): pages of 4 rendered lines, intersection-over-union (%) of
  the binarised text map (DB's threshold 0.3) with FP32's.

Rows: FP32; ``quantize_static`` (QDQ, U8S8, per-channel) with MinMax, Entropy and Percentile;
ours for the onnxruntime-cpu target with every method, and with an accuracy budget; ours for
the tensorrt target (S8S8: accuracy only, TensorRT's form runs slower than FP32 on ORT's CPU
kernels). Latency is ORT on 1 thread at its default level ("all"), every variant of a model
timed interleaved in the same loop, quoted as a ratio to FP32. Each quantization runs in a
fresh child process so its wall time and peak RSS are its own.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import importlib.util
import math
import multiprocessing
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CALIB, VAL, SEED = 64, 200, 0
DET_PAGES_CALIB, DET_PAGES_VAL, LINES_PER_PAGE = 16, 24, 4
CLS_WIDTH = 192
DB_THRESHOLD = 0.3
OUR_METHODS = ("max", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
# The budget each model's "ours + budget" row must meet, in its own metric.
BUDGETS = {"rec": "cer_increase<=0.1", "cls": "accuracy_drop<=0.5", "det": "iou_drop<=1.0"}
LATENCY_ITERATIONS = 24
# quantize_static's histogram calibrators keep every calibrated tensor of every sample in memory
# (12.8 GB and climbing on PP-OCRv4 rec with 64 lines); on a shared 24 GB machine each job gets
# a resident-memory cap, and a peer that hits it is re-run on fewer samples, labelled as such.
MEMORY_CAP_GIB = 6
FALLBACK_SAMPLES = 16


# --- data ------------------------------------------------------------------------------------


def _rapidocr_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        sys.exit("rapidocr_onnxruntime is not installed (make venv installs it)")
    return Path(spec.origin).parent / "models"


def _bgr(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))[:, :, ::-1]


def _cls_input(img, flip: bool) -> np.ndarray:
    """RapidOCR's classifier input: height 48, width min(ratio, 192), (x/255-0.5)/0.5, zero pad to 192."""
    from samples.ppocr_rec.preprocess import resize_linear

    if flip:
        img = img.rotate(180)
    width = min(CLS_WIDTH, max(1, math.ceil(48 * img.width / img.height)))
    x = resize_linear(_bgr(img), 48, width).astype(np.float32) / 255.0
    out = np.zeros((1, 3, 48, CLS_WIDTH), np.float32)
    out[0, :, :, :width] = ((x - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def _det_page(images) -> np.ndarray:
    """Lines stacked on a white page, sides rounded to multiples of 32, ImageNet-normalised BGR."""
    from samples.ppocr_rec.preprocess import resize_linear

    lines = [resize_linear(_bgr(im), 32, max(1, math.ceil(32 * im.width / im.height))) for im in images]
    width = min(960, max(line.shape[1] for line in lines) + 32)
    height = len(lines) * 48 + 32
    page = np.full((math.ceil(height / 32) * 32, math.ceil(width / 32) * 32, 3), 255, np.uint8)
    y = 16
    for line in lines:
        w = min(line.shape[1], page.shape[1] - 16)
        page[y : y + 32, 16 : 16 + w] = line[:, :w]
        y += 48
    mean, std = np.array([0.406, 0.456, 0.485]), np.array([0.225, 0.224, 0.229])  # BGR order
    x = (page.astype(np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def prepare_data(work: Path) -> dict:
    """Model path, calibration feeds, validation feeds and labels for each model."""
    from calibration import NpzFolderSource
    from samples.ppocr_rec import render
    from samples.ppocr_rec.prepare import prepare, read_charset, split_texts

    rec_model = prepare(work / "rec", calib=CALIB, val=VAL, seed=SEED, log=lambda _: None)
    calib_src, val_src = NpzFolderSource(work / "rec/data/calib"), NpzFolderSource(work / "rec/data/val")
    charset = read_charset(rec_model)
    calib_texts, val_texts = split_texts(CALIB, VAL, SEED, charset)
    calib_imgs, val_imgs = render.render_lines(calib_texts, SEED, "calib"), render.render_lines(val_texts, SEED, "val")
    models = _rapidocr_dir()
    data = {
        "rec": {
            "model": rec_model, "calib": list(calib_src), "val": list(val_src),
            "labels": [t.strip() for t in val_src.labels],
        },
        "cls": {
            "model": models / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "calib": [{"x": _cls_input(im, i % 2 == 1)} for i, im in enumerate(calib_imgs)],
            "val": [{"x": _cls_input(im, i % 2 == 1)} for i, im in enumerate(val_imgs)],
            "labels": [i % 2 for i in range(len(val_imgs))],
        },
        "det": {
            "model": models / "ch_PP-OCRv4_det_infer.onnx",
            "calib": [{"x": _det_page(calib_imgs[i : i + LINES_PER_PAGE])} for i in range(0, DET_PAGES_CALIB * LINES_PER_PAGE, LINES_PER_PAGE)],
            "val": [{"x": _det_page(val_imgs[i : i + LINES_PER_PAGE])} for i in range(0, DET_PAGES_VAL * LINES_PER_PAGE, LINES_PER_PAGE)],
            "labels": None,  # compared with FP32's own text map
        },
    }
    return data


# --- metrics ---------------------------------------------------------------------------------


class Metric:
    """``score(outputs per val sample) -> float`` plus its name, unit and direction."""

    def __init__(self, kind: str, data: dict, reference_outputs: list | None = None) -> None:
        self.kind, self.data, self.reference = kind, data, reference_outputs
        if kind == "rec":
            from optimizer.model import load_model
            from samples.ppocr_rec import metric

            self.name, self.higher_is_better, self.budget_key = "CER %", False, "cer_increase"
            self.charset = metric.charset_from_metadata(dict(load_model(data["model"]).metadata_props))
            self._metric = metric
        elif kind == "cls":
            self.name, self.higher_is_better, self.budget_key = "accuracy %", True, "accuracy_drop"
        else:
            self.name, self.higher_is_better, self.budget_key = "text-map IoU vs FP32 %", True, "iou_drop"

    def score(self, outputs: list[dict]) -> float:
        first = [next(iter(o.values())) for o in outputs]
        if self.kind == "rec":
            texts = [self._metric.ctc_greedy_decode(o, self.charset).strip() for o in first]
            return 100 * self._metric.character_error_rate(texts, self.data["labels"])
        if self.kind == "cls":
            return 100 * float(np.mean([int(o.reshape(-1).argmax()) == y for o, y in zip(first, self.data["labels"])]))
        inter = union = 0
        for o, r in zip(first, self.reference):
            a, b = o > DB_THRESHOLD, next(iter(r.values())) > DB_THRESHOLD
            inter += int(np.count_nonzero(a & b))
            union += int(np.count_nonzero(a | b))
        return 100 * inter / union if union else 100.0

    def change(self, value: float, fp32: float) -> float:
        """The budget quantity: how much worse than FP32 (positive = worse)."""
        return fp32 - value if self.higher_is_better else value - fp32


# --- quantization jobs (each in a fresh process) ----------------------------------------------


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _job_ours(src, dst, calib, target, method, budget=None, val=None, kind=None, data=None, mode="int8"):
    t0 = time.perf_counter()
    if budget is None:
        from calibration import quantize

        result = quantize(src, dst, calib, target=target, method=method, mode=mode)
        info = {"quantized": len(result.quantized_nodes), "kept": [], "total": len(result.quantized_nodes) + len(result.skipped)}
    else:
        from calibration.sensitivity import quantize_with_budget

        # det's metric compares with FP32's own text map: compute it here, in the child.
        metric_obj = Metric(kind, data, run_outputs(src, val, target) if kind == "det" else None)
        result = quantize_with_budget(
            src, dst, calib, val, target=target, method=method, budget=budget, metric=metric_obj.score,
            higher_is_better=metric_obj.higher_is_better,
        )
        info = {"quantized": len(result.quantize.quantized_nodes), "kept": result.kept}
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib(), **info}


def _job_ort(src, dst, calib, method):
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    model = onnx.load(src)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel QDQ needs opset 13; ORT's own docs say to upgrade first
        model = version_converter.convert_version(model, 13)
    upgraded = str(dst) + ".opset13.onnx"
    onnx.save(model, upgraded)
    quantize_static(
        upgraded, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_rss_mib(), "quantized": None, "kept": []}


def _cap_memory() -> None:
    """Child-process watchdog: exit at once when resident memory passes the cap.

    RSS, not address space: ONNX Runtime reserves far more virtual memory than it touches.
    """
    import os
    import threading

    def watch() -> None:
        while True:
            with open("/proc/self/status") as f:
                rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            if rss_kib > MEMORY_CAP_GIB * 2**20:
                os._exit(OOM_EXIT)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


OOM_EXIT = 86


def run_isolated(fn, *args, **kwargs) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_cap_memory) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:  # the watchdog (or the kernel) ended it: memory
            return {"error": f"stopped at the {MEMORY_CAP_GIB} GiB RSS cap", "oom": True}
        except Exception as exc:  # a peer that fails on a model is a result, not a crash
            text = " ".join(str(exc).split())[:160]
            return {"error": text or type(exc).__name__}


# --- one model -------------------------------------------------------------------------------


def run_outputs(path, feeds, target: str = "onnxruntime-cpu") -> list[dict]:
    """Outputs as deployed: ORT's default level "all" runs the CPU form's Q/DQ as integer kernels.

    The TensorRT form runs at "basic" (Q/DQ simulated in float), the closest CPU stand-in for
    TensorRT's own INT8 kernels.
    """
    from optimizer.runners import OrtRunner

    runner = OrtRunner(str(path), optimization="basic" if target == "tensorrt" else "all")
    return [runner.run(f) for f in feeds]


def benchmark_model(kind: str, data: dict, work: Path, log) -> list[dict]:
    from optimizer.runners import OrtRunner
    from optimizer.validate import measure_latency

    out = work / kind
    out.mkdir(parents=True, exist_ok=True)
    src = str(data["model"])
    reference = run_outputs(src, data["val"])
    metric = Metric(kind, data, reference)
    fp32_score = metric.score(reference)
    rows = [{"variant": "FP32", "path": src, "score": fp32_score}]
    jobs = [(f"ORT quantize_static {m} (U8S8 per-channel)", _job_ort, (src, str(out / f"ort_{m}.onnx"), data["calib"], m), {})
            for m in ORT_METHODS]
    jobs += [(f"ours {m} (onnxruntime-cpu)", _job_ours, (src, str(out / f"ours_cpu_{m}.onnx"), data["calib"], "onnxruntime-cpu", m), {})
             for m in OUR_METHODS]
    jobs += [(f"ours {m} (tensorrt, S8S8)", _job_ours, (src, str(out / f"ours_trt_{m}.onnx"), data["calib"], "tensorrt", m), {})
             for m in ("max", "mse")]
    if importlib.util.find_spec("calibration.sensitivity") is not None:
        budget_kwargs = {"budget": BUDGETS[kind], "val": data["val"], "kind": kind, "data": {k: v for k, v in data.items() if k != "calib"}}
        jobs.append((f"ours mse + budget {BUDGETS[kind]} (onnxruntime-cpu)", _job_ours,
                     (src, str(out / "ours_cpu_budget.onnx"), data["calib"], "onnxruntime-cpu", "mse"), budget_kwargs))
    for label, fn, args, kwargs in jobs:
        log(f"  {kind}: {label} ...")
        info = run_isolated(fn, *args, **kwargs)
        if info.get("oom") and len(args[2]) > FALLBACK_SAMPLES:
            rows.append({"variant": label, "path": args[1], **info})
            label = f"{label} on {FALLBACK_SAMPLES} calib samples"
            log(f"  {kind}: {label} ...")
            args = (args[0], args[1], args[2][:FALLBACK_SAMPLES], *args[3:])
            info = run_isolated(fn, *args, **kwargs)
        row = {"variant": label, "path": args[1], **info}
        if "error" not in info:
            outputs = run_outputs(args[1], data["val"], "tensorrt" if "tensorrt" in label else "onnxruntime-cpu")
            row["score"] = metric.score(outputs)
            row["max_diff"] = _max_abs_diff(outputs, reference)
        rows.append(row)
    # Latency: every CPU-form variant of this model in one interleaved loop, 1 thread, ORT level "all".
    timed = [r for r in rows if "error" not in r and "tensorrt" not in r["variant"]]
    runners = {r["variant"]: OrtRunner(r["path"], threads=1, optimization="all") for r in timed}
    feeds = data["val"][:4]
    # Enough iterations for ~3 s of FP32 time per variant: tiny models need hundreds to average out noise.
    t0 = time.perf_counter()
    for f in feeds:
        runners["FP32"].run(f)
    per_run = (time.perf_counter() - t0) / len(feeds)
    iterations = int(min(400, max(LATENCY_ITERATIONS, 3.0 / per_run)))
    log(f"  {kind}: timing {len(runners)} variants x {iterations} iterations ...")
    lat = measure_latency(runners, feeds, warmup=2, iterations=iterations)
    base = lat["FP32"].p50_ms
    for r in rows:
        if r["variant"] in lat:
            r["speedup"] = base / lat[r["variant"]].p50_ms
        if "score" in r:
            r["change"] = metric.change(r["score"], fp32_score)
    for r in rows:
        r["model"], r["metric"] = kind, metric.name
    return rows


def _max_abs_diff(outputs: list[dict], reference: list[dict]) -> float:
    return max(float(np.max(np.abs(o[k] - r[k]))) for o, r in zip(outputs, reference) for k in r)


# --- output ----------------------------------------------------------------------------------

MODEL_NAMES = {"rec": "PP-OCRv4 rec", "cls": "PP-OCR cls (mobile v2)", "det": "PP-OCRv4 det"}
HEADER = (
    "| model | variant | task metric | vs FP32 | max abs output diff | speed vs FP32 (1 thread) | calib time s "
    "| calib peak RSS MiB | kept in FP32 |"
)


def format_rows(rows: list[dict]) -> list[str]:
    lines = [HEADER, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {MODEL_NAMES[r['model']]} | {r['variant']} | failed: {r['error']} | | | | | | |")
            continue
        change = "" if r["variant"] == "FP32" else f"{r['change']:+.3f} worse" if r["change"] > 0 else f"{-r['change']:.3f} better"
        if r["variant"] != "FP32" and r["change"] == 0:
            change = "same"
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a (TensorRT form)"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else ""
        kept = ", ".join(r.get("kept") or []) if r.get("kept") else ("" if "seconds" not in r else "-")
        lines.append(
            f"| {MODEL_NAMES[r['model']]} | {r['variant']} | {r['metric']} {r['score']:.3f} | {change} | {r.get('max_diff', 0):.3g} "
            f"| {speed} | {secs} | {rss} | {kept} |"
        )
    return lines


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("onnx", "onnxruntime", "onnx-ir", "numpy", "rapidocr-onnxruntime"))


def write_results(lines: list[str], command: str) -> None:
    from _results import replace_section

    body = "\n".join(
        [
            f"{datetime.date.today().isoformat()} · {versions()} · `{command}`",
            "",
            f"Data: PP-OCRv4 rec on the sample's rendered lines ({CALIB} calib / {VAL} val); cls on the same kind of lines, "
            f"every other one rotated 180 degrees; det on pages of {LINES_PER_PAGE} rendered lines ({DET_PAGES_CALIB} calib / "
            f"{DET_PAGES_VAL} val), IoU of the text map (> {DB_THRESHOLD}) with FP32's. Speed: ORT CPU, 1 thread, level 'all', "
            "p50 ratio vs FP32, all variants of a model timed interleaved in one loop. Calibration time and peak RSS: each "
            "quantization alone in a fresh process (includes imports, ~same for both tools).",
            "",
            *lines,
            "",
        ]
    )
    replace_section("precision", body)


# --- the parity suite: ORT-CPU speed vs quantize_static, TensorRT-form coverage, FP8 and INT4 ----

PARITY_MODELS = ("encoder", "dddd", "oww", "rec", "det")
PARITY_NAMES = {
    "encoder": "TransformerEncoder (trained, torch export)", "dddd": "ddddocr common (CRNN + LSTM)",
    "oww": "openWakeWord embedding (CNN)", "rec": "PP-OCRv4 rec", "det": "PP-OCRv4 det",
}
# TensorRT-RTX optimization profiles for the builds of the tensorrt-form rows.
PROFILES = {
    "encoder": "x:1x8x32,1x48x32,8x128x32",
    "dddd": "input1:1x1x64x32,1x1x64x256,1x1x64x1024",
    "oww": "input_1:1x76x32x1,4x76x32x1,16x76x32x1",
    "rec": "x:1x3x48x32,1x3x48x320,1x3x48x1600",
    "det": "x:1x3x64x64,1x3x256x640,1x3x960x960",
}
OWW_SAMPLES, OWW_CALIB = 48, 16
DDDD_HEIGHT = 64


def _dddd_input(img) -> np.ndarray:
    """ddddocr 1.6's classification input: grey, height 64 (aspect kept), (x/255 - 0.5) / 0.5."""
    from PIL import Image

    width = max(1, round(img.width * DDDD_HEIGHT / img.height))
    grey = np.asarray(img.resize((width, DDDD_HEIGHT), Image.LANCZOS).convert("L"), dtype=np.float32) / 255.0
    return ((grey - 0.5) / 0.5)[None, None].astype(np.float32)


def _oww_features(melspec: Path, count: int, seed: int) -> list[dict]:
    """Embedding-model inputs (76 mel frames x 32 bins) from openWakeWord's own melspectrogram model.

    The audio is synthetic (no speech corpus ships in a package): 1.3 s at 16 kHz of voiced-like
    harmonic tones with a moving pitch plus noise, at the int16 scale openWakeWord feeds.
    """
    from optimizer.runners import OrtRunner

    rng = np.random.default_rng(seed)
    runner = OrtRunner(str(melspec))
    t = np.arange(int(16000 * 1.3)) / 16000
    feeds = []
    for _ in range(count):
        f0 = rng.uniform(90, 260) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        audio = sum(rng.uniform(0.2, 1) / h * np.sin(h * phase) for h in range(1, 12))
        audio = audio * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t) ** 2) + rng.normal(0, 0.05, t.size)
        pcm = (audio / np.abs(audio).max() * rng.uniform(3000, 20000)).astype(np.float32)[None]
        spec = next(iter(runner.run({"input": pcm}).values()))
        frames = (spec.reshape(-1, 32) / 10.0 + 2.0)[:76]  # openWakeWord's scaling of the mel output
        feeds.append({"input_1": frames[None, :, :, None].astype(np.float32)})
    return feeds


def prepare_parity_data(work: Path, models: list[str]) -> dict:
    data = {}
    if "rec" in models or "det" in models:
        methods_data = prepare_data(work)
        data.update({k: methods_data[k] for k in ("rec", "det") if k in models})
    if "encoder" in models:
        sys.path.append(str(ROOT / "tests" / "calibration"))  # the encoder fixture the tests use
        from cal_transformer import encoder_task

        task = encoder_task(work / "encoder", calib=32, val=256)
        data["encoder"] = {**task, "labels": task["labels"]}
    if "dddd" in models or "oww" in models:
        import corpus_models  # this folder, on the path as the script's own

    if "dddd" in models:
        from samples.ppocr_rec import render
        from samples.ppocr_rec.prepare import split_texts

        model = next(m for m in corpus_models.materialise_ddddocr() if m.name == "common")
        calib_texts, val_texts = split_texts(CALIB, 96, SEED, None)
        data["dddd"] = {
            "model": model.path,
            "calib": [{"input1": _dddd_input(im)} for im in render.render_lines(calib_texts, SEED, "calib")],
            "val": [{"input1": _dddd_input(im)} for im in render.render_lines(val_texts, SEED, "val")],
            "labels": None,  # compared with FP32's own decoded token sequence
        }
    if "oww" in models:
        found = {m.name: m.path for m in corpus_models.materialise_openwakeword()}
        feeds = _oww_features(found["melspectrogram"], OWW_SAMPLES, SEED)
        data["oww"] = {"model": found["embedding_model"], "calib": feeds[:OWW_CALIB], "val": feeds[OWW_CALIB:], "labels": None}
    return data


class ParityMetric(Metric):
    """The task metric of each parity model (rec and det as in the methods suite)."""

    def __init__(self, kind: str, data: dict, reference_outputs: list) -> None:
        if kind in ("rec", "det"):
            super().__init__(kind, data, reference_outputs)
            return
        self.kind, self.data, self.reference = kind, data, reference_outputs
        self.name, self.higher_is_better = {
            "encoder": ("accuracy %", True), "dddd": ("token error vs FP32 %", False), "oww": ("cosine vs FP32 %", True),
        }[kind]

    def score(self, outputs: list[dict]) -> float:
        if self.kind == "encoder":
            return 100.0 * float(np.mean([int(o["logits"].argmax()) == y for o, y in zip(outputs, self.data["labels"])]))
        if self.kind == "dddd":
            from samples.ppocr_rec.metric import character_error_rate

            def text(o):  # CTC greedy over [T, 1, classes]: collapse repeats, drop the blank (0); tokens as characters
                tokens = next(iter(o.values())).argmax(-1).reshape(-1)
                kept = [int(t) for i, t in enumerate(tokens) if t != 0 and (i == 0 or t != tokens[i - 1])]
                return "".join(chr(0x100 + t) for t in kept)

            return 100.0 * character_error_rate([text(o) for o in outputs], [text(r) for r in self.reference])
        if self.kind == "oww":
            cos = []
            for o, r in zip(outputs, self.reference):
                a, b = next(iter(o.values())).ravel(), next(iter(r.values())).ravel()
                cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
            return 100.0 * float(np.mean(cos))
        return super().score(outputs)


def _job_rtx(path: str, profile: str) -> dict:
    """Build with TensorRT-RTX (in a child process, as the quantizations) and read the network's precisions."""
    from optimizer import engine
    from optimizer.shapes import parse_shapes

    t0 = time.perf_counter()
    built = engine.build_engine(path, path.replace(".onnx", ".engine"), engine.BuildConfig(profiles=[parse_shapes(profile)]), builder="tensorrt-rtx")
    return {"compute": built.precision.compute_by_precision, "build_s": time.perf_counter() - t0}


def _parity_jobs(kind: str, src: str, calib: list, out: Path) -> list[tuple]:
    """(label, function, args, kwargs, form) for one model: CPU-form rows are timed, tensorrt-form rows built."""
    jobs = [
        ("ORT quantize_static MinMax (U8S8 per-channel)", _job_ort, (src, str(out / "ort.onnx"), calib, "MinMax"), {}, "cpu"),
        ("ours max (onnxruntime-cpu)", _job_ours, (src, str(out / "cpu_max.onnx"), calib, "onnxruntime-cpu", "max"), {}, "cpu"),
        ("ours mse (onnxruntime-cpu)", _job_ours, (src, str(out / "cpu_mse.onnx"), calib, "onnxruntime-cpu", "mse"), {}, "cpu"),
        ("ours INT8 mse (tensorrt)", _job_ours, (src, str(out / "trt_int8.onnx"), calib, "tensorrt", "mse"), {}, "trt"),
        ("ours FP8 E4M3 max (tensorrt)", _job_ours, (src, str(out / "trt_fp8.onnx"), calib, "tensorrt", "max"), {"mode": "fp8"}, "trt"),
    ]
    if kind in ("encoder", "rec"):  # the models with MatMul/Gemm weights (INT4 weight-only covers only those)
        jobs.append(("ours INT4 weight-only awq (tensorrt)", _job_ours, (src, str(out / "trt_int4.onnx"), calib, "tensorrt", "max"),
                     {"mode": "int4-weight"}, "trt"))
    return jobs


def parity_model(kind: str, data: dict, work: Path, log, build: bool = True) -> list[dict]:
    from optimizer.runners import OrtRunner
    from optimizer.validate import measure_latency

    out = work / "parity" / kind
    out.mkdir(parents=True, exist_ok=True)
    src = str(data["model"])
    log(f"  {kind}: FP32 reference ...")
    reference = run_outputs(src, data["val"])
    metric = ParityMetric(kind, data, reference)
    fp32_score = metric.score(reference)
    rows = [{"variant": "FP32", "path": src, "score": fp32_score, "form": "cpu"}]
    for label, fn, args, kwargs, form in _parity_jobs(kind, src, data["calib"], out):
        log(f"  {kind}: {label} ...")
        row = {"variant": label, "path": args[1], "form": form, **run_isolated(fn, *args, **kwargs)}
        if "error" not in row:
            row["score"] = metric.score(run_outputs(args[1], data["val"], "tensorrt" if form == "trt" else "onnxruntime-cpu"))
            if form == "trt" and build:
                log(f"  {kind}: TensorRT-RTX build of {label} ...")
                rtx = run_isolated(_job_rtx, args[1], PROFILES[kind])
                row["rtx"] = rtx.get("compute") or f"refused: {rtx.get('error')}"
        rows.append(row)
    timed = [r for r in rows if "error" not in r and r["form"] == "cpu"]
    runners = {r["variant"]: OrtRunner(r["path"], threads=1, optimization="all") for r in timed}
    feeds = data["val"][:4]
    t0 = time.perf_counter()
    for f in feeds:
        runners["FP32"].run(f)
    iterations = int(min(200, max(LATENCY_ITERATIONS, 2.0 / ((time.perf_counter() - t0) / len(feeds)))))
    log(f"  {kind}: timing {len(runners)} variants x {iterations} iterations ...")
    lat = measure_latency(runners, feeds, warmup=3, iterations=iterations)
    for r in rows:
        if r["variant"] in lat:
            r["speedup"] = lat["FP32"].p50_ms / lat[r["variant"]].p50_ms
        if "score" in r:
            r["change"] = metric.change(r["score"], fp32_score)
        r["model"], r["metric"] = kind, metric.name
    return rows


PARITY_HEADER = (
    "| model | variant | task metric | vs FP32 | speed vs FP32 (1 thread) | Conv/Gemm/MatMul quantized "
    "| TensorRT-RTX 1.7 build: compute layers by precision |"
)


def format_parity(rows: list[dict]) -> list[str]:
    lines = [PARITY_HEADER, "|" + "---|" * 7]
    for r in rows:
        name = PARITY_NAMES[r["model"]]
        if "error" in r:
            lines.append(f"| {name} | {r['variant']} | failed: {r['error']} | | | | |")
            continue
        change = "" if r["variant"] == "FP32" else ("same" if r["change"] == 0 else
                                                   f"{r['change']:+.2f} worse" if r["change"] > 0 else f"{-r['change']:.2f} better")
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a (TensorRT form)"
        cover = f"{r['quantized']}/{r['total']}" if r.get("total") else ""
        rtx = r.get("rtx", "")
        if isinstance(rtx, dict):
            rtx = ", ".join(f"{n} {p}" for p, n in rtx.items())
        lines.append(f"| {name} | {r['variant']} | {r['metric']} {r['score']:.2f} | {change} | {speed} | {cover} | {rtx} |")
    return lines


def write_parity(lines: list[str], command: str) -> None:
    from _results import replace_section

    body = "\n".join([
        f"{datetime.date.today().isoformat()} · {versions()}, torch {_version('torch')}, tensorrt-rtx {_version('tensorrt-rtx')} · `{command}`",
        "",
        "Speed: ORT CPU, 1 thread, level 'all', p50 ratio vs FP32; every CPU-form variant of a model timed interleaved "
        "in one loop. TensorRT-form rows (INT8/FP8/INT4) are scored at ORT level 'basic' (Q/DQ simulated in float) and "
        "built for real with TensorRT-RTX (no GPU here: the build targets RTX's default GPUs); the last column is the "
        "parsed network's compute layers by the precision they run in. Data: encoder: 256 held-out sequences of its "
        "training task (accuracy); ddddocr common: 96 rendered text lines, token error rate of the CTC decode against "
        "FP32's; openWakeWord embedding: 32 windows of melspectrogram features from synthetic voiced audio, mean cosine "
        "with FP32's embedding; PP-OCRv4 rec/det as in the section above.",
        "",
        *lines,
        "",
    ])
    replace_section("precision-parity", body)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-precision")
    parser.add_argument(
        "--suite", choices=["methods", "parity"], default="methods",
        help="methods: calibration methods on rec/cls/det (section 'precision'); parity: speed vs quantize_static, "
        "TensorRT-form coverage, FP8/INT4 on encoder/dddd/oww/rec/det (section 'precision-parity').",
    )
    parser.add_argument("--models", default=None, help="Comma-separated subset of the suite's models.")
    parser.add_argument("--no-build", action="store_true", help="parity: skip the TensorRT-RTX builds.")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a long run is
    if args.suite == "parity":
        models = (args.models or ",".join(PARITY_MODELS)).split(",")
        log("preparing data ...")
        data = prepare_parity_data(args.work, models)
        command = "python benchmarks/precision.py --suite parity" + (f" --models {args.models}" if args.models else "")
        rows = []
        for done, kind in enumerate(models, 1):
            rows += parity_model(kind, data[kind], args.work, log, build=not args.no_build)
            if not args.no_write:  # after each model, so a long run that is stopped still leaves its rows
                write_parity(format_parity(rows), command + ("" if done == len(models) else f" (partial: {done}/{len(models)} models)"))
        print("\n".join(format_parity(rows)))
        return 0
    args.models = args.models or "rec,cls,det"
    log("preparing data ...")
    data = prepare_data(args.work)
    rows = []
    for kind in args.models.split(","):
        rows += benchmark_model(kind, data[kind], args.work, log)
    lines = format_rows(rows)
    print("\n".join(lines))
    if not args.no_write:
        write_results(lines, "python benchmarks/precision.py" + (f" --models {args.models}" if args.models != "rec,cls,det" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
