"""``trtforge matrix`` (``optimizer.matrix``): many models × recipes × engine targets as one release job, on Ray.

Each variant (one model, one recipe, one engine target) is one call of
``optimizer.pipeline.optimize`` writing ``OUT/<model>/<recipe>[/<target>]/``. Variants run as
Ray tasks: an embedded local Ray started and stopped here (``workers`` CPUs, no dashboard,
its logs in a scratch folder), or an existing cluster (``address``). With one worker, or
without Ray installed, they run in this process, one after the other, with the same results.
Ray does the scheduling, retries (a killed worker's task runs again) and placement; nothing
here is a scheduler. Stages that several variants share (a model's passes, a precision stage
used by several engine targets) run once through the content-addressed stage cache.

Everything a variant needs is checked before the first task starts: a bad model, recipe,
target, gate or data folder is a ``TrtforgeError`` (exit 2) with nothing written.

The module is ``matrix_run``, not ``matrix``: ``optimizer.matrix`` is the function, and a
submodule of that name would shadow it once imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from optimizer.errors import ConfigError, TrtforgeError, first_line
from optimizer.matrix_plan import Variant, plan_variants
from optimizer.progress import Progress

__all__ = ["matrix", "MatrixResult", "Variant", "plan_variants", "run_variant"]

# Default retries per task: a worker killed by the OOM killer or a lost node gets two more tries.
DEFAULT_RETRIES = 2


@dataclass
class MatrixResult:
    """What a matrix run produced: one row per variant, in declaration order."""

    out_dir: Path
    rows: list[dict[str, Any]]
    mode: str  # "in-process" | "ray (local, N workers)" | "ray (cluster ADDR)"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row["status"] == "passed" for row in self.rows)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)


def matrix(
    models: Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    recipes: Sequence[str | Path] = (),
    *,
    plan: str | Path | None = None,
    calib: str | Path | None = None,
    val: str | Path | None = None,
    gates: Sequence[str] = (),
    shapes: Sequence[str] = (),
    dims: Sequence[str] = (),
    synthetic: bool = False,
    workers: int | None = None,
    address: str | None = None,
    retries: int = DEFAULT_RETRIES,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> MatrixResult:
    """Optimize every model with every recipe (and every engine target a recipe lists).

    Writes ``OUT/<model>/<recipe>[/<target>]/report.json`` and friends, then ``OUT/index.html``,
    ``OUT/junit.xml`` (one testsuite per model), ``OUT/summary.md`` and ``OUT/matrix.json``.
    ``workers``: local Ray CPUs (default: this machine's CPU count; 1 runs in-process);
    ``address``: join an existing Ray cluster instead; ``shapes``/``dims``: ``--shapes``/``--dim``
    options for every model (a plan's per-model ``shapes:``/``dims:`` replace them). Raises TrtforgeError on bad input before
    any task starts; gate results are in ``result.passed`` (the caller decides the exit code).
    """
    from optimizer.matrix_report import write_outputs

    progress = progress or Progress("quiet")
    if out_dir is None:
        raise ConfigError("give an output folder: -o OUT (out_dir=...)")
    if retries < 0:
        raise ConfigError(f"--retries is {retries}; give 0 or more")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers is {workers}; give 1 or more (1 runs in-process, without Ray)")
    variants = plan_variants(models, recipes, plan=plan, calib=calib, val=val, gates=gates, shapes=shapes, dims=dims,
                             synthetic=synthetic)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, variants)
    workers = workers or min(os.cpu_count() or 1, len(variants))
    cache_dir = os.environ.get("TRTFORGE_CACHE_DIR")
    job = dict(out_root=str(out_dir.resolve()), use_cache=use_cache, cache_dir=cache_dir)
    notes: list[str] = []
    start = time.perf_counter()
    if address is not None and not _ray_installed():
        raise ConfigError(f"--address {address} joins a Ray cluster, but Ray is not installed: pip install 'trtforge[ray]'")
    if address is None and workers > 1 and not _ray_installed():
        notes.append("Ray is not installed: ran in-process, one variant at a time (pip install 'trtforge[ray]')")
        progress.info(notes[-1])
        workers = 1
    if address is None and workers == 1:
        mode = "in-process"
        rows = _run_in_process(variants, job, retries, progress)
    else:
        mode = f"ray (cluster {address})" if address else f"ray (local, {workers} workers)"
        rows = _run_on_ray(variants, job, workers, address, retries, progress, notes)
    result = MatrixResult(out_dir=out_dir, rows=rows, mode=mode, seconds=time.perf_counter() - start, notes=notes)
    write_outputs(result)
    return result


def _check_out_dir(out_dir: Path, variants: list[Variant]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: -o must be a folder, but a file is there; choose another path")
    inputs = {Path(v.model_path).resolve() for v in variants}
    for v in variants:
        folder = (out_dir / v.key).resolve()
        if any(folder == p.parent or folder in p.parents for p in inputs):
            raise ConfigError(f"{out_dir}: variant folder {v.key} would hold an input model ({v.model_path}); choose another -o")


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# ---------------------------------------------------------------- one task


def run_variant(variant: Variant, out_root: str, use_cache: bool, cache_dir: str | None) -> dict[str, Any]:
    """One task: ``optimize`` into ``out_root/<variant.key>``; return the variant's row.

    A TrtforgeError (bad data found late, a build TensorRT refuses) is the variant's result,
    not retried: it would fail the same way again. Any other exception propagates, so Ray
    (or the in-process loop) retries it like a killed worker.
    """
    from optimizer.matrix_report import error_row, report_row
    from optimizer.pipeline import optimize
    from optimizer.recipe import recipe_from_dict

    if cache_dir:  # the driver's cache folder (a shared filesystem on a cluster)
        os.environ["TRTFORGE_CACHE_DIR"] = cache_dir
    out = Path(out_root) / variant.key
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts from an empty folder
    start = time.perf_counter()
    try:
        recipe = recipe_from_dict(variant.recipe_data, Path(variant.recipe_dir))
        report = optimize(
            variant.model_path,
            out,
            recipe,
            calib=variant.calib,
            val=variant.val,
            gates=list(variant.gates),
            shapes=list(variant.shapes),
            dims=list(variant.dims),
            use_cache=use_cache,
            command=f"trtforge matrix ({variant.key})",
        )
    except TrtforgeError as exc:
        return error_row(variant, " ".join(str(exc).split()), time.perf_counter() - start)
    return report_row(variant, report, Path(out_root), time.perf_counter() - start)


class _Tally:
    """Progress as tasks done, running and failed: a bar on a terminal, one line per finished task in CI."""

    def __init__(self, progress: Progress, total: int, workers: int) -> None:
        self.progress, self.total, self.workers = progress, total, workers
        self.done = self.failed = 0

    def finished(self, row: dict[str, Any], update) -> None:
        self.done += 1
        self.failed += row["status"] != "passed"
        running = min(self.workers, self.total - self.done)
        what = row["status"].upper() + (f": {row['error']}" if row.get("error") else "")
        self.progress.info(
            f"[{self.done}/{self.total}] {row['key']}: {what} ({row['seconds']:.1f}s); running {running}, failed {self.failed}"
        )
        update(self.done)


@contextmanager
def _bar(progress: Progress, total: int):
    """A rich bar on a terminal; in CI logs the per-task lines already say everything."""
    if progress.mode != "bar":
        yield lambda done: None
        return
    with progress.task("matrix variants", total) as update:
        yield update


def _run_in_process(variants: list[Variant], job: dict, retries: int, progress: Progress) -> list[dict]:
    from optimizer.matrix_report import error_row

    tally = _Tally(progress, len(variants), 1)
    rows = []
    with _bar(progress, len(variants)) as update:
        for variant in variants:
            for _ in range(retries + 1):
                start = time.perf_counter()
                try:
                    row = run_variant(variant, **job)
                    break
                except Exception as exc:  # noqa: BLE001 - same policy as Ray's retry_exceptions
                    row = error_row(variant, f"{type(exc).__name__}: {first_line(exc)}", time.perf_counter() - start)
            rows.append(row)
            tally.finished(row, update)
    return rows


# ---------------------------------------------------------------- Ray


def _submission_order(variants: list[Variant]) -> list[int]:
    """Recipe-major order: the first wave runs different models, so a model's shared stages
    (passes) are computed by one task and found in the stage cache by the next."""
    firsts: dict[str, int] = {}
    rank = [sum(1 for u in variants[:i] if u.model == v.model) for i, v in enumerate(variants)]
    for v in variants:
        firsts.setdefault(v.model, len(firsts))
    return sorted(range(len(variants)), key=lambda i: (rank[i], firsts[variants[i].model]))


def _run_on_ray(variants, job, workers, address, retries, progress, notes) -> list[dict]:
    import ray

    from optimizer.matrix_report import error_row

    started_here = not ray.is_initialized()
    scratch = _start_ray(ray, workers, address, progress) if started_here else None
    if not started_here:
        notes.append("used the Ray instance already initialised in this process")
    failed_any = False
    try:
        task = ray.remote(run_variant)
        options = dict(num_cpus=1, max_retries=retries, retry_exceptions=True)
        # The task name is the worker's process title while it runs ("ray::trtforge net/int8"): visible in ps.
        refs = {task.options(name=f"trtforge {variants[i].key}", **options).remote(variants[i], **job): i
                for i in _submission_order(variants)}
        rows: list[dict | None] = [None] * len(variants)
        tally = _Tally(progress, len(variants), workers if address is None else len(variants))
        pending = list(refs)
        with _bar(progress, len(variants)) as update:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = refs[ready[0]]
                try:
                    rows[i] = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # retries exhausted: a crashed worker or a bug
                    rows[i] = error_row(variants[i], f"{type(exc).__name__}: {first_line(exc)}", 0.0)
                failed_any |= rows[i]["status"] == "error"
                tally.finished(rows[i], update)
        return rows
    finally:
        if started_here:
            ray.shutdown()
        if scratch is not None:
            if failed_any:
                notes.append(f"Ray logs kept in {scratch}")
                progress.info(notes[-1])
            else:
                shutil.rmtree(scratch, ignore_errors=True)


# Environment of the embedded Ray processes (raylet and workers inherit it at ray.init), unless set:
_EMBEDDED_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reporting from a release job
    # Ray's memory monitor kills workers when the *machine* passes 95% memory, whoever uses it,
    # and retries OOM-killed tasks forever: on a shared build machine another process's peak
    # kills our tasks in a loop (seen here). Embedded, the kernel's OOM killer is the guard, and
    # a worker it kills is retried --retries times like any other crash.
    "RAY_memory_monitor_refresh_ms": "0",
}


@contextmanager
def _environment(values: dict[str, str]):
    """Set ``values`` (where unset) for the block only: the caller's environment is left as it was."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _start_ray(ray, workers: int, address: str | None, progress: Progress) -> Path | None:
    """Embedded local Ray (quiet, no dashboard, logs in a scratch folder), or join ``address``."""
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    try:
        if address:
            progress.info(f"joining the Ray cluster at {address}")
            ray.init(address=address, **quiet)
            return None
        # Ray's unix socket paths must stay under ~107 bytes: keep the session folder short.
        base = tempfile.gettempdir() if len(tempfile.gettempdir()) <= 40 else "/tmp"
        scratch = Path(tempfile.mkdtemp(prefix="tfray", dir=base))
        progress.info(f"starting local Ray with {workers} workers")
        with _environment(_EMBEDDED_RAY_ENV):
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                _temp_dir=str(scratch),
                object_store_memory=96 * 1024 * 1024,  # rows are small; artifacts go to files, not the object store
                **quiet,
            )
        return scratch
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot start or join {where} ({first_line(exc)}); check --address, or use --workers 1") from None
