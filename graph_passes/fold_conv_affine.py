"""fold_conv_affine: fold a per-channel Mul/Add/BatchNormalization after a Conv or ConvTranspose into it.

``Add(Conv(x, W, b), c)`` -> ``Conv(x, W, b + c)`` and ``Mul(Conv(x, W, b), s)`` ->
``Conv(x, W * s, b * s)`` when ``c``/``s`` is constant along every axis but the channel axis
(shape ``[C,1,1]``, ``[1,C,1,1]``, a scalar, ...). Exporters emit these as a bias-less Conv
followed by an Add (paddle2onnx's SE blocks, a ConvTranspose's bias) or a scalar Mul;
folding them also exposes a following BatchNormalization to ``fold_batchnorm_into_conv``.

onnxscript's ``conv_affine_fusion_rule`` needs a scalar Mul *and* Add and a bias; this
covers each alone, per channel, with or without a bias, and ConvTranspose (whose weight is
laid out ``[C_in, C_out / group, k...]``). An inference BatchNormalization is one more
per-channel scale and shift, so ``ConvTranspose -> Add(bias) -> BatchNormalization`` (PP-OCR
det's upsampling head, which ``fold_batchnorm_into_conv`` cannot see through) folds in one
fixed-point loop.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass, all_graphs, summarize_counts

_CONVS = ("Conv", "ConvTranspose")
_AFFINE = ("Add", "Mul", "BatchNormalization")


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _is_initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _per_channel(array: np.ndarray, rank: int, channels: int) -> np.ndarray | str:
    """The constant as a ``[channels]`` vector, or why it is not constant off the channel axis."""
    if array.ndim > rank:
        return f"constant of rank {array.ndim} would raise the output's rank {rank}"
    shape = (1,) * (rank - array.ndim) + array.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]):
        return f"constant of shape {list(array.shape)} varies along an axis other than the channel axis"
    if shape[1] not in (1, channels):
        return f"constant of shape {list(array.shape)} does not match the {channels} output channels"
    return np.broadcast_to(array.reshape(shape[1]), (channels,))


class FoldConvAffine(GraphPass):
    """Fold per-channel constant Mul/Add/BatchNormalization after Conv/ConvTranspose into weight and bias."""

    name = "fold_conv_affine"
    preconditions = (
        "the Conv's output feeds only this Mul/Add and is no graph output; weight (and bias, if any) are "
        "constant initializers read by no other node; the other operand is a constant of the weight's dtype "
        "that varies only along the channel axis; a BatchNormalization is in inference mode with constant parameters"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded: Counter = Counter()
        changed = True
        while changed:  # Conv -> Mul -> Add folds one step per sweep
            changed = False
            for graph in all_graphs(model):
                for node in list(graph):
                    if node.graph is None or node.op_type not in _AFFINE or node.domain not in ("", "ai.onnx"):
                        continue
                    conv_op = self._fold(graph, node)
                    if conv_op:
                        folded[f"{conv_op}+{node.op_type}"] += 1
                        changed = True
        total = sum(folded.values())
        if total:
            self.note(f"folded {total} ({summarize_counts(folded)})")
        return ir.passes.PassResult(model, modified=bool(total))

    def _fold(self, graph: ir.Graph, node: ir.Node) -> str | None:
        """Fold ``node`` into the Conv feeding it; return that Conv's op type, or None."""
        if node.op_type == "BatchNormalization":
            return self._fold_batchnorm(graph, node)
        for conv_side in (0, 1):
            conv_out, const = node.inputs[conv_side], node.inputs[1 - conv_side]
            conv = conv_out.producer() if conv_out is not None else None
            array = _const_array(const)
            if conv is None or conv.op_type not in _CONVS or conv.domain not in ("", "ai.onnx") or array is None:
                continue
            reason = self._refusal(conv, conv_out, array)
            if isinstance(reason, str):
                self.refuse(node, reason)
                return None
            w, b, vector = reason
            scale, shift = (None, vector) if node.op_type == "Add" else (vector, None)
            self._rewrite(graph, node, conv, w, b, scale, shift)
            return conv.op_type
        return None

    def _fold_batchnorm(self, graph: ir.Graph, node: ir.Node) -> str | None:
        """An inference BatchNormalization is a per-channel scale and shift."""
        conv_out = node.inputs[0]
        conv = conv_out.producer() if conv_out is not None else None
        if conv is None or conv.op_type not in _CONVS or conv.domain not in ("", "ai.onnx"):
            return None
        mode = node.attributes.get("training_mode")
        if len(node.outputs) != 1 or (mode is not None and (mode.is_ref() or mode.as_int() != 0)):
            self.refuse(node, "BatchNormalization runs in training mode (batch statistics)")
            return None
        params = [_const_array(v) for v in node.inputs[1:5]]
        if len(params) != 4 or any(p is None for p in params):
            self.refuse(node, "BatchNormalization scale, bias, mean or variance is not constant")
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = node.attributes.get_float("epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        parts = self._refusal(conv, conv_out, np.ones(1, conv.inputs[1].dtype.numpy() if conv.inputs[1].dtype else np.float32))
        if isinstance(parts, str):
            self.refuse(node, parts)
            return None
        w, b, ones = parts
        if scale.shape != ones.shape:
            self.refuse(node, "BatchNormalization channels differ from the convolution's")
            return None
        self._rewrite(graph, node, conv, w, b, scale, beta - mean * scale)
        return conv.op_type

    def _refusal(self, conv: ir.Node, conv_out: ir.Value, array: np.ndarray):
        """Why ``conv`` cannot absorb the constant, or (weight, bias, per-channel vector)."""
        if len(conv_out.uses()) != 1 or conv_out.is_graph_output():
            return f"the {conv.op_type} output is also read elsewhere"
        weight = conv.inputs[1]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if not _is_initializer(weight):
            return f"the {conv.op_type} weight is not a constant initializer"
        if bias is not None and not _is_initializer(bias):
            return f"the {conv.op_type} bias is not a constant initializer"
        for v in (weight, bias):
            if v is not None and len(v.uses()) != 1:
                return f"{v.name} is shared with another node (folding would copy it)"
        w = weight.const_value.numpy()
        if array.dtype != w.dtype or not np.issubdtype(w.dtype, np.floating):
            return f"constant dtype {array.dtype} differs from the weight's {w.dtype}"
        group = conv.attributes.get_int("group", 1)
        channels = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * group
        vector = _per_channel(array, w.ndim, channels)
        if isinstance(vector, str):
            return vector
        return w, (bias.const_value.numpy() if bias is not None else None), vector

    def _rewrite(self, graph, node, conv, w, b, scale, shift) -> None:
        """conv(x) * scale + shift, per output channel, folded into the weight and bias."""
        channels = (scale if scale is not None else shift).shape[0]
        b = np.zeros(channels, w.dtype) if b is None else b
        new_w = None
        if scale is not None:
            if conv.op_type == "Conv":
                new_w = w * scale.reshape((channels,) + (1,) * (w.ndim - 1))
            else:  # ConvTranspose: [C_in, C_out/group, k...]; output channel g*C_out/group + j
                group = conv.attributes.get_int("group", 1)
                per_group = w.reshape((group, w.shape[0] // group) + w.shape[1:])
                new_w = (per_group * scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))).reshape(w.shape)
            new_w = new_w.astype(w.dtype)
            b = b * scale
        new_b = (b + shift if shift is not None else b).astype(w.dtype)
        if new_w is not None:
            conv.replace_input_with(1, self._initializer(graph, conv.inputs[1].name, new_w))
        bias_value = self._initializer(graph, f"{conv.name or conv.outputs[0].name}_bias", new_b)
        if len(conv.inputs) > 2:
            conv.replace_input_with(2, bias_value)
        else:
            # onnx-ir nodes have fixed arity: rebuild the Conv with a bias input.
            new_conv = ir.Node(
                conv.domain,
                conv.op_type,
                [*conv.inputs, bias_value],
                attributes=list(conv.attributes.values()),
                version=conv.version,
                name=conv.name,
            )
            graph.insert_before(conv, new_conv)
            new_conv.outputs[0].name, new_conv.outputs[0].type = None, conv.outputs[0].type
            conv.outputs[0].replace_all_uses_with(new_conv.outputs[0])
            graph.remove(conv, safe=True)
            conv = new_conv
        out = node.outputs[0]
        name, type_, shape = out.name, out.type, out.shape
        out.replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        # Keep the Add/Mul's output name and type: it may be a graph output or a name users know.
        conv.outputs[0].name, conv.outputs[0].type, conv.outputs[0].shape = name, type_, shape

    def _initializer(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        name = base
        i = 0
        while name in graph.initializers:
            i += 1
            name = f"{base}_folded{i}" if i > 1 else f"{base}_folded"
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(np.ascontiguousarray(array), name=name),
        )
        graph.register_initializer(value)
        return value
