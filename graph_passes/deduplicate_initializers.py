"""deduplicate_initializers: initializers with equal dtype, shape and bytes become one.

onnx-ir's ``DeduplicateHashedInitializersPass`` hashes every initializer in full: on a 2.7 GB
external-data model that reads every weight page (5 s, and gigabytes of RssFile) to find
nothing. Here tensors are grouped by dtype and shape first, then by their first and last
64 KiB; only tensors still in a group are hashed in full and compared byte for byte. Random
or trained weights differ in their first bytes, so big models cost a few page reads.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from graph_passes._base import GraphPass

_SAMPLE_BYTES = 1 << 16


def _count_initializers(model: ir.Model) -> int:
    return sum(len(g.initializers) for g in model.graphs())


def _flat_bytes(tensor) -> np.ndarray | None:
    try:
        array = tensor.numpy()
    except Exception:  # unloadable or exotic data: never merged
        return None
    if array.dtype == object:
        return None
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _sample(data: np.ndarray) -> bytes:
    if data.size <= 2 * _SAMPLE_BYTES:
        return data.tobytes()
    return data[:_SAMPLE_BYTES].tobytes() + data[-_SAMPLE_BYTES:].tobytes()


def _groups(values: list[ir.Value], key) -> list[list[ir.Value]]:
    buckets: dict = defaultdict(list)
    for v in values:
        k = key(v)
        if k is not None:
            buckets[k].append(v)
    return [b for b in buckets.values() if len(b) > 1]


class DeduplicateInitializers(GraphPass):
    """Merge initializers with identical dtype, shape and contents (per graph; cheap on big models)."""

    name = "deduplicate_initializers"
    preconditions = (
        "the duplicates are in the same graph and neither is a graph input or output (those are part "
        "of the model's signature); contents are compared byte for byte"
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _count_initializers(model)
        exposed = 0
        merged = 0
        for graph in model.graphs():
            candidates = []
            for value in graph.initializers.values():
                if value.is_graph_input() or value.is_graph_output():
                    exposed += 1
                elif value.const_value is not None:
                    candidates.append(value)
            data: dict[ir.Value, np.ndarray | None] = {}

            def flat(v: ir.Value) -> np.ndarray | None:
                if v not in data:
                    data[v] = _flat_bytes(v.const_value)
                return data[v]

            by_type = _groups(candidates, lambda v: (v.const_value.dtype, tuple(v.const_value.shape)))
            for group in by_type:
                for sampled in _groups(group, lambda v: None if flat(v) is None else _sample(flat(v))):
                    for same in _groups(sampled, lambda v: hashlib.sha256(flat(v)).digest()):
                        keep = same[0]
                        for dup in same[1:]:
                            if not np.array_equal(flat(dup), flat(keep)):
                                continue  # a hash collision; keep both
                            dup.replace_all_uses_with(keep)
                            graph.initializers.pop(dup.name)
                            merged += 1
        after = _count_initializers(model)
        if merged:
            self.note(f"merged {merged} duplicate initializers ({before} -> {after})")
        if exposed:
            self.note(f"left {exposed} initializers alone that are graph inputs or outputs")
        return ir.passes.PassResult(model, modified=bool(merged))
