"""The default passes on real models: PP-OCRv4 rec/det, the angle classifier, onnx zoo graphs.

Each model goes through every default pass with the Verifier on; then the result is saved,
reloaded and compared with the original on fresh random inputs of other shapes.
"""

import numpy as np
import onnx_ir as ir
import pytest
from gp_helpers import (
    corpus_model,
    drop_final_softmax,
    check_valid,
    onnx_light_model,
    op_counts,
    randomize_constant_of_shape_weights,
    rapidocr_model,
    run,
    text_image,
)

from graph_passes import DEFAULT_PASSES, Verifier, run_passes
from optimizer.model import input_specs, load_model, output_specs, save_model

pytestmark = pytest.mark.slow

PPOCR = {
    # name: (file, shape for the Verifier, other shapes for the final comparison)
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320), [(2, 3, 48, 160)]),
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 160, 160), [(1, 3, 96, 224)]),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), [(3, 3, 48, 192)]),
}


def _feeds(shape, seed):
    return {"x": text_image(shape, seed)}


def _assert_close(got: dict, ref: dict, elementwise: bool = True):
    assert list(got) == list(ref)
    for name, expected in ref.items():
        actual = got[name]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
        # 1e-4 relative to the output's scale; for probabilities also per element, 1e-4
        # relative above a 1e-6 floor (float32 quantizes probabilities near 0 to ~1e-7).
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max(), name
        if elementwise:
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6, err_msg=name)


def _run_default_passes(original: ir.Model, tmp_path, **verifier_inputs):
    model = original.clone()
    verifier = Verifier(model, **verifier_inputs)
    records = run_passes(model, verifier=verifier)
    assert [r.name for r in records] == DEFAULT_PASSES
    assert records[-1].nodes_after <= records[0].nodes_before
    for r in records:
        assert r.nodes_after <= r.nodes_before, (r.name, r.nodes_before, r.nodes_after, r.notes)
    specs = zip(input_specs(original) + output_specs(original), input_specs(model) + output_specs(model), strict=True)
    for before, after in specs:
        assert (after.name, after.dtype) == (before.name, before.dtype)
        assert before.shape is None or after.shape == before.shape  # declared shapes are kept
    check_valid(model)
    path = save_model(model, tmp_path / "optimized.onnx")
    return records, load_model(path)


@pytest.mark.parametrize("key", sorted(PPOCR))
def test_ppocr_default_passes_preserve_outputs(key, tmp_path):
    file, verify_shape, other_shapes = PPOCR[key]
    original = load_model(rapidocr_model(file))
    # rec/det verify on text-like pages; cls on the Verifier's own random data.
    inputs = {"shapes": {"x": verify_shape}} if key == "cls" else {"feeds": [_feeds(verify_shape, 0)]}
    records, optimized = _run_default_passes(original, tmp_path, **inputs)
    assert records[-1].nodes_after < records[0].nodes_before / 2  # Constants lifted at least
    for seed, shape in enumerate([verify_shape, *other_shapes], start=10):
        feeds = _feeds(shape, seed)
        _assert_close(run(optimized, feeds), run(original, feeds))


def test_ppocr_batchnorm_folds_where_it_follows_a_conv(tmp_path):
    original = load_model(rapidocr_model(PPOCR["cls"][0]))
    _, optimized = _run_default_passes(original, tmp_path, shapes={"x": PPOCR["cls"][1]})
    assert op_counts(original)["BatchNormalization"] == 35
    assert "BatchNormalization" not in op_counts(optimized)


def test_verifier_resolves_ppocr_dynamic_shapes_itself():
    # The cls model names both H and W "?": the Verifier resolves a shape ORT runs (no flags).
    model = load_model(rapidocr_model(PPOCR["cls"][0]))
    verifier = Verifier(model)
    assert verifier.numeric and verifier.partial is None
    (feed,) = verifier.feeds
    assert feed["x"].ndim == 4 and feed["x"].shape[1] == 3


