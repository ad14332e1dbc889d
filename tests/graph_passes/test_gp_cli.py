"""`trtforge passes` options owned by the pass library: --explain, --opset, --list."""

from click.testing import CliRunner
from gp_helpers import op_counts, parse

from optimizer.cli import main
from optimizer.model import load_model, save_model

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z)
<float[2,2,1,1] w = {1., 2., 3., 4.}, float[2,1,1] c = {0.5, -1.}, float three = {3.0}, float zero = {0.0},
 float six = {6.0}> {
  h = Conv(x, w)
  y = Add(h, c)
  z0 = Relu(h)
  a = Add(z0, three)
  k = Clip(a, zero, six)
  m = Mul(z0, k)
  z = Div(m, six)
}
"""


def _model():
    return parse(MODEL)


def test_explain_prints_refusals_and_opset_upgrades(tmp_path):
    src = save_model(_model(), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, ["passes", str(src), "-o", str(out), "--explain", "--opset", "17"])
    assert result.exit_code == 0, result.output
    assert "convert_opset" in result.output and "opset 13 -> 17" in result.output
    # The Conv's output also feeds Relu: the Add stays, and --explain says why.
    assert "Add (unnamed, output 'y'): the Conv output is also read elsewhere" in result.output
    assert "refused 1 match; each is listed with its reason" in result.output
    optimized = load_model(out)
    assert optimized.opset_imports[""] == 17
    assert op_counts(optimized)["HardSwish"] == 1  # opset 17 allows HardSwish


def test_json_without_explain_counts_refusals_and_lists_none(tmp_path):
    import json

    src = save_model(_model(), tmp_path / "m.onnx")
    args = ["passes", str(src), "-o", str(tmp_path / "o.onnx"), "--passes", "fold_conv_affine", "--no-verify", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.output)["passes"]
    assert record["name"] == "fold_conv_affine" and record["refusals"] == []
    assert record["notes"] == ["refused 1 match (explain=True, or --explain, lists which and why)"]


def test_opset_downgrade_is_a_clean_config_error(tmp_path):
    src = save_model(_model(), tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["passes", str(src), "-o", str(tmp_path / "o.onnx"), "--opset", "11"])
    assert result.exit_code == 2
    assert "below the model's opset 13" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_list_names_every_default_pass():
    result = CliRunner().invoke(main, ["passes", "--list"])
    assert result.exit_code == 0
    for name in ("fold_shape_computations", "fold_conv_affine", "fuse_hard_activations", "fuse_layer_norm"):
        assert name in result.output


def test_recipe_passes_section_takes_explain_and_opset():
    import pytest

    from optimizer.errors import ConfigError
    from optimizer.recipe import recipe_from_dict

    recipe = recipe_from_dict({"passes": {"explain": True, "opset": 17}})
    assert recipe.passes.explain is True and recipe.passes.opset == 17
    assert recipe_from_dict({}).passes.opset is None
    with pytest.raises(ConfigError, match="passes.opset"):
        recipe_from_dict({"passes": {"opset": "seventeen"}})
