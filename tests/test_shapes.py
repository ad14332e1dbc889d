"""The one shape language and shape resolution (optimizer.shapes), on models built in ONNX text
and on the real PP-OCRv4 models; ONNX Runtime is the real probe."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.errors import ConfigError, InputError
from optimizer.model import input_specs
from optimizer.shapes import (
    SHAPES_METADATA_KEY,
    ShapeProfile,
    parse_dims,
    parse_profiles,
    parse_shapes,
    profiles_from_metadata,
    ranges_from_data,
    resolve_model_shapes,
    shapes_metadata,
)


def _model(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


SHARED_DIMS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, seq, 8] x, float[batch, seq] mask) => (float[batch, seq, 8] y) {
  m = Unsqueeze(mask, axes)
  y = Mul(x, m)
}
"""
SHARED_DIMS = SHARED_DIMS.replace("Unsqueeze(mask, axes)", "Unsqueeze(mask, ax)").replace(
    "=> (float[batch, seq, 8] y) {", "=> (float[batch, seq, 8] y) <int64[1] ax = {2}> {"
)

# A width that must be a multiple of 32: Reshape to [-1, 32] of a 1-D input fails otherwise.
NEEDS_MULTIPLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, H, W] img) => (float[M, 32] y) <int64[2] s = {-1, 32}> {
  y = Reshape(img, s)
}
"""


def test_fixed_range_and_several_inputs_parse_into_one_profile():
    p = parse_shapes("x:1x3x48x32,1x3x48x320,1x3x48x1600;input:0:4")
    assert p.shapes["x"] == ((1, 3, 48, 32), (1, 3, 48, 320), (1, 3, 48, 1600))
    assert p.shapes["input:0"] == ((4,), (4,), (4,))  # the name is everything before the last ':'
    assert parse_shapes(p.spec()).shapes == p.shapes


def test_a_repeated_option_is_another_profile():
    profiles = parse_profiles(["x:1x8", "x:4x8,8x8,16x8"])
    assert [p.shapes["x"][2] for p in profiles] == [(1, 8), (16, 8)]


@pytest.mark.parametrize(
    "spec, message",
    [("x:1x3,1x3", "1 shape or 3"), ("x:1xa", "dims joined by x"), ("1x3", "input:min,opt,max"), ("x:4,2,8", "min <= opt <= max")],
)
def test_bad_shape_text_is_one_clear_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_shapes(spec)


def test_dims_parse_single_and_range_and_reject_bad_text():
    assert parse_dims(["batch=1", "seq=16,128,512"]) == {"batch": (1, 1, 1), "seq": (16, 128, 512)}
    assert parse_dims({"seq": "8,16,32"}) == {"seq": (8, 16, 32)}
    for bad in (["seq"], ["seq=1,2"], ["seq=x"], ["seq=8,4,16"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_dims(bad)


def test_explicit_dims_size_every_input_that_names_them():
    model = _model(SHARED_DIMS)
    r = resolve_model_shapes(model, dims=parse_dims(["batch=1,2,4", "seq=16,128,512"]))
    assert r.inputs["x"].min == (1, 16, 8) and r.inputs["x"].max == (4, 512, 8)
    assert r.inputs["mask"].opt == (2, 128) and r.sources() == {"x": "--dim", "mask": "--dim"}


def test_data_gives_min_max_and_the_most_common_shape():
    fp = {"inputs": {"x": {"min_shape": [1, 5, 8], "opt_shape": [2, 20, 8], "max_shape": [4, 77, 8]},
                     "mask": {"min_shape": [1, 5], "opt_shape": [2, 20], "max_shape": [4, 77]}}}
    val = {"inputs": {"x": {"min_shape": [1, 3, 8], "opt_shape": [1, 3, 8], "max_shape": [8, 10, 8]},
                      "mask": {"min_shape": [1, 3], "opt_shape": [1, 3], "max_shape": [8, 10]}}}
    r = resolve_model_shapes(_model(SHARED_DIMS), fingerprints=[fp, val])
    assert (r.inputs["x"].min, r.inputs["x"].opt, r.inputs["x"].max) == ((1, 3, 8), (2, 20, 8), (8, 77, 8))
    assert r.sources()["x"] == "data"


def test_the_real_fingerprint_records_the_shape_range():
    from calibration import validate_source

    specs = input_specs(_model(SHARED_DIMS))
    rng = np.random.default_rng(0)
    samples = [{"x": rng.random((b, s, 8), dtype=np.float32), "mask": np.ones((b, s), np.float32)}
               for b, s in ((1, 7), (2, 30), (2, 30), (1, 12))]
    ranges = ranges_from_data(validate_source(samples, specs))
    assert ranges["x"] == ((1, 7, 8), (2, 30, 8), (2, 30, 8))


def test_metadata_hints_come_before_defaults_and_a_malformed_entry_is_named():
    model = _model(SHARED_DIMS)
    hint = ShapeProfile({"x": ((1, 4, 8), (2, 8, 8), (4, 16, 8)), "mask": ((1, 4), (2, 8), (4, 16))})
    model.metadata_props[SHAPES_METADATA_KEY] = shapes_metadata([hint])
    r = resolve_model_shapes(model)
    assert r.sources() == {"x": "metadata", "mask": "metadata"} and r.inputs["x"].max == (4, 16, 8)
    assert profiles_from_metadata({SHAPES_METADATA_KEY: json.dumps({"profiles": ["x:1x2"]})})[0].shapes["x"][0] == (1, 2)
    model.metadata_props[SHAPES_METADATA_KEY] = "{not json"
    with pytest.raises(InputError, match="trtforge.shapes"):
        resolve_model_shapes(model)


def test_defaults_use_batch_1_and_the_first_size_onnx_runtime_runs():
    """32 is the first rung; H*W*3 must split into rows of 32, which H=W=32 does."""
    r = resolve_model_shapes(_model(NEEDS_MULTIPLE))
    assert r.inputs["img"].opt == (1, 3, 32, 32) and r.sources() == {"img": "default"}
    assert r.notes and "set them with --dim/--shapes" in r.notes[0]


def test_when_no_size_runs_one_line_names_the_input_dim_and_flag():
    never = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, L] x) => (float[N, 11] y) <int64[2] s = {-1, 11}> { y = Reshape(x, s) }
    """
    r = resolve_model_shapes(_model(never))
    with pytest.raises(ConfigError) as err:
        r.require()
    text = str(err.value)
    assert "input 'x' dim 1" in text and "--dim L=N" in text and "\n" not in text


