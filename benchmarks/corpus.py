"""The public corpus through trtforge's default commands, with no flags: ok / refused / wrong / crash.

    .venv/bin/python benchmarks/corpus.py                               # everything available; RESULTS.md
    .venv/bin/python benchmarks/corpus.py --families ppocr,ddddocr --commands passes
    .venv/bin/python benchmarks/corpus.py --families onnx-node --limit 200
    .venv/bin/python benchmarks/corpus.py --optimize-conformance         # also optimize the ~2,000 conformance models (slow)
    .venv/bin/python benchmarks/corpus.py --render build/corpus/results.json   # RESULTS.md from a saved run

Per model (see benchmarks/corpus_models.py for the families) it runs, each in a subprocess
with a timeout:

    trtforge passes   MODEL -o OUT.onnx
    trtforge optimize MODEL -o OUT/ --synthetic       (not on conformance models unless asked)

The conformance families run ``passes`` in-process in batches (the same CLI command through
click's test runner, in a worker subprocess that is restarted on a crash or timeout), since
a fresh interpreter per single-op model would take most of the time.

Outcomes: ``ok`` (exit 0, and where the model ships reference outputs, the written model
reproduces them in ONNX Runtime); ``gate`` (optimize exit 1: finished, a gate failed);
``refused`` (exit 2, with its one line); ``wrong`` (the written model's outputs differ from
the reference while the original matches it, or from the original's own ONNX Runtime
outputs; or ``passes`` exit 1: its verification caught a pass changing outputs); ``crash``
(a traceback, a signal, a timeout, another exit code, a modified input, or output left behind
by a refusal). For optimize the table also says whether an engine was built. Each run uses a
fresh stage cache, so times are cold.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# First on the path: this folder's graph_passes.py (a benchmark) must not shadow the package.
sys.path.insert(0, str(ROOT))

from benchmarks.corpus_models import CONFORMANCE, CORPUS, FAMILIES, CorpusModel, iter_corpus, load_reference  # noqa: E402
from optimizer.model import file_sha256  # noqa: E402

STATUSES = ("ok", "gate", "refused", "wrong", "crash")
PASSES_TIMEOUT = 300.0
OPTIMIZE_TIMEOUT = 900.0
BATCH = 150  # conformance models per worker process


@dataclass
class Outcome:
    family: str
    name: str
    command: str  # "passes" | "optimize"
    status: str
    reason: str = ""
    seconds: float = 0.0
    engine: bool | None = None  # optimize only: an engine file was written
    checked: str = ""  # what the outputs were checked against ("" when there is no reference)

    @property
    def finished(self) -> bool:
        return self.status in ("ok", "gate")


# --- classification -------------------------------------------------------------------------


def _one_line(text: str, limit: int = 220) -> str:
    return " ".join(text.split())[:limit]


def classify_exit(command: str, code: int | None, stderr: str, *, timed_out: float | None = None) -> tuple[str, str]:
    """(status, reason) from how a trtforge command ended (``code`` < 0: killed by a signal)."""
    if timed_out is not None:
        return "crash", f"timeout after {timed_out:.0f}s"
    if "Traceback (most recent call last)" in stderr:
        tail = [line for line in stderr.strip().splitlines() if line.strip()]
        return "crash", _one_line(tail[-1] if tail else "traceback")
    if code is not None and code < 0:
        return "crash", f"killed by signal {-code}"
    error = [line for line in stderr.splitlines() if line.startswith(("trtforge: error:", "Error:"))]
    reason = _one_line(error[-1].split(":", 2)[-1] if error and error[-1].startswith("trtforge") else (error[-1] if error else ""))
    if code == 0:
        return "ok", ""
    if code == 2:
        return "refused", reason or _one_line(stderr[-300:]) or "exit 2 without a message"
    if code == 1:
        if command == "optimize":
            return "gate", reason or "a gate failed"
        return "wrong", reason or "exit 1 (verification failed)"
    return "crash", f"exit {code}: {reason or _one_line(stderr[-300:])}"


def _flatten(outputs: dict) -> dict[str, np.ndarray]:
    """Sequence outputs become ``name[i]`` tensors; a missing optional becomes an empty marker."""
    flat = {}
    for name, value in outputs.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                flat[f"{name}[{i}]"] = np.asarray(item)
            flat[f"{name}.len"] = np.asarray(len(value))
        elif value is None:
            flat[f"{name}.none"] = np.asarray(True)
        else:
            flat[name] = np.asarray(value)
    return flat


def _tolerances(ref: np.ndarray, rtol: float, atol: float) -> tuple[float, float]:
    """Reduced-precision outputs are judged at their own precision (a few units of their epsilon)."""
    if ref.dtype == np.float16:
        return max(rtol, 4 * float(np.finfo(np.float16).eps)), max(atol, 1e-4)
    if ref.dtype.name == "bfloat16":
        return max(rtol, 3e-2), max(atol, 1e-3)
    return rtol, atol


def output_mismatch(expected: dict, got: dict, rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``expected`` within tolerance, else what differs (worst output)."""
    from graph_passes.verify import compare

    exp, out = _flatten(expected), _flatten(got)
    problems = []
    for name, ref in exp.items():
        r, a = _tolerances(ref, rtol, atol)
        for diff in compare({name: ref}, out, r, a):
            if not diff.ok:
                problems.append((bool(diff.problem), diff.ratio, diff.describe()))
    return max(problems)[2] if problems else ""


