"""Model I/O: safe loading, atomic saving, hashing. Real files, real ONNX Runtime."""

from __future__ import annotations

import hashlib
import os
import re
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


# --- hostile files: one clear InputError each, before any tensor is read -------------------


def _with_invalid_utf8(proto: onnx.ModelProto, field: str) -> bytes:
    """Serialise ``proto`` with invalid UTF-8 in ``field`` (protobuf will not write it itself)."""
    marker = "ZZZZ-MARKER"
    if field == "producer_name":
        proto.producer_name = marker
    else:
        proto.metadata_props.add(key="note", value=marker)
    return proto.SerializeToString().replace(marker.encode(), b"\xc3\x28" + b"x" * (len(marker) - 2))


@pytest.mark.parametrize("field", ["producer_name", "metadata_props[0].value"])
def test_invalid_utf8_strings_are_refused_with_the_field(tmp_path, field):
    src = tmp_path / "m.onnx"
    src.write_bytes(_with_invalid_utf8(_matmul_model(), field.split("[")[0]))
    with pytest.raises(InputError, match=rf"{re.escape(field)} is not valid UTF-8"):
        load_model(src)


def test_nul_byte_in_external_data_path(tmp_path):
    src = tmp_path / "m.onnx"
    _save_external(_matmul_model(), src, "w.bin")
    m = onnx.load(str(src), load_external_data=False)
    m.graph.initializer[0].external_data[0].value = "w\x00.bin"
    onnx.save_model(m, str(src))
    with pytest.raises(InputError, match="invalid external-data path"):
        load_model(src)


def test_undefined_input_type_is_refused_but_inspectable(tmp_path):
    proto = _matmul_model()
    proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    src = _write(tmp_path / "m.onnx", proto)
    with pytest.raises(InputError, match="graph input 'x' has element type UNDEFINED"):
        load_model(src)
    assert input_specs(load_model(src, for_inspection=True))[0].dtype == "undefined"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: setattr(t, "raw_data", t.raw_data[:-3]), "holds 8189 bytes of data where"),
        (lambda t: t.dims.__setitem__(0, 2**40), "need 140737488355328"),  # a 2^40 dim: refused, nothing allocated
        (lambda t: setattr(t, "data_type", onnx.TensorProto.UNDEFINED), "element type UNDEFINED"),
        (lambda t: setattr(t, "data_type", 40), "malformed ONNX graph (40 is not a valid DataType)"),
        (lambda t: t.dims.__setitem__(0, -4), "invalid shape"),
    ],
)
def test_tensor_data_that_does_not_fit_its_type_and_shape(tmp_path, edit, message):
    proto = _matmul_model()
    edit(proto.graph.initializer[0])
    with pytest.raises(InputError, match=re.escape(message)):
        load_model(_write(tmp_path / "m.onnx", proto))


def test_an_input_declared_larger_than_any_feed_is_refused_before_onnx_runtime_sees_it(tmp_path):
    """ONNX Runtime allocated 18 GB loading an Expand whose shape input was declared [2**62]."""
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 1] x, int64[4611686018427387904] shape) => (float[?, ?, ?] y) { y = Expand (x, shape) }"""
    )
    src = _write(tmp_path / "m.onnx", proto)
    with pytest.raises(InputError, match=r"graph input 'shape' declares shape \[4611686018427387904\], .* over the 2 GiB limit"):
        load_model(src)
    assert input_specs(load_model(src, for_inspection=True))[1].shape == (4611686018427387904,)


def test_values_in_the_wrong_typed_field_are_refused(tmp_path):
    proto = _matmul_model()
    t = proto.graph.initializer[0]
    t.float_data.extend(numpy_helper.to_array(t).ravel().tolist())
    t.ClearField("raw_data")
    t.data_type = onnx.TensorProto.BOOL  # BOOL lives in int32_data; onnx-ir asserted on read
    with pytest.raises(InputError, match="stores its values in float_data, which element type BOOL does not use"):
        load_model(_write(tmp_path / "m.onnx", proto))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g.node[0].input.__setitem__(0, "nowhere"), "node 'mm' (MatMul) reads 'nowhere', which no node"),
        (lambda g: setattr(g.output[0], "name", "nobody"), "graph output 'nobody' is computed by no node"),
    ],
)
def test_dangling_values_are_refused(tmp_path, edit, message):
    proto = _matmul_model()
    edit(proto.graph)
    with pytest.raises(InputError, match=re.escape(message)):
        load_model(_write(tmp_path / "m.onnx", proto))


def test_attribute_without_a_type_is_refused(tmp_path):
    from optimizer.model import to_proto_bytes

    proto = _matmul_model()
    proto.graph.node[0].attribute.add(name="odd", type=onnx.AttributeProto.UNDEFINED)
    src = _write(tmp_path / "m.onnx", proto)
    with pytest.raises(InputError, match="attribute 'odd' of node 'mm' \\(MatMul\\) has no type"):
        load_model(src)
    # Whatever else onnx-ir can read but not write ends in one line too, not a SerdeError.
    model = load_model(_write(tmp_path / "ok.onnx", _matmul_model()))
    model.graph.node(0).attributes["odd"] = ir.Attr("odd", ir.AttributeType.UNDEFINED, None)
    with pytest.raises(InputError, match="cannot serialise the model for ONNX Runtime"):
        to_proto_bytes(model)


def _weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT's weight-stripped format as Polygraphy writes it: data cleared, doc_string marked."""
    for t in proto.graph.initializer:
        t.raw_data = b""
        t.doc_string = "TRT_WEIGHTLESS/"
    return proto


