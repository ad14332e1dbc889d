"""Hostile input through the real CLI: mutated real and conformance models, fixed seeds.

Every case must end in exit 0, 1 or 2 with no traceback, no numpy RuntimeWarning, no hang,
its input untouched and nothing left behind when it failed. The mutations and the judging
live in ``benchmarks/fuzz.py`` (which runs thousands of cases in ``make bench``); here a few
hundred run in-process through ``click.testing.CliRunner`` and a few in real subprocesses.
On failure the message names the seed, case, base model, mutations and command, so
``.venv/bin/python benchmarks/fuzz.py --seed S --cases N --commands C`` reproduces it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

fuzz = pytest.importorskip("benchmarks.fuzz", reason="benchmarks/fuzz.py holds the mutation engine")

# command -> (cases, seed). Cheap commands get most cases; each case that runs a network
# (passes verify, quantize calibrates, build compiles, validate runs two sessions) costs more.
PLAN = {
    "inspect": (80, 101),
    "inspect-json": (20, 102),  # with the TensorRT parse check when tensorrt_rtx is installed
    "passes": (40, 103),
    "quantize": (25, 104),
    "prune": (30, 105),
    "build": (6, 106),
    "validate": (12, 107),
}


@pytest.fixture(scope="module")
def bases():
    bases = fuzz.base_models()
    names = {b.name for b in bases}
    if "ppocr_cls" not in names:
        pytest.skip("rapidocr-onnxruntime==1.4.4 is not installed (make venv installs it)")
    return names


def _check(outcomes) -> None:
    failures = fuzz.failure_lines(outcomes, limit=10)
    assert not failures, f"{len(failures)} case(s) failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("command", list(PLAN))
def test_mutated_models_never_crash_the_cli(command, bases, tmp_path):
    count, seed = PLAN[command]
    cases = fuzz.plan(seed, count, {command: 1.0})
    outcomes = fuzz.run(cases, tmp_path)
    assert len(outcomes) == count
    _check(outcomes)
    # The mutations really are hostile: most cases are refused (exit 2), and some still work.
    codes = [o.exit_code for o in outcomes]
    assert codes.count(2) >= count // 4, codes


def test_real_subprocesses_exit_cleanly(bases, tmp_path):
    """The same judging through the installed entry point's code path in fresh interpreters."""
    cases = [
        fuzz.Case(i, 108, base, kinds, command, subprocess=True)
        for i, (base, kinds, command) in enumerate(
            [
                ("ppocr_cls", ["invalid_utf8"], "inspect"),
                ("if_text", ["weightless", "unsorted"], "passes"),
            ]
        )
    ]
    outcomes = fuzz.run(cases, tmp_path)
    _check(outcomes)
    assert [o.exit_code for o in outcomes] == [2, 2]
    assert all("trtforge: error: " in o.detail and o.detail.count("\n") == 1 for o in outcomes), [o.detail for o in outcomes]


def test_every_mutation_changes_the_model():
    """A mutation that silently did nothing would make the fuzzer test less than it claims."""
    import random

    bases = [b for b in fuzz.base_models() if b.name in ("test_Conv2d", "test_operator_basic", "if_text")]
    for kind in fuzz.MUTATIONS:
        changed = sum(
            fuzz.mutate(bases[i % 3].data, [kind], random.Random(f"{kind}:{i}")) != bases[i % 3].data for i in range(12)
        )
        assert changed >= 6, f"mutation {kind} changed the model in only {changed} of 12 tries"


def test_a_traceback_is_caught_by_the_judge(tmp_path, monkeypatch):
    """The judge itself: an exception escaping a command counts as a traceback, a sleep as a hang."""
    import time

    from optimizer import inspect as inspect_module

    case = fuzz.Case(0, 1, "test_Conv2d", ["unsorted"], "inspect")

    def boom(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(inspect_module, "inspect_model", boom)
    outcome = fuzz.run_case(case, tmp_path)
    assert outcome.problem == "traceback" and "planted bug" in outcome.detail
    monkeypatch.setattr(inspect_module, "inspect_model", lambda *a, **k: time.sleep(30))
    outcome = fuzz.run_case(fuzz.Case(1, 1, "test_Conv2d", ["unsorted"], "inspect"), tmp_path, timeout_scale=0.02)
    assert outcome.problem == "hang"
    assert Path(tmp_path / "case00001" / "model.onnx").exists()
