"""collect_ranges: exact running min/max over variable-shape data, the model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from cal_models import model_from_text

from calibration.stats import collect_ranges
from optimizer.errors import CalibrationError, ConfigError

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,C,W] x) => (float[N,C,W] y) {
    [double] d = Mul (x, two)
    [relu] r = Relu (d)
    [neg] y = Neg (r)
    [log] l = Log (x)
}"""


def _samples():
    rng = np.random.default_rng(0)
    return [{"x": rng.uniform(-3, 2, (1, 2, w)).astype(np.float32)} for w in (3, 7, 5)]


def test_ranges_match_numpy_over_variable_shapes():
    model = model_from_text(TEXT, two=np.array(2.0, np.float32))
    outputs_before = [v.name for v in model.graph.outputs]
    samples = _samples()
    seen = []
    ranges = collect_ranges(model, ["x", "d", "r", "y"], samples, progress=seen.append)
    xs = np.concatenate([s["x"].ravel() for s in samples])
    assert (ranges["x"].min, ranges["x"].max) == (float(xs.min()), float(xs.max()))
    assert (ranges["d"].min, ranges["d"].max) == (float(2 * xs.min()), float(2 * xs.max()))
    assert (ranges["r"].min, ranges["r"].max) == (0.0, float(2 * xs.max()))
    assert (ranges["y"].min, ranges["y"].max) == (float(-2 * xs.max()), 0.0)
    assert {r.count for r in ranges.values()} == {3} and seen == [1, 2, 3]
    assert [v.name for v in model.graph.outputs] == outputs_before  # extra outputs lived on a copy only


def test_ranges_from_a_model_file(tmp_path):
    from cal_models import save

    path = save(model_from_text(TEXT, two=np.array(2.0, np.float32)), tmp_path / "m.onnx")
    assert collect_ranges(path, ["r"], _samples())["r"].min == 0.0


def test_bad_requests():
    model = model_from_text(TEXT, two=np.array(2.0, np.float32))
    with pytest.raises(CalibrationError, match=r"\['nope'\]"):
        collect_ranges(model, ["nope"], _samples())
    with pytest.raises(ConfigError, match="'kl' is unknown; choose one of"):
        collect_ranges(model, ["d"], _samples(), method="kl")
    with pytest.raises(CalibrationError, match=r"sample 0: tensor 'l' has NaN/Inf.*check the input preprocessing"):
        collect_ranges(model, ["l"], _samples())  # log of negative inputs
    # Random data asked for by name: the fix is real data, not the preprocessing the user never wrote.
    from calibration import synthetic_source
    from optimizer.model import input_specs

    shapes = {s.name: tuple(d if isinstance(d, int) else 2 for d in s.shape) for s in input_specs(model)}
    with pytest.raises(CalibrationError, match=r"tensor 'l' has NaN/Inf.*random --synthetic inputs .* --calib DIR"):
        collect_ranges(model, ["l"], synthetic_source(input_specs(model), count=2, shapes=shapes))
    with pytest.raises(CalibrationError, match="no samples"):
        collect_ranges(model, ["d"], iter([]))
