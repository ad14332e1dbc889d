"""``trtforge matrix`` in-process (``--workers 1``): variants, outputs, bad input, engine targets, plans.

Models are tiny Conv/Gemm nets built in ONNX text with seeded weights; every variant is a
real ``optimize`` run (passes, INT8 Q/DQ or FP16 Casts, validation in ONNX Runtime). Ray runs
are in ``test_matrix_ray.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from optimizer.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_model(path: Path, seed: int, classes: int = 8) -> Path:
    """Conv → Relu → GlobalAveragePool → Gemm on a 1x3x16x16 input, seeded weights."""
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : 17]>
net (float[1,3,16,16] x) => (float[1,{classes}] y) {{
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r = Relu (a)
  p = GlobalAveragePool (r)
  f = Flatten (p)
  y = Gemm <transB=1> (f, w2, b2)
}}""")
    model.graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((classes, 16)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(classes) * 0.1).astype(np.float32), "b2"),
    ])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def write_data(folder: Path, seed: int, count: int = 6) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    return folder


# Latency off: the rendered outputs then hold no timing, and the tests stay fast.
INT8 = "precision: {mode: int8}\nbuild: {enabled: 'no'}\nvalidate: {latency: {enabled: false}, gates: ['min_cosine>=0.9']}\n"
FP16 = "precision: {mode: fp16}\nbuild: {enabled: 'no'}\nvalidate: {latency: {enabled: false}, gates: ['min_cosine>=0.999']}\n"


def write_corpus(root: Path, models: int = 2) -> dict:
    """``models`` tiny models, one calibration and one validation folder, an INT8 and an FP16 recipe."""
    paths = [write_model(root / "models" / f"net{i}.onnx", seed=i) for i in range(models)]
    (root / "int8.yaml").write_text(INT8)
    (root / "fp16.yaml").write_text(FP16)
    return {
        "models": paths,
        "recipes": [root / "int8.yaml", root / "fp16.yaml"],
        "calib": write_data(root / "calib", seed=10),
        "val": write_data(root / "val", seed=11),
    }


def artifact_hashes(out: Path) -> dict[str, str]:
    """sha256 of every model artifact and of the matrix-level renderings (which hold no times)."""
    import hashlib

    per_variant_reports = {"report.json", "report.md", "report.html", "junit.xml"}  # they hold stage timings

    def kept(p: Path) -> bool:
        return p.name != "matrix.json" if p.parent == out else p.name not in per_variant_reports

    files = [p for p in out.rglob("*") if p.is_file() and kept(p)]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return write_corpus(tmp_path_factory.mktemp("matrix-corpus"))


@pytest.fixture(scope="module")
def ran(corpus, tmp_path_factory):
    """2 models × 2 recipes in-process, with one extra gate that the INT8 variants fail."""
    from optimizer import matrix

    out = tmp_path_factory.mktemp("matrix-out") / "release"
    result = matrix(corpus["models"], out, corpus["recipes"], calib=corpus["calib"], val=corpus["val"],
                    gates=["max_abs_error<=0.001"], workers=1)
    return result, out


def test_every_variant_has_its_report_folder(ran):
    result, out = ran
    assert result.mode == "in-process"
    assert [r["key"] for r in result.rows] == ["net0/int8", "net0/fp16", "net1/int8", "net1/fp16"]
    for row in result.rows:
        folder = out / row["key"]
        report = json.loads((folder / "report.json").read_text())
        assert report["artifacts"]["precision"].startswith(str(folder.resolve()))
        assert (folder / "report.html").is_file() and (folder / "junit.xml").is_file()
        suffix = "int8" if row["recipe"] == "int8" else "fp16"
        assert (folder / f"{row['model']}.{suffix}.onnx").is_file()
    # INT8 misses the 1e-3 absolute-error gate (errors 2e-3..3e-3; FP16: 2e-4..5e-4), FP16 meets it: the matrix fails as a whole.
    assert {r["key"]: r["status"] for r in result.rows} == {
        "net0/int8": "failed", "net0/fp16": "passed", "net1/int8": "failed", "net1/fp16": "passed"}
    assert not result.passed


