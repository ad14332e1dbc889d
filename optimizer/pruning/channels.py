"""Channel groups: which output channels of which layers must be pruned together, or not at all.

Every 4-D tensor of the graph has a *channel space* (axis 1). Ops that carry channels through
unchanged (BatchNorm, activations, pooling, Resize over H/W, depthwise Conv, element-wise
ops between tensors of the same channel count — residual Adds, SE Muls) join the spaces of
their inputs and outputs; a union-find gives the *groups*. A group can be pruned when:

* at least one group-1 Conv produces a tensor in it (a *root*: its output channels go), and
* nothing in it is *pinned*: a graph input or output, Concat, Reshape/Flatten/Transpose,
  grouped (non-depthwise) Conv, or any op not known to be channel-wise — these hold a shape
  contract that removing channels would break, so the group is left alone and reported.

Removing channel ``c`` from a group removes it from every root's weight and bias, from every
depthwise Conv, BatchNorm and per-channel constant inside the group, and from the input
channels of every *consumer* (group-1 Conv, ConvTranspose) that reads a tensor of the group.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx_ir as ir

from optimizer.pruning.layers import const_array

# Single-data-input ops that keep the channel axis; extra inputs must be non-per-channel constants.
CHANNELWISE_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Identity", "Dropout",
    "Elu", "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Exp", "Sqrt", "Reciprocal",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample", "Cast",
    "ReduceMean", "ReduceMax",  # over spatial axes with keepdims: how dynamo exports global pooling
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Sum", "Mean"}  # Sum/Mean: variadic residuals (Caffe2 exports)


@dataclass
class ParamRef:
    """A constant input indexed by channel: ``node.inputs[index]`` along ``axis``."""

    node: ir.Node
    index: int
    axis: int


@dataclass
class ChannelGroup:
    id: int
    channels: int
    values: list[str] = field(default_factory=list)
    roots: list[ir.Node] = field(default_factory=list)  # group-1 Convs whose output channels these are
    depthwise: list[ir.Node] = field(default_factory=list)
    params: list[ParamRef] = field(default_factory=list)
    consumers: list[ir.Node] = field(default_factory=list)  # read the group's channels as input channels
    pinned: list[str] = field(default_factory=list)  # why it cannot be pruned

    @property
    def prunable(self) -> bool:
        return bool(self.roots) and not self.pinned

    def describe(self) -> str:
        names = ", ".join(n.name for n in self.roots[:3]) + ("…" if len(self.roots) > 3 else "")
        return f"group {self.id} ({self.channels} channels; roots {names or 'none'})"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _is_const(v: ir.Value | None) -> bool:
    return v is None or v.const_value is not None


def find_groups(model: ir.Model, shapes: dict[str, tuple[int, ...]], exclude: list[str] = ()) -> list[ChannelGroup]:
    """Channel groups of the main graph; ``shapes`` holds every tensor's shape from one real run."""
    graph = model.graph
    uf = _UnionFind()
    roots: dict[str, ir.Node] = {}
    depthwise: dict[str, list[ir.Node]] = {}
    params: dict[str, list[ParamRef]] = {}
    consumers: dict[str, list[ir.Node]] = {}
    pins: dict[str, list[str]] = {}

    def spatial(v: ir.Value | None) -> bool:
        return v is not None and v.const_value is None and len(shapes.get(v.name, ())) == 4

    def pin(v: ir.Value | None, why: str) -> None:
        if spatial(v):
            pins.setdefault(v.name, []).append(why)

    def channel_params(node: ir.Node, out: ir.Value) -> bool:
        """Record per-channel constants of an element-wise node; False if one cannot be indexed."""
        channels = shapes[out.name][1]
        for i, v in enumerate(node.inputs):
            if v is None or v.const_value is None:
                continue
            shape = tuple(v.const_value.shape)
            if len(shape) > 4:
                return False
            aligned = (1,) * (4 - len(shape)) + shape
            if aligned[1] == channels and channels > 1:
                params.setdefault(out.name, []).append(ParamRef(node, i, 1 - (4 - len(shape))))
            elif aligned[1] != 1:
                return False
        return True

    for v in graph.inputs:
        pin(v, f"graph input '{v.name}'")
    for v in graph.outputs:
        pin(v, f"graph output '{v.name}'")

    for node in graph:
        data = [v for v in node.inputs if v is not None and v.const_value is None]
        out = node.outputs[0] if node.outputs else None
        op = node.op_type
        excluded = any(fnmatch.fnmatchcase(node.name, p) for p in exclude)
        if op == "Conv" and not _is_const(node.inputs[0]) and const_array(node.inputs[1]) is not None and spatial(out):
            w = const_array(node.inputs[1])
            group = node.attributes["group"].as_int() if "group" in node.attributes else 1
            if w.ndim == 4 and group == 1:
                consumers.setdefault(node.inputs[0].name, []).append(node)
                if excluded:
                    pin(out, f"'{node.name}' excluded by name")
                else:
                    roots[out.name] = node
                continue
            if w.ndim == 4 and group == w.shape[0] == shapes[node.inputs[0].name][1] and w.shape[1] == 1:
                uf.union(node.inputs[0].name, out.name)
                depthwise.setdefault(out.name, []).append(node)
                continue
        if op == "ConvTranspose" and const_array(node.inputs[1]) is not None and spatial(node.inputs[0]):
            group = node.attributes["group"].as_int() if "group" in node.attributes else 1
            if group == 1:
                consumers.setdefault(node.inputs[0].name, []).append(node)
                pin(out, f"output of ConvTranspose '{node.name}' (not pruned)")
                continue
        if op == "BatchNormalization" and spatial(out) and len(data) == 1 and len(node.outputs) == 1:
            uf.union(node.inputs[0].name, out.name)
            params.setdefault(out.name, []).extend(ParamRef(node, i, 0) for i in range(1, 5))
            continue
        if op in CHANNELWISE_UNARY and spatial(out) and len(data) == 1 and data[0] is node.inputs[0] and len(node.outputs) == 1:
            if _keeps_channels(node):
                uf.union(node.inputs[0].name, out.name)
                continue
        if op in ELEMENTWISE and spatial(out) and len(node.outputs) == 1:
            channels = shapes[out.name][1]
            ok = channel_params(node, out)
            for v in data:
                s = shapes.get(v.name)
                if s is None or len(s) != 4 or s[1] not in (channels, 1):
                    ok = False
            if ok:
                for v in data:
                    if shapes[v.name][1] == channels:
                        uf.union(v.name, out.name)
                    # A [N, 1, H, W] operand broadcasts over channels: no tie.
                continue
        why = f"{op} '{node.name}'" + (" (Concat along channels)" if op == "Concat" else "")
        for v in data:
            pin(v, f"read by {why}")
        for v in node.outputs:
            pin(v, f"produced by {why}")

    return _collect_groups(shapes, uf, roots, depthwise, params, consumers, pins)

