"""Model I/O: safe loading, atomic saving, hashing. Real files, real ONNX Runtime."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from optimizer.errors import InputError
from optimizer.model import content_hash, input_specs, load_model, output_specs, save_model
from optimizer.runners import OrtRunner


def _matmul_model(rows: int = 64, cols: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", cols])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(proto: onnx.ModelProto, path: Path, location: str) -> None:
    """Write a model whose weights live in `location` (relative to the model, or absolute)."""
    plain = "/" not in location
    onnx.save_model(proto, str(path), save_as_external_data=True, location=location if plain else "w.bin", size_threshold=0)
    if not plain:
        m = onnx.load(str(path), load_external_data=False)
        for t in m.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(m, str(path))


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_roundtrip_keeps_numerics_and_specs(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_matmul_model(), str(src))
    model = load_model(src)
    assert [s.name for s in input_specs(model)] == ["x"]
    assert input_specs(model)[0].shape == ("batch", 64)
    assert output_specs(model)[0].dynamic_dims == [0]
    out = save_model(model, tmp_path / "copy.onnx")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(OrtRunner(src).run({"x": x})["y"], OrtRunner(out).run({"x": x})["y"])


def test_external_data_loads_and_saves_alongside(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    model = load_model(src)
    out = save_model(model, tmp_path / "out" / "m2.onnx", external_data=True)
    assert (tmp_path / "out" / "m2.onnx.data").exists()
    # Nothing but the two final files: no temp folder left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m2.onnx", "m2.onnx.data"]
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(OrtRunner(src).run({"x": x})["y"], OrtRunner(out).run({"x": x})["y"])


def test_save_over_the_loaded_file_is_safe(tmp_path):
    """Saving over the file a model was loaded from (weights memory-mapped) must not corrupt it."""
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "m.onnx.data")
    before = OrtRunner(src).run({"x": np.ones((1, 64), np.float32)})["y"]
    model = load_model(src)
    save_model(model, src, external_data=True)
    after = OrtRunner(src).run({"x": np.ones((1, 64), np.float32)})["y"]
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64 * 32 * 4)
    src = folder / "m.onnx"
    _save_external(_matmul_model(), src, location)
    with pytest.raises(InputError, match="outside the model's folder|absolute path"):
        load_model(src)


def test_missing_external_data_file(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(InputError, match="external-data file 'w.bin' of tensor 'W' is missing"):
        load_model(src)


def test_truncated_external_data_file(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_model(src)


def test_truncated_model_file(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_matmul_model(), str(src))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a readable ONNX model|not an ONNX model"):
        load_model(src)


@pytest.mark.parametrize("payload", [b"hello, this is not a model\n", b"", os.urandom(512), b"PK\x03\x04 zip file"])
def test_non_onnx_files(tmp_path, payload):
    src = tmp_path / "m.onnx"
    src.write_bytes(payload)
    with pytest.raises(InputError):
        load_model(src)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="is a folder"):
        load_model(tmp_path)


def test_content_hash_covers_external_data(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    h1 = content_hash(src)
    assert h1 == content_hash(src)
    data = bytearray((tmp_path / "w.bin").read_bytes())
    data[0] ^= 0xFF  # same model file, different weights
    (tmp_path / "w.bin").write_bytes(bytes(data))
    assert content_hash(src) != h1


def test_loading_and_saving_never_touch_the_input(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    before = _snapshot(tmp_path)
    model = load_model(src)
    model.graph.node(0).name = "renamed"  # mutate the in-memory model
    save_model(model, tmp_path / "elsewhere" / "out.onnx")
    content_hash(src)
    assert _snapshot(tmp_path) == before


def test_failed_save_leaves_existing_output_untouched(tmp_path, monkeypatch):
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"previous content")
    model = load_model(_write(tmp_path / "m.onnx", _matmul_model()))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    # Simulated: a full disk cannot be produced portably in a test.
    monkeypatch.setattr(ir, "save", boom)
    with pytest.raises(OSError):
        save_model(model, dst)
    assert dst.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def _write(path: Path, proto: onnx.ModelProto) -> Path:
    onnx.save_model(proto, str(path))
    return path


def test_real_model_loads(ppocr_rec_path):
    model = load_model(ppocr_rec_path)
    (x,) = input_specs(model)
    assert x.name == "x" and x.dtype == "float32" and x.shape[1] == 3
    assert "character" in dict(model.metadata_props)


def test_artifact_files_include_external_data(tmp_path):
    """What the stage cache copies: a model with external data must travel with its data."""
    from optimizer.model import artifact_files

    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "m.onnx.data")
    assert artifact_files(src) == [src, tmp_path / "m.onnx.data"]
    plain = tmp_path / "p.onnx"
    onnx.save_model(_matmul_model(), str(plain))
    assert artifact_files(plain) == [plain]


def test_refuse_overwrite(tmp_path):
    from optimizer.errors import ConfigError
    from optimizer.model import refuse_overwrite

    src = _write(tmp_path / "m.onnx", _matmul_model())
    with pytest.raises(ConfigError, match="would overwrite the input"):
        refuse_overwrite(src, tmp_path / "." / "m.onnx")
    refuse_overwrite(src, tmp_path / "other.onnx")
