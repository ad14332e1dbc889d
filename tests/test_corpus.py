"""The public corpus's CI subset (issue 10): the default commands, with no flags, on real models.

`benchmarks/corpus.py` runs all of it (`make bench`); here a fast slice: ~100 ONNX conformance
models plus a few of the onnx backend-test data models through `trtforge passes` in-process
(a worker subprocess, as the benchmark does), and real `trtforge passes` subprocesses on the
PP-OCRv4 angle classifier, a ddddocr model and two onnx zoo topologies, each checked against
its reference outputs in ONNX Runtime. Models are materialised into build/corpus/ (cached).
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest

from benchmarks import corpus
from benchmarks.corpus_models import (
    CorpusModel,
    Unavailable,
    load_reference,
    materialise,
    write_reference,
)

CONFORMANCE_SLICE = {"onnx-node": 100, "onnx-simple": 6, "onnx-pytorch-converted": 8, "onnx-pytorch-operator": 6}


def _family(name: str) -> list[CorpusModel]:
    try:
        return materialise(name)
    except Unavailable as exc:
        pytest.skip(str(exc))


def _model(family: str, name: str) -> CorpusModel:
    return next(m for m in _family(family) if m.name == name)


def _ort_cannot_run(model: CorpusModel) -> bool:
    """ONNX Runtime itself cannot load the model or fails inside it on the reference inputs.
    (ORT's Python binding not converting float8/int4/int2 numpy arrays is not such a limit.)"""
    from optimizer.errors import TrtforgeError
    from optimizer.runners import OrtRunner

    try:
        runner = OrtRunner(model.path, optimization="disable")
    except TrtforgeError:
        return True
    try:
        for feeds, _ in load_reference(model).data_sets:
            runner.run({k: v for k, v in feeds.items() if v is not None})
    except TrtforgeError as exc:
        return "[ONNXRuntimeError]" in str(exc)
    return False


def test_conformance_slice_passes_with_no_flags(tmp_path):
    models = []
    for family, count in CONFORMANCE_SLICE.items():
        models += corpus._select(_family(family), count)
    outcomes = corpus.run_batch(models, tmp_path)
    assert len(outcomes) == len(models)
    by_status = {s: [o for o in outcomes if o.status == s] for s in corpus.STATUSES}
    assert not by_status["crash"], [(o.name, o.reason) for o in by_status["crash"]]
    assert not by_status["wrong"], [(o.name, o.reason) for o in by_status["wrong"]]
    # A refusal is allowed only for a real limit: ONNX Runtime itself cannot run the model.
    by_name = {m.name: m for m in models}
    unjustified = [(o.name, o.reason) for o in by_status["refused"] if not _ort_cannot_run(by_name[o.name])]
    assert not unjustified
    assert not [o for o in by_status["refused"] if "random data" in o.reason]
    # The check is real: most of the slice is compared against the spec's reference outputs.
    assert sum(o.checked == "reference" for o in outcomes) >= 0.8 * len(outcomes)


@pytest.mark.parametrize(
    ("family", "name"),
    [("ppocr", "ppocr_cls"), ("ddddocr", "common"), ("light", "squeezenet"), ("light", "shufflenet")],
)
def test_public_model_passes_with_no_flags(tmp_path, family, name):
    model = _model(family, name)
    outcome = corpus.run_command(model, "passes", tmp_path, timeout=300)
    assert outcome.status == "ok", outcome.reason
    assert outcome.checked == "reference"  # the written model reproduced the reference in ORT


@pytest.mark.rtx
@pytest.mark.slow
def test_optimize_with_no_flags_builds_an_engine_on_ppocr_cls(tmp_path):
    model = _model("ppocr", "ppocr_cls")
    outcome = corpus.run_command(model, "optimize", tmp_path, timeout=900)
    assert outcome.finished, f"{outcome.status}: {outcome.reason}"
    assert outcome.engine
    assert outcome.checked == "reference"  # the pass-optimized artifact still matches


# --- the classifier itself must be able to fail -----------------------------------------------


def test_a_written_model_that_computes_something_else_is_wrong(tmp_path):
    src = tmp_path / "abs"
    src.mkdir()
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x) => (float[2,3] y) { y = Abs(x) }'
    )
    onnx.save(proto, src / "model.onnx")
    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], dtype=np.float32)
    write_reference(src, proto, [([x], [np.abs(x)])], rtol=1e-3, atol=1e-7, source="numpy")
    model = CorpusModel("unit", "abs", src / "model.onnx", src)

    same = tmp_path / "same.onnx"
    onnx.save(proto, same)
    assert corpus.check_written(model.path, same, model) == ("ok", "", "reference")

    other = tmp_path / "neg.onnx"
    onnx.save(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x) => (float[2,3] y) { y = Neg(x) }'
    ), other)
    status, reason, _ = corpus.check_written(model.path, other, model)
    assert status == "wrong" and "'y'" in reason

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert corpus.check_written(model.path, broken, model)[0] == "wrong"


@pytest.mark.parametrize(
    ("command", "code", "stderr", "expected"),
    [
        ("passes", 0, "", "ok"),
        ("passes", 2, "trtforge: error: input 'x' dim 3: pass --shapes x:1x3x48x320\n", "refused"),
        ("passes", 1, "trtforge: error: pass 'fold_constants' changed what the model computes\n", "wrong"),
        ("optimize", 1, "", "gate"),
        ("passes", 1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", "crash"),
        ("passes", -11, "", "crash"),
        ("passes", 3, "", "crash"),
    ],
)
def test_exit_classification(command, code, stderr, expected):
    status, reason = corpus.classify_exit(command, code, stderr)
    assert status == expected
    if expected == "refused":
        assert reason == "input 'x' dim 3: pass --shapes x:1x3x48x320"
    assert corpus.classify_exit(command, code, stderr, timed_out=5.0)[0] == "crash"


def test_reduced_precision_outputs_are_judged_at_their_precision():
    ref = {"y": np.linspace(-4, 4, 64).astype(np.float16)}
    one_ulp = {"y": np.nextafter(ref["y"], np.float16(np.inf))}
    assert corpus.output_mismatch(ref, one_ulp, 1e-3, 1e-7) == ""
    assert corpus.output_mismatch(ref, {"y": ref["y"] + np.float16(0.25)}, 1e-3, 1e-7)
