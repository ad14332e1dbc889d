"""Shared helpers of the graph-pass tests: build, run and compare small models."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.model import to_proto_bytes
from optimizer.runners import OrtRunner


def parse(text: str) -> ir.Model:
    """An onnx-ir model from ONNX text, checked by onnx.checker first."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def op_counts(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


def check_valid(model: ir.Model) -> None:
    onnx.checker.check_model(ir.to_proto(model))


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return OrtRunner(to_proto_bytes(model), optimization="disable").run(feeds)


def random_feeds(model: ir.Model, seed: int, shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Fresh random inputs for every real graph input (static shapes unless pinned)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        shape = (shapes or {}).get(value.name) or tuple(value.shape)
        dtype = value.dtype.numpy()
        if dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_equivalent(
    original: ir.Model,
    transformed: ir.Model,
    *,
    seeds=(0, 1, 2),
    shapes: dict[str, tuple] | None = None,
    feeds: list[dict] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Same output names, dtypes and values (ONNX Runtime, optimisations off) on fresh inputs."""
    assert [v.name for v in transformed.graph.outputs] == [v.name for v in original.graph.outputs]
    assert [v.dtype for v in transformed.graph.outputs] == [v.dtype for v in original.graph.outputs]
    check_valid(transformed)
    ref_runner = OrtRunner(to_proto_bytes(original), optimization="disable")
    new_runner = OrtRunner(to_proto_bytes(transformed), optimization="disable")
    for feed in feeds or [random_feeds(original, seed, shapes) for seed in seeds]:
        ref, got = ref_runner.run(feed), new_runner.run(feed)
        assert list(got) == list(ref)
        for name in ref:
            assert got[name].dtype == ref[name].dtype, name
            assert got[name].shape == ref[name].shape, name
            np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=atol, err_msg=name)


def apply(pass_, model: ir.Model) -> tuple[ir.Model, bool]:
    """Run ``pass_`` on a clone of ``model``; return the clone and the pass's ``modified``."""
    clone = model.clone()
    result = pass_(clone)
    assert result.model is clone
    return clone, result.modified


# --- real models ---------------------------------------------------------------------------


def rapidocr_model(name: str) -> str:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr_onnxruntime (the PP-OCR models) is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "models", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not shipped by the installed rapidocr_onnxruntime")
    return path


def onnx_light_model(name: str) -> str:
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    path = os.path.join(folder, f"light_{name}.onnx")
    if not os.path.exists(path):
        available = [os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.onnx"))]
        pytest.skip(f"light_{name}.onnx is not in this onnx install ({available})")
    return path


def randomize_constant_of_shape_weights(model: ir.Model, seed: int = 0) -> int:
    """Give onnx's "light" zoo models real-looking weights; return how many were replaced.

    Those models make every weight with ``ConstantOfShape(shape)`` (one repeated value).
    Each becomes a seeded random initializer: He-scaled for conv/gemm weights, positive
    around 1 for BatchNorm scale/variance, small for biases. IR 3 models list every
    initializer as a graph input, so the new ones are added to the inputs too.
    """
    rng = np.random.default_rng(seed)
    graph = model.graph
    replaced = 0
    for node in list(graph):
        if node.op_type != "ConstantOfShape" or node.inputs[0].const_value is None:
            continue
        shape = tuple(int(d) for d in node.inputs[0].const_value.numpy())
        out = node.outputs[0]
        uses = list(out.uses())
        roles = {(user.op_type, idx) for user, idx in uses}
        if roles & {("BatchNormalization", 1), ("BatchNormalization", 4)}:
            array = rng.uniform(0.5, 1.5, size=shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            array = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        else:
            array = rng.standard_normal(shape) * 0.05
        dtype = out.dtype.numpy() if out.dtype is not None else np.float32
        init = ir.Value(
            name=out.name + "__random",
            type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))),
            shape=ir.Shape(shape),
            const_value=ir.tensor(array.astype(dtype), name=out.name + "__random"),
        )
        graph.register_initializer(init)
        if model.ir_version < 4:
            graph.inputs.append(init)
        out.replace_all_uses_with(init, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        replaced += 1
    return replaced


def drop_final_softmax(model: ir.Model) -> None:
    """Compare logits: a random-weight classifier saturates its softmax to one-hot."""
    for i, out in enumerate(model.graph.outputs):
        node = out.producer()
        if node is not None and node.op_type == "Softmax":
            logits = node.inputs[0]
            logits.type = out.type
            model.graph.outputs[i] = logits
            model.graph.remove(node, safe=True)


def text_image(shape: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """A PP-OCR-normalized NCHW batch of light pages with dark glyph-like strokes.

    Uniform noise makes the text detector see no text at all (its sigmoid output stays
    near 1e-5, all of it float32 rounding); strokes give it real activations to compare.
    """
    n, _, height, width = shape
    rng = np.random.default_rng(seed)
    img = np.full((n, height, width, 3), 235.0) + rng.normal(0, 8, (n, height, width, 3))
    for b in range(n):
        for _ in range(max(1, height // 24)):
            y = int(rng.integers(0, max(1, height - 12)))
            x0 = int(rng.integers(0, max(1, width // 3)))
            x1 = int(rng.integers(x0 + 1, width + 1))
            for xs in range(x0, x1, 6):
                img[b, y : y + int(rng.integers(6, 12)), xs : xs + int(rng.integers(2, 5))] = rng.uniform(0, 60)
    img = img.clip(0, 255) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((img - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def assert_refused(pass_, model: ir.Model, reason: str) -> None:
    """The pass leaves ``model`` unchanged, says ``reason`` among its refusals, and the output still matches."""
    out, modified = apply(pass_, model)
    assert not modified
    assert op_counts(out) == op_counts(model)
    assert any(reason in r for r in pass_.refusals), pass_.refusals
    assert_equivalent(model, out)


def corpus_model(family: str, name: str) -> str:
    """A public corpus model (ddddocr, openWakeWord, ...) from benchmarks/corpus_models.py.

    The models come from their wheels at test time (never committed); the test is skipped
    when the wheel is not on this machine and cannot be downloaded.
    """
    from benchmarks.corpus_models import Unavailable, materialise

    try:
        models = {m.name: m for m in materialise(family)}
    except Unavailable as exc:
        pytest.skip(str(exc))
    return str(models[name].path)
