"""hoist_if_branch_common: compute once, before an If, what both of its branches compute.

Exporters of control flow (a VAD that picks a sample rate, an encoder that branches on the
batch size) repeat the same work in both branches of an ``If``: the same Shape/Gather plumbing,
the same Transpose of an outer input, sometimes the same Conv. A node is hoisted when the
other branch holds a twin (same op, attributes and inputs, input for input) and every input
comes from outside the If: then both branches compute the same value, whichever runs, and
computing it once outside is never more work. Hoisting repeats to a fixed point (a node whose
inputs were just hoisted can follow), and CSE afterwards merges hoisted nodes with equal ones
already outside.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from graph_passes._base import GraphPass, summarize_counts

_NON_DETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli"})
_SMALL_TENSOR_ATTR = 64  # elements: Constant nodes up to this size compare by value


def _attribute_key(node: ir.Node) -> tuple | None:
    """A hashable key of the node's attributes, or None when it must not move (subgraphs, big tensors)."""
    items = []
    for name, attr in node.attributes.items():
        if attr.is_ref() or attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None
        value = attr.value
        if attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
            value = tuple(value)
        elif attr.type == ir.AttributeType.TENSOR:
            if value.size > _SMALL_TENSOR_ATTR:
                return None
            array = value.numpy()
            value = (array.shape, str(array.dtype), array.tobytes())
        elif attr.type not in (ir.AttributeType.INT, ir.AttributeType.FLOAT, ir.AttributeType.STRING):
            return None
        items.append((name, attr.type.value, value))
    return tuple(sorted(items))


def _is_local(value: ir.Value, graph: ir.Graph) -> bool:
    """True when ``value`` is defined in ``graph`` itself (a node, input or initializer of it)."""
    producer = value.producer()
    if producer is not None:
        return producer.graph is graph
    return value.graph is graph


def _key(node: ir.Node, branch: ir.Graph) -> tuple | None:
    """What makes two nodes of different branches compute the same value, or None if not movable."""
    if node.op_type in _NON_DETERMINISTIC and node.domain in ("", "ai.onnx"):
        return None
    if any(v is not None and _is_local(v, branch) for v in node.inputs):
        return None
    if any(out.is_graph_output() for out in node.outputs):
        return None  # a branch output must stay a value of its branch
    attributes = _attribute_key(node)
    if attributes is None:
        return None
    return (node.op_identifier(), len(node.outputs), tuple(id(v) for v in node.inputs), attributes)


class HoistIfBranchCommon(GraphPass):
    """Move work both branches of an If compute from outer values in front of the If, once."""

    name = "hoist_if_branch_common"
    preconditions = (
        "both branches hold a node with the same op, attributes and inputs; every input comes from outside "
        "the If; it is deterministic, has no subgraph and no output that is a branch output; main graph and "
        "subgraphs (not functions)"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        hoisted: Counter = Counter()
        for _ in range(32):  # each sweep can expose one more layer; real models settle in 2-3
            moved = 0
            for graph in list(model.graphs()):
                for node in list(graph):
                    if node.op_type == "If" and node.domain in ("", "ai.onnx"):
                        moved += self._hoist(node, hoisted)
            if not moved:
                break
        if hoisted:
            self.note(f"hoisted {sum(hoisted.values())} nodes out of If branches ({summarize_counts(hoisted)})")
        return ir.passes.PassResult(model, modified=bool(hoisted))

    def _hoist(self, if_node: ir.Node, hoisted: Counter) -> int:
        then_branch = if_node.attributes.get("then_branch")
        else_branch = if_node.attributes.get("else_branch")
        if then_branch is None or else_branch is None or then_branch.is_ref() or else_branch.is_ref():
            return 0
        then_graph, else_graph = then_branch.as_graph(), else_branch.as_graph()
        twins: dict[tuple, ir.Node] = {}
        for node in else_graph:
            key = _key(node, else_graph)
            if key is not None:
                twins.setdefault(key, node)
        moved = 0
        for node in list(then_graph):
            key = _key(node, then_graph)
            twin = twins.pop(key, None) if key is not None else None
            if twin is None:
                continue
            then_graph.remove(node)
            if_node.graph.insert_before(if_node, node)
            ir.convenience.replace_all_uses_with(twin.outputs, node.outputs)
            else_graph.remove(twin, safe=True)
            hoisted[node.op_type] += 1
            moved += 1
        return moved