def check_written(original: Path, written: Path, model: CorpusModel) -> tuple[str, str, str]:
    """(status, reason, checked): does ``written`` still compute the model's reference outputs?

    Wrong when it differs from the reference while the original (in ONNX Runtime, graph
    optimisations off) matches it, or when it differs from the original's own outputs. Where
    ORT cannot run the original at all, nothing can be checked and the outcome says so."""
    from optimizer.errors import TrtforgeError
    from optimizer.runners import OrtRunner

    ref = load_reference(model)
    if ref is None:
        return "ok", "", ""
    try:
        base = OrtRunner(original, optimization="disable")
    except TrtforgeError as exc:
        return "ok", "", f"unchecked: {_one_line(str(exc), 120)}"
    try:
        cand = OrtRunner(written, optimization="disable")
    except TrtforgeError as exc:
        return "wrong", f"the written model no longer loads in ONNX Runtime: {_one_line(str(exc))}", "reference"
    checked = "reference"
    for feeds, expected in ref.data_sets:
        feeds = {k: v for k, v in feeds.items() if v is not None}
        names = [n for n in expected if n in cand.output_names]
        try:
            base_out = base.run(feeds, names or None)
        except TrtforgeError as exc:
            return "ok", "", f"unchecked: the original fails on the reference inputs ({_one_line(str(exc), 100)})"
        try:
            got = cand.run(feeds, names or None)
        except TrtforgeError as exc:
            return "wrong", f"the written model fails on the reference inputs: {_one_line(str(exc))}", checked
        expected = {n: expected[n] for n in names} if names else expected
        if output_mismatch(expected, got, ref.rtol, ref.atol):
            if not output_mismatch(expected, base_out, ref.rtol, ref.atol):
                return "wrong", f"vs reference ({ref.source}): {output_mismatch(expected, got, ref.rtol, ref.atol)}", checked
            checked = "original (ORT differs from the reference on the original too)"
        drift = output_mismatch(base_out, got, ref.rtol, ref.atol)
        if drift:
            return "wrong", f"vs the original in ONNX Runtime: {drift}", checked
    return "ok", "", checked