def test_shapes_that_contradict_the_model_are_refused():
    model = _model(NEEDS_MULTIPLE)
    with pytest.raises(ConfigError, match="dim 1 is fixed at 3"):
        resolve_model_shapes(model, profiles=parse_profiles(["img:1x4x32x32"]))
    with pytest.raises(ConfigError, match="rank"):
        resolve_model_shapes(model, profiles=parse_profiles(["img:1x3x32"]))
    with pytest.raises(ConfigError, match="inputs are img"):
        resolve_model_shapes(model, profiles=parse_profiles(["image:1x3x32x32"]))
    with pytest.raises(ConfigError, match="no dim named 'seq'.*H, N, W"):
        resolve_model_shapes(model, dims=parse_dims(["seq=4"]))


def test_data_outside_an_explicit_range_is_refused():
    fp = {"inputs": {"img": {"min_shape": [1, 3, 32, 32], "opt_shape": [1, 3, 32, 32], "max_shape": [1, 3, 32, 96]}}}
    with pytest.raises(ConfigError, match="outside the --shapes range"):
        resolve_model_shapes(_model(NEEDS_MULTIPLE), profiles=parse_profiles(["img:1x3x32x32,1x3x32x32,1x3x32x64"]), fingerprints=[fp])


def test_engine_profiles_leave_static_inputs_out():
    text = SHARED_DIMS.replace("float[batch, seq] mask", "float[1, 4] mask").replace(
        "float[batch, seq, 8] x", "float[1, 4, 8] x")
    r = resolve_model_shapes(_model(text))
    assert r.sources() == {"x": "static", "mask": "static"} and r.profiles() == []


def test_real_ppocr_models_resolve_without_flags():
    from conftest import rapidocr_models
    from optimizer.model import load_model

    for path in sorted(rapidocr_models().glob("*.onnx")):
        model = load_model(path)
        r = resolve_model_shapes(model).require()
        (shape,) = r.opt().values()
        assert shape[:2] == (1, 3) and r.sources() == {"x": "default"}


# A decoder step with a KV cache, as Hugging Face exports it: the mask spans past + new tokens,
# so equal sizes for every dim only run at 1 (where the mask broadcasts), and the additive mask
# (1 - mask) * finfo.min overflows to +inf unless the mask holds 0/1.
KV_DECODER = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, seq] x, float[batch, past] cache, int64[batch, total] attention_mask) => (float[batch, all] y)
  <float one = {1.0}, float low = {-3.4e38}> {
  h = Concat <axis = 1> (cache, x)
  m = Cast <to = 1> (attention_mask)
  keep = Sub(one, m)
  bias = Mul(keep, low)
  y = Add(h, bias)
}
"""


def test_alternatives_are_near_sizes_only_and_masks_are_zero_or_one():
    """Found at size 1, no alternative at 1600..16000 (a 24 GB probe once); random masks stay finite."""
    from optimizer.feeds import random_feeds

    model = _model(KV_DECODER)
    r = resolve_model_shapes(model, alternatives=3)
    assert r.inputs["x"].opt == (1, 1) and r.alternatives == []
    feeds = random_feeds(input_specs(model), {"x": (1, 8), "cache": (1, 8), "attention_mask": (1, 16)})
    assert set(np.unique(feeds["attention_mask"])) <= {0, 1} and feeds["attention_mask"].dtype == np.int64


def test_the_shape_probe_stops_at_its_memory_cap_instead_of_taking_the_machine():
    """[n, n, n] floats from a [1, n] input: 5.3 GB at n=1100, over the probe's 4 GiB arena."""
    from optimizer.feeds import PROBE_MAX_ACTIVATION_BYTES, ort_probe

    cube = _model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, n] x) => (float[n, n, n] y) <int64[1] last = {-1}> {
      s = Shape <start = 1> (x)
      dims = Concat <axis = 0> (s, s, s)
      y = ConstantOfShape <value = float[1] {1.0}> (dims)
    }
    """)
    probe = ort_probe(cube)
    assert probe({"x": (1, 32)}) is None
    assert 1100 ** 3 * 4 > PROBE_MAX_ACTIVATION_BYTES
    assert "need more than the probe's 4 GiB" in probe({"x": (1, 1100)})


def test_a_profile_may_start_at_an_empty_kv_cache_but_not_run_at_one():
    """Prefill runs with past = 0: min may hold a 0 (TensorRT builds it); opt/max may not."""
    profile = parse_profiles(["cache:1x4x0x16,1x4x16x16,1x4x32x16"])[0]
    assert profile.shapes["cache"][0] == (1, 4, 0, 16)
    assert parse_dims(["past=0,16,32"])["past"] == (0, 16, 32)
    with pytest.raises(ConfigError, match="min dims must be >= 0 and opt/max dims >= 1"):
        parse_profiles(["cache:1x4x0x16,1x4x0x16,1x4x32x16"])
