"""FLOPs and parameters of Conv/ConvTranspose/Gemm/MatMul layers, from shapes seen in one real run.

FLOPs count 2 × multiply-accumulates of those ops (what dominates CNN and transformer cost);
element-wise ops are left out. Shapes come from running the model once in ONNX Runtime on a
real sample, so dynamic dims (PP-OCR's H and W) are whatever the data has.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def observe_shapes(model: ir.Model, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every input and output of the counted ops on ``feed``."""
    from optimizer.runners import session_for

    names = sorted({v.name for node in model.graph if node.op_type in COUNTED_OPS for v in (*node.inputs, *node.outputs)
                    if v is not None and v.name and v.const_value is None and not v.is_graph_input()})
    with session_for(model, outputs=names) as runner:
        outputs = runner.run(feed, names) if names else {}
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    shapes.update({k: tuple(np.shape(v)) for k, v in feed.items()})
    return shapes


def node_flops(node: ir.Node, shapes: dict[str, tuple[int, ...]]) -> int:
    """2 × MACs of one counted node (0 when a shape is unknown)."""
    out = shapes.get(node.outputs[0].name)
    x = node.inputs[0]
    xs = x.const_value.shape if x.const_value is not None else shapes.get(x.name)
    w = node.inputs[1]
    ws = tuple(w.const_value.shape) if w is not None and w.const_value is not None else shapes.get(w.name if w is not None else "")
    if out is None or ws is None or xs is None:
        return 0
    if node.op_type == "Conv":
        return 2 * int(np.prod(out)) * int(np.prod(ws[1:]))
    if node.op_type == "ConvTranspose":
        return 2 * int(np.prod(tuple(xs))) * int(np.prod(ws[1:]))
    # Gemm / MatMul: every output element is a K-long dot product.
    trans_a = node.attributes.get("transA")
    k = tuple(xs)[-2] if (node.op_type == "Gemm" and trans_a is not None and trans_a.as_int()) else tuple(xs)[-1]
    return 2 * int(np.prod(out)) * int(k)


def model_flops(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """FLOPs per counted node name."""
    return {node.name: node_flops(node, shapes) for node in model.graph if node.op_type in COUNTED_OPS}


def count_parameters(model: ir.Model) -> tuple[int, int]:
    """(parameters, non-zero parameters) over the initializers of the main graph."""
    total = nonzero = 0
    for value in model.graph.initializers.values():
        if value.const_value is None:
            continue
        array = value.const_value.numpy()
        total += array.size
        nonzero += int(np.count_nonzero(array))
    return total, nonzero