def _finish(outcome: Outcome, model: CorpusModel, out: Path, digest: str) -> Outcome:
    """Contract checks shared by both paths, then the reference check of what was written."""
    if file_sha256(model.path) != digest:
        outcome.status, outcome.reason = "crash", f"the input model was modified. {outcome.reason}".strip()
    elif outcome.status == "refused" and out.exists() and (out.is_file() or any(out.iterdir())):
        outcome.status, outcome.reason = "crash", f"refused but left output behind in {out.name}: {outcome.reason}"
    elif outcome.finished:
        written = out if outcome.command == "passes" else next(out.glob("*.opt.onnx"), None)
        if outcome.command == "optimize":
            outcome.engine = any(out.glob("*.engine"))
        if written is not None and written.exists():
            status, reason, outcome.checked = check_written(model.path, written, model)
            if status != "ok":
                outcome.status, outcome.reason = status, reason
        elif outcome.command == "passes":
            outcome.status, outcome.reason = "crash", "exit 0 but no output written"
    return outcome


# --- one model, one CLI command, in a subprocess ------------------------------------------


def _trtforge() -> list[str]:
    script = Path(sys.executable).with_name("trtforge")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from optimizer.cli import main; main()"]


def run_command(model: CorpusModel, command: str, work: Path, *, timeout: float, env: dict | None = None) -> Outcome:
    """``trtforge passes MODEL -o OUT`` or ``trtforge optimize MODEL -o OUT --synthetic``, classified."""
    out = work / ("passes.onnx" if command == "passes" else "optimize")
    args = ["passes", str(model.path), "-o", str(out)] if command == "passes" else ["optimize", str(model.path), "-o", str(out), "--synthetic"]
    digest = file_sha256(model.path)
    start = time.perf_counter()
    timed_out = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*_trtforge(), *args], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # this process group is the command we started
            code, timed_out = proc.wait(), timeout
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    seconds = time.perf_counter() - start
    status, reason = classify_exit(command, code, stderr, timed_out=timed_out)
    return _finish(Outcome(model.family, model.name, command, status, reason, seconds), model, out, digest)


# --- conformance models: passes in-process, in a worker subprocess --------------------------


def passes_in_process(model: CorpusModel, work: Path) -> Outcome:
    """The same ``trtforge passes MODEL -o OUT`` in this process (click's test runner)."""
    from click.testing import CliRunner

    from optimizer.cli import main

    out = work / "passes.onnx"
    digest = file_sha256(model.path)
    start = time.perf_counter()
    with np.errstate(all="warn"):
        result = CliRunner().invoke(main, ["passes", str(model.path), "-o", str(out)])
    seconds = time.perf_counter() - start
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        status, reason = "crash", _one_line(f"{type(exc).__name__}: {exc}{at}")
    else:
        status, reason = classify_exit("passes", result.exit_code, result.stderr)
    return _finish(Outcome(model.family, model.name, "passes", status, reason, seconds), model, out, digest)


def _worker(tasks_file: str) -> int:
    """Worker side: one JSON line per event on stdout ({"start": i} then {"outcome": ...})."""
    tasks = json.loads(Path(tasks_file).read_text())
    for i, task in enumerate(tasks):
        print(json.dumps({"start": i}), flush=True)
        model = CorpusModel(task["family"], task["name"], Path(task["path"]), Path(task["reference"]) if task["reference"] else None)
        work = Path(task["work"])
        work.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):
            outcome = passes_in_process(model, work)
        if not task.get("keep"):
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({"outcome": asdict(outcome)}), flush=True)
    return 0


