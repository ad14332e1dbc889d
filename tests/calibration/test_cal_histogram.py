"""Histogram calibration: exact streaming histograms and the clipping each method picks on known distributions."""

from __future__ import annotations

import numpy as np
import pytest
from cal_models import model_from_text

from calibration.histogram import MagnitudeHistogram, entropy_threshold, mse_threshold, percentile_threshold
from calibration.stats import COLLECTORS, collect_ranges
from optimizer.errors import ConfigError


def test_streaming_histogram_equals_one_shot_histogram():
    """Growing the range by 2^k merges bins exactly: chunks in any order give numpy's histogram of the whole."""
    rng = np.random.default_rng(0)
    chunks = [rng.integers(-3, 4, 500), rng.integers(-10, 11, 700), rng.integers(-40, 30, 300)]
    h = MagnitudeHistogram(num_bins=256)
    for c in chunks:
        h.update(c.astype(np.float32))
    data = np.concatenate(chunks).astype(np.float64)
    assert h.amax == 64  # 4 (above 3) -> 16 (above 10) -> 64 (above 40)
    edges = np.arange(257) * (h.amax / 256)
    np.testing.assert_array_equal(h.pos, np.histogram(data[data >= 0], bins=edges)[0])
    np.testing.assert_array_equal(h.neg, np.histogram(-data[data < 0], bins=edges)[0])
    assert (h.min, h.max) == (data.min(), data.max())


def test_percentile_by_hand():
    hist = np.array([5, 3, 1, 1])
    assert percentile_threshold(hist, 1.0, 80.0) == 2.0  # 2 of 10 values may lie beyond: bins 2, 3
    assert percentile_threshold(hist, 1.0, 90.0) == 3.0
    assert percentile_threshold(hist, 0.5, 100.0) == 2.0
    # One side of a signed tensor clips by its share of all values (here 10 more on the other side).
    assert percentile_threshold(hist, 1.0, 70.0) == 2.0
    assert percentile_threshold(hist, 1.0, 70.0, total=20) == 1.0


def test_mse_threshold_matches_brute_force_fake_quantization():
    """The chosen t has (nearly) the least actual error of int8 fake quantization over a grid of thresholds."""
    x = np.random.default_rng(1).laplace(0, 1, 100_000).astype(np.float32)
    h = MagnitudeHistogram()
    h.update(x)
    t = mse_threshold(h.pos + h.neg, h.width, levels=127)

    def error(threshold):
        step = threshold / 127
        return float(np.mean((np.clip(np.rint(x / step), -127, 127) * step - x) ** 2))

    grid = np.linspace(0.2, 1.0, 81) * np.abs(x).max()
    best = min(error(g) for g in grid)
    assert error(t) <= 1.05 * best
    assert error(t) < 0.8 * error(np.abs(x).max())  # max wastes levels on the tail


def test_entropy_on_bounded_and_on_heavy_tailed_data():
    rng = np.random.default_rng(2)
    uniform = rng.uniform(-1, 1, 50_000).astype(np.float32)
    h = MagnitudeHistogram()
    h.update(uniform)
    # Nothing to gain from clipping a flat distribution: KL picks (almost) the whole range.
    assert entropy_threshold(h.pos + h.neg, h.width) >= 0.95
    heavy = rng.standard_t(2, 50_000).astype(np.float32)
    h = MagnitudeHistogram()
    h.update(heavy)
    t = entropy_threshold(h.pos + h.neg, h.width)
    amax = np.abs(heavy).max()
    assert np.quantile(np.abs(heavy), 0.99) < t < 0.5 * amax


def _ranges(method, data, symmetric=True, **options):
    c = COLLECTORS[method](symmetric=symmetric, **options)
    for chunk in np.array_split(data, 5):
        c.update(chunk)
    r = c.result()
    return r.min, r.max


def test_methods_pick_different_sensible_ranges_on_heavy_tailed_data():
    data = np.random.default_rng(3).standard_t(3, 200_000).astype(np.float32)
    amax, p999 = float(np.abs(data).max()), float(np.quantile(np.abs(data), 0.999))
    thresholds = {m: _ranges(m, data)[1] for m in COLLECTORS}
    assert thresholds["max"] == data.max()
    for method in ("percentile", "entropy", "mse"):
        # Clip the tail (max does not), never the bulk.
        assert p999 * 0.5 < thresholds[method] < 0.9 * amax, (method, thresholds)
    assert len({round(t, 3) for t in thresholds.values()}) == 4, thresholds
    lo, hi = _ranges("percentile", data, symmetric=True)
    assert lo == -hi  # one threshold for both signs in the TensorRT form
    assert _ranges("percentile", data, percentile=99.0)[1] < _ranges("percentile", data, percentile=99.99)[1]


def test_asymmetric_one_sided_tensor_keeps_zero_and_uses_its_own_side():
    data = np.maximum(np.random.default_rng(4).laplace(0, 1, 100_000), 0).astype(np.float32)
    for method in ("percentile", "entropy", "mse"):
        lo, hi = _ranges(method, data, symmetric=False)
        assert lo == 0.0 and 0 < hi <= data.max()
    # 255 levels on one side instead of 127: a finer step, so MSE clips less than in the symmetric form.
    assert _ranges("mse", data, symmetric=True)[1] < _ranges("mse", data, symmetric=False)[1] < data.max()
    with pytest.raises(ConfigError, match="percentile must be in"):
        COLLECTORS["percentile"](percentile=0)


def test_collect_ranges_histogram_methods_on_variable_shapes():
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1,W] x) => (float[1,W] y) { [relu] y = Relu (x) }"""
    rng = np.random.default_rng(5)
    samples = [{"x": rng.standard_t(2, (1, w)).astype(np.float32)} for w in (1000, 3000, 7)]
    everything = np.concatenate([s["x"].ravel() for s in samples])
    for method in ("percentile", "entropy", "mse"):
        r = collect_ranges(model_from_text(text), ["x", "y"], samples, method=method, percentile=99.9)
        assert r["x"].count == 3 and everything.min() <= r["x"].min < 0 < r["x"].max <= everything.max()
        assert r["y"].min == 0.0 and r["y"].max <= everything.max()
        if method == "percentile":  # 0.1% of 4007 values: the 4 largest are clipped
            assert r["y"].max < np.sort(everything)[-4]
