"""topological_sort: a graph whose nodes are out of order becomes valid again."""

import onnx
import onnx_ir as ir
import pytest
from gp_helpers import assert_equivalent, check_valid, parse

from graph_passes.topological_sort import TopologicalSort

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) {
  a = Relu(x)
  b = Neg(a)
  c = Exp(b)
  y = Add(c, a)
}
"""


def _shuffled() -> ir.Model:
    model = parse(MODEL)
    nodes = list(model.graph)
    for node in nodes:
        model.graph.remove(node)
    model.graph.extend(reversed(nodes))
    return model


def test_sorts_out_of_order_graph():
    model = _shuffled()
    with pytest.raises(onnx.checker.ValidationError):
        check_valid(model)
    result = TopologicalSort()(model)
    assert result.modified
    assert [n.op_type for n in model.graph] == ["Relu", "Neg", "Exp", "Add"]
    assert_equivalent(parse(MODEL), model)


def test_sorted_graph_is_not_modified():
    model = parse(MODEL)
    assert not TopologicalSort()(model).modified
