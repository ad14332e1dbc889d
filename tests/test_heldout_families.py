"""Held-out model families, the CI slice (`benchmarks/heldout_families.py` runs all of them).

Four torch exports of families the passes were not written against, exported here from the
benchmark's seeded definitions: a Hugging Face-style GPT-2 with attention_mask, position_ids
and a per-layer KV cache (TorchScript, opset 17), a ViT at opset 14 (every LayerNorm
decomposed into 9 nodes), a YOLOv5-style detector and a U-Net. Each goes through the
zero-config `trtforge passes` and `trtforge optimize --synthetic` as subprocesses.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxslim")

from benchmarks import corpus  # noqa: E402
from benchmarks.corpus_models import CorpusModel  # noqa: E402
from benchmarks.heldout_families import example_feeds, export, nodes, output_diff, slim  # noqa: E402
from optimizer.model import load_model, opset_of  # noqa: E402

pytestmark = pytest.mark.slow

SLICE = ("gpt2hf_ts", "vit_ts_op14", "yolo_ts", "unet_ts")


@pytest.fixture(scope="module")
def trtforge(tmp_path_factory):
    """``run(variant, command)`` -> (outcome, exported model, output): each export and command once per module."""
    root = tmp_path_factory.mktemp("heldout")
    done: dict[tuple[str, str], tuple] = {}

    def run(variant: str, command: str):
        if (variant, command) not in done:
            folder = root / variant / command
            folder.mkdir(parents=True)
            path = root / f"{variant}.onnx"
            if not path.exists():
                export(variant, root)
            outcome = corpus.run_command(CorpusModel("heldout", variant, path, None), command, folder, timeout=600)
            out = folder / "passes.onnx" if command == "passes" else next((folder / "optimize").glob("*.opt.onnx"), None)
            done[variant, command] = (outcome, path, out)
        return done[variant, command]

    return run


@pytest.mark.parametrize("variant", SLICE)
def test_passes_exit_0_with_no_more_nodes_than_onnxslim(trtforge, variant, tmp_path):
    outcome, original, ours = trtforge(variant, "passes")
    assert outcome.status == "ok", outcome.reason
    assert nodes(ours) <= nodes(slim(original, tmp_path / "slim.onnx"))
    max_rel, within = output_diff(original, ours, example_feeds(variant))
    assert within, f"max rel diff {max_rel:.2e} against the original in ONNX Runtime"


@pytest.mark.rtx
@pytest.mark.parametrize("variant", SLICE)
def test_optimize_synthetic_builds_an_engine(trtforge, variant):
    outcome, _, _ = trtforge(variant, "optimize")
    assert outcome.status == "ok", outcome.reason
    assert outcome.engine


@pytest.mark.parametrize("command", ["passes", pytest.param("optimize", marks=pytest.mark.rtx)])
def test_vit_at_opset_14_is_raised_to_17_with_layer_norms(trtforge, command):
    outcome, original, written = trtforge("vit_ts_op14", command)
    assert outcome.status == "ok", outcome.reason
    assert opset_of(load_model(original)) == 14
    model = load_model(written)
    assert opset_of(model) == 17
    assert sum(node.op_type == "LayerNormalization" for node in model.graph) == 7  # 2 per block x 3, and the final norm
