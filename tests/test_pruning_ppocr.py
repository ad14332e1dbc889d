"""Channel pruning on the real PP-OCRv4 recognizer: groups stay consistent and the model still reads."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import NpzFolderSource
from optimizer.model import load_model
from optimizer.pruning import prune
from optimizer.runners import OrtRunner


@pytest.mark.slow
def test_ppocr_rec_channel_groups_consistent_and_model_runs(sample_dir, tmp_path):
    model = sample_dir / "ppocr_rec.onnx"
    out = tmp_path / "rec.pruned.onnx"
    calib = NpzFolderSource(sample_dir / "data" / "calib")
    # Structure is what this test checks: force the write whatever the accuracy check says.
    result = prune(model, out, channels=0.25, source=calib, samples=2, reconstruct=False, criterion="l2", force=True)
    assert result.flops_reduction > 0.2 and result.params_after < result.params_before
    assert result.check["data"] == "calibration" and result.check["samples"] == min(8, len(calib))
    pruned = [g for g in result.groups if g.roots and not g.reason]
    left = [g for g in result.groups if g.roots and g.reason]
    assert pruned and left  # the recognizer's neck feeds Reshape/Concat: those groups must stay whole
    assert any("Reshape" in g.reason or "Concat" in g.reason for g in left)
    nodes = {n.name: n for n in load_model(out).graph}
    for g in pruned:
        for name in g.roots:  # every producer of a tied group lost the same number of channels ...
            assert nodes[name].inputs[1].const_value.shape[0] == g.kept
        for name in g.consumers:  # ... and every reader lost them as input channels
            w = nodes[name].inputs[1].const_value
            assert w.shape[0 if nodes[name].op_type == "ConvTranspose" else 1] == g.kept
    for g in left:
        for name in g.roots:
            assert nodes[name].inputs[1].const_value.shape[0] == g.channels
    ref, cand = OrtRunner(model), OrtRunner(out)
    val = NpzFolderSource(sample_dir / "data" / "val")
    for feed, _ in zip(val, range(3)):
        a, b = ref.run(feed), cand.run(feed)
        for k in a:
            assert a[k].shape == b[k].shape and np.isfinite(b[k]).all()


@pytest.mark.slow
def test_ppocr_rec_destroyed_by_unrepaired_2_4_is_caught_and_not_written(sample_dir, tmp_path):
    """Magnitude 2:4 without repair takes PP-OCRv4 rec to CER 100% (benchmarks/RESULTS.md): the check must see it."""
    from optimizer.pruning.check import DEFAULT_TOLERANCE

    model = sample_dir / "ppocr_rec.onnx"
    out = tmp_path / "rec.24.onnx"
    calib = NpzFolderSource(sample_dir / "data" / "calib")
    result = prune(model, out, sparsity="2:4", method="magnitude", reconstruct=False, source=calib, samples=2)
    assert not result.check["passed"] and result.check["relative_error"] > DEFAULT_TOLERANCE
    assert result.output is None and not out.exists()
    # Measured on held-out lines too, not only on the calibration lines the check used.
    from optimizer.pruning.check import measure_outputs

    forced = prune(model, out, sparsity="2:4", method="magnitude", reconstruct=False, source=calib, samples=2, force=True)
    assert forced.output == str(out)
    held_out = measure_outputs(model, out, NpzFolderSource(sample_dir / "data" / "val"))
    assert held_out["relative_error"] > DEFAULT_TOLERANCE
