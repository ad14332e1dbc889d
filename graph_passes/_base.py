"""What every graph pass shares: the base class and small read-only helpers over a model.

A pass is an ``onnx_ir.passes.InPlacePass`` with a unique ``name``, a one-line docstring
(its description in ``available_passes()``) and a ``preconditions`` sentence. Refusals of
single nodes (a Dropout whose mask is used, a Conv whose weight is shared) are not errors:
the pass leaves that node alone and calls ``refuse(node, reason)``, the one way to say so.
``run_passes`` turns them into the record's count note and, with ``explain``, its per-node
``refusals``; passes never write their own "kept N" notes. ``notes`` are for what the pass
did (folded, removed) and for why it did not run at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import onnx_ir as ir

from optimizer.model import count_nodes  # noqa: F401  (re-exported: the one node count)

__all__ = [
    "GraphPass",
    "Snapshot",
    "all_graphs",
    "count_nodes",
    "infer_shapes",
    "live_weight_bytes",
    "quiet_logger",
    "summarize_counts",
    "untrusted_shapes",
]


class GraphPass(ir.passes.InPlacePass):
    """Base class of trtforge graph passes (see the module docstring)."""

    #: Unique name, used in recipes, ``--passes`` and reports.
    name: ClassVar[str] = ""
    #: What must hold for the pass to change a node; where it does not, the node is kept.
    preconditions: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []
        self.refusals: list[str] = []
        self._refused: set[tuple[ir.Node, str]] = set()

    #: Set by ``run_passes(explain=True)``. ``refuse`` records either way (the record then
    #: keeps the lines or only their count); a project's own pass whose reasons are costly to
    #: find may look for them only when it is set. The library's passes always look.
    explain: bool = False

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __call__(self, model_or_result, /):
        self.notes = []
        self.refusals = []
        self._refused = set()
        return super().__call__(model_or_result)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def refuse(self, node: ir.Node, reason: str) -> None:
        """A node matched this pass's pattern but a precondition failed: say which and why.

        Once per node and reason: passes that sweep to a fixed point see a node again. Keyed
        by the node itself, not its name, so two unnamed nodes refused alike both count.
        """
        if (node, reason) not in self._refused:
            self._refused.add((node, reason))
            self.refusals.append(f"{_node_label(node)}: {reason}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _node_label(node: ir.Node) -> str:
    """``Add 'add_3'``; an unnamed node by its first output: ``Add (unnamed, output 'y')``."""
    if node.name:
        return f"{node.op_type} '{node.name}'"
    output = node.outputs[0].name if node.outputs else None
    return f"{node.op_type} (unnamed, output '{output}')" if output else f"{node.op_type} (unnamed)"


def all_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    yield from model.graphs()


def _graph_likes(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    yield model.graph
    yield from model.functions.values()


def _tensor_nbytes(tensor) -> int:
    try:
        return int(tensor.nbytes)
    except Exception:  # string tensors and unloadable data have no cheap byte size
        return 0


def live_weight_bytes(model: ir.Model) -> int:
    """Bytes of constant tensors something still reads: used initializers and used Constant nodes.

    Dead tensors are left out on purpose: a pass that folds ``W -> W'`` and leaves ``W``
    unused has not grown the model once dead code is removed.
    """
    total = 0
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None and (value.uses() or value.is_graph_output()):
                total += _tensor_nbytes(value.const_value)
    for graph_like in _graph_likes(model):
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            out = node.outputs[0]
            if not (out.uses() or out.is_graph_output()):
                continue
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    total += _tensor_nbytes(attr.value)
                elif attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS):
                    total += 8 * len(attr.value)
    return total


@contextmanager
def untrusted_shapes(model: ir.Model) -> Iterator[int]:
    """Inside the block, only graph *inputs* carry declared shapes; yields how many were dropped.

    A value_info or output shape is a claim by the exporter, and a wrong one is silently
    trusted by anything that folds ``Shape(x)`` or removes a "no-op" Expand: the classic
    way a simplifier changes an output's layout. Inside the block every node output's
    shape is dropped, so whatever runs there re-derives shapes from the inputs. On exit,
    graph outputs (of the main graph and subgraphs) get their declared shapes back: they
    are the model's contract, even where the block inferred something else.
    """
    # By position: a pass may replace the value behind an output slot (keeping its name).
    graphs = [*model.graphs(), *model.functions.values()]
    declared = [[v.shape for v in g.outputs] for g in graphs]
    dropped = 0
    for graph_like in _graph_likes(model):
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            for value in node.outputs:
                if value.shape is not None:
                    value.shape = None
                    dropped += 1
    try:
        yield dropped
    finally:
        for graph, shapes in zip(graphs, declared):
            for value, shape in zip(graph.outputs, shapes):
                if shape is not None:
                    value.shape = shape


def summarize_counts(counter: Counter) -> str:
    """``Counter({'Shape': 3, 'Gather': 2})`` -> ``'Shape x3, Gather x2'``."""
    return ", ".join(f"{k} x{v}" for k, v in counter.most_common())


@contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Silence a chatty library logger for one block (its messages become notes instead)."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def infer_shapes(model: ir.Model) -> None:
    """ONNX shape inference (non-strict) merged into ``model``: shapes and types of values.

    onnx-ir's ShapeInferencePass merges only a dtype and a shape per value, which turns a
    sequence or optional value into a tensor of its element type (an invalid model). Here
    the whole inferred type is taken where it is not a tensor type, and a value already typed
    as a sequence/optional keeps its type. If inference fails the model is left as it is.
    """
    import onnx

    from onnx_ir.passes.common import _c_api_utils

    def infer(proto):
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=True)

    try:
        with quiet_logger("onnx_ir.passes.common._c_api_utils"):
            inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    except Exception:  # inference is best effort: passes that need shapes then refuse
        return
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        known = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            new = known.get(name)
            if new is None or new.type is None:
                continue
            if not isinstance(new.type, ir.TensorType) or (value.type is not None and not isinstance(value.type, ir.TensorType)):
                if value.type is None:
                    value.type = new.type
                continue
            if new.shape is not None and value.shape != new.shape:
                value.shape = new.shape
            if new.dtype is not None and value.dtype != new.dtype:
                value.dtype = new.dtype


class Snapshot:
    """A cheap copy of a model's structure (tensors are shared), to roll a pass back.

    ``ir.Model.clone`` copies nodes and values in O(#nodes) and shares tensor data, so even
    models with gigabytes of weights snapshot in milliseconds.
    """

    def __init__(self, model: ir.Model) -> None:
        self._clone = model.clone()

    @property
    def model(self) -> ir.Model:
        """The saved state, to read (verify) without restoring it. Do not mutate it."""
        return self._clone

    def restore(self, model: ir.Model) -> None:
        """Put the snapshot's structure back into ``model`` (the same object stays valid). Use once."""
        clone = self._clone
        model.graph = clone.graph
        model.ir_version = clone.ir_version
        model.functions.clear()
        model.functions.update(clone.functions)
        model.metadata_props.clear()
        model.metadata_props.update(clone.metadata_props)
