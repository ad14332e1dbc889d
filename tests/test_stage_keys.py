"""Cache keys come from what each stage declares it reads (``Stage.reads``), valued in one place
(``KEY_INPUTS``). Changing any declared input must change the key, and so must every field of
the stage's recipe section: a stale key hands back a result computed for other settings."""

import dataclasses

import pytest

from optimizer.cache import StageCache
from optimizer.pipeline import KEY_INPUTS, STAGES, RunContext, RunData, stage_key
from optimizer.progress import Progress
from optimizer.recipe import _CHOICES, Recipe
from optimizer.shapes import InputShape, ResolvedShapes

VERSIONS = {"onnx": "1"}


def _ctx(tmp_path) -> RunContext:
    recipe = Recipe()
    recipe.precision.budget = "cer_increase<=0.1"  # every optional read switched on
    recipe.validate.metric = "metric.py:cer"
    recipe.prune.enabled, recipe.prune.max_error = True, 0.05
    data = RunData(calib=[{}], calib_fingerprint={"sha256": "c1"}, val=[{}],
                   val_fingerprint={"sha256": "v1", "labels_sha256": "l1"}, metric_sha256="m1")
    shapes = ResolvedShapes({"x": InputShape("x", (1, 3, 8, 8), (1, 3, 8, 16), (1, 3, 8, 32), "data")})
    return RunContext(recipe, tmp_path, "m", data, StageCache(enabled=False), Progress("quiet"), shapes=shapes)


def _changes(ctx: RunContext) -> dict:
    """One way to change each key input."""
    def data(**kw):
        return lambda c: setattr(c, "data", dataclasses.replace(c.data, **kw))

    return {
        "calib_data": data(calib_fingerprint={"sha256": "c2"}),
        "val_data": data(val_fingerprint={"sha256": "v1", "labels_sha256": "l2"}),
        "metric": data(metric_sha256="m2"),
        "shapes.opt": lambda c: setattr(c, "shapes", c.shapes.with_ranges({"x": ((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 32))}, "")),
        "shapes.profiles": lambda c: setattr(c, "shapes", c.shapes.with_ranges({"x": ((1, 3, 8, 8), (1, 3, 8, 16), (1, 3, 8, 64))}, "")),
        "builder": lambda c: setattr(c.recipe.build, "compute_capabilities", ["SM120"]),
    }


def _key(stage, ctx) -> str:
    return stage_key(ctx, stage, "input-sha", VERSIONS)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_declared_input_moves_the_key(stage, tmp_path):
    ctx = _ctx(tmp_path)
    reads = stage.reads(ctx)
    assert reads and set(reads) <= set(KEY_INPUTS)
    if "builder" in reads:
        pytest.importorskip("tensorrt_rtx")
    before = _key(stage, ctx)
    for name in reads:
        if name.startswith("recipe."):
            continue  # field by field below
        changed = _ctx(tmp_path)
        _changes(ctx)[name](changed)
        assert _key(stage, changed) != before, f"{stage.name}: changing {name} left the key as it was"


def _other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    return "x" if value is None else None


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_field_of_the_stages_recipe_section_moves_the_key(stage, tmp_path):
    ctx = _ctx(tmp_path)
    (section,) = [n.removeprefix("recipe.") for n in stage.reads(ctx) if n.startswith("recipe.")]
    if stage.name == "build":
        pytest.importorskip("tensorrt_rtx")
    before = _key(stage, ctx)
    for f in dataclasses.fields(getattr(ctx.recipe, section)):
        if (section, f.name) == ("precision", "calib"):
            continue  # where the data lies does not count: its content does (calib_data)
        if (section, f.name) == ("build", "builder"):
            continue  # must name an installed builder; which one is the "builder" read (tested above)
        changed = _ctx(tmp_path)
        config = getattr(changed.recipe, section)
        current = getattr(config, f.name)
        choices = [c for c in _CHOICES.get(f"{section}.{f.name}", ()) if c != current]
        setattr(config, f.name, choices[-1] if choices else _other_value(current))
        assert _key(stage, changed) != before, f"{stage.name}: recipe {section}.{f.name} is not in the key"


def test_where_the_calibration_folder_lies_does_not_move_the_key(tmp_path):
    ctx = _ctx(tmp_path)
    precision = next(s for s in STAGES if s.name == "precision")
    moved = _ctx(tmp_path)
    moved.recipe.precision.calib = "/elsewhere/calib"
    assert _key(precision, moved) == _key(precision, ctx)