def _keeps_channels(node: ir.Node) -> bool:
    """A channel-wise unary op passes channels through unchanged (ties its input and output)."""
    op = node.op_type
    if op in ("Resize", "Upsample"):
        scales = const_array(node.inputs[2]) if len(node.inputs) > 2 else const_array(node.inputs[1]) if op == "Upsample" else None
        sizes = const_array(node.inputs[3]) if len(node.inputs) > 3 else None
        return sizes is None and scales is not None and scales.size == 4 and scales[1] == 1
    if op == "Cast":
        return False  # a dtype change mid-group: leave it alone
    if op in ("ReduceMean", "ReduceMax"):
        return _spatial_reduction(node)
    return all(const_array(v) is None or const_array(v).size == 1 for v in node.inputs[1:] if v is not None)


def _spatial_reduction(node: ir.Node) -> bool:
    """A reduction of a 4-D tensor over H and/or W only, keeping dims (``ReduceMean(axes=[-1,-2],
    keepdims=1)``, global average pooling as torch's dynamo exporter writes it): channels pass."""
    keepdims = node.attributes["keepdims"].as_int() if "keepdims" in node.attributes else 1
    if "axes" in node.attributes:
        axes = list(node.attributes["axes"].as_ints())
    else:  # opset 18: axes as a constant input
        array = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        axes = [int(a) for a in array.reshape(-1)] if array is not None else []
    return keepdims == 1 and bool(axes) and all(a % 4 in (2, 3) for a in axes)


def _collect_groups(shapes, uf, roots, depthwise, params, consumers, pins) -> list[ChannelGroup]:
    """The union-find components that hold a pruned layer or a reader, with everything tied to them."""
    by_root: dict[str, ChannelGroup] = {}
    for name in shapes:
        if len(shapes[name]) != 4:
            continue
        if name not in uf.parent and name not in roots and name not in consumers and name not in pins:
            continue
        key = uf.find(name)
        group = by_root.setdefault(key, ChannelGroup(len(by_root), shapes[name][1]))
        group.values.append(name)
        if name in roots:
            group.roots.append(roots[name])
        group.depthwise.extend(depthwise.get(name, []))
        group.params.extend(params.get(name, []))
        group.consumers.extend(consumers.get(name, []))
        group.pinned.extend(pins.get(name, []))
    groups = [g for g in by_root.values() if g.roots or g.consumers]
    for g in groups:
        if g.roots and not g.consumers and not g.pinned:
            g.pinned.append("no layer reads these channels")
    return groups

