"""fuse_space_to_depth: YOLO's "Focus" slicing (strided Slices + Concat) becomes SpaceToDepth.

YOLOv5-style detectors (ddddocr's ``common_det``) start with
``Concat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2], axis=1)``,
exported as six Slices and a Concat. That is ``SpaceToDepth(x, blocksize=2)`` up to the order
of the channel blocks: SpaceToDepth puts the block at row offset ``r``, column offset ``c`` at
channels ``(2r + c) * C ...``. When the Concat's only reader is a Conv (group 1) whose weight
is a constant only it reads, the channel order is folded into that weight (its input channels
permuted); otherwise a Gather on the channel axis restores it. TensorRT parses both.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass

_H, _W = 2, 3


def _const_ints(value: ir.Value | None) -> list[int] | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return None
    return [int(v) for v in np.asarray(tensor.numpy()).reshape(-1)]


def _strided_slice(value: ir.Value) -> tuple[ir.Value, int, int] | None:
    """(data, axis H/W, start 0/1) when ``value`` is a stride-2 Slice to the end of H or W.

    The caller checks that the first slice's data has rank 4 (Slices keep the rank); where
    the data's shape is unknown here, "to the end" must be written as a huge end.
    """
    node = value.producer()
    if node is None or node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 5:
        return None
    data = node.inputs[0]
    starts, ends, axes, steps = (_const_ints(v) for v in node.inputs[1:5])
    if data is None or None in (starts, ends, axes, steps):
        return None
    if len(starts) != 1 or steps != [2] or starts[0] not in (0, 1):
        return None
    axis = axes[0] + 4 if axes[0] < 0 else axes[0]
    size = data.shape[axis] if data.shape is not None and len(data.shape) == 4 else None
    if axis not in (_H, _W) or not (ends[0] >= 2**31 - 1 or (isinstance(size, int) and ends[0] >= size)):
        return None
    return data, axis, starts[0]


def _focus_blocks(concat: ir.Node) -> tuple[ir.Value, list[int]] | None:
    """(x, SpaceToDepth block index of each Concat input) when ``concat`` is a Focus layer."""
    if len(concat.inputs) != 4 or concat.attributes.get_int("axis", 0) not in (1, -3):
        return None
    source, blocks = None, []
    for value in concat.inputs:
        outer = _strided_slice(value) if value is not None else None
        inner = _strided_slice(outer[0]) if outer is not None else None
        if outer is None or inner is None or outer[1] == inner[1]:
            return None
        x = inner[0]
        if x.shape is None or len(x.shape) != 4 or (source is not None and x is not source):
            return None
        source = x
        offsets = {outer[1]: outer[2], inner[1]: inner[2]}
        blocks.append(2 * offsets[_H] + offsets[_W])
    if sorted(blocks) != [0, 1, 2, 3]:
        return None
    return source, blocks


def _only_conv_reader(value: ir.Value) -> ir.Node | None:
    """The Conv (group 1, constant weight only it reads) that is ``value``'s only reader, if any."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    node, index = uses[0].node, uses[0].idx
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or index != 0:
        return None
    weight = node.inputs[1]
    if node.attributes.get_int("group", 1) != 1 or weight is None or weight.const_value is None:
        return None
    if len(weight.uses()) != 1 or weight.is_graph_input() or weight.is_graph_output():
        return None
    return node


class FuseSpaceToDepth(GraphPass):
    """Replace YOLO's Focus slicing (six strided Slices and a Concat) with one SpaceToDepth."""

    name = "fuse_space_to_depth"
    preconditions = (
        "a Concat on the channel axis of four inputs, each a stride-2 Slice (start 0 or 1, to the end) on H of "
        "a stride-2 Slice on W (or W of H) of the same rank-4 tensor, covering all four offsets; its channel "
        "count is static; the Concat output is no graph output"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fused = 0
        for graph in model.graphs():
            for node in list(graph):
                if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
                    fused += self._fuse(graph, node)
        if fused:
            self.note(f"replaced {fused} Focus layers with SpaceToDepth")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, graph: ir.Graph, concat: ir.Node) -> int:
        found = _focus_blocks(concat)
        if found is None:
            return 0
        x, blocks = found
        channels = x.shape[1]
        out = concat.outputs[0]
        if not isinstance(channels, int) or out.is_graph_output():
            self.refuse(concat, "the channel count is dynamic or the Concat is a graph output")
            return 0
        s2d = ir.node("SpaceToDepth", [x], attributes={"blocksize": 2}, name=f"{concat.name}_space_to_depth")
        graph.insert_before(concat, s2d)
        # Concat channel j = block blocks[j // C], channel j % C = SpaceToDepth channel index[j].
        index = np.array([blocks[j // channels] * channels + j % channels for j in range(4 * channels)], np.int64)
        conv = _only_conv_reader(out)
        if conv is not None:
            weight = conv.inputs[1].const_value.numpy()
            permuted = np.empty_like(weight)
            permuted[:, index] = weight  # Conv(Gather(s, index), W) == Conv(s, W')
            name = f"{conv.inputs[1].name}_space_to_depth"
            new_weight = ir.Value(
                name=name, shape=ir.Shape(permuted.shape), type=conv.inputs[1].type, const_value=ir.tensor(permuted, name=name)
            )
            graph.register_initializer(new_weight)
            conv.replace_input_with(1, new_weight)
            result = s2d.outputs[0]
        else:
            indices = ir.Value(
                name=f"{concat.name}_space_to_depth_order",
                shape=ir.Shape(index.shape),
                type=ir.TensorType(ir.DataType.INT64),
                const_value=ir.tensor(index, name=f"{concat.name}_space_to_depth_order"),
            )
            graph.register_initializer(indices)
            gather = ir.node("Gather", [s2d.outputs[0], indices], attributes={"axis": 1}, name=f"{concat.name}_order")
            graph.insert_before(concat, gather)
            result = gather.outputs[0]
        result.shape, result.type = out.shape, out.type
        out.replace_all_uses_with(result)
        graph.remove(concat, safe=True)
        return 1
