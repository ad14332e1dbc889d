"""Engine store, sidecar compatibility and the runtime: real TensorRT-RTX builds, real processes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from optimizer.cli import main
from optimizer.engine import (
    BuildConfig,
    EngineStore,
    build_engine,
    build_or_reuse,
    check_sidecar,
    parse_shapes,
    require_compatible,
    timing_cache_path,
)
from optimizer.engine import store as store_module
from optimizer.engine.cuda import cuda_available
from optimizer.engine.sidecar import _target_problem
from optimizer.engine.store import store_key, with_default_timing_cache
from optimizer.errors import BuildError, ConfigError, InputError

ROOT = Path(__file__).parents[1]
REC_SHAPES = "x:1x3x48x80,1x3x48x320,4x3x48x960"
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
rtx = pytest.mark.rtx


def _conv_model(path: Path, seed: int = 0) -> Path:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,16,16] x) => (float[1,8,16,16] y) {
            c = Conv <pads = [1,1,1,1]> (x, w)
            y = Relu (c)
        }"""
    )
    w = np.random.default_rng(seed).standard_normal((8, 3, 3, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    onnx.save(model, path)
    return path


@pytest.fixture
def conv(tmp_path: Path) -> Path:
    return _conv_model(tmp_path / "conv.onnx")


@pytest.fixture
def store(tmp_path: Path) -> EngineStore:
    return EngineStore(tmp_path / "store")


def _entries(store: EngineStore) -> list[str]:
    return [e.key for e in store.entries()]


# --- keys and paths (no TensorRT needed) -------------------------------------------------


def test_store_key_covers_what_changes_the_engine_and_nothing_else(tmp_path):
    base = BuildConfig(profiles=[parse_shapes(REC_SHAPES)])
    key = store_key("m" * 64, base, "tensorrt-rtx", "1.7.1.116", "rtx-default")
    # The timing cache changes build speed and `expect` is a check: same engine, same key.
    assert store_key("m" * 64, replace(base, timing_cache=str(tmp_path / "t"), expect="fp32"), "tensorrt-rtx", "1.7.1.116", "rtx-default") == key
    different = [
        store_key("n" * 64, base, "tensorrt-rtx", "1.7.1.116", "rtx-default"),  # another model
        store_key("m" * 64, replace(base, optimization_level=1), "tensorrt-rtx", "1.7.1.116", "rtx-default"),
        store_key("m" * 64, replace(base, profiles=[parse_shapes("x:1x3x48x320")]), "tensorrt-rtx", "1.7.1.116", "rtx-default"),
        store_key("m" * 64, base, "tensorrt", "1.7.1.116", "rtx-default"),  # another flavour
        store_key("m" * 64, base, "tensorrt-rtx", "1.7.2", "rtx-default"),  # another version
        store_key("m" * 64, base, "tensorrt-rtx", "1.7.1.116", "SM86"),  # another target
    ]
    assert len({key, *different}) == len(different) + 1


def test_timing_cache_is_per_version_and_target(tmp_path):
    a = timing_cache_path(tmp_path, "tensorrt", "11.0.0", "SM86")
    assert a != timing_cache_path(tmp_path, "tensorrt", "10.13.0", "SM86")
    assert a != timing_cache_path(tmp_path, "tensorrt", "11.0.0", "SM89")
    assert a.parent == tmp_path / "timing"
    # Datacenter TensorRT gets the store's cache; TensorRT-RTX none (its cache API records nothing).
    dc = with_default_timing_cache(BuildConfig(), "tensorrt", "11.0.0", "SM86", tmp_path)
    assert dc.timing_cache == str(a)
    assert with_default_timing_cache(BuildConfig(), "tensorrt-rtx", "1.7.1", "SM86", tmp_path).timing_cache is None
    mine = BuildConfig(timing_cache=str(tmp_path / "mine.cache"))
    assert with_default_timing_cache(mine, "tensorrt", "11.0.0", "SM86", tmp_path) is mine


@pytest.mark.parametrize(
    "record, device, problem",
    [
        ({"config": {"hardware_compatibility": "ampere_plus"}}, "SM75", "Ampere and newer"),
        ({"config": {"hardware_compatibility": "ampere_plus"}}, "SM89", None),
        ({"config": {"compute_capabilities": ["SM86", "SM89"]}}, "SM120", "built for SM86, SM89"),
        ({"config": {"compute_capabilities": ["SM86", "SM89"]}}, "SM89", None),
        ({"builder": "tensorrt", "build_device": "SM80", "config": {}}, "SM90", "built on a SM80 GPU"),
        ({"builder": "tensorrt", "build_device": "SM90", "config": {}}, "SM90", None),
    ],
)
def test_target_problem(record, device, problem):
    found = _target_problem(record, device)
    assert (found is None) if problem is None else (problem in found)


# --- the cap, least-recently-used eviction and lock cleanup (no TensorRT needed) -------------


def _put_fake_entry(store: EngineStore, key: str, tmp_path: Path, nbytes: int) -> None:
    """A store entry through the store's real API, with random bytes standing in for an engine.

    Fake engines, real store: eviction only reads sizes, sidecars and locks, and thousands of
    real builds do not fit a unit test (the rtx test below caps a store with real builds).
    """
    import hashlib

    engine = tmp_path / "fake.engine"
    data = os.urandom(nbytes)
    engine.write_bytes(data)
    sidecar = tmp_path / "fake.engine.json"
    sidecar.write_text(json.dumps({"engine_bytes": nbytes, "engine_sha256": hashlib.sha256(data).hexdigest(), "model": key}))
    with store.lock(key):
        store.put(key, engine, sidecar)


# 250 puts cycle the 25-entry store ten times in ~10 s here; TRTFORGE_STORE_LOOP=1000 runs the thousand.
STORE_LOOP = int(os.environ.get("TRTFORGE_STORE_LOOP", "250"))


def test_many_puts_into_a_capped_store_stay_under_the_cap(tmp_path):
    cap = 50_000
    store = EngineStore(tmp_path / "store", max_bytes=cap)
    first, last = f"{0:064x}", f"{STORE_LOOP - 1:064x}"
    for i in range(STORE_LOOP):
        _put_fake_entry(store, f"{i:064x}", tmp_path, 2_000)
        if i % 10 == 0:
            assert store.lookup(first) is not None
            store.mark_used(first)  # a store hit: entry 0 stays recently used
        assert store.size() <= cap
    keys = {e.key for e in store.entries()}
    assert first in keys and last in keys and f"{STORE_LOOP // 2:064x}" not in keys
    assert 10 <= len(keys) <= cap // 2_000
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == [".locks"]
    # Unheld locks are cleaned with each eviction; the last put still held its own key's lock then.
    assert [p.name for p in (store.root / ".locks").iterdir()] == [f"{last}.lock"]
    assert store.clean_locks() == 1 and list((store.root / ".locks").iterdir()) == []


# Holds a key's lock the way KeyLock does (flock on .locks/<key>.lock), without importing trtforge (fast).
_HOLD_LOCK = """
import fcntl, os, sys, time
path = os.path.join(sys.argv[1], ".locks", sys.argv[2] + ".lock")
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_stale_locks_are_removed_and_held_ones_kept(tmp_path):
    """Real processes: one holds a key's lock, another was killed holding one, a third key's lock is just left over."""
    import signal

    store = EngineStore(tmp_path / "store")
    procs = [
        subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store.root), key], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for key in ("held", "killed")
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "held"
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        with store.lock("leftover"):
            pass
        assert sorted(p.name for p in (store.root / ".locks").iterdir()) == ["held.lock", "killed.lock", "leftover.lock"]
        assert store.clean_locks() == 2  # the kernel dropped the killed holder's lock
        assert [p.name for p in (store.root / ".locks").iterdir()] == ["held.lock"]
        assert not store.lock("held").acquire(blocking=False)  # still really held
    finally:
        procs[0].kill()
        procs[0].wait(timeout=30)
    assert store.clean_locks() == 1


def test_an_entry_in_use_is_not_evicted(tmp_path):
    store = EngineStore(tmp_path / "store", max_bytes=5_000)
    _put_fake_entry(store, "a" * 64, tmp_path, 3_000)
    held = store.lock("a" * 64)
    assert held.acquire(blocking=False)
    try:
        _put_fake_entry(store, "b" * 64, tmp_path, 3_000)  # over the cap, but 'a' is being read
        assert {e.key for e in store.entries()} == {"a" * 64, "b" * 64}
    finally:
        held.release()
    _put_fake_entry(store, "c" * 64, tmp_path, 3_000)
    assert {e.key for e in store.entries()} == {"c" * 64}


def test_store_limit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTFORGE_ENGINE_STORE_LIMIT", "3M")
    assert EngineStore(tmp_path).max_bytes == 3 * 2**20
    monkeypatch.setenv("TRTFORGE_ENGINE_STORE_LIMIT", "lots")
    result = CliRunner().invoke(main, ["cache", "info"])
    assert result.exit_code == 2 and "TRTFORGE_ENGINE_STORE_LIMIT is 'lots'" in result.output


# --- the store with real TensorRT-RTX builds ------------------------------------------------


@rtx
def test_second_build_is_a_store_hit_without_building(ppocr_rec_path, store, tmp_path, monkeypatch):
    config = BuildConfig(profiles=[parse_shapes(REC_SHAPES)])
    first = build_or_reuse(ppocr_rec_path, tmp_path / "a.engine", config, "tensorrt-rtx", store)
    assert first.store_hit is False and _entries(store) == [first.store_key]
    assert first.timing_cache is None  # RTX: no timing cache by default (its API is a no-op)

    def no_build(*args, **kwargs):
        raise AssertionError("the engine store should have answered")

    monkeypatch.setattr(store_module, "build_engine", no_build)
    second = build_or_reuse(ppocr_rec_path, tmp_path / "b.engine", config, "tensorrt-rtx", store)
    assert second.store_hit is True and second.store_key == first.store_key
    assert (tmp_path / "b.engine").read_bytes() == (tmp_path / "a.engine").read_bytes()
    assert second.precision == first.precision and second.target == "rtx-default"
    sidecar = json.loads((tmp_path / "b.engine.json").read_text())
    assert sidecar["engine"] == "b.engine" and sidecar["store_hit"] is True
    assert check_sidecar(tmp_path / "b.engine") == []

    # A different build option is a different engine: the store must not answer it.
    with pytest.raises(AssertionError, match="should have answered"):
        build_or_reuse(ppocr_rec_path, tmp_path / "c.engine", replace(config, optimization_level=1), "tensorrt-rtx", store)


@rtx
def test_real_builds_into_a_capped_store_evict_the_least_recently_used(tmp_path):
    store = EngineStore(tmp_path / "store", max_bytes=2**40)
    a, b = (_conv_model(tmp_path / f"m{i}.onnx", seed=i) for i in range(2))
    first = build_or_reuse(a, tmp_path / "a.engine", BuildConfig(), "tensorrt-rtx", store)
    store.max_bytes = int(store.size() * 1.5)  # room for one engine and a half
    second = build_or_reuse(b, tmp_path / "b.engine", BuildConfig(), "tensorrt-rtx", store)
    assert _entries(store) == [second.store_key] and store.size() <= store.max_bytes
    assert build_or_reuse(b, tmp_path / "b2.engine", BuildConfig(), "tensorrt-rtx", store).store_hit is True
    assert build_or_reuse(a, tmp_path / "a2.engine", BuildConfig(), "tensorrt-rtx", store).store_key == first.store_key
    assert _entries(store) == [first.store_key]  # rebuilt, and b went in its turn


@rtx
def test_expect_is_checked_on_a_store_hit(conv, store, tmp_path):
    build_or_reuse(conv, tmp_path / "a.engine", BuildConfig(), "tensorrt-rtx", store)
    with pytest.raises(BuildError, match="does not carry int8"):
        build_or_reuse(conv, tmp_path / "b.engine", BuildConfig(expect="int8"), "tensorrt-rtx", store)
    assert not (tmp_path / "b.engine").exists()


@rtx
def test_rebuild_and_damaged_entries_are_rebuilt(conv, store, tmp_path):
    first = build_or_reuse(conv, tmp_path / "a.engine", BuildConfig(), "tensorrt-rtx", store)
    again = build_or_reuse(conv, tmp_path / "a.engine", BuildConfig(), "tensorrt-rtx", store, rebuild=True)
    assert again.store_hit is False and _entries(store) == [first.store_key]

    stored = store.entry_path(first.store_key) / store_module.ENGINE_FILE
    stored.write_bytes(b"\0" * stored.stat().st_size)  # same size, wrong content
    repaired = build_or_reuse(conv, tmp_path / "b.engine", BuildConfig(), "tensorrt-rtx", store)
    assert repaired.store_hit is False
    assert store.lookup(first.store_key)["engine_sha256"] == repaired.engine_sha256
    assert stored.read_bytes() == (tmp_path / "b.engine").read_bytes()

    assert store.remove(first.store_key) and _entries(store) == []
    assert not store.remove(first.store_key)


@rtx
def test_two_processes_building_the_same_key_leave_one_valid_entry(conv, store, tmp_path):
    import tensorrt_rtx

    from optimizer.engine.build import build_target
    from optimizer.model import content_hash as model_hash

    config = BuildConfig()
    key = store_key(model_hash(conv), config, "tensorrt-rtx", tensorrt_rtx.__version__, build_target(tensorrt_rtx, "tensorrt-rtx", config))
    code = (
        "import json, sys\n"
        "from optimizer.engine import BuildConfig, EngineStore, build_or_reuse\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "r = build_or_reuse(sys.argv[1], sys.argv[2], BuildConfig(), 'tensorrt-rtx', EngineStore(sys.argv[3]))\n"
        "print(json.dumps({'hit': r.store_hit, 'key': r.store_key, 'sha': r.engine_sha256}))\n"
    )
    # Hold the key's lock until both processes are about to ask for it, so they really race.
    with store.lock(key):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(conv), str(tmp_path / f"{i}.engine"), str(store.root)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        for p in procs:
            assert p.stderr.readline().strip() == "ready"
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    # The lock serialises them: one builds, the other waits and finds the entry.
    assert sorted(o["hit"] for o in outs) == [False, True]
    assert {o["key"] for o in outs} == {key} and len({o["sha"] for o in outs}) == 1
    assert _entries(store) == [key]
    record = store.lookup(key)
    assert record is not None and record["engine_sha256"] == outs[0]["sha"]
    assert [p.name for p in store.root.iterdir() if p.name not in {".locks", key}] == []  # no temp leftovers


@rtx
def test_cli_build_store_hit_rebuild_and_cache_engines(conv, tmp_path, monkeypatch):
    monkeypatch.setenv("TRTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    args = ["build", str(conv), "-o", str(tmp_path / "m.engine"), "--builder", "tensorrt-rtx"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "built in" in first.output and "next: trtforge check-engine" in first.output
    second = runner.invoke(main, args + ["--json"])
    assert second.exit_code == 0 and json.loads(second.output)["store_hit"] is True
    third = runner.invoke(main, args + ["--rebuild"])
    assert third.exit_code == 0 and "built in" in third.output
    plain = runner.invoke(main, args + ["--no-engine-store", "--json"])
    assert plain.exit_code == 0 and json.loads(plain.output)["store_hit"] is None

    listing = runner.invoke(main, ["cache", "engines"])
    assert listing.exit_code == 0 and "1 stored engine(s)" in listing.output and "tensorrt-rtx" in listing.output
    cleared = runner.invoke(main, ["cache", "engines", "--clear"])
    assert "removed 1 stored engine(s)" in cleared.output
    assert "0 stored engine(s)" in runner.invoke(main, ["cache", "engines"]).output
    bad = runner.invoke(main, args + ["--rebuild", "--no-engine-store"])
    assert bad.exit_code == 2 and "makes no sense" in bad.output


# --- sidecar compatibility ---------------------------------------------------------------


@pytest.fixture
def rtx_engine(conv, tmp_path) -> Path:
    engine = tmp_path / "conv.engine"
    build_engine(conv, engine, BuildConfig(), builder="tensorrt-rtx")
    return engine


def _edit_sidecar(engine: Path, **changes) -> None:
    path = Path(f"{engine}.json")
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


@rtx
def test_sidecar_of_a_fresh_engine_fits(rtx_engine):
    assert check_sidecar(rtx_engine) == []
    assert require_compatible(rtx_engine)["builder"] == "tensorrt-rtx"


@rtx
def test_engine_from_another_tensorrt_version_is_refused_with_exit_2(rtx_engine):
    _edit_sidecar(rtx_engine, version="1.6.0.5")
    problems = check_sidecar(rtx_engine)
    assert len(problems) == 1 and "built with TensorRT-RTX 1.6.0.5 but this machine has TensorRT-RTX 1." in problems[0]
    with pytest.raises(InputError, match="cannot run here: it was built with TensorRT-RTX 1.6.0.5") as err:
        require_compatible(rtx_engine)
    assert "\n" not in str(err.value) and "--rebuild" in str(err.value)

    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "check-engine", str(rtx_engine)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtforge: error: engine") and "1.6.0.5" in lines[0]


@rtx
def test_sidecar_problems_are_named(rtx_engine):
    _edit_sidecar(rtx_engine, builder="tensorrt")  # datacenter TensorRT is not installed here
    if importlib.util.find_spec("tensorrt") is None:
        assert any("which is not installed here" in p for p in check_sidecar(rtx_engine))
    _edit_sidecar(rtx_engine, builder="tensorrt-rtx")
    data = bytearray(rtx_engine.read_bytes())
    data[-1] ^= 0xFF
    rtx_engine.write_bytes(bytes(data))
    assert any("does not match the sha256" in p for p in check_sidecar(rtx_engine))
    Path(f"{rtx_engine}.json").write_text("{not json")
    assert "not a readable sidecar" in check_sidecar(rtx_engine)[0]
    Path(f"{rtx_engine}.json").unlink()
    assert "is missing" in check_sidecar(rtx_engine)[0]
    assert check_sidecar(rtx_engine.parent / "nope.engine") == [f"engine file {rtx_engine.parent / 'nope.engine'} does not exist"]


# --- runtime -----------------------------------------------------------------------------


@rtx
@pytest.mark.skipif(cuda_available(), reason="checks the message on a machine without a GPU")
def test_runner_without_a_gpu_says_so(rtx_engine):
    from optimizer.engine.runtime import TensorRTRunner

    with pytest.raises(InputError, match="no CUDA GPU here"):
        TensorRTRunner(rtx_engine)


def test_latency_percentiles():
    from optimizer.engine.runtime import percentiles

    stats = percentiles([float(v) for v in range(1, 101)])
    assert stats["iterations"] == 100 and stats["min_ms"] == 1.0
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)


@pytest.mark.gpu
def test_runner_matches_onnxruntime_and_times_with_cuda_events(tmp_path):
    # Needs a GPU: builds with whichever TensorRT is installed (datacenter first) and runs it.
    from optimizer.engine import available_builders
    from optimizer.engine.runtime import TensorRTRunner
    from optimizer.runners import OrtRunner

    if not available_builders():
        pytest.skip("no TensorRT module installed")
    model = _conv_model(tmp_path / "conv.onnx")
    engine = tmp_path / "conv.engine"
    build_engine(model, engine, BuildConfig())
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner(engine) as runner:
        assert runner.output_names == ["y"] and [s.name for s in runner.inputs] == ["x"]
        got = runner.run({"x": x})["y"]
        stats = runner.latency({"x": x}, warmup=2, iterations=10)
    want = OrtRunner(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert stats["iterations"] == 10 and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"]


def test_importing_the_runtime_does_not_import_tensorrt_or_cuda_bindings():
    code = (
        "import sys, optimizer.engine.runtime, optimizer.engine.store, optimizer.engine.sidecar\n"
        "assert not {'tensorrt', 'tensorrt_rtx', 'polygraphy.cuda'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ})


# --- 2:4 sparse weights ------------------------------------------------------------------


def test_two_four_pattern():
    from optimizer.pruning.sparsity import weight_satisfies_2_4

    w = np.arange(1, 33, dtype=np.float32).reshape(2, 8, 1, 2)
    assert not weight_satisfies_2_4("Conv", w)
    w[:, 0::4] = w[:, 1::4] = 0  # two zeros in every group of 4 input channels
    assert weight_satisfies_2_4("Conv", w)
    w[0, 1, 0, 0] = 1.0  # one group with a single zero breaks it
    assert not weight_satisfies_2_4("Conv", w)
    assert not weight_satisfies_2_4("MatMul", np.zeros((6, 4), np.float32))  # K = 6 is not a multiple of 4


@rtx
def test_build_says_whether_sparse_weights_can_be_used(tmp_path):
    dense = _conv_model(tmp_path / "dense.onnx")
    model = onnx.load(dense)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w = np.concatenate([w, w[:, :1]], axis=1)  # 4 input channels, so groups of 4 exist
    w[:, 0] = w[:, 1] = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    onnx.save(model, tmp_path / "sparse.onnx")

    result = build_engine(tmp_path / "sparse.onnx", tmp_path / "s.engine", BuildConfig(), builder="tensorrt-rtx")
    assert result.sparse_2_4_weights == 1 and any("--sparse-weights" in n for n in result.notes)
    result = build_engine(tmp_path / "sparse.onnx", tmp_path / "s.engine", BuildConfig(sparse_weights=True), builder="tensorrt-rtx")
    assert not any("sparse" in n for n in result.notes)
    result = build_engine(dense, tmp_path / "d.engine", BuildConfig(sparse_weights=True), builder="tensorrt-rtx")
    assert result.sparse_2_4_weights == 0 and any("nothing to use it on" in n for n in result.notes)


@rtx
def test_refit_and_strip_weights_without_a_gpu_are_refused_up_front(conv, tmp_path):
    if cuda_available():
        pytest.skip("a GPU is present: these builds are possible")
    with pytest.raises(ConfigError, match="cannot build refittable or weight-stripped engines without a GPU"):
        build_engine(conv, tmp_path / "r.engine", BuildConfig(refit=True, strip_weights=True), builder="tensorrt-rtx")
    assert not (tmp_path / "r.engine").exists()


# --- recipe and CLI options --------------------------------------------------------------


def test_recipe_build_section_takes_the_new_options():
    from optimizer.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {"build": {"shapes": ["x:1x3x48x320"], "profiles": ["x:8x3x48x320"], "compute_capabilities": ["SM86"],
                   "hardware_compatibility": "ampere_plus", "sparse_weights": True, "engine_store": False}}
    )  # fmt: skip
    assert recipe.build.profiles == ["x:8x3x48x320"] and recipe.build.compute_capabilities == ["SM86"]
    with pytest.raises(ConfigError, match="build.hardware_compatibility.*ampere_plus"):
        recipe_from_dict({"build": {"hardware_compatibility": "any"}})


@rtx
def test_cli_compute_capability_target_and_check_engine(conv, tmp_path, monkeypatch):
    monkeypatch.setenv("TRTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    engine = tmp_path / "sm.engine"
    args = ["build", str(conv), "-o", str(engine), "--builder", "tensorrt-rtx", "--compute-capability", "sm86",
            "--compute-capability", "SM89", "--builder-opt-level", "1"]  # fmt: skip
    built = CliRunner().invoke(main, args)
    assert built.exit_code == 0, built.output
    assert "for SM86+SM89" in built.output
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    assert sidecar["config"]["compute_capabilities"] == ["SM86", "SM89"] and sidecar["config"]["optimization_level"] == 1
    checked = CliRunner().invoke(main, ["check-engine", str(engine)])
    assert checked.exit_code == 0 and "fits this machine" in checked.output