def test_weightless_model_is_refused_where_weights_are_needed(tmp_path):
    from optimizer.model import weightless_tensors

    src = _write(tmp_path / "m.onnx", _weightless(_matmul_model()))
    with pytest.raises(InputError, match=r"1 initializer\(s\) have no data \(e.g. 'W'\): a weight-stripped model"):
        load_model(src)
    assert weightless_tensors(load_model(src, for_inspection=True)) == ["W"]


def _chain_model() -> onnx.ModelProto:
    return onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) { a = Relu (x)  b = Neg (a)  c = Sigmoid (b)  y = Add (c, a) }"""
    )


def test_unsorted_graph_is_sorted_at_load(tmp_path):
    proto = _chain_model()
    nodes = list(proto.graph.node)[::-1]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    src = _write(tmp_path / "unsorted.onnx", proto)
    model = load_model(src)
    assert [n.op_type for n in model.graph] == ["Relu", "Neg", "Sigmoid", "Add"]
    # onnx-ir's cloner (under many passes) crashed on the unsorted order; a clone now works.
    import graph_passes  # noqa: F401  (the passes layer loads models only through load_model)

    out = save_model(model, tmp_path / "sorted.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = OrtRunner(_write(tmp_path / "ref.onnx", _chain_model())).run({"x": x})["y"]
    np.testing.assert_array_equal(OrtRunner(out).run({"x": x})["y"], expected)


def test_cyclic_graph_is_refused(tmp_path):
    proto = _chain_model()
    proto.graph.node[0].input[0] = "c"  # Relu reads Sigmoid's output, which depends on Relu
    with pytest.raises(InputError, match="not a DAG"):
        load_model(_write(tmp_path / "cycle.onnx", proto))


def test_save_refuses_strings_protobuf_cannot_write(tmp_path):
    model = load_model(_write(tmp_path / "m.onnx", _matmul_model()))
    model.producer_name = b"\xc3\x28"  # what onnx-ir keeps for invalid UTF-8
    with pytest.raises(InputError, match="cannot write the model"):
        save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- crash leftovers -------------------------------------------------------------------------

_KILLED_WRITER = """
import os, sys
from pathlib import Path
from optimizer.model import load_model, save_model
model = load_model(sys.argv[1])
real_replace = os.replace
def die(*args):  # kill -9 at the first rename (inside ir.save: the data is written, the model not yet)
    os.kill(os.getpid(), 9)
os.replace = die
save_model(model, Path(sys.argv[2]), external_data=True)
"""


def test_temp_folder_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    """A real SIGKILL in the middle of save_model, then one finished run into the same folder."""
    import subprocess
    import sys

    from optimizer.model import remove_stale_temps, temp_dir_beside

    src = _write(tmp_path / "m.onnx", _matmul_model())
    out_dir = tmp_path / "out"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(src), str(out_dir / "o.onnx")],
                                cwd=Path(__file__).parents[1], stderr=subprocess.PIPE)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == -9, stderr
        # No output (nothing corrupt), and only this kill's folder: each run removed the one before.
        (stale,) = out_dir.iterdir()
        assert stale.name.startswith(".o.onnx.tmp-") and f"-{proc.pid}-" in stale.name
        assert any(stale.iterdir())  # killed with data half written
    mine = temp_dir_beside(out_dir / "other.onnx")  # a live process's temp folder is never touched
    save_model(load_model(src), out_dir / "o.onnx", external_data=True)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([mine.name, "o.onnx", "o.onnx.data"])
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(OrtRunner(src).run({"x": x})["y"], OrtRunner(out_dir / "o.onnx").run({"x": x})["y"])
    assert remove_stale_temps(out_dir) == []
