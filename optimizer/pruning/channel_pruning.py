"""Remove channels of prunable groups, then refit the layers that read them.

``channel_scores`` ranks a group's channels (L1/L2 norm of the roots' filters, or the
data-aware energy each channel feeds into its consumers); ``apply_channel_pruning`` slices
every weight the group touches and, with input statistics, refits each consumer Conv's kept
input weights and bias by least squares so its output on the calibration data changes as
little as possible (``reconstruct.refit_columns``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.pruning.activations import LayerStats
from optimizer.pruning.channels import ChannelGroup
from optimizer.pruning.layers import const_array, set_const
from optimizer.pruning.reconstruct import refit_columns

CRITERIA = ("l1", "l2", "activation")


def channel_scores(group: ChannelGroup, criterion: str, stats: dict[str, LayerStats] | None) -> np.ndarray:
    """Importance of each channel of ``group`` (higher = keep)."""
    score = np.zeros(group.channels)
    if criterion == "activation" and stats:
        # Energy channel c sends into each consumer: Σ_k H[(k,c),(k,c)] · ‖W[:, c, k]‖², a
        # diagonal estimate of how much that consumer's output moves if c disappears.
        for node in group.consumers:
            s = stats.get(node.name)
            w = const_array(node.inputs[1])
            if s is None or node.op_type != "Conv":
                continue
            o, i, kh, kw = w.shape
            energy = np.diag(s.hessian)[:-1].reshape(kh * kw, i)  # (kh, kw, I) column order
            per_col = (w.transpose(2, 3, 1, 0).reshape(kh * kw, i, o) ** 2).sum(-1)
            score += (energy * per_col).sum(0)
        if score.any():
            return score
    for node in group.roots:
        w = const_array(node.inputs[1]).reshape(group.channels, -1).astype(np.float64)
        norm = np.abs(w).sum(1) if criterion == "l1" else np.sqrt((w**2).sum(1))
        score += norm / max(norm.mean(), 1e-12)  # roots compete on equal footing
    return score


def kept_count(channels: int, ratio: float, multiple: int = 4) -> int:
    """Channels left after removing ``ratio`` of them, rounded to a multiple TensorRT likes."""
    keep = channels * (1.0 - ratio)
    keep = int(round(keep / multiple)) * multiple
    return int(min(channels, max(multiple, keep)))


def _take(array: np.ndarray, keep: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.take(array, keep, axis=axis))


def apply_channel_pruning(
    model: ir.Model,
    plan: dict[int, np.ndarray],
    groups: list[ChannelGroup],
    stats: dict[str, LayerStats] | None,
    *,
    reconstruct: bool = True,
    damp: float = 0.01,
) -> dict[str, str]:
    """Keep ``plan[group id]`` (sorted channel indices) of each planned group; returns a note per refit layer."""
    graph = model.graph
    out_keep: dict[str, np.ndarray] = {}
    in_keep: dict[str, np.ndarray] = {}
    nodes: dict[str, ir.Node] = {}
    for g in groups:
        keep = plan.get(g.id)
        if keep is None:
            continue
        for node in g.roots:
            out_keep[node.name] = keep
            nodes[node.name] = node
        for node in g.consumers:
            in_keep[node.name] = keep
            nodes[node.name] = node
        for node in g.depthwise:
            set_const(graph, node, 1, _take(const_array(node.inputs[1]), keep, 0), "pruned")
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                set_const(graph, node, 2, _take(const_array(node.inputs[2]), keep, 0), "pruned")
            node.attributes["group"] = ir.AttrInt64("group", len(keep))
        for ref in g.params:
            set_const(graph, ref.node, ref.index, _take(const_array(ref.node.inputs[ref.index]), keep, ref.axis), "pruned")

    notes: dict[str, str] = {}
    for name, node in nodes.items():
        w = const_array(node.inputs[1])
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        b = const_array(node.inputs[2]) if has_bias else None
        if node.op_type == "ConvTranspose":  # W[I, O/g, kh, kw]: input channels on axis 0
            set_const(graph, node, 1, _take(w, in_keep[name], 0), "pruned")
            notes[name] = "input channels sliced (ConvTranspose: no refit)"
            continue
        if name in in_keep:
            keep = in_keep[name]
            s = (stats or {}).get(name)
            if reconstruct and s is not None:
                o, i, kh, kw = w.shape
                matrix = w.transpose(0, 2, 3, 1).reshape(o, -1)
                bias = b if b is not None else np.zeros(o, dtype=w.dtype)
                mask = np.zeros((kh * kw, i), dtype=bool)
                mask[:, keep] = True
                mask = np.concatenate([mask.ravel(), [True]])  # the bias column always stays
                fitted = refit_columns(np.concatenate([matrix, bias[:, None]], axis=1), s.hessian, mask, damp=damp)
                w = fitted[:, :-1].reshape(o, kh, kw, len(keep)).transpose(0, 3, 1, 2).astype(w.dtype)
                b = fitted[:, -1].astype(w.dtype)
                notes[name] = f"input channels {i} → {len(keep)}, refit by least squares on {s.rows} rows"
            else:
                w = _take(w, keep, 1)
                notes[name] = f"input channels {w.shape[1]} kept (no refit)"
        if name in out_keep:
            w = _take(w, out_keep[name], 0)
            b = _take(b, out_keep[name], 0) if b is not None else None
        set_const(graph, node, 1, np.ascontiguousarray(w), "pruned")
        if b is not None:
            set_const(graph, node, 2, np.ascontiguousarray(b), "pruned")

    # Channel counts changed inside the graph: drop stale intermediate shapes (I/O are pinned).
    for node in graph:
        for v in node.outputs:
            if not v.is_graph_output():
                v.shape = None
    return notes

