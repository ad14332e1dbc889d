"""Static-shape specialisation (run_passes(specialize=...), `trtforge passes --specialize`)."""

import numpy as np
import pytest
from click.testing import CliRunner
from gp_helpers import parse, rapidocr_model, run, text_image

from graph_passes import Verifier, run_passes
from optimizer.cli import main
from optimizer.errors import ConfigError
from optimizer.model import load_model

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,6,H,W] x) => (float[N,?] y) <int64[1] zero = {0}, int64[1] one = {1}, int64[1] m1 = {-1}> {
  s = Shape(x)
  n = Slice(s, zero, one)
  t = Concat<axis=0>(n, m1)
  y = Reshape(x, t)
}
"""


def test_pinned_dims_let_shape_chains_fold():
    model = parse(DYNAMIC)
    original = model.clone()
    records = run_passes(model, specialize={"x": (2, 6, 3, 4)}, verifier=Verifier(original, shapes={"x": (2, 6, 3, 4)}))
    assert records[0].name == "specialize_input_shapes" and "N" in records[0].notes[0]
    assert [n.op_type for n in model.graph] == ["Reshape"]
    assert model.graph.inputs[0].shape == [2, 6, 3, 4]
    (reshape,) = model.graph
    assert reshape.inputs[1].const_value.numpy().tolist() in ([2, 72], [2, -1], [0, 72], [0, -1])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 6, 3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run(model, feeds)["y"], run(original, feeds)["y"])


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"x": (2, 6, 3)}, "rank 3, the model declares rank 4"),
        ({"x": (2, 5, 3, 4)}, "has 5 at axis 1, the model declares 6"),
        ({"z": (1,)}, "not inputs of the model"),
    ],
)
def test_bad_pins_are_config_errors_and_leave_the_model_alone(shapes, message):
    model = parse(DYNAMIC)
    with pytest.raises(ConfigError, match=message):
        run_passes(model, specialize=shapes)
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "6", "H", "W"]


@pytest.mark.slow
def test_cli_specializes_ppocr_cls(tmp_path):
    src = rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    dynamic, static = tmp_path / "dyn.onnx", tmp_path / "static.onnx"
    runner = CliRunner()
    common = ["passes", src, "--shapes", "x:2x3x48x192", "--no-verify"]
    assert runner.invoke(main, [*common, "-o", str(dynamic)]).exit_code == 0
    result = runner.invoke(main, [*common, "-o", str(static), "--specialize"])
    assert result.exit_code == 0, result.output
    specialized = load_model(static)
    assert list(specialized.graph.inputs[0].shape) == [2, 3, 48, 192]
    assert [str(d) for d in load_model(dynamic).graph.inputs[0].shape][1] == "3"  # batch, H, W stay dynamic there
    # Its shape chains already fold with dynamic dims; pinned, nothing dynamic is left to compute.
    assert not {"Shape", "Concat"} & {n.op_type for n in specialized.graph}
    assert sum(1 for _ in specialized.graph) <= sum(1 for _ in load_model(dynamic).graph)
    feeds = {"x": text_image((2, 3, 48, 192), seed=5)}
    ref, got = run(load_model(src), feeds), run(specialized, feeds)
    for name in ref:
        assert np.abs(got[name] - ref[name]).max() <= 1e-4 * np.abs(ref[name]).max()
    bad = runner.invoke(main, ["passes", src, "-o", str(tmp_path / "x.onnx"), "--specialize"])
    assert bad.exit_code == 2 and "give --shapes too" in bad.output


def test_an_if_whose_condition_folds_once_shapes_are_pinned_is_inlined():
    import numpy as np

    from gp_helpers import assert_equivalent, op_counts

    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3] x) => (float[N,3] y) <int64[1] zero = {0}, int64 one = {1}> {
      s = Shape(x)
      n = Gather<axis=0>(s, zero)
      n0 = Squeeze(n)
      c = Equal(n0, one)
      y = If(c) <
        then_branch = t () => (float[N,3] t_out) { t_out = Neg(x) },
        else_branch = e () => (float[N,3] e_out) { e_out = Abs(x) }
      >
    }
    """)
    original = model.clone()
    run_passes(model, specialize={"x": (1, 3)})
    assert op_counts(model) == {"Neg": 1}
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3)).astype(np.float32)}
    assert_equivalent(original, model, feeds=[feed])