@pytest.mark.parametrize(
    "name, expect_gone",
    [("squeezenet", "Dropout"), ("shufflenet", "BatchNormalization"), ("inception_v2", "BatchNormalization")],
)
def test_onnx_zoo_graphs(name, expect_gone, tmp_path):
    original = load_model(onnx_light_model(name))
    assert original.ir_version == 3  # weights are graph inputs: the first pass unlocks the rest
    randomize_constant_of_shape_weights(original, seed=1)
    drop_final_softmax(original)
    records, optimized = _run_default_passes(original, tmp_path)
    assert expect_gone in op_counts(original) and expect_gone not in op_counts(optimized)
    assert optimized.ir_version == 4
    rng = np.random.default_rng(3)
    (x,) = [v for v in original.graph.inputs if not v.is_initializer()]
    feeds = {x.name: rng.standard_normal(tuple(x.shape)).astype(np.float32)}
    # Random weights under real BN statistics blow logits up to ~1e5; near their zero
    # crossings only the error against the output's scale is meaningful.
    _assert_close(run(optimized, feeds), run(original, feeds), elementwise=False)


def test_ppocr_cls_at_opset_17_fuses_hard_swish(tmp_path):
    # --opset 17 through onnx's converter, verified after every pass; then HardSwish (opset 14)
    # replaces paddle's x * Clip(x + 3, 0, 6) / 6 in every block.
    file, shape, other_shapes = PPOCR["cls"]
    original = load_model(rapidocr_model(file))
    model = original.clone()
    records = run_passes(model, opset=17, verifier=Verifier(model.clone(), shapes={"x": shape}))
    assert records[0].name == "convert_opset" and model.opset_imports[""] == 17
    ops = op_counts(model)
    assert ops["HardSwish"] == 18 and "Clip" not in ops and "Div" not in ops
    optimized = load_model(save_model(model, tmp_path / "cls17.onnx"))
    for seed, s in enumerate(other_shapes, start=20):
        feeds = _feeds(s, seed)
        _assert_close(run(optimized, feeds), run(original, feeds))


@pytest.mark.parametrize("name", ["resnet50", "inception_v2"])
def test_raw_zoo_weights_made_by_constant_of_shape_become_initializers(name, tmp_path):
    # As shipped: every weight is ConstantOfShape(shape). Without folding them (whatever
    # their size) BatchNorm cannot fold and INT8 finds no constant weight to quantize.
    original = load_model(onnx_light_model(name))
    records, optimized = _run_default_passes(original, tmp_path)
    ops = op_counts(optimized)
    assert "ConstantOfShape" not in ops and "BatchNormalization" not in ops, ops
    for node in optimized.graph:
        if node.op_type in ("Conv", "Gemm"):
            assert node.inputs[1].const_value is not None, node.name
    (x,) = [v for v in original.graph.inputs if not v.is_initializer()]
    feeds = {x.name: np.random.default_rng(0).standard_normal(tuple(x.shape)).astype(np.float32)}
    _assert_close(run(optimized, feeds), run(original, feeds), elementwise=False)


DDDDOCR = {
    # name: (input shape for the Verifier, another for the final comparison, what must be gone)
    "common": ((1, 1, 64, 160), (1, 1, 64, 96), "Shape"),  # the LSTM head's reshape plumbing
    "common_old": ((1, 1, 64, 160), (1, 1, 64, 96), "Shape"),  # the same behind ORT's quantized LSTM
    "common_det": ((1, 3, 416, 416), None, "Concat"),  # YOLO's Focus layer, now SpaceToDepth
}


@pytest.mark.parametrize("name", sorted(DDDDOCR))
def test_ddddocr_models(name, tmp_path):
    verify_shape, other_shape, gone = DDDDOCR[name]
    original = load_model(corpus_model("ddddocr", name))
    (x,) = input_specs(original)
    feed = {x.name: np.random.default_rng(0).uniform(0, 1, verify_shape).astype(np.float32)}
    records, optimized = _run_default_passes(original, tmp_path, feeds=[feed])
    before, after = op_counts(original), op_counts(optimized)
    if name == "common_det":
        assert after["SpaceToDepth"] == 1 and after["Concat"] == before["Concat"] - 1
    else:
        assert gone in before and gone not in after, after
    feeds = [feed] + ([{x.name: np.random.default_rng(1).uniform(0, 1, other_shape).astype(np.float32)}] if other_shape else [])
    for f in feeds:
        _assert_close(run(optimized, f), run(original, f), elementwise=False)
