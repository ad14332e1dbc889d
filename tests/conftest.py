"""Shared fixtures. Every test run keeps caches and temp files in a scratch folder."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports onnxruntime: its telemetry and temp files, and our stage
# cache, go to a scratch folder, never the user's home or the source tree.
_SCRATCH = Path(tempfile.mkdtemp(prefix="trtforge-tests-"))
os.environ.setdefault("XDG_CACHE_HOME", str(_SCRATCH / "cache"))
os.environ["TRTFORGE_CACHE_DIR"] = str(_SCRATCH / "trtforge-cache")


def _has_cuda() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (libcuda.so.1 not loadable)")
    skip_rtx = pytest.mark.skip(reason="tensorrt_rtx is not installed (pip install 'trtforge[rtx]')")
    has_cuda = _has_cuda()
    has_rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "rtx" in item.keywords and not has_rtx:
            item.add_marker(skip_rtx)


def rapidocr_models() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr-onnxruntime==1.4.4 is not installed (make venv installs it)")
    return Path(spec.origin).parent / "models"


@pytest.fixture(scope="session")
def ppocr_rec_path() -> Path:
    return rapidocr_models() / "ch_PP-OCRv4_rec_infer.onnx"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The demo's prepared folder (model copy + rendered calibration/validation data), made once."""
    from samples.ppocr_rec.prepare import prepare

    out = tmp_path_factory.mktemp("sample")
    prepare(out, calib=16, val=24, seed=0)
    return out
