"""Engine builds: real TensorRT-RTX builds (CPU-only AOT) plus the checks that need no TensorRT."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from optimizer.engine import (
    BuildConfig,
    ShapeProfile,
    available_builders,
    build_engine,
    load_tensorrt,
    parse_check,
    parse_shapes,
)
from optimizer.errors import BuildError, ConfigError, InputError

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def rtx(test):
    """Real builds through tensorrt_rtx; skipped where it is not installed."""
    test = pytest.mark.rtx(test)
    return pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")(test)


REC_SHAPES = "x:1x3x48x80,1x3x48x320,4x3x48x960"


@pytest.fixture(scope="module")
def rec_model() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr-onnxruntime (the PP-OCRv4 sample models) is not installed")
    path = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


# --- tiny models ------------------------------------------------------------------------


def _save(graph: onnx.GraphProto, path: Path, opsets=(("", 13),)) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _io(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


@pytest.fixture
def conv_relu(tmp_path: Path) -> Path:
    # ONNX text: the plainest FP32 model.
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,3,16,16] x) => (float[1,8,16,16] y) {
        c = Conv <pads = [1,1,1,1]> (x, w)
        y = Relu (c)
    }
    """
    model = onnx.parser.parse_model(text)
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    path = tmp_path / "conv_relu.onnx"
    onnx.save(model, path)
    return path


def _qdq_conv(path: Path, quantize_activation: bool = True) -> Path:
    """Conv with INT8 weights through DequantizeLinear, and (optionally) a Q/DQ pair on its data."""
    w = np.random.default_rng(0).integers(-127, 128, size=(8, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "zp"], ["w"], name="dq_w")]
    data = "x"
    if quantize_activation:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_s", "zp"], ["x_q"], name="q_x"),
            helper.make_node("DequantizeLinear", ["x_q", "x_s", "zp"], ["x_dq"], name="dq_x"),
        ]
        data = "x_dq"
    nodes += [
        helper.make_node("Conv", [data, "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "qdq", [_io("x", [1, 3, 16, 16])], [_io("y", [1, 8, 16, 16])], inits)
    return _save(graph, path)


@pytest.fixture
def qdq_conv(tmp_path: Path) -> Path:
    return _qdq_conv(tmp_path / "qdq_conv.onnx")


@pytest.fixture
def fp16_conv(tmp_path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["x"], ["x_h"], to=onnx.TensorProto.FLOAT16),
        helper.make_node("Conv", ["x_h", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=onnx.TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "fp16", [_io("x", [1, 3, 16, 16])], [_io("y", [1, 8, 16, 16])], [numpy_helper.from_array(w, "w")]
    )
    return _save(graph, tmp_path / "fp16_conv.onnx")


@pytest.fixture
def custom_op(tmp_path: Path) -> Path:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu0"),
        helper.make_node("FancyOp", ["r"], ["y"], name="fancy1", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "custom", [_io("x", [1, 3, 16, 16])], [_io("y", [1, 3, 16, 16])])
    return _save(graph, tmp_path / "custom_op.onnx", opsets=(("", 13), ("com.example", 1)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- no TensorRT needed -----------------------------------------------------------------


def test_load_tensorrt_without_any_builder_gives_install_hint(monkeypatch):
    # Simulated: this machine has tensorrt_rtx installed, and the point is the message a user
    # sees where neither module is. Both lookups the loader makes are patched.
    real_find_spec = importlib.util.find_spec
    hidden = {"tensorrt", "tensorrt_rtx"}

    def find_spec(name, *args, **kwargs):
        return None if name in hidden else real_find_spec(name, *args, **kwargs)

    def import_module(name, *args, **kwargs):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)

    assert available_builders() == []
    with pytest.raises(BuildError, match=r"pip install 'trtforge\[rtx\]'") as err:
        load_tensorrt()
    assert "\n" not in str(err.value)
    with pytest.raises(BuildError, match=r"pip install 'trtforge\[gpu\]'"):
        load_tensorrt("tensorrt")
    assert parse_check(Path(__file__)) is None  # nothing to check with: not an error


def test_unknown_builder_is_a_config_error():
    with pytest.raises(ConfigError, match="tensorrt-rtx"):
        load_tensorrt("tensorrt-llm")


def test_importing_the_package_does_not_import_tensorrt():
    code = "import sys, optimizer.engine; assert not {'tensorrt', 'tensorrt_rtx'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_parse_shapes_forms():
    p = parse_shapes(REC_SHAPES)
    assert p.shapes == {"x": ((1, 3, 48, 80), (1, 3, 48, 320), (4, 3, 48, 960))}
    assert p.spec() == REC_SHAPES
    both = parse_shapes(["x:1x3x48x80,1x3x48x320,4x3x48x960", "input:0:1x80"])  # repeated options
    assert both.shapes["input:0"] == ((1, 80),) * 3  # name up to the last ':'; one shape = fixed
    assert parse_shapes(" a:1x2,1x3,1x4 ; b:2x2 ;").shapes.keys() == {"a", "b"}
    json.dumps(asdict(p))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("x1x3x48x80", "input:min,opt,max"),
        ("x:", "input:min,opt,max"),
        ("x:1x3xWx80", "dims joined by x"),
        ("x:1x3,1x4", "1 shape or 3"),
        ("x:1x3,1x3x4,1x3", "different ranks"),
        ("x:1x1,1x0,1x2", "opt/max dims >= 1"),  # min may be 0 (an empty KV cache), opt may not
        ("x:1x3x48x320,1x3x48x80,4x3x48x960", "dim 3: need min <= opt <= max"),  # opt < min
        ("x:1x3x48x80,4x3x48x320,2x3x48x960", "dim 0: need min <= opt <= max"),  # opt > max
        ("x:1x2;x:1x2", "twice"),
        ("", "empty"),
    ],
)
def test_parse_shapes_rejects(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_shapes(spec)


def test_shape_profile_checks_direct_construction():
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        ShapeProfile({"x": ((1, 3), (1, 9), (1, 5))})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"workspace_mib": 0}, "workspace_mib"),
        ({"optimization_level": 6}, "0..5"),
        ({"expect": "int4"}, "expect must be"),
        ({"precision_flags": ("fp64",)}, "unknown precision flag"),
        ({"profiles": ["x:1x3"]}, "parse_shapes"),
    ],
)
def test_build_config_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BuildConfig(**kwargs)


