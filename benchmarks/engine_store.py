"""Second builds: the engine store (and, where it works, the timing cache) against a fresh build.

    .venv/bin/python benchmarks/engine_store.py                 # PP-OCRv4 det/rec, TensorRT-RTX
    .venv/bin/python benchmarks/engine_store.py --builder tensorrt --reps 5

Per model, in one process and one run: a first build into an empty engine store, the same
build again (a store hit: hash the model, check the entry, copy the engine), and the same
build again without the store but with a timing cache (``--no-engine-store``). Each is the
median of ``--reps`` wall times of the whole ``build_or_reuse``/``build_engine`` call. The
TensorRT module is imported and one builder created before timing starts, so the first build
is not charged for it.

On TensorRT-RTX the timing cache cannot help: its timing-cache API is a no-op (it records no
entries) and it times nothing at build time; the third column shows that directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {
    # name: (file, profile)
    "ppocr_det": ("ch_PP-OCRv4_det_infer.onnx", "x:1x3x320x320,1x3x640x640,1x3x960x960"),
    "ppocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", "x:1x3x48x80,1x3x48x320,4x3x48x960"),
    # The mobile v2 classifier names both H and W "?", which TensorRT reads as one shared
    # dimension: it cannot build for 48x192 without renaming its dims first, so it is left out.
}


def _models_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        sys.exit("rapidocr-onnxruntime (the PP-OCRv4 models) is not installed")
    return Path(spec.origin).parent / "models"


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builder", default="tensorrt-rtx", choices=["tensorrt", "tensorrt-rtx"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from optimizer.engine import BuildConfig, EngineStore, build_engine, build_or_reuse, load_tensorrt, parse_shapes
    from optimizer.engine.loader import get_logger
    from optimizer.engine.store import add_timing_cache

    trt, flavour = load_tensorrt(args.builder)
    trt.Builder(get_logger(trt))  # warm-up: library load and first builder outside the timings
    print(f"{flavour} {trt.__version__}; median of {args.reps} runs per cell (wall time of the whole call)\n")
    header = f"{'model':10s} {'first build':>12s} {'store hit':>10s} {'ratio':>7s} {'no store, timing cache':>23s} {'ratio':>7s}  cache entries"
    print(header)
    print("-" * len(header))
    models = _models_dir()
    for name, (file, shapes) in MODELS.items():
        config = BuildConfig(profiles=[parse_shapes(shapes)])
        first, hit, cached = [], [], []
        entries = None
        for rep in range(args.reps):
            with tempfile.TemporaryDirectory(prefix="trtforge-bench-") as tmp:
                tmp = Path(tmp)
                store = EngineStore(tmp / "store")
                t, r1 = _timed(lambda: build_or_reuse(models / file, tmp / "a.engine", config, flavour, store))
                first.append(t)
                t, r2 = _timed(lambda: build_or_reuse(models / file, tmp / "b.engine", config, flavour, store))
                assert r1.store_hit is False and r2.store_hit is True
                hit.append(t)
                timing = BuildConfig(profiles=config.profiles, timing_cache=str(tmp / "timing.cache"))
                timing = add_timing_cache(timing, flavour)
                build_engine(models / file, tmp / "c.engine", timing, flavour)  # fills the cache
                t, r3 = _timed(lambda: build_engine(models / file, tmp / "d.engine", timing, flavour))
                cached.append(t)
                entries = r3.timing_cache_entries
        f, h, c = (statistics.median(x) for x in (first, hit, cached))
        print(f"{name:10s} {f:11.2f}s {h:9.3f}s {f / h:6.1f}x {c:22.2f}s {f / c:6.2f}x  {entries}")


if __name__ == "__main__":
    main()
