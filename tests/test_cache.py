"""The content-addressed stage cache."""

from __future__ import annotations

import json
import os

from optimizer.cache import StageCache, cache_key, restore


def test_key_depends_on_every_part():
    base = {"input": "abc", "config": {"a": 1}, "versions": {"onnx": "1"}}
    k = cache_key("passes", base)
    assert k == cache_key("passes", dict(base))
    assert k != cache_key("precision", base)
    assert k != cache_key("passes", {**base, "config": {"a": 2}})
    assert k != cache_key("passes", {**base, "versions": {"onnx": "2"}})


def test_put_get_restore(tmp_path):
    cache = StageCache(tmp_path / "c")
    art = tmp_path / "m.onnx"
    art.write_bytes(b"model bytes")
    assert cache.get("passes", "k1") is None
    cache.put("passes", "k1", [art], {"name": "passes", "summary": {"n": 1}})
    entry, record = cache.get("passes", "k1")
    assert record["summary"] == {"n": 1} and record["_files"] == ["m.onnx"]
    out = tmp_path / "out"
    out.mkdir()
    (restored,) = restore(entry, record["_files"], out)
    assert restored.read_bytes() == b"model bytes"
    # The cached copy is independent of the artifact (onnx-ir refuses hard-linked data files).
    assert (entry / "m.onnx").stat().st_nlink == 1


def test_damaged_entry_is_a_miss(tmp_path):
    cache = StageCache(tmp_path / "c")
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    entry = cache.put("passes", "k", [art], {"name": "passes"})
    (entry / "m.onnx").unlink()
    assert cache.get("passes", "k") is None
    (entry / "record.json").write_text("{not json")
    assert cache.get("passes", "k") is None


def test_second_put_of_same_key_keeps_one_entry(tmp_path):
    cache = StageCache(tmp_path / "c")
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    cache.put("s", "k", [art], {"v": 1})
    cache.put("s", "k", [art], {"v": 2})
    assert json.loads((tmp_path / "c" / "s" / "k" / "record.json").read_text())["v"] == 1
    assert [p.name for p in (tmp_path / "c" / "s").iterdir()] == ["k"]


def test_disabled_cache_never_hits(tmp_path):
    cache = StageCache(tmp_path / "c", enabled=False)
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    cache.put("s", "k", [art], {})
    assert cache.get("s", "k") is None
    assert cache.clear() == 0


def test_versions_include_the_code_itself():
    from optimizer.cache import code_fingerprint, tool_versions

    versions = tool_versions()
    assert versions["trtforge-code"] == code_fingerprint() and len(code_fingerprint()) == 64


# --- the cap: least-recently-used eviction, stale temp folders -------------------------------


def test_parse_size():
    import pytest

    from optimizer.cache import parse_size
    from optimizer.errors import ConfigError

    assert parse_size("10G", "x") == 10 * 2**30 and parse_size("512m", "x") == 512 * 2**20
    assert parse_size("1.5K", "x") == 1536 and parse_size("123", "x") == 123 and parse_size("2GiB", "x") == 2 * 2**30
    with pytest.raises(ConfigError, match="TRTFORGE_STAGE_CACHE_LIMIT is 'ten'"):
        parse_size("ten", "TRTFORGE_STAGE_CACHE_LIMIT")


def test_many_puts_into_a_capped_cache_stay_under_the_cap(tmp_path):
    """150 real puts of 1 kB artifacts into a 20 kB cache: never over the cap, recently used entries survive."""
    cap = 20_000
    cache = StageCache(tmp_path / "c", max_bytes=cap)
    art = tmp_path / "m.onnx"
    for i in range(150):
        art.write_bytes(os.urandom(1000))
        cache.put("passes", f"k{i}", [art], {"i": i})
        if i % 10 == 0:
            assert cache.get("passes", "k0") is not None  # used again and again: never the least recent
        assert cache.size() <= cap
    assert cache.get("passes", "k0") is not None and cache.get("passes", "k149") is not None
    assert cache.get("passes", "k100") is None  # evicted long ago
    assert len(list((tmp_path / "c" / "passes").iterdir())) < 20


def test_the_newest_entry_survives_even_over_the_cap(tmp_path):
    cache = StageCache(tmp_path / "c", max_bytes=10)
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x" * 100)
    cache.put("s", "a", [art], {})
    cache.put("s", "b", [art], {})
    assert cache.get("s", "a") is None and cache.get("s", "b") is not None


def test_put_removes_temp_folders_of_dead_runs(tmp_path):
    import subprocess
    import sys

    from optimizer.model import temp_prefix

    cache = StageCache(tmp_path / "c")
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    cache.put("s", "k", [art], {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "c" / "s" / (temp_prefix("k2").replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-") + "abc")
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"half written")
    cache.put("s", "k2", [art], {})
    assert sorted(p.name for p in (tmp_path / "c" / "s").iterdir()) == ["k", "k2"]


def test_cli_cache_info_trim_and_clear(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from optimizer.cli import main

    monkeypatch.setenv("TRTFORGE_CACHE_DIR", str(tmp_path / "root"))
    cache = StageCache()
    art = tmp_path / "m.onnx"
    for i in range(5):
        art.write_bytes(os.urandom(4000))
        cache.put("passes", f"k{i}", [art], {})
    result = CliRunner().invoke(main, ["cache", "info"])
    assert result.exit_code == 0 and "stage cache: 0.0 MB of 10737 MB cap" in result.output
    result = CliRunner().invoke(main, ["cache", "trim", "--max-size", "10K"])
    assert result.exit_code == 0 and "stage cache: evicted 3 entries" in result.output, result.output
    assert cache.size() <= 10 * 1024 and cache.get("passes", "k4") is not None
    result = CliRunner().invoke(main, ["cache", "trim", "--max-size", "ten"])
    assert result.exit_code == 2 and result.output.startswith("trtforge: error: --max-size is 'ten'")
    monkeypatch.setenv("TRTFORGE_STAGE_CACHE_LIMIT", "-1")
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 2 and "TRTFORGE_STAGE_CACHE_LIMIT is '-1'" in result.output
    monkeypatch.delenv("TRTFORGE_STAGE_CACHE_LIMIT")
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 0 and "removed 2 cached stage result(s)" in result.output
