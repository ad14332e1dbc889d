"""``trtforge matrix`` on a real embedded Ray: 2 workers against in-process, and a worker killed mid-task.

One Ray start (seconds on 2 shared cores) covers both claims: while the 2-worker matrix
runs, the test SIGKILLs the worker process executing one variant (Ray names it
``ray::trtforge <model>/<recipe>`` while the task runs). Ray retries that task on a fresh
worker; every artifact must then be byte-identical to the in-process (1 worker) run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'trtforge[ray]')")

from test_matrix import artifact_hashes, write_corpus  # noqa: E402

pytestmark = pytest.mark.slow


def _variant_processes() -> dict[int, str]:
    """pid → process title of Ray workers currently running a trtforge variant."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith("ray::trtforge "):
            found[int(entry.name)] = title
    return found


def _kill_first_variant(killed: dict, stop: threading.Event) -> None:
    """Wait for a worker to run a variant, let it start working, then SIGKILL it (once)."""
    while not stop.is_set():
        if _variant_processes():
            time.sleep(0.2)  # inside the task now: imports, passes or calibration
            # Read the titles again: kill only a worker still running its variant (an idle one is no test).
            for pid, title in _variant_processes().items():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.update(pid=pid, key=title.removeprefix("ray::trtforge ").split()[0])
                return
        time.sleep(0.02)


def test_two_workers_with_a_killed_worker_match_in_process(tmp_path):
    import ray

    from optimizer import matrix

    corpus = write_corpus(tmp_path / "corpus", models=4)
    args = dict(calib=corpus["calib"], val=corpus["val"], use_cache=False)
    local = matrix(corpus["models"], tmp_path / "one", corpus["recipes"], workers=1, **args)

    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_variant, args=(killed, stop), daemon=True)
    killer.start()
    try:
        distributed = matrix(corpus["models"], tmp_path / "two", corpus["recipes"], workers=2, retries=2, **args)
    finally:
        stop.set()
        killer.join(timeout=10)

    assert distributed.mode == "ray (local, 2 workers)"
    assert not ray.is_initialized(), "the embedded Ray must be stopped after the run"
    assert killed, "no worker was seen running a variant"
    rows = {r["key"]: r for r in distributed.rows}
    # The killed task ran again in another worker process and finished.
    assert rows[killed["key"]]["status"] == "passed" and rows[killed["key"]]["pid"] != killed["pid"]
    assert [r["status"] for r in distributed.rows] == [r["status"] for r in local.rows] == ["passed"] * 8
    # Placement shows: both workers ran variants (pids), yet the results are the same bytes.
    assert len({r["pid"] for r in distributed.rows}) >= 2
    assert artifact_hashes(tmp_path / "two") == artifact_hashes(tmp_path / "one")
    assert len(artifact_hashes(tmp_path / "one")) == 3 + 8 * 2  # index, junit, summary + (opt, candidate) per variant
