"""Reports for CI: JUnit XML, baseline regressions, the report/validate commands' exit codes and files."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from optimizer.cli import main
from optimizer.errors import ConfigError, InputError
from optimizer.gates import diff_metrics, evaluate_gates, regression_metrics
from optimizer.html_report import to_html
from optimizer.junit import to_junit
from optimizer.report import GateResult, Report, load_report, to_markdown
from optimizer.validation_record import DivergenceResult, FixTrial, LayerError, MeasuredFix, ValidationResult
from validation_fixtures import latency, output, record, task

ROOT = Path(__file__).resolve().parents[1]


def _validation(cer: float, p50: float, speedup: float, snr: float = 30.0) -> ValidationResult:
    return record(
        output(max_abs=0.1, mean_abs=0.01, max_rel=0.05, cosine_min=0.99, snr_db=snr),
        task=task("cer", 0.2, cer, higher_is_better=False, unit="%"),
        latency=latency(p50 * speedup, p50),
    )


def _report(validation: ValidationResult, gates: list[GateResult]) -> Report:
    return Report(command="trtforge validate", model={"path": "m.onnx", "sha256": "0" * 64, "nodes": 3},
                  validation=validation, gates=gates)


def test_regression_metrics_point_the_worse_way():
    before, after = _validation(cer=0.5, p50=10.0, speedup=2.0), _validation(cer=0.8, p50=11.0, speedup=1.6, snr=27.0)
    m = regression_metrics(after, before)
    assert m["cer_regression"] == pytest.approx(0.3)  # lower is better: an increase is a regression
    assert m["p50_regression_pct"] == pytest.approx(10.0)
    assert m["speedup_regression_pct"] == pytest.approx(20.0)
    assert m["snr_regression_db"] == pytest.approx(3.0)
    accuracy = dataclasses.replace(after, task=dataclasses.replace(after.task, name="top1", higher_is_better=True))
    accuracy_before = dataclasses.replace(before, task=dataclasses.replace(before.task, name="top1", higher_is_better=True))
    assert regression_metrics(accuracy, accuracy_before)["top1_regression"] == pytest.approx(-0.3)  # higher: improved
    gates = evaluate_gates(["cer_regression<=0.1", "p50_regression_pct<=15"], after, before)
    assert [g.passed for g in gates] == [False, True]
    with pytest.raises(ConfigError, match="no metric 'cer_regression'"):
        evaluate_gates(["cer_regression<=0.1"], after)  # without a baseline the metric does not exist
    rows = {name: (a, b) for name, a, b in diff_metrics(before, after)}
    assert rows["cer"] == (0.5, 0.8) and rows["p50_speedup"] == (2.0, 1.6)


def test_junit_one_testcase_per_gate():
    report = _report(_validation(0.8, 10, 2), [
        GateResult("cer_increase<=1.0", "cer_increase", 0.6, True, "cer_increase = 0.6, required <= 1"),
        GateResult("p50_speedup>=3", "p50_speedup", 2.0, False, "p50_speedup = 2, required >= 3"),
    ])
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["cer_increase<=1.0", "p50_speedup>=3"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == "p50_speedup = 2, required >= 3"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["cer"] == "0.8" and props["passed"] == "false"
    empty = ET.fromstring(to_junit(_report(_validation(0.8, 10, 2), []))).find("testsuite")
    assert empty.get("skipped") == "1" and empty.find("testcase/skipped") is not None


def test_report_command_renders_and_diffs(tmp_path):
    old = _report(_validation(0.5, 10, 2), [GateResult("cer_increase<=1.0", "cer_increase", 0.3, True, "ok")])
    new = _report(_validation(0.9, 12, 1.5), [GateResult("cer_increase<=0.5", "cer_increase", 0.7, False, "cer_increase = 0.7")])
    old.save(tmp_path / "old.json")
    new.save(tmp_path / "new.json")
    html, junit = tmp_path / "r.html", tmp_path / "j.xml"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "new.json"), "--html", str(html), "--junit", str(junit)])
    assert result.exit_code == 1, result.output  # the stored verdict is the exit code
    assert html.read_text() == to_html(load_report(tmp_path / "new.json"))
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"
    diff = CliRunner().invoke(main, ["report", str(tmp_path / "new.json"), "--baseline", str(tmp_path / "old.json")])
    assert "p50_speedup" in diff.output and "-0.5" in diff.output and "this run FAILED" in diff.output
    old_passing = CliRunner().invoke(main, ["report", str(tmp_path / "old.json"), "--html", str(tmp_path / "o.html")])
    assert old_passing.exit_code == 0


def _divergence(node: str, op_type: str, hint: str, fix: MeasuredFix | None = None) -> DivergenceResult:
    """A search that found ``node`` first below tolerance and recommends keeping it in FP32."""
    first = LayerError(order=3, node=node, op_type=op_type, tensor="t3", candidate_tensor="t3", kind="node", snr_db=12.0,
                       cosine_min=0.9, max_rel=0.1, mean_abs=0.01, nonfinite=0, diverges=True)
    return DivergenceResult(
        reference="ref.onnx", candidate="cand.onnx", samples=2, tolerance={"min_snr_db": 20.0, "min_cosine": 0.99}, chunk=32,
        sessions=1, compared=9, layers=[first], first=first, recommend_exclude=[node], reason=f"{node} diverges",
        quantized=[node], peak_rss_anon_mb=300.0, baseline_rss_anon_mb=100.0, seconds=1.0, hint=hint, fix=fix,
    )


def test_markdown_and_html_show_the_divergence_search():
    v = _validation(99.0, 10, 1)
    v.divergence = _divergence("conv3", "Conv", "keep in FP32: trtforge quantize --exclude conv3")
    report = _report(v, [])
    assert "--exclude conv3" in to_markdown(report) and "`conv3` (Conv)" in to_markdown(report)
    assert "first divergent: conv3" in to_html(report)


# ---------------------------------------------------------------- trtforge validate, for real


def _scale_model(path: Path, factor: float) -> Path:
    """10-class logits y = x @ (factor * I): a MatMul output, so top-1 agreement is measured on it."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "k"], ["y"], name="scale")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor("k", onnx.TensorProto.FLOAT, [10, 10], (factor * np.eye(10)).ravel().tolist())],
    )  # fmt: skip
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _validate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizer.cli", "validate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip


