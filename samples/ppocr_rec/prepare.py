"""Prepare the sample: the PP-OCRv4 recognizer plus rendered calibration and validation lines.

    python -m samples.ppocr_rec.prepare --out build/demo [--calib 64] [--val 200] [--seed 0]

Writes ``OUT/ppocr_rec.onnx`` (copied from the installed rapidocr-onnxruntime package) and

    OUT/data/calib/000000.npz ... labels.json    inputs {"x": float32 [1, 3, 48, W]} + texts
    OUT/data/val/000000.npz ...   labels.json
    OUT/data/preview/*.png                       a few rendered lines, for humans
    OUT/data/manifest.json                       parameters and versions of this render

A rerun with the same parameters and package versions does nothing. The data folder is
rendered into a temporary folder next to it and renamed into place, so an interrupted run
never leaves a half-written ``data/`` behind that a later run would trust.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from optimizer.errors import ConfigError, InputError, TrtforgeError
from optimizer.model import file_sha256
from samples.ppocr_rec import render
from samples.ppocr_rec.metric import charset_from_metadata
from samples.ppocr_rec.preprocess import preprocess

RAPIDOCR_PIN = "rapidocr-onnxruntime==1.4.4"
MODEL_IN_PACKAGE = "models/ch_PP-OCRv4_rec_infer.onnx"
MODEL_NAME = "ppocr_rec.onnx"
INPUT_NAME = "x"
# Bump when the text generator, rendering or file layout changes: forces a re-render.
DATA_FORMAT = 1
PREVIEWS = 8


def locate_model(package: str = "rapidocr_onnxruntime") -> Path:
    """The recognizer inside the installed rapidocr package, found without importing it."""
    # Importing rapidocr_onnxruntime needs OpenCV, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"rapidocr-onnxruntime is not installed: pip install --no-deps {RAPIDOCR_PIN}")
    model = Path(spec.origin).parent / MODEL_IN_PACKAGE
    if not model.is_file():
        raise InputError(
            f"{model} is missing from the rapidocr package: "
            f"pip install --no-deps --force-reinstall {RAPIDOCR_PIN}"
        )
    return model


def read_charset(model: Path) -> list[str]:
    """The recognizer's class labels from its metadata (see ``metric.charset_from_metadata``)."""
    import onnx  # a project dependency; imported here so the renderer alone does not need it

    proto = onnx.load(str(model), load_external_data=False)
    return charset_from_metadata({p.key: p.value for p in proto.metadata_props})


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or damaged: treat as stale
        return None


def copy_model(src: Path, dest: Path) -> bool:
    """Copy unless ``dest`` already holds the same bytes; True when a copy was written."""
    if dest.is_file() and file_sha256(dest) == file_sha256(src):
        return False
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True


def split_texts(calib: int, val: int, seed: int, charset: list[str]) -> tuple[list[str], list[str]]:
    """Calibration and validation texts from separate streams, with no line in both."""
    val_texts = render.generate_lines(val, seed, "val", charset=charset)
    calib_texts = render.generate_lines(calib, seed, "calib", exclude=val_texts, charset=charset)
    # The generator already excludes them; this guards the guarantee itself, since a
    # validation score on lines the calibration saw would flatter the quantized model.
    overlap = set(val_texts) & set(calib_texts)
    if overlap:  # not `assert`: it must hold under python -O too
        raise AssertionError(f"calibration and validation share lines: {sorted(overlap)[:3]}")
    return calib_texts, val_texts


def _write_split(folder: Path, texts: list[str], seed: int, stream: str) -> list:
    folder.mkdir(parents=True)
    images = render.render_lines(texts, seed, stream)
    labels = {}
    for i, (text, image) in enumerate(zip(texts, images)):
        name = f"{i:06d}.npz"
        np.savez_compressed(folder / name, **{INPUT_NAME: preprocess(image)})
        labels[name] = text
    (folder / "labels.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return images


def prepare(out: Path, calib: int = 64, val: int = 200, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write the model and the data folders under ``out``; return the model path."""
    if calib < 1 or val < 1 or seed < 0:
        raise ConfigError(
            f"--calib and --val must be at least 1 and --seed at least 0 (got {calib}, {val}, {seed})"
        )
    src = locate_model()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)

    model = out / MODEL_NAME
    copied = copy_model(src, model)
    size_mb = model.stat().st_size / 1e6
    log(f"{'wrote' if copied else 'kept '} {model} ({size_mb:.1f} MB, PP-OCRv4 recognizer from {RAPIDOCR_PIN})")

    data = out / "data"
    manifest = {
        "format": DATA_FORMAT,
        "params": {"calib": calib, "val": val, "seed": seed},
        "model_sha256": file_sha256(model),
        "versions": {d: _version(d) for d in ("numpy", "pillow", "matplotlib", "rapidocr-onnxruntime")},
        "input": INPUT_NAME,
    }
    manifest_path = data / "manifest.json"
    if _read_json(manifest_path) == manifest:
        log(f"kept  {data} (up to date: {calib} calibration + {val} validation lines, seed {seed})")
        return model

    start = time.perf_counter()
    calib_texts, val_texts = split_texts(calib, val, seed, read_charset(model))
    tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=out))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data folder is an ordinary output
    old = out / f".data-old-{os.getpid()}"
    try:
        _write_split(tmp / "calib", calib_texts, seed, "calib")
        val_images = _write_split(tmp / "val", val_texts, seed, "val")
        (tmp / "preview").mkdir()
        for i, image in enumerate(val_images[:PREVIEWS]):
            image.save(tmp / "preview" / f"val_{i:06d}.png")
        # Written last: its presence marks a complete folder.
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if data.exists():
            data.rename(old)
        tmp.rename(data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    seconds = time.perf_counter() - start
    log(f"wrote {data / 'calib'} ({calib} lines: {INPUT_NAME} [1,3,48,W] float32 .npz + labels.json)")
    log(f"wrote {data / 'val'} ({val} lines: {INPUT_NAME} [1,3,48,W] float32 .npz + labels.json)")
    log(f"wrote {data / 'preview'} ({min(PREVIEWS, val)} PNGs of validation lines)")
    log(f"wrote {manifest_path} (seed {seed}, rendered in {seconds:.1f} s)")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samples.ppocr_rec.prepare",
        description="Copy the PP-OCRv4 recognizer and render labelled text lines for calibration and validation.",
        epilog="example: python -m samples.ppocr_rec.prepare --out build/demo --calib 64 --val 200",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--calib", type=int, default=64, help="calibration lines (default 64)")
    parser.add_argument("--val", type=int, default=200, help="validation lines (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of texts and rendering (default 0)")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.calib, args.val, args.seed)
    except TrtforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
