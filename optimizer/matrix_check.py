"""Every variant of a matrix checked before the first task starts: bad input is exit 2, nothing run.

The checks are those ``optimize`` makes before its first stage, done once per model, recipe
and data folder, so a typo in the last recipe or a NaN in one model's data does not surface
an hour into a release job.
"""

from __future__ import annotations

from pathlib import Path

from optimizer.errors import ConfigError, TrtforgeError


def check_variants(variants) -> None:
    """Raise the first TrtforgeError any variant would raise at its start, naming the variant."""
    from optimizer.model import input_specs, load_model

    specs: dict[str, list] = {}
    opened: set[tuple] = set()
    for v in variants:
        if v.model_path not in specs:
            model = load_model(Path(v.model_path))  # InputError names the file
            specs[v.model_path] = input_specs(model)
            if v.shapes or v.dims:
                _check_shapes(v, model)
        try:
            _check_one(v, specs[v.model_path], opened)
        except TrtforgeError as exc:
            raise type(exc)(f"{v.key}: {exc}") from None


def _check_shapes(v, model) -> None:
    """--shapes/--dim against the model's inputs (names, ranks, dim names); no ONNX Runtime probe here."""
    from optimizer.shapes import parse_dims, parse_profiles, resolve_model_shapes

    try:
        resolve_model_shapes(model, profiles=parse_profiles(v.shapes), dims=parse_dims(v.dims), probe=False)
    except TrtforgeError as exc:
        raise type(exc)(f"{v.model}: {exc}") from None


def _check_one(v, specs, opened: set[tuple]) -> None:
    from optimizer.gates import check_syntax
    from calibration import MODES
    from calibration.data import open_folder
    from optimizer.pipeline import load_baseline
    from optimizer.recipe import recipe_from_dict

    recipe = recipe_from_dict(v.recipe_data, Path(v.recipe_dir))
    gates = list(recipe.validate.gates) + list(v.gates)
    check_syntax(gates)
    load_baseline(recipe.resolve(recipe.validate.baseline))
    calib = Path(v.calib) if v.calib else recipe.resolve(recipe.precision.calib)
    val = Path(v.val) if v.val else recipe.resolve(recipe.validate.data)
    if recipe.precision.mode in MODES and calib is None and not recipe.precision.synthetic:
        raise ConfigError(
            f"{recipe.precision.mode.upper()} needs calibration data: pass --calib DIR (or 'calib:' per model in a --plan), "
            "set precision.calib in the recipe, or --synthetic to calibrate on random data knowingly"
        )
    if gates and val is None:
        raise ConfigError(f"gates {gates} are checked on validation data: pass --val DIR (or 'val:' per model in a --plan)")
    for folder, limit in ((calib, recipe.precision.max_samples), (val, recipe.validate.max_samples)):
        if folder is not None and (v.model_path, str(folder), limit) not in opened:
            open_folder(folder, specs, limit)  # names, dtypes, ranks, NaN/Inf: InputError names file and input
            opened.add((v.model_path, str(folder), limit))
    if recipe.validate.metric and val is not None:
        from optimizer.validate import load_metric

        load_metric(recipe.validate.metric, recipe.base_dir)
    _check_build(recipe, v.target)


def _check_build(recipe, target: str | None) -> None:
    build = recipe.build
    if build.enabled == "no":
        return
    from optimizer.engine import available_builders

    builders = available_builders()
    if build.builder is not None and build.builder not in builders:
        raise ConfigError(f"build.builder is '{build.builder}' but it is not installed (installed: {', '.join(builders) or 'none'})")
    if not builders and (build.enabled == "yes" or target is not None):
        raise ConfigError(f"{'engine targets need' if target else 'build.enabled is yes needs'} a TensorRT builder: pip install 'trtforge[rtx]'")
    for spec in [s for s in (build.shapes,) if s] + list(build.profiles):
        from optimizer.shapes import parse_shapes

        parse_shapes(spec)
