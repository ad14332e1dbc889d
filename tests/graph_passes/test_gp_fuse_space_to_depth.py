"""fuse_space_to_depth: YOLO's Focus slicing becomes SpaceToDepth (weight permuted, or a Gather)."""

import numpy as np
import onnx_ir as ir
import pytest
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes.eliminate_dead_code import EliminateDeadCode
from graph_passes.fuse_space_to_depth import FuseSpaceToDepth

FOCUS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,3,8,6] x) => (float[1,{out_c},4,3] y)
<int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] big = {{9223372036854775807}}, int64[1] two = {{2}},
 int64[1] h = {{2}}, int64[1] w = {{3}}, float[2,12,1,1] weight = {{{weights}}}> {{
  r0 = Slice(x, zero, big, h, two)
  r0c0 = Slice(r0, zero, big, w, two)
  r0c1 = Slice(r0, one, big, w, two)
  r1 = Slice(x, one, big, h, two)
  r1c0 = Slice(r1, zero, big, w, two)
  r1c1 = Slice(r1, one, big, w, two)
  cat = Concat<axis=1>({order})
  {tail}
}}
"""
WEIGHTS = ", ".join(str(float(v)) for v in np.arange(24) / 10)
YOLO_ORDER = "r0c0, r1c0, r0c1, r1c1"  # x[::2, ::2], x[1::2, ::2], x[::2, 1::2], x[1::2, 1::2]


def _model(order: str, conv: bool) -> ir.Model:
    tail = "y = Conv(cat, weight)" if conv else "y = Relu(cat)"
    return parse(FOCUS.format(out_c=2 if conv else 12, weights=WEIGHTS, order=order, tail=tail))


@pytest.mark.parametrize("order", [YOLO_ORDER, "r0c0, r0c1, r1c0, r1c1", "r1c1, r0c0, r1c0, r0c1"])
def test_focus_before_a_conv_becomes_space_to_depth_with_permuted_weight(order):
    model = _model(order, conv=True)
    out, modified = apply(FuseSpaceToDepth(), model)
    assert modified
    EliminateDeadCode()(out)
    assert [n.op_type for n in out.graph] == ["SpaceToDepth", "Conv"]
    assert_equivalent(model, out)


def test_focus_without_a_conv_keeps_the_order_with_a_gather():
    model = _model(YOLO_ORDER, conv=False)
    out, modified = apply(FuseSpaceToDepth(), model)
    assert modified
    EliminateDeadCode()(out)
    assert [n.op_type for n in out.graph] == ["SpaceToDepth", "Gather", "Relu"]
    assert_equivalent(model, out)


def test_not_all_four_offsets_is_no_focus():
    model = _model("r0c0, r1c0, r0c1, r0c1", conv=True)
    out, modified = apply(FuseSpaceToDepth(), model)
    assert not modified and op_counts(out) == op_counts(model)


def test_ddddocr_detector_focus_layer(tmp_path):
    from gp_helpers import corpus_model

    from graph_passes import run_passes
    from optimizer.model import load_model
    from optimizer.runners import OrtRunner

    path = corpus_model("ddddocr", "common_det")
    original = load_model(path)
    model = original.clone()
    run_passes(model, ["fold_constants", "fuse_space_to_depth", "eliminate_dead_code"])
    ops = op_counts(model)
    assert ops["SpaceToDepth"] == 1 and ops["Slice"] <= op_counts(original)["Slice"] - 6
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 416, 416)).astype(np.float32)
    from optimizer.model import to_proto_bytes

    want = OrtRunner(path, optimization="disable").run({"images": x})["output"]
    got = OrtRunner(to_proto_bytes(model), optimization="disable").run({"images": x})["output"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
