"""Models with external data: default passes keep weights memory-mapped and outputs unchanged.

A small instance of ``benchmarks/make_big_model.py`` (the >2 GB case itself is a benchmark,
not a test: it needs ~6 GB of disk and a minute).
"""

import importlib.util
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graph_passes import run_passes
from optimizer.model import load_model, save_model
from optimizer.runners import OrtRunner

ROOT = Path(__file__).resolve().parents[2]


def _make_big_model():
    spec = importlib.util.spec_from_file_location("make_big_model", ROOT / "benchmarks" / "make_big_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_big_model


def test_external_weights_stay_mapped_through_default_passes(tmp_path):
    path, feeds = _make_big_model()(tmp_path / "src" / "m.onnx", layers=3, width=512)
    source_bytes = (path.parent / "m.onnx.data").read_bytes()
    model = load_model(path)
    weights = {n: v.const_value for n, v in model.graph.initializers.items() if n.startswith("W")}
    assert all(isinstance(t, ir.ExternalTensor) for t in weights.values())

    records = run_passes(model)
    ops = {n.op_type for n in model.graph}
    assert {"Identity", "Dropout", "Shape", "Concat", "Reshape"}.isdisjoint(ops), ops  # the foldable bits went
    assert ops == {"Gemm", "Relu"}  # the final Reshape maps [4, W] to itself
    # Untouched weights are the very same mapped tensors: nothing was copied into memory.
    for name, tensor in weights.items():
        assert model.graph.initializers[name].const_value is tensor
    assert records[-1].nodes_after < records[0].nodes_before

    out = save_model(model, tmp_path / "out" / "m.onnx", external_data=True)
    assert (out.parent / "m.onnx.data").exists()
    assert (path.parent / "m.onnx.data").read_bytes() == source_bytes  # input never modified
    ref = OrtRunner(path, optimization="disable").run(feeds)
    got = OrtRunner(out, optimization="disable").run(feeds)
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-5, atol=1e-5)
