"""Zero config on a model from another family: a torch.nn.TransformerEncoder exported with dynamic
batch and sequence, fed real-looking token data (Zipf-distributed ids, sentences of varied length,
batches of varied size). With no recipe and no shape flags, `optimize` must build a TensorRT-RTX
engine whose profile spans the data's batch sizes and sequence lengths."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
# (batch, sequence length) per sample: the profile must span 1..8 and 9..120, opt the most common.
SHAPES = [(1, 9), (4, 48), (2, 120), (4, 48), (8, 31), (4, 48), (1, 77), (2, 16)]


def _token_data(folder: Path, shapes, vocab: int, seed: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (batch, seq) in enumerate(shapes):
        ids = np.minimum(rng.zipf(1.3, size=(batch, seq)), vocab - 1).astype(np.int64)
        ids[:, 0] = 1  # a start token, as tokenizers emit
        np.savez(folder / f"{i:03d}.npz", input_ids=ids)
    return folder


@pytest.mark.rtx
@pytest.mark.slow
def test_optimize_with_no_recipe_builds_an_engine_spanning_the_data(tmp_path):
    from benchmarks.corpus_models import VOCAB, materialise_transformer

    (encoder,) = materialise_transformer()
    calib = _token_data(tmp_path / "calib", SHAPES, VOCAB, seed=0)
    val = _token_data(tmp_path / "val", SHAPES[::-1][:4], VOCAB, seed=1)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(encoder.path), "-o", str(out),
         "--calib", str(calib), "--val", str(val), "--no-cache", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    ids = report["model"]["shapes"]["inputs"]["input_ids"]
    assert ids == {"min": [1, 9], "opt": [4, 48], "max": [8, 120], "source": "data"}
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert build["status"] == "ran", build
    assert build["details"]["profiles"] == ["input_ids:1x9,4x48,8x120"]
    assert "int8" in build["details"]["precision"]["carries"]