def run_batch(models: Sequence[CorpusModel], work: Path, *, timeout: float = PASSES_TIMEOUT, keep: bool = False,
              env: dict | None = None, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """``passes`` on ``models`` in worker processes; a worker that crashes or hangs is killed,
    the model it was on recorded as a crash, and a new worker takes the rest."""
    outcomes: list[Outcome] = []
    pending = list(models)
    while pending:
        done = _run_worker(pending, work, timeout, keep, env)
        for outcome in done:
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        pending = pending[len(done):]
    return outcomes


def _run_worker(models: Sequence[CorpusModel], work: Path, timeout: float, keep: bool, env: dict | None) -> list[Outcome]:
    tasks = [
        {"family": m.family, "name": m.name, "path": str(m.path), "reference": str(m.reference) if m.reference else None,
         "work": str(work / m.family / m.name), "keep": keep}
        for m in models
    ]
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=work, delete=False) as f:
        json.dump(tasks, f)
    lines: queue.Queue = queue.Queue()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", f.name], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env, cwd=ROOT, start_new_session=True)
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
        done: list[Outcome] = []
        current, started = None, time.perf_counter()
        while True:
            try:
                line = lines.get(timeout=max(1.0, timeout - (time.perf_counter() - started)) if current is not None else 600)
            except queue.Empty:
                os.killpg(proc.pid, 9)
                if current is None:
                    proc.wait()
                    raise RuntimeError("the corpus worker did not start within 600 s")
                proc.wait()
                done.append(Outcome(models[current].family, models[current].name, "passes", "crash", f"timeout after {timeout:.0f}s", timeout))
                break
            if line is None:  # the worker ended
                code = proc.wait()
                if current is not None and len(done) == current:
                    err.seek(0)
                    tail = [x for x in err.read().decode("utf-8", "replace").splitlines() if x.strip()][-1:] or [""]
                    why = f"killed by signal {-code}" if code < 0 else f"worker exit {code}: {_one_line(tail[0])}"
                    done.append(Outcome(models[current].family, models[current].name, "passes", "crash", why, time.perf_counter() - started))
                elif len(done) < len(models) and current is None:
                    err.seek(0)
                    raise RuntimeError(f"corpus worker failed to start: {err.read().decode()[-2000:]}")
                break
            try:
                event = json.loads(line)
            except ValueError:  # a library wrote to fd 1 directly: not ours
                continue
            if not isinstance(event, dict):
                continue
            if "start" in event:
                current, started = event["start"], time.perf_counter()
            else:
                done.append(Outcome(**event["outcome"]))
        Path(f.name).unlink(missing_ok=True)
    return done


# --- the whole run --------------------------------------------------------------------------


