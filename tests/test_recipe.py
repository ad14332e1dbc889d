"""Recipe schema: defaults, types, unknown keys, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.errors import ConfigError
from optimizer.recipe import Recipe, load_recipe, recipe_from_dict


def test_defaults_without_a_file():
    recipe = load_recipe(None)
    assert recipe.precision.mode == "int8" and recipe.precision.target == "tensorrt"
    assert recipe.passes.verify is True


def test_sample_recipe_is_valid():
    recipe = load_recipe(Path("samples/ppocr_rec/recipe.yaml"))
    assert recipe.validate.metric == "metric.py:cer"
    assert recipe.resolve(recipe.validate.metric.split(":")[0]) == Path("samples/ppocr_rec/metric.py").resolve()
    assert recipe.build.expect == "int8"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"precison": {}}, r"unknown key 'precison' \(did you mean 'precision'\?\)"),
        ({"precision": {"targt": "tensorrt"}}, r"unknown key 'precision.targt' \(did you mean 'target'\?\)"),
        ({"validate": {"latency": {"thread": 2}}}, r"unknown key 'validate.latency.thread'"),
        ({"precision": {"target": "cuda"}}, r"'precision.target' is 'cuda'; choose one of: tensorrt, onnxruntime-cpu"),
        ({"precision": {"max_samples": "many"}}, r"'precision.max_samples' has the wrong type"),
        ({"passes": {"verify": "sometimes"}}, r"'passes.verify' must be true or false"),
        ({"passes": []}, r"'passes' must be a mapping"),
        ({"version": 7}, r"version 7 is not supported"),
    ],
)
def test_bad_recipes_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_yaml_errors_and_missing_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("passes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_yes_no_and_single_strings_are_accepted(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("build:\n  enabled: no\n  shapes: 'x:1x3,1x3,1x3'\nvalidate:\n  gates: 'min_cosine>=0.9'\n")
    recipe = load_recipe(path)
    assert recipe.build.enabled == "no"
    assert recipe.build.shapes == ["x:1x3,1x3,1x3"]
    assert recipe.validate.gates == ["min_cosine>=0.9"]
    assert recipe.resolve("data") == tmp_path / "data"


def test_to_dict_roundtrips():
    recipe = Recipe()
    assert recipe_from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"precision": {"max_samples": -1}}, r"'precision.max_samples' is -1; it must be at least 1"),
        ({"validate": {"latency": {"iterations": 0}}}, r"'validate.latency.iterations' is 0; it must be at least 1"),
        ({"build": {"optimization_level": 9}}, r"between 0 and 5"),
        ({"precision": {"percentile": 120}}, r"between 50.0 and 100.0"),
    ],
)
def test_numbers_out_of_range_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_choices_are_the_values_a_key_takes_besides_unset():
    """The CLI offers exactly these (tests/test_cli.py), so the recipe is the one list."""
    from calibration import MODES
    from optimizer.recipe import QUANTIZE_MODES, ValidateConfig, choices

    assert choices("build.builder") == ("tensorrt", "tensorrt-rtx") and choices("prune.sparsity") == ("2:4",)
    assert choices("precision.mode") == ("none", "int8", "fp8", "int4-weight", "fp16", "bf16")
    assert QUANTIZE_MODES == MODES  # calibration (base layer) cannot read the recipe: the two must agree
    for make in (lambda: recipe_from_dict({"validate": {"divergence": "sometimes"}}), lambda: ValidateConfig(divergence="sometimes")):
        with pytest.raises(ConfigError, match="'validate.divergence' is 'sometimes'; choose one of: never, on-failure, always"):
            make()
