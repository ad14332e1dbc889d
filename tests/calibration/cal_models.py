"""Shared helpers of the calibration tests: small models from ONNX text, ORT runs, error bounds.

The error bound of a quantized Conv/Gemm/MatMul follows from its scales. With the activation
rounded to within s_x/2 (true for values inside the calibrated range) and each weight to
within s_w[c]/2 of its channel, a bilinear op f gives

    |f(x_q, W_q) - f(x, W)| <= f(s_x/2, |W|) + f(|x|, s_w/2) + f(s_x/2, s_w/2)

and a Q/DQ on the output adds s_y/2. ``error_bound`` evaluates the right-hand side with the
same op run in ONNX Runtime on non-negative tensors, so padding and strides count exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optimizer.runners import OrtRunner


def model_from_text(text: str, **weights: np.ndarray) -> ir.Model:
    """An onnx-ir model from ONNX text plus named float initializers, checked by onnx."""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(numpy_helper.from_array(np.asarray(w), name) for name, w in weights.items())
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def save(model: ir.Model, path: Path) -> Path:
    ir.save(model, path)
    return path


def run(model: ir.Model | Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    payload = ir.serde.serialize_model(model).SerializeToString() if isinstance(model, ir.Model) else model
    return OrtRunner(payload).run(feed)


def uniform_samples(shapes: dict[str, tuple[int, ...]], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Samples in [-1, 1]; the first one holds both extremes so later draws stay in range."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        feed = {}
        for name, shape in shapes.items():
            x = rng.uniform(-1, 1, shape).astype(np.float32)
            if i == 0:
                x.flat[0], x.flat[-1] = -1.0, 1.0
            feed[name] = x
        samples.append(feed)
    return samples


def rand(*shape: int, seed: int = 1, scale: float = 0.2) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)]


def apply_op(op_type: str, attrs: dict, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``op_type(x, w)`` (no bias) in ONNX Runtime: the f of the error bound."""
    node = helper.make_node(op_type, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "f",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return OrtRunner(proto.SerializeToString()).run({"x": x.astype(np.float32)})["y"]


def channel_broadcast(values: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    bshape = [1] * len(shape)
    bshape[axis] = -1
    return np.broadcast_to(values.reshape(bshape), shape)


def error_bound(op_type, attrs, x, w, s_x, s_w, axis, s_y=0.0) -> np.ndarray:
    """The bound from the module docstring, plus float32 rounding of the accumulation."""
    half_w = channel_broadcast(np.asarray(s_w, np.float32) / 2, w.shape, axis)
    half_x = np.full_like(x, s_x / 2)
    bound = apply_op(op_type, attrs, half_x, np.abs(w)) + apply_op(op_type, attrs, np.abs(x), half_w)
    bound += apply_op(op_type, attrs, half_x, half_w) + s_y / 2
    return bound + 1e-5 * apply_op(op_type, attrs, np.abs(x), np.abs(w)) + 1e-6


def qdq_params(model: ir.Model, node_name: str) -> dict:
    """Scales of the Q/DQ around a quantized node, read back from the model itself."""
    node = model.graph.node(node_name)
    act_dq, w_dq = node.inputs[0].producer(), node.inputs[1].producer()
    assert act_dq is not None and act_dq.op_type == "DequantizeLinear", f"{node_name}: activation has no DQ"
    assert w_dq is not None and w_dq.op_type == "DequantizeLinear", f"{node_name}: weight has no DQ"
    act_q = act_dq.inputs[0].producer()
    assert act_q is not None and act_q.op_type == "QuantizeLinear"
    out = {
        "s_x": float(act_dq.inputs[1].const_value.numpy()),
        "zp_x": act_dq.inputs[2].const_value.numpy(),
        "w_q": w_dq.inputs[0].const_value.numpy(),
        "s_w": w_dq.inputs[1].const_value.numpy(),
        "zp_w": w_dq.inputs[2].const_value.numpy(),
        "axis": w_dq.attributes["axis"].value,
        "weight_has_q": w_dq.inputs[0].producer() is not None,
        "s_y": 0.0,
    }
    readers = [u.node for u in node.outputs[0].uses()]
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        out["s_y"] = float(readers[0].inputs[1].const_value.numpy())
    return out