def test_validate_exit_codes_junit_and_baseline(tmp_path):
    ref = _scale_model(tmp_path / "ref.onnx", 1.0)
    cand = _scale_model(tmp_path / "cand.onnx", 1.01)
    data = tmp_path / "val"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.savez(data / f"{i}.npz", x=rng.standard_normal((3, 10)).astype(np.float32))
    common = [str(cand), "--reference", str(ref), "--data", str(data), "--iterations", "4"]
    first = _validate(tmp_path, *common, "--gate", "min_snr_db>=30", "--gate", "min_top1_agreement>=1",
                      "--report", str(tmp_path / "r1.json"), "--junit", str(tmp_path / "j1.xml"), "--html", str(tmp_path / "r1.html"))
    assert first.returncode == 0, first.stderr
    suite = ET.parse(tmp_path / "j1.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    saved = load_report(tmp_path / "r1.json")
    out = saved.validation.outputs[0]
    assert out.top1_agreement == 1.0 and out.snr_db == pytest.approx(40.0, abs=1e-3)  # 1% scale error: 40 dB
    assert saved.validation.noise.samples == 4
    lat = saved.validation.latency
    assert lat.paired_speedup > 0 and len(lat.candidate.samples_ms) == 4
    assert "<svg" in (tmp_path / "r1.html").read_text()

    worse = _scale_model(tmp_path / "worse.onnx", 1.2)
    second = _validate(tmp_path, str(worse), *common[1:], "--baseline", str(tmp_path / "r1.json"),
                       "--gate", "snr_regression_db<=3", "--junit", str(tmp_path / "j2.xml"))
    assert second.returncode == 1, second.stderr
    case = ET.parse(tmp_path / "j2.xml").getroot().find("testsuite/testcase")
    assert case.get("name") == "snr_regression_db<=3" and case.find("failure") is not None

    bad = _validate(tmp_path, *common, "--baseline", str(tmp_path / "val" / "0.npz"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a trtforge JSON report" in bad.stderr


def test_paired_speedup_cancels_drift_that_p50s_do_not():
    from optimizer.validate import paired_speedup

    # The machine slows down 3x during iteration 2, between the reference's and the candidate's
    # run; the candidate is 2x faster whenever both ran at the same speed.
    from validation_fixtures import timing

    ref = timing(10.0, [10.0, 10.0, 10.0, 30.0, 30.0])
    cand = timing(15.0, [5.0, 5.0, 15.0, 15.0, 15.0])
    assert paired_speedup(ref, cand) == pytest.approx(2.0)
    assert float(np.median(ref.samples_ms) / np.median(cand.samples_ms)) == pytest.approx(10 / 15)  # p50s mislead


def test_data_line_is_a_sentence_and_a_table_not_a_dict():
    from optimizer.report import data_rows, data_sentence

    validation = _validation(cer=0.3, p50=1.0, speedup=1.0)
    validation.data = {"count": 10, "sha256": "ab" * 32, "synthetic": False, "labels_sha256": "cd" * 32,
                          "inputs": {"x": {"dtype": "float32", "min": -1.0, "max": 1.0,
                                           "shapes": [[1, 3, 48, w] for w in (80, 120, 160, 200, 320)]}}}
    text = to_markdown(_report(validation, evaluate_gates([], validation, defaults=True)))
    assert "{'count'" not in text and "{\"count\"" not in text
    assert "Validation data: 10 samples (content sha256 `abababababab…`, labels sha256 `cdcdcdcdcdcd…`)." in text
    assert "| x | float32 | 5 shapes, 1x3x48x80 … 1x3x48x320 | -1 … 1 |" in text
    assert data_rows(record()) == [] and data_sentence(record(samples=3)) == "3 samples."
    validation.data["synthetic"] = True
    assert "SYNTHETIC" in data_sentence(validation)
    html = to_html(_report(validation, []))
    assert "{&#x27;count&#x27;" not in html and "1x3x48x80 … 1x3x48x320" in html


def test_default_gates_are_listed_in_markdown_html_and_junit():
    from optimizer.gates import DEFAULT_GATES_DOC

    validation = _validation(cer=0.3, p50=1.0, speedup=1.0)
    report = _report(validation, evaluate_gates([], validation, defaults=True))
    assert report.gates and all(g.default for g in report.gates)
    md = to_markdown(report)
    assert DEFAULT_GATES_DOC in md and "| `min_cosine>=0.7` | 0.99 | pass | default |" in md
    assert "default" in to_html(report) and "source" in to_html(report)
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    assert {c.get("classname") for c in suite.iter("testcase")} == {"trtforge.default_gates.m.onnx"}
    assert any(p.get("name") == "default_gates" for p in suite.iter("property"))
    # A report saved before the field existed still loads (the field defaults to "given").
    assert GateResult(expression="a<=1", metric="a", value=1.0, passed=True, message="").default is False


def test_measured_fix_is_rendered_with_every_trial(tmp_path):
    validation = _validation(cer=0.3, p50=1.0, speedup=1.0)
    fix = MeasuredFix(gates=["min_cosine>=0.999"], before={"min_cosine": 0.984}, passed=False, distributed=True,
                      exclude=["mm3", "mm1"], verdict="The error is distributed, not local", seconds=2.0,
                      trials=[FixTrial(exclude=["mm3"], metrics={"min_cosine": 0.9841}, passed=False),
                              FixTrial(exclude=["mm3", "mm1"], metrics={"min_cosine": 0.9862}, passed=False)])
    validation.divergence = _divergence("mm3", "MatMul", "keep in FP32: --exclude mm3", fix)
    md = to_markdown(_report(validation, []))
    assert "Measured fix: The error is distributed, not local" in md
    assert "| 0 | 0 | 0.984 | fail |" in md and "| 2 | 2 | 0.9862 | fail |" in md
    assert "Measured fix: The error is distributed" in to_html(_report(validation, []))
    # The typed record survives the JSON round trip: what `trtforge report` and --baseline read back.
    saved = _report(validation, []).save(tmp_path / "r.json")
    assert load_report(saved).validation == validation


def test_a_report_with_an_unknown_validation_field_is_one_clear_error(tmp_path):
    import json

    path = _report(_validation(0.3, 1.0, 1.0), []).save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    data["validation"]["outputs"][0]["snr"] = 1.0  # a renamed field, as an edited or foreign file would have
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a valid trtforge report .*unknown field.*snr"):
        load_report(path)
    # A string where a number belongs would reach a renderer's format spec as a traceback.
    data["validation"]["outputs"][0].pop("snr")
    data["validation"]["latency"]["reference"]["p50_ms"] = "fast"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 2 and "latency: reference: p50_ms: expected float, got str 'fast'" in result.output
    assert "Traceback" not in result.output


def test_a_release_n_minus_1_report_without_later_fields_still_serves_as_baseline(tmp_path):
    """Schema-1 reports written before samples_ms, ort_level and divergence.quantized existed."""
    import json

    old = _validation(cer=0.5, p50=10.0, speedup=2.0)
    old.divergence = _divergence("conv3", "Conv", "keep in FP32: trtforge quantize --exclude conv3")
    data = json.loads(_report(old, []).save(tmp_path / "old.json").read_text())
    for timing in ("reference", "candidate"):
        del data["validation"]["latency"][timing]["samples_ms"]
    del data["validation"]["latency"]["ort_level"]
    del data["validation"]["divergence"]["quantized"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    loaded = load_report(tmp_path / "old.json")
    assert loaded.validation.latency.ort_level == "" and loaded.validation.latency.reference.samples_ms == []
    assert loaded.validation.divergence.quantized == []
    assert "`conv3` (Conv)" in to_markdown(loaded) and "<html" in to_html(loaded)
    now = _validation(cer=0.8, p50=11.0, speedup=1.6)
    assert regression_metrics(now, loaded.validation)["cer_regression"] == pytest.approx(0.3)