def test_build_config_is_json_ready(tmp_path):
    config = BuildConfig(profiles=[parse_shapes(REC_SHAPES)], timing_cache=tmp_path / "t.cache")
    assert config.timing_cache == str(tmp_path / "t.cache")  # a Path is accepted and kept as str
    json.dumps(asdict(config))


# --- real builds through TensorRT-RTX ------------------------------------------------------


@rtx
def test_fp32_rec_model_builds_with_profile(rec_model, tmp_path):
    engine = tmp_path / "out" / "rec.engine"
    result = build_engine(rec_model, engine, BuildConfig(profiles=[parse_shapes(REC_SHAPES)]), builder="tensorrt-rtx")

    assert engine.is_file() and engine.stat().st_size == result.engine_bytes > 1_000_000
    assert result.builder == "tensorrt-rtx" and result.version and result.strongly_typed
    assert result.precision.carries == ["fp32"]
    assert result.precision.quantize_layers == result.precision.dequantize_layers == 0
    assert result.precision.by_type["CONVOLUTION"] > 10
    assert result.timing_cache is None and result.timing_cache_hit is None
    assert result.engine_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert result.model_sha256 == hashlib.sha256(rec_model.read_bytes()).hexdigest()  # no external data

    sidecar = json.loads(Path(result.sidecar_path).read_text())
    assert sidecar["builder"] == "tensorrt-rtx" and sidecar["version"] == result.version
    assert sidecar["profiles"] == [REC_SHAPES]
    assert sidecar["model_sha256"] == result.model_sha256
    assert sidecar["precision"]["carries"] == ["fp32"]
    assert sidecar["network"]["inputs"][0] == {"name": "x", "dtype": "fp32", "shape": [-1, 3, -1, -1]}
    json.dumps(asdict(result))
    assert _leftovers(engine.parent) == []


