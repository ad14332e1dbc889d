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
    result = prune(model, out, channels=0.25, source=calib, samples=2, reconstruct=False, criterion="l2")
    assert result.flops_reduction > 0.2 and result.params_after < result.params_before
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