def test_junit_one_suite_per_model_one_case_per_gate_per_variant(ran):
    _, out = ran
    root = ET.parse(out / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["net0", "net1"]
    for suite in suites:
        cases = suite.findall("testcase")
        # 2 variants × (recipe gate + --gate) = 4 cases, and the failures are the INT8 error gate.
        assert [(c.get("classname").rsplit(".", 1)[-1], c.get("name")) for c in cases] == [
            ("int8", "min_cosine>=0.9"), ("int8", "max_abs_error<=0.001"),
            ("fp16", "min_cosine>=0.999"), ("fp16", "max_abs_error<=0.001")]
        failed = [c.get("name") for c in cases if c.find("failure") is not None]
        assert failed == ["max_abs_error<=0.001"] and suite.get("failures") == "1" and suite.get("tests") == "4"
    assert root.get("tests") == "8" and root.get("failures") == "2"


def test_index_and_summary_link_and_show_gates(ran):
    result, out = ran
    html = (out / "index.html").read_text()
    for row in result.rows:
        assert f'href="{row["key"]}/report.html"' in html and (out / row["report"]).is_file()
    assert "FAILED" in html and "max_abs_error" in html and "min_cosine" in html
    summary = (out / "summary.md").read_text()
    assert "| net0 | ❌ 1/2 gates | ✅ 2/2 gates |" in summary
    assert "`net1/int8`: max_abs_error" in summary
    meta = json.loads((out / "matrix.json").read_text())
    assert meta["mode"] == "in-process" and len(meta["rows"]) == 4 and meta["passed"] is False


def test_shared_stages_come_from_the_stage_cache(corpus, tmp_path, monkeypatch):
    """The passes of one model run once: the second recipe finds them in the stage cache."""
    from optimizer import matrix

    monkeypatch.setenv("TRTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    matrix(corpus["models"][:1], tmp_path / "out", corpus["recipes"], calib=corpus["calib"], val=corpus["val"], workers=1)
    stages = {key: {s["name"]: s["status"] for s in json.loads((tmp_path / "out" / key / "report.json").read_text())["stages"]}
              for key in ("net0/int8", "net0/fp16")}
    assert stages["net0/int8"]["passes"] == "ran" and stages["net0/fp16"]["passes"] == "cached"
    assert stages["net0/fp16"]["precision"] == "ran"


def test_same_results_as_a_second_run_without_cache(corpus, ran, tmp_path):
    """Determinism in-process: a fresh run (no cache) writes byte-identical artifacts and renderings."""
    from optimizer import matrix

    _, first = ran
    matrix(corpus["models"], tmp_path / "again", corpus["recipes"], calib=corpus["calib"], val=corpus["val"],
           gates=["max_abs_error<=0.001"], workers=1, use_cache=False)
    assert artifact_hashes(tmp_path / "again") == artifact_hashes(first)


def test_plan_file_per_model_data_recipes_and_gates(corpus, tmp_path):
    from optimizer import matrix

    plan = tmp_path / "plan.yaml"
    c = corpus
    plan.write_text(
        f"recipes: [{c['recipes'][1]}]\n"
        f"gates: ['min_cosine>=0.5']\n"
        f"models:\n"
        f"  - path: {c['models'][0]}\n    name: first\n    calib: {c['calib']}\n    val: {c['val']}\n    recipes: [{c['recipes'][0]}]\n"
        f"  - path: {c['models'][1]}\n    val: {c['val']}\n    gates: ['min_snr_db>=20']\n"
    )
    result = matrix(out_dir=tmp_path / "out", plan=plan, workers=1)
    assert [r["key"] for r in result.rows] == ["first/int8", "net1/fp16"]
    assert [[g["expression"] for g in r["gates"]] for r in result.rows] == [
        ["min_cosine>=0.9", "min_cosine>=0.5"], ["min_cosine>=0.999", "min_cosine>=0.5", "min_snr_db>=20"]]
    assert result.passed


def test_a_failing_variant_does_not_stop_the_rest(corpus, tmp_path, monkeypatch):
    """A variant that raises is retried, then recorded as an error; the others still run.

    The transient failure is injected by wrapping the real pipeline (the one mock here: a
    worker that dies for real is tested with Ray in test_matrix_ray.py).
    """
    import optimizer.pipeline as pipeline
    from optimizer import matrix

    real, calls = pipeline.optimize, []

    def flaky(model_path, *args, **kwargs):
        calls.append(Path(model_path).stem)
        if Path(model_path).stem == "net0" and calls.count("net0") == 1:
            raise OSError("disk hiccup")  # transient: the retry succeeds
        if Path(model_path).stem == "net1":
            raise RuntimeError("always broken")  # permanent: retries exhausted
        return real(model_path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "optimize", flaky)
    result = matrix(corpus["models"], tmp_path / "out", corpus["recipes"][1:], val=corpus["val"], workers=1, retries=2)
    assert calls == ["net0", "net0", "net1", "net1", "net1"]
    assert [(r["key"], r["status"]) for r in result.rows] == [("net0/fp16", "passed"), ("net1/fp16", "error")]
    assert "RuntimeError: always broken" in result.rows[1]["error"]
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.find("testsuite[@name='net1']/testcase/error") is not None


# ---------------------------------------------------------------- bad input: exit 2, nothing written


def _bad_inputs(c: dict, tmp: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model")
    bad_recipe = tmp / "bad.yaml"
    bad_recipe.write_text("precision: {mode: int8, methd: max}\n")
    bad_target = tmp / "targets.yaml"
    bad_target.write_text("build: {enabled: 'no'}\ntargets: [{build: {compute_capabilities: [SM86]}}]\n")
    nan = write_data(tmp / "nan", seed=3)
    np.savez(nan / "004.npz", x=np.full((1, 3, 16, 16), np.nan, dtype=np.float32))
    twin = write_model(tmp / "other" / "net0.onnx", seed=5)
    plan = tmp / "plan.yaml"
    plan.write_text(f"models:\n  - path: {c['models'][0]}\n    data: {c['val']}\n")
    m0, m1 = str(c["models"][0]), str(c["models"][1])
    common = ["--calib", str(c["calib"]), "--val", str(c["val"])]
    recipes = ["--recipe", str(c["recipes"][0])]
    return {
        "missing model": ([m0, str(tmp / "nope.onnx"), *recipes, *common], "nope.onnx"),
        "corrupt model": ([m0, str(corrupt), *recipes, *common], "corrupt.onnx"),
        "typo in the last recipe": ([m0, m1, *recipes, "--recipe", str(bad_recipe), *common], "methd"),
        "target without a name": ([m0, "--recipe", str(bad_target), *common], "targets"),
        "NaN in the validation data": ([m0, m1, *recipes, "--calib", str(c["calib"]), "--val", str(nan)], "004.npz"),
        "INT8 without calibration data": ([m0, *recipes, "--val", str(c["val"])], "calib"),
        "two models, one folder name": ([m0, str(twin), *recipes, *common], "net0"),
        "bad gate": ([m0, *recipes, *common, "--gate", "cosine>>1"], "cosine>>1"),
        "unknown plan key": (["--plan", str(plan)], "data"),
        "--shapes naming no input": ([m0, *recipes, *common, "--shapes", "y:1x3x16x16"], "'y'"),
        "no model": ([*recipes, *common], "MODEL"),
    }


def test_bad_input_exits_2_before_any_task(corpus, tmp_path):
    runner = CliRunner()
    for case, (args, needle) in _bad_inputs(corpus, tmp_path).items():
        out = tmp_path / "out"
        done = runner.invoke(main, ["matrix", *args, "-o", str(out), "--workers", "1"])
        assert done.exit_code == 2, (case, done.output)
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trtforge: error: ") and needle in lines[0], (case, done.output)
        assert not out.exists(), case


def test_cli_exit_codes_and_help(corpus, tmp_path):
    helped = CliRunner().invoke(main, ["matrix", "--help"])
    assert helped.exit_code == 0 and "Example:" in helped.output and "--plan" in helped.output
    args = [str(corpus["models"][0]), "-o", str(tmp_path / "o"), "--recipe", str(corpus["recipes"][1]),
            "--val", str(corpus["val"]), "--workers", "1"]
    ok = CliRunner().invoke(main, ["matrix", *args])
    assert ok.exit_code == 0 and "PASSED: 1 variants (1 passed, 0 failed, 0 error)" in ok.output, ok.output
    # A real process for the exit code a CI job sees.
    failed = subprocess.run([sys.executable, "-m", "optimizer.cli", "matrix", *args, "-q", "--gate", "max_abs_error<=0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]


# ---------------------------------------------------------------- engine targets (real TensorRT-RTX builds)


@pytest.mark.rtx
def test_recipe_targets_are_variants_with_their_own_engines(corpus, tmp_path, monkeypatch):
    from optimizer import matrix

    monkeypatch.setenv("TRTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "rtx.yaml"
    recipe.write_text(
        "precision: {mode: fp16}\nbuild: {enabled: 'yes', builder: tensorrt-rtx, engine_store: false}\n"
        "validate: {latency: {enabled: false}}\ntargets: [SM86, {name: ada, build: {compute_capabilities: [SM89]}}]\n"
    )
    result = matrix(corpus["models"][:1], tmp_path / "out", [recipe], val=corpus["val"], workers=1)
    assert [r["key"] for r in result.rows] == ["net0/rtx/sm86", "net0/rtx/ada"], result.rows
    targets = []
    for key in ("net0/rtx/sm86", "net0/rtx/ada"):
        report = json.loads((tmp_path / "out" / key / "report.json").read_text())
        stages = {s["name"]: s for s in report["stages"]}
        assert stages["build"]["status"] == "ran" and Path(stages["build"]["artifact"]).is_file()
        targets.append(json.dumps(stages["build"]["details"].get("target")))
        if key.endswith("ada"):  # the precision stage is shared by the targets: it ran once
            assert stages["precision"]["status"] == "cached"
    assert "86" in targets[0] and "89" in targets[1]


# ---------------------------------------------------------------- index.html in a real browser


def test_index_renders_in_chromium(ran, tmp_path):
    """index.html in headless Chromium (no network): the grid, badges, failing gate and links render."""
    from test_html_browser import CHROMIUM, _chromium

    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    _, out = ran
    html = (out / "index.html").read_text()
    assert "<script" not in html and "http" not in html  # self-contained, nothing fetched
    done = _chromium(tmp_path, "--dump-dom", (out / "index.html").as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert dom.count('<tr><th>net') == 2 and dom.count("report</a>") == 4
    for text in ("FAILED", "2 passed, 2 failed a gate, 0 did not finish", "max_abs_error = ", "min_cosine: "):
        assert text in dom, text
    shot = tmp_path / "index.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,700", (out / "index.html").as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    colours = {rgb for _, rgb in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colours) > 50  # a blank page is one flat colour
    # The green and red badges are painted (PASSED/FAILED cells), not just present in the DOM.
    assert (0x1F, 0x8A, 0x4C) in colours and (0xC6, 0x28, 0x28) in colours


def test_ray_submission_is_recipe_major():
    """The first wave runs different models, so a model's shared passes are cached before its next recipe runs."""
    from optimizer.matrix_plan import Variant
    from optimizer.matrix_run import _submission_order

    variants = [Variant(m, f"/{m}.onnx", r, None, {}, "/") for m in ("a", "b", "c") for r in ("int8", "fp16")]
    order = [variants[i].key for i in _submission_order(variants)]
    assert order == ["a/int8", "b/int8", "c/int8", "a/fp16", "b/fp16", "c/fp16"]
