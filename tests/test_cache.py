"""The content-addressed stage cache."""

from __future__ import annotations

import json

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
