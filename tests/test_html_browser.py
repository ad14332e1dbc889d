"""The HTML report in a real headless browser (Debian's chromium): it renders and shows the key numbers.

CI installs the browser with ``apt-get install -y chromium``; without it these tests skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from optimizer.html_report import to_html
from optimizer.report import GateResult, Report, StageRecord
from optimizer.validation_record import ValidationResult, from_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

# Flags: no sandbox (containers run as root), no GPU, and no network of any kind, so a
# report that tried to fetch a resource would render incomplete rather than phone home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _report() -> Report:
    """A report shaped like a real failing run: per-tensor INT8 with its divergence search."""
    layers = []
    for i in range(40):
        snr = 35.0 - 0.6 * i
        layers.append({"order": i, "node": f"conv{i}", "op_type": "Conv", "tensor": f"t{i}", "candidate_tensor": f"t{i}",
                       "kind": "node", "snr_db": snr, "cosine_min": 0.99, "max_rel": 0.1, "mean_abs": 0.01,
                       "nonfinite": 0, "diverges": snr < 20.0})
        layers.append({**layers[-1], "kind": "local", "snr_db": 12.5 if i == 7 else 30.0, "diverges": i == 7})
    first = next(layer for layer in layers if layer["diverges"] and layer["kind"] == "node")
    validation = {
        "samples": 200,
        "outputs": [{"name": "softmax_11.tmp_0", "max_abs": 0.99, "mean_abs": 1.5e-4, "max_rel": 0.99, "cosine_min": 0.3686,
                     "snr_db": 0.8999, "nonfinite": 0, "top1_agreement": 0.4321, "top5_agreement": 0.61}],
        "task": {"name": "cer", "unit": "%", "higher_is_better": False, "reference": 0.1576, "candidate": 99.632, "change": 99.4744},
        "latency": {"runtime": "onnxruntime-cpu", "ort_level": "all", "threads": 1, "iterations": 40, "p50_speedup": 0.7043,
                    "reference": {"p50_ms": 22.97, "p90_ms": 37.6, "p99_ms": 38.5, "mean_ms": 25.6, "throughput_per_s": 39.1, "samples_ms": [22.0 + i % 7 for i in range(40)]},
                    "candidate": {"p50_ms": 32.61, "p90_ms": 52.7, "p99_ms": 57.7, "mean_ms": 37.0, "throughput_per_s": 27.0, "samples_ms": [31.0 + i % 9 for i in range(40)]}},
        "divergence": {"reference": "ppocr_rec.opt.onnx", "candidate": "ppocr_rec.int8.onnx", "quantized": [f"conv{i}" for i in range(40)],
                       "samples": 4, "chunk": 32, "sessions": 3, "compared": len(layers), "layers": layers, "first": first,
                       "tolerance": {"min_snr_db": 20.0, "min_cosine": 0.99}, "recommend_exclude": ["conv7", "conv25"],
                       "reason": "conv25 diverges first", "hint": "keep in FP32: trtforge quantize --exclude conv7,conv25",
                       "peak_rss_anon_mb": 314.8, "baseline_rss_anon_mb": 158.1, "seconds": 9.1},
    }
    return Report(
        command="trtforge optimize ppocr_rec.onnx -o out",
        model={"path": "ppocr_rec.onnx", "sha256": "ab" * 32, "nodes": 860, "opset": 12},
        stages=[
            StageRecord("passes", "ran", 1.2, summary={"nodes": "860 → 414"},
                        details={"passes": [{"name": "lift_constants", "modified": True, "nodes_before": 860, "nodes_after": 440,
                                             "seconds": 0.05, "notes": ["lifted 420 of 420 Constant nodes"]}]}),
            StageRecord("precision", "ran", 6.0, summary={"INT8 weight share": 1.0},
                        details={"quantized_nodes": [f"conv{i}" for i in range(40)], "skipped": {"mm_attn": "activation x activation"},
                                 "quantized_weight_share": 1.0, "target": "tensorrt", "method": "max", "per_channel": False}),
        ],
        validation=from_json(ValidationResult, validation),  # the JSON form a saved report has
        gates=[GateResult("cer_increase<=1.0", "cer_increase", 99.4744, False, "cer_increase = 99.47, required <= 1")],
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(to_html(_report()), encoding="utf-8")
    return path


def test_self_contained(rendered):
    text = rendered.read_text(encoding="utf-8")
    # No external resource of any kind: scripts, stylesheets, images, fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text
    assert not re.search(r"url\(\s*['\"]?(?!#)", text)  # only in-document references (SVG clip paths)
    assert text.count("<svg") == 2  # per-layer error plot and latency histogram, inline


def test_renders_key_numbers_in_chromium(rendered, tmp_path):
    done = _chromium(tmp_path, "--dump-dom", rendered.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "FAILED" in dom
    for number in ("99.63", "0.1576", "0.70x", "43.21%", "conv25", "315 MB", "cer_increase&lt;=1.0"):
        assert number in dom, number
    # The plots survived parsing as SVG elements with their text (svg.fonttype none).
    assert dom.count("<svg") == 2 and "first divergent: conv26" in dom


def test_screenshot_is_not_blank(rendered, tmp_path):
    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", rendered.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("L")
    colours = image.getcolors(maxcolors=1 << 16)
    # A page that failed to render is a single flat colour; ours has text, tables, plots.
    assert colours is None or len(colours) > 50