def run_corpus(
    models: Sequence[CorpusModel],
    commands: Sequence[str] = ("passes", "optimize"),
    *,
    work: Path,
    jobs: int = 1,
    optimize_conformance: bool = False,
    keep: bool = False,
    passes_timeout: float = PASSES_TIMEOUT,
    optimize_timeout: float = OPTIMIZE_TIMEOUT,
    env: dict | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every (model, command) once; conformance ``passes`` in batches, the rest one subprocess each."""
    units: list[Callable[[], list[Outcome]]] = []
    for family in dict.fromkeys(m.family for m in models):  # in the order given
        units += _family_units([m for m in models if m.family == family], commands, work, jobs, optimize_conformance, keep,
                               passes_timeout, optimize_timeout, env, on_outcome)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = [o for unit in pool.map(lambda u: u(), units) for o in unit]
    order = {(m.family, m.name): i for i, m in enumerate(models)}
    return sorted(results, key=lambda o: (order[(o.family, o.name)], o.command != "passes"))


def _family_units(models, commands, work, jobs, optimize_conformance, keep, passes_timeout, optimize_timeout, env, on_outcome):
    units = []
    in_process = [m for m in models if m.family in CONFORMANCE]
    if "passes" in commands and in_process:
        size = min(BATCH, -(-len(in_process) // max(1, jobs)))  # every job gets a batch
        for i in range(0, len(in_process), size):
            chunk = in_process[i : i + size]
            units.append(lambda chunk=chunk: run_batch(chunk, work, timeout=passes_timeout, keep=keep, env=env, on_outcome=on_outcome))
    for model in models:
        for command in commands:
            if model.family in CONFORMANCE and (command == "passes" or not optimize_conformance):
                continue
            units.append(lambda m=model, c=command: [_single(m, c, work, keep, passes_timeout if c == "passes" else optimize_timeout, env, on_outcome)])
    return units


def _single(model: CorpusModel, command: str, work: Path, keep: bool, timeout: float, env: dict | None, on_outcome) -> Outcome:
    folder = work / model.family / model.name / command
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    outcome = run_command(model, command, folder, timeout=timeout, env=env)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    if on_outcome:
        on_outcome(outcome)
    return outcome


# --- tables ---------------------------------------------------------------------------------


def summary_rows(outcomes: Iterable[Outcome]) -> list[dict]:
    """One row per (family, command): counts per status, engines built, total and median time."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.family, o.command), []).append(o)
    rows = []
    for (family, command), items in groups.items():
        counts = Counter(o.status for o in items)
        times = sorted(o.seconds for o in items)
        row = {"family": family, "command": command, "models": len(items), **{s: counts.get(s, 0) for s in STATUSES}}
        row["engines"] = sum(bool(o.engine) for o in items) if command == "optimize" else None
        row["checked"] = sum(bool(o.checked) and not o.checked.startswith("unchecked") for o in items)
        row["total s"], row["median s"] = round(sum(times), 1), round(times[len(times) // 2], 2)
        rows.append(row)
    return rows


def markdown(outcomes: Sequence[Outcome], *, detail_limit: int = 80) -> str:
    head = "| family | command | models | ok | gate | refused | wrong | crash | engines | checked vs reference | total s | median s |"
    lines = [head, "|" + "---|" * 12]
    for r in summary_rows(outcomes):
        engines = "-" if r["engines"] is None else str(r["engines"])
        lines.append(
            f"| {r['family']} | {r['command']} | {r['models']} | {r['ok']} | {r['gate']} | {r['refused']} | {r['wrong']} | "
            f"{r['crash']} | {engines} | {r['checked']} | {r['total s']} | {r['median s']} |"
        )
    public = [o for o in outcomes if o.family not in CONFORMANCE]
    if public:
        lines += ["", "Per model (outside the conformance suite):", "", "| family | model | passes | optimize | engine | s (passes / optimize) |", "|---|---|---|---|---|---|"]
        by_model: dict[tuple[str, str], dict[str, Outcome]] = {}
        for o in public:
            by_model.setdefault((o.family, o.name), {})[o.command] = o
        for (family, name), cmds in by_model.items():
            p, q = cmds.get("passes"), cmds.get("optimize")
            engine = "-" if q is None or q.engine is None else ("yes" if q.engine else "no")
            secs = " / ".join(f"{c.seconds:.1f}" if c else "-" for c in (p, q))
            lines.append(f"| {family} | {name} | {p.status if p else '-'} | {q.status if q else '-'} | {engine} | {secs} |")
    return "\n".join(lines + _not_ok(outcomes, detail_limit))


def _not_ok(outcomes: Sequence[Outcome], limit: int) -> list[str]:
    """Each non-ok outcome outside the conformance suite; conformance ones grouped by reason."""
    bad = [o for o in outcomes if o.status != "ok"]
    if not bad:
        return []
    lines = ["", f"Not ok ({len(bad)}):", ""]
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for o in bad:
        if o.family in CONFORMANCE:
            groups.setdefault((o.command, o.status, o.reason), []).append(o)
        elif len(lines) < limit:
            lines.append(f"- `{o.family}/{o.name}` {o.command}: **{o.status}** {o.reason.replace('|', '/')}")
    for (command, status, reason), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if len(lines) >= limit + 20:
            break
        names = ", ".join(f"`{o.name}`" for o in items[:3]) + (", ..." if len(items) > 3 else "")
        lines.append(f"- conformance {command}: **{status}** x{len(items)} ({names}): {reason.replace('|', '/')}")
    return lines


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("trtforge", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "tensorrt-rtx", "torch"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found) + f", Python {platform.python_version()}, {os.cpu_count()} CPUs"


def write_results(outcomes: Sequence[Outcome], command_line: str, unavailable: dict[str, str]) -> Path:
    from benchmarks._results import replace_section

    body = [
        f"{dt.date.today().isoformat()}; {_versions()}.",
        f"Command: `{command_line}` (fresh stage cache; `passes` and `optimize --synthetic` with no other flags).",
        "",
        markdown(outcomes, detail_limit=60),
    ]
    if unavailable:
        body += ["", "Families not run here: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items())]
    return replace_section("Public corpus, zero-config commands", "\n".join(body))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    if argv[:1] == ["--render"]:
        print(f"updated {render(Path(argv[1]))}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from: {', '.join(FAMILIES)}")
    parser.add_argument("--commands", default="passes,optimize", help="passes, optimize or both")
    parser.add_argument("--limit", type=int, default=None, help="at most this many models per family (spread evenly)")
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once (default 1: 2-core machines)")
    parser.add_argument("--optimize-conformance", action="store_true", help="also run optimize --synthetic on conformance models")
    parser.add_argument("--timeout", type=float, default=None, help=f"per command (default {PASSES_TIMEOUT:.0f}s passes, {OPTIMIZE_TIMEOUT:.0f}s optimize)")
    parser.add_argument("--work", type=Path, default=CORPUS / "runs", help="scratch folder for outputs")
    parser.add_argument("--keep", action="store_true", help="keep every output (default: deleted after checking)")
    parser.add_argument("--json", type=Path, default=CORPUS / "results.json", help="write all outcomes here")
    parser.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md (a --limit run never does)")
    args = parser.parse_args(argv)

    families = [f for f in args.families.split(",") if f]
    commands = [c for c in args.commands.split(",") if c]
    if unknown := [f for f in families if f not in FAMILIES] + [c for c in commands if c not in ("passes", "optimize")]:
        parser.error(f"unknown families/commands {unknown}")
    unavailable: dict[str, str] = {}
    models = _select(list(iter_corpus(families, on_unavailable=unavailable.__setitem__)), args.limit)
    for family, why in unavailable.items():
        print(f"{family}: skipped ({why})", file=sys.stderr)
    if args.work.exists():
        shutil.rmtree(args.work)
    env = {**os.environ, "TRTFORGE_CACHE_DIR": str(args.work / "stage-cache")}
    total = sum(len(commands) if m.family not in CONFORMANCE or args.optimize_conformance else int("passes" in commands) for m in models)
    seen = Counter()

    def show(o: Outcome) -> None:
        seen[o.status] += 1
        if o.status != "ok" or o.family not in CONFORMANCE:
            engine = "" if o.engine is None else (" engine" if o.engine else " no-engine")
            print(f"[{sum(seen.values())}/{total}] {o.family}/{o.name} {o.command}: {o.status}{engine} {o.seconds:.1f}s {o.reason}", flush=True)

    outcomes = run_corpus(
        models, commands, work=args.work, jobs=args.jobs, optimize_conformance=args.optimize_conformance, keep=args.keep,
        passes_timeout=args.timeout or PASSES_TIMEOUT, optimize_timeout=args.timeout or OPTIMIZE_TIMEOUT, env=env, on_outcome=show,
    )
    if not args.keep:  # the cold stage cache of a full run is a few GB
        shutil.rmtree(args.work / "stage-cache", ignore_errors=True)
    command_line = " ".join(["python benchmarks/corpus.py", *argv])
    print("\n" + markdown(outcomes))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    saved = {"command": command_line, "unavailable": unavailable, "outcomes": [asdict(o) for o in outcomes]}
    args.json.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    if not args.no_results and args.limit is None:
        print(f"updated {write_results(outcomes, command_line, unavailable)}")
    return 0


def render(saved: Path) -> Path:
    """Rewrite the RESULTS.md section from a saved run (``--render build/corpus/results.json``)."""
    data = json.loads(saved.read_text(encoding="utf-8"))
    outcomes = [Outcome(**o) for o in data["outcomes"]]
    print(markdown(outcomes))
    return write_results(outcomes, data["command"], data.get("unavailable", {}))


def _select(models: list[CorpusModel], limit: int | None) -> list[CorpusModel]:
    """At most ``limit`` models per family, spread evenly over the family's sorted list."""
    if limit is None:
        return models
    picked = []
    for family in dict.fromkeys(m.family for m in models):
        group = [m for m in models if m.family == family]
        step = max(1, len(group) / limit)
        picked += [group[int(i * step)] for i in range(min(limit, len(group)))]
    return picked


if __name__ == "__main__":
    sys.exit(main())
