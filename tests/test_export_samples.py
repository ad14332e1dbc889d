"""The torch_export samples through torch's dynamo exporter, then zero-config ``optimize``.

Real models: MTCNN's P/R/O-Net with the trained weights from the facenet-pytorch wheel, and a
torchvision-style ResNet with seeded random weights. Each is exported with dynamic ranges,
verified (ORT against eager at min, opt, max and a random shape), and then ``trtforge optimize``
with no shape flags builds a TensorRT-RTX engine whose profile is the exported ranges.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from optimizer.cli import main  # noqa: E402
from optimizer.shapes import parse_shapes  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "torch_export"
MODELS = {
    "pnet": ("mtcnn.py:pnet", "x:1x3x12x12,1x3x120x160,2x3x480x640"),
    "rnet": ("mtcnn.py:rnet", "x:1x3x24x24,32x3x24x24,256x3x24x24"),
    "onet": ("mtcnn.py:onet", "x:1x3x48x48,16x3x48x48,64x3x48x48"),
    "resnet": ("vision.py:resnet", "x:1x3x64x64,4x3x128x128,8x3x224x224"),
}


def _needs(name: str) -> None:
    if name != "resnet" and importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch==2.6.0 is not installed (pip install --no-deps facenet-pytorch==2.6.0)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model path, export record), each exported once, on first use."""
    folder = tmp_path_factory.mktemp("exported")
    done: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in done:
            factory, shapes = MODELS[name]
            out = folder / f"{name}.onnx"
            result = CliRunner().invoke(main, ["export", f"{SAMPLES / factory}", "-o", str(out), "--shapes", shapes, "--json"])
            assert result.exit_code == 0, result.output
            done[name] = (out, json.loads(result.stdout))
        return done[name]

    return get


def test_sample_shapes_match_the_module_constants():
    from samples.torch_export import mtcnn, vision

    assert {n: s for n, (_, s) in MODELS.items() if n != "resnet"} == mtcnn.SHAPES
    assert MODELS["resnet"][1] == vision.SHAPES


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_exports_with_dynamo_and_verifies_at_four_shapes(exported, name):
    _needs(name)
    path, record = exported(name)
    assert record["exporter"] == "dynamo" and not record["fallback_reason"]
    assert [c["label"] for c in record["checks"]] == ["min", "opt", "max", "random"]
    for check in record["checks"]:
        assert check["passed"], check
        assert max(check["max_rel"].values()) < 1e-4, check
    assert record["profiles"] == [parse_shapes(MODELS[name][1]).spec()]
    print(f"{name}: export {record['export_seconds']:.1f}s, worst rel error "
          f"{max(max(c['max_rel'].values()) for c in record['checks']):.2e}")  # fmt: skip


@pytest.mark.rtx
@pytest.mark.parametrize("name", ["onet", "resnet"])
def test_zero_config_optimize_builds_the_exported_ranges_into_the_engine(exported, tmp_path, name):
    _needs(name)
    path, record = exported(name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(out), "--synthetic", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["shapes"]["inputs"]["x"]["source"] == "metadata"
    sidecars = list(out.glob("*.engine.json"))
    assert len(sidecars) == 1
    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["profiles"] == record["profiles"]
    build = next(s for s in report["stages"] if s["name"] == "build")
    assert build["details"]["profiles"] == record["profiles"]


def test_dynamo_named_dims_are_shared_and_named_in_the_onnx_file(tmp_path):
    """--dim names become torch.export.Dim names: one Dim for both inputs, and the ONNX dim names."""
    import onnx

    from optimizer.torch_export import export
    from tests.test_export import Tagger

    out = tmp_path / "tagger.onnx"
    record = export(
        Tagger(), out=out, shapes="ids:1x4,2x16,8x32;mask:1x4,2x16,8x32", dims=["batch=1,2,8", "seq=4,16,32"],
        dtypes="ids:int64,mask:int64", exporter="dynamo",
    )  # fmt: skip
    assert record.exporter == "dynamo" and record.outputs == ["logits", "pooled"]
    assert all(c.passed for c in record.checks) and len(record.checks) == 4
    graph = onnx.load(str(out)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"ids": ["batch", "seq"], "mask": ["batch", "seq"]}
    assert [o.name for o in graph.output] == ["logits", "pooled"]