@rtx
def test_fp32_model_fails_expect_int8_before_building(rec_model, tmp_path):
    engine = tmp_path / "rec.engine"
    config = BuildConfig(profiles=[parse_shapes(REC_SHAPES)], expect="int8")
    with pytest.raises(BuildError, match=r"does not carry int8: .*fp32.*trtforge quantize"):
        build_engine(rec_model, engine, config, builder="tensorrt-rtx")
    assert list(tmp_path.iterdir()) == []


@rtx
@pytest.mark.parametrize(
    "shapes, message",
    [
        (None, r"dynamic inputs x \[\?x3x\?x\?\]: .*--shapes .x:\?x3x\?x\?,"),
        ("x:1x3x48,1x3x48,1x3x48", "rank 3 but the model's input is rank 4"),
        ("x:1x4x48x80,1x4x48x320,4x4x48x960", "dim 1: the model fixes it at 3"),
        ("image:1x3x48x80", "has inputs x"),
    ],
)
def test_rec_model_profile_mismatch_is_a_config_error(rec_model, tmp_path, shapes, message):
    profiles = [parse_shapes(shapes)] if shapes else []
    with pytest.raises(ConfigError, match=message):
        build_engine(rec_model, tmp_path / "rec.engine", BuildConfig(profiles=profiles), builder="tensorrt-rtx")
    assert list(tmp_path.iterdir()) == []


@rtx
def test_qdq_conv_carries_int8(qdq_conv, tmp_path):
    result = build_engine(qdq_conv, tmp_path / "q.engine", BuildConfig(expect="int8"), builder="tensorrt-rtx")
    p = result.precision
    assert p.carries == ["int8"] and p.compute_by_precision == {"int8": 1}
    assert (p.quantize_layers, p.dequantize_layers) == (1, 2)
    assert Path(result.engine_path).stat().st_size == result.engine_bytes


@rtx
def test_weight_only_qdq_is_not_int8_compute(tmp_path):
    # INT8 weights on FP32 data: TensorRT computes in FP32, so "expect int8" must not pass.
    model = _qdq_conv(tmp_path / "w_only.onnx", quantize_activation=False)
    assert parse_check(model, builder="tensorrt-rtx").ok
    with pytest.raises(BuildError, match="does not carry int8"):
        build_engine(model, tmp_path / "w.engine", BuildConfig(expect="int8"), builder="tensorrt-rtx")


@rtx
def test_cast_to_fp16_model_carries_fp16(fp16_conv, tmp_path):
    result = build_engine(fp16_conv, tmp_path / "h.engine", BuildConfig(expect="fp16"), builder="tensorrt-rtx")
    assert result.precision.carries == ["fp16"]
    assert result.precision.cast_layers == 2


@rtx
def test_unparseable_model_names_the_node(custom_op, tmp_path):
    check = parse_check(custom_op, builder="tensorrt-rtx")
    assert not check.ok
    assert [(i.node_index, i.node_name, i.op_type) for i in check.issues] == [(1, "fancy1", "FancyOp")]
    json.dumps(asdict(check))

    engine = tmp_path / "bad.engine"
    with pytest.raises(BuildError, match=r"cannot parse .*node 1 'fancy1' \(FancyOp\): .*Plugin not found") as err:
        build_engine(custom_op, engine, BuildConfig(), builder="tensorrt-rtx")
    assert "\n" not in str(err.value)
    assert not engine.exists() and not Path(f"{engine}.json").exists()


@rtx
def test_corrupt_or_missing_model_is_an_input_error(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 5)
    with pytest.raises(InputError, match="not a readable ONNX model|not an ONNX model"):
        build_engine(corrupt, tmp_path / "c.engine", BuildConfig(), builder="tensorrt-rtx")
    with pytest.raises(InputError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "n.engine", BuildConfig(), builder="tensorrt-rtx")


@rtx
def test_fp16_flag_on_strongly_typed_builder_is_a_config_error(conv_relu, tmp_path):
    with pytest.raises(ConfigError, match=r"strongly typed.*precision comes from the ONNX graph.*trtforge quantize"):
        build_engine(conv_relu, tmp_path / "e.engine", BuildConfig(precision_flags=("fp16",)), builder="tensorrt-rtx")
    assert list(tmp_path.iterdir()) == [conv_relu]


