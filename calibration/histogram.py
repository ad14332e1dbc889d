"""Streaming magnitude histograms and the clipping thresholds chosen from them.

One ``MagnitudeHistogram`` per tensor holds two fixed-size histograms of |x| (one for the
positive values, one for the negative ones) over [0, A], where A is the largest magnitude
seen so far rounded up to a power of two. When a later sample is larger, A doubles as often as needed, so the old bins merge
exactly into the new ones (pairs of bins add up) instead of being re-interpolated. Memory is
two arrays of ``num_bins`` counts per tensor, whatever the number or shape of the samples.

The threshold choosers work on a 1-D histogram of magnitudes (counts per bin of width
``width``) and return a clipping threshold t; values beyond t saturate:

- ``percentile_threshold``: the smallest t that keeps a given share of the values;
- ``entropy_threshold``: TensorRT's calibrator — the t whose ``levels``-level quantized
  distribution has the least KL divergence from the clipped original;
- ``mse_threshold``: the t with the least expected squared error, rounding noise (step^2/12
  per in-range value) plus clipping error (distance to t for the values beyond).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 2048
# Thresholds tried by entropy/MSE: every ``num_bins / CANDIDATES`` bins. TensorRT tries each
# bin from 128 on; 256 evenly spaced candidates find the same minimum to within 1/256 of A at
# a hundredth of the cost (the KL and MSE curves are smooth at this scale).
CANDIDATES = 256


class MagnitudeHistogram:
    """Counts of |x| for x >= 0 and x < 0 separately, in ``num_bins`` bins over [0, A]."""

    def __init__(self, num_bins: int = DEFAULT_BINS) -> None:
        self.num_bins = num_bins
        self.pos = np.zeros(num_bins, dtype=np.int64)
        self.neg = np.zeros(num_bins, dtype=np.int64)
        self.amax = 0.0  # A: upper edge of the last bin (0 until a non-zero value is seen)
        self.min, self.max = np.inf, -np.inf

    @property
    def width(self) -> float:
        return self.amax / self.num_bins

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if not values.size:
            return
        self.min, self.max = min(self.min, float(values.min())), max(self.max, float(values.max()))
        peak = max(-self.min, self.max)
        if peak <= 0:
            self.pos[0] += values.size  # all zeros so far
            return
        if self.amax == 0.0:
            # A power of two strictly above the peak: no value sits on the top edge (where it
            # would be clamped into the last bin and later merged into the wrong one).
            self.amax = 2.0 ** (np.floor(np.log2(peak)) + 1)
        elif peak >= self.amax:
            # Grow by 2^k: old bin i lands whole in new bin i >> k.
            k = int(np.floor(np.log2(peak / self.amax))) + 1
            self.pos, self.neg = self._merge(self.pos, k), self._merge(self.neg, k)
            self.amax *= 2.0**k
        n = self.num_bins
        # One bincount over 2n bins: magnitude bin for x >= 0, n + magnitude bin for x < 0.
        index = np.minimum((np.abs(values) * np.float32(n / self.amax)).astype(np.int32), n - 1)
        index += (values < 0) * np.int32(n)
        both = np.bincount(index, minlength=2 * n)
        self.pos += both[:n]
        self.neg += both[n:]

    def _merge(self, hist: np.ndarray, k: int) -> np.ndarray:
        merged = np.zeros_like(hist)
        np.add.at(merged, np.arange(self.num_bins) >> k, hist)
        return merged


def percentile_threshold(hist: np.ndarray, width: float, percentile: float, total: int | None = None) -> float:
    """Smallest t such that at most (100 - percentile)% of ``total`` values lie beyond it.

    ``total`` defaults to the histogram's own count; pass the count of both signs to clip one
    side of a signed tensor by its share of all values.
    """
    total = int(hist.sum()) if total is None else total
    if total == 0:
        return 0.0
    allowed_beyond = (100.0 - percentile) / 100.0 * total
    beyond = hist.sum() - np.cumsum(hist)  # values above each bin's upper edge
    last = int(np.argmax(beyond <= allowed_beyond))
    return (last + 1) * width


def _candidates(num_bins: int, first: int) -> np.ndarray:
    step = max(1, num_bins // CANDIDATES)
    return np.unique(np.r_[np.arange(min(first, num_bins), num_bins + 1, step), num_bins])


def _last_nonzero(hist: np.ndarray) -> int:
    nonzero = np.flatnonzero(hist)
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def entropy_threshold(hist: np.ndarray, width: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration on a magnitude histogram.

    For each candidate t = i bins: P is the histogram up to i with everything beyond added to
    the last bin (what clipping does); Q merges those i bins into ``levels`` groups and spreads
    each group's count back over its non-empty bins (what quantizing does). The t with the
    least KL(P || Q) wins.
    """
    end = _last_nonzero(hist)
    if end <= levels:  # fewer occupied bins than levels: no clipping can help
        return end * width
    best, best_kl = end, np.inf
    hist = hist.astype(np.float64)
    # Exact zeros (ReLU outputs, padding) pile up in bin 0 and would dominate P; they are
    # represented exactly at any threshold, so bin 0 counts like its neighbour (as
    # TensorRT's pytorch-quantization calibrator does).
    hist[0] = hist[1]
    for i in _candidates(end, levels):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        starts = edges[:-1][np.diff(edges) > 0]
        sizes = np.diff(np.r_[starts, i])
        occupied = hist[:i] > 0
        group_sum = np.add.reduceat(hist[:i], starts)
        group_nonzero = np.add.reduceat(occupied.astype(np.float64), starts)
        per_bin = np.divide(group_sum, group_nonzero, out=np.zeros_like(group_sum), where=group_nonzero > 0)
        q = np.repeat(per_bin, sizes) * occupied
        p /= p.sum()
        q_total = q.sum()
        if q_total == 0:
            continue
        q /= q_total
        mask = p > 0
        # A bin that clipping fills but quantizing leaves empty: tiny mass instead of log(0).
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return best * width


def mse_threshold(hist: np.ndarray, width: float, levels: int = 127) -> float:
    """The t minimising the expected squared error of a ``levels``-step quantizer clipping at t."""
    end = _last_nonzero(hist)
    if end == 0:
        return 0.0
    hist = hist[:end].astype(np.float64)
    centers = (np.arange(end) + 0.5) * width
    cum_count = np.cumsum(hist)
    best, best_err = end, np.inf
    for i in _candidates(end, 1):
        t = i * width
        step = t / levels
        inside = cum_count[i - 1]
        beyond = hist[i:]
        clip = float(np.sum(beyond * ((centers[i:] - t) ** 2 + width**2 / 12)))
        err = inside * step**2 / 12 + clip
        if err < best_err:
            best, best_err = i, err
    return best * width
