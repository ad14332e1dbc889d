"""The prunable layers of a graph: Conv/Gemm/MatMul nodes with a constant weight.

A ``Layer`` knows where its weight and bias live and how to read and replace them. Weights
that arrive as Constant nodes are lifted to initializers first (``prepare_model``), so one
code path reads and writes every weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from optimizer.model import has_data

LAYER_OPS = ("Conv", "Gemm", "MatMul")


def prepare_model(model: ir.Model) -> None:
    """Lift Constant nodes to initializers and name unnamed nodes, in place (semantics unchanged)."""
    if model.ir_version >= 4:
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    seen: set[str] = set()
    for index, node in enumerate(model.graph):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value``, or None when it is not a constant or has no readable data
    (a weight-stripped initializer: such a layer is not prunable, it is not even known)."""
    if value is None or not has_data(value.const_value):
        return None
    return value.const_value.numpy()


def set_const(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
    """Point input ``index`` of ``node`` at a new initializer holding ``array``.

    A fresh initializer (never an in-place write): the old one may be memory-mapped or shared
    with another node; it is dropped when nothing uses it any more.
    """
    old = node.inputs[index] if index < len(node.inputs) else None
    base = (old.name if old is not None and old.name else f"{node.name}_{suffix}")
    name = base
    n = 0
    while name in graph.initializers:
        n += 1
        name = f"{base}_{suffix}{n}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    if index >= len(node.inputs):  # adding a bias: Conv B / Gemm C is always the next slot
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and old.name in graph.initializers:
        graph.initializers.pop(old.name)


@dataclass
class Layer:
    node: ir.Node

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def trans_b(self) -> bool:
        attr = self.node.attributes.get("transB")
        return bool(attr.as_int()) if attr is not None else False

    @property
    def trans_a(self) -> bool:
        attr = self.node.attributes.get("transA")
        return bool(attr.as_int()) if attr is not None else False

    @property
    def group(self) -> int:
        attr = self.node.attributes.get("group")
        return attr.as_int() if attr is not None else 1

    def ints(self, name: str, default: list[int]) -> list[int]:
        attr = self.node.attributes.get(name)
        return list(attr.as_ints()) if attr is not None else default

    @property
    def weight(self) -> np.ndarray | None:
        return const_array(self.node.inputs[1])

    @property
    def bias(self) -> np.ndarray | None:
        if self.op_type == "MatMul" or len(self.node.inputs) < 3:
            return None
        return const_array(self.node.inputs[2])

    @property
    def has_bias_slot(self) -> bool:
        """Conv and Gemm can take a bias; MatMul cannot."""
        return self.op_type in ("Conv", "Gemm")

    def set_weight(self, graph: ir.Graph, array: np.ndarray) -> None:
        set_const(graph, self.node, 1, array, "pruned")

    def set_bias(self, graph: ir.Graph, array: np.ndarray) -> None:
        set_const(graph, self.node, 2, array, "bias")


def find_layers(model: ir.Model) -> list[Layer]:
    """Conv/Gemm/MatMul nodes of the main graph whose weight (input 1) is a constant."""
    layers = []
    for node in model.graph:
        if node.op_type in LAYER_OPS and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
            if const_array(node.inputs[1]) is not None and const_array(node.inputs[0]) is None:
                layers.append(Layer(node))
    return layers