@rtx
def test_failed_build_leaves_no_engine_and_keeps_the_old_one(qdq_conv, tmp_path):
    # 1 MiB of workspace is too little for this network: a real failure inside the builder.
    engine = tmp_path / "q.engine"
    with pytest.raises(BuildError, match=r"failed to build .*workspace"):
        build_engine(qdq_conv, engine, BuildConfig(workspace_mib=1), builder="tensorrt-rtx")
    assert not engine.exists() and _leftovers(tmp_path) == []

    engine.write_bytes(b"previous engine")
    with pytest.raises(BuildError):
        build_engine(qdq_conv, engine, BuildConfig(workspace_mib=1), builder="tensorrt-rtx")
    assert engine.read_bytes() == b"previous engine"


@rtx
def test_interrupted_write_leaves_no_partial_files(conv_relu, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def refuse(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated"):
        build_engine(conv_relu, out / "e.engine", BuildConfig(), builder="tensorrt-rtx")
    assert list(out.iterdir()) == []


@rtx
def test_timing_cache_created_then_reported(conv_relu, tmp_path):
    cache = tmp_path / "caches" / "timing.cache"
    config = BuildConfig(timing_cache=cache)
    first = build_engine(conv_relu, tmp_path / "a.engine", config, builder="tensorrt-rtx")
    assert cache.is_file() and first.timing_cache == str(cache)
    assert first.timing_cache_hit is False  # nothing to load yet

    second = build_engine(conv_relu, tmp_path / "b.engine", config, builder="tensorrt-rtx")
    assert second.timing_cache_hit is not None and cache.is_file()
    # A builder that records entries must report the second build as a hit. TensorRT-RTX
    # records none (its timing-cache API is a no-op) and, without a GPU, cannot even reload
    # the file; then the result says so in one note instead of claiming a hit.
    if second.timing_cache_entries:
        assert second.timing_cache_hit is True
    else:
        assert second.timing_cache_hit is False
        assert any("does not use timing caches" in n for n in second.notes)
    assert _leftovers(tmp_path) == [] and _leftovers(cache.parent) == []


def _matmul_with_weight() -> onnx.ModelProto:
    """A MatMul whose 64 KiB weight is an initializer, ready to be saved with external data."""
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,64] x) => (float[1,256] y) { y = MatMul (x, w) }"""
    )
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    return model


@rtx
def test_external_data_model_builds(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    model = _matmul_with_weight()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    assert (folder / "m.weights").is_file()
    result = build_engine(folder / "m.onnx", tmp_path / "m.engine", BuildConfig(), builder="tensorrt-rtx")
    assert result.precision.carries == ["fp32"] and result.engine_bytes > 0


@rtx
def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    # The TensorRT parser would follow the path; the model's content hash refuses it first.
    folder = tmp_path / "model"
    folder.mkdir()
    model = _matmul_with_weight()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="secret.bin", size_threshold=0)
    escaping = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for entry in escaping.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save(escaping, folder / "m.onnx")
    engine = tmp_path / "m.engine"
    with pytest.raises(InputError, match="outside the model's folder"):
        build_engine(folder / "m.onnx", engine, BuildConfig(), builder="tensorrt-rtx")
    assert not engine.exists()


@rtx
def test_compute_capability_targets(conv_relu, tmp_path):
    result = build_engine(
        conv_relu, tmp_path / "sm86.engine", BuildConfig(compute_capabilities=("sm86",)), builder="tensorrt-rtx"
    )
    assert json.loads(Path(result.sidecar_path).read_text())["config"]["compute_capabilities"] == ["SM86"]
    with pytest.raises(ConfigError, match="unknown compute capability SM99"):
        config = BuildConfig(compute_capabilities=("SM99",))
        build_engine(conv_relu, tmp_path / "x.engine", config, builder="tensorrt-rtx")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="datacenter tensorrt is not installed")
def test_timing_cache_hit_on_datacenter_tensorrt(conv_relu, tmp_path):
    # Datacenter TensorRT times tactics on the GPU, so its cache fills and the second build hits.
    cache = tmp_path / "timing.cache"
    build_engine(conv_relu, tmp_path / "a.engine", BuildConfig(timing_cache=cache), builder="tensorrt")
    second = build_engine(conv_relu, tmp_path / "b.engine", BuildConfig(timing_cache=cache), builder="tensorrt")
    assert second.timing_cache_hit is True and second.timing_cache_entries
