"""Random feeds for a model's inputs: the one generator behind shape probing and pass verification.

Sizes are checked before anything is allocated: a feed set larger than ``max_feed_bytes()``
(``TRTFORGE_MAX_FEED_BYTES``, default 2 GiB) is refused with one line, so a hostile model that
declares a 2^40 dim costs nothing. Inputs that random data cannot stand for (sequences,
optionals, maps) are named by ``unfeedable_inputs``; callers then verify what they can.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.errors import ConfigError, InputError
from optimizer.model import TensorSpec

DEFAULT_MAX_FEED_BYTES = 2 << 30
#: A shape probe never tries feeds larger than this: past it a model that has not run yet is
#: not about to, and every activation of a large image would be fetched.
PROBE_MAX_FEED_BYTES = 64 << 20
#: ...and never lets ONNX Runtime hold more than this for its activations (every one is fetched):
#: a KV-cache decoder tried at sequence 16000 wanted 24 GB and was killed by the OOM killer.
PROBE_MAX_ACTIVATION_BYTES = 4 << 30


def max_feed_bytes() -> int:
    """The largest random feed set trtforge allocates (env ``TRTFORGE_MAX_FEED_BYTES``)."""
    text = os.environ.get("TRTFORGE_MAX_FEED_BYTES", "")
    try:
        return int(text) if text else DEFAULT_MAX_FEED_BYTES
    except ValueError:
        raise ConfigError(f"TRTFORGE_MAX_FEED_BYTES is {text!r}; set it to a number of bytes") from None


# Element types ONNX Runtime's Python API takes from numpy (and random_array can make).
_FEEDABLE = {
    ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BOOL, ir.DataType.STRING,
    ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
    ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64,
}


def unfeedable_inputs(model: ir.Model) -> dict[str, str]:
    """Graph inputs random tensors cannot stand for, with the reason."""
    reasons = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        kind = type(value.type).__name__ if value.type is not None else None
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            reasons[value.name] = f"input '{value.name}' is a {kind.replace('Type', '').lower()}, not a tensor"
        elif value.dtype is None:
            reasons[value.name] = f"input '{value.name}' has no element type"
        elif value.dtype not in _FEEDABLE:
            reasons[value.name] = (
                f"input '{value.name}' is {value.dtype.name}, which ONNX Runtime's Python API cannot be fed"
            )
    return reasons


def _nbytes(dtype: np.dtype, shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count * max(dtype.itemsize, 1)


def _spec_nbytes(spec: TensorSpec, shape: Sequence[int]) -> int:
    dtype = np.dtype(spec.dtype) if spec.dtype not in ("unknown", "object") else np.dtype(np.float32)
    return _nbytes(dtype, shape)


def feed_nbytes(specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]) -> int:
    """Bytes random feeds of ``shapes`` would take (inputs without a shape count 0)."""
    return sum(_spec_nbytes(s, shapes[s.name]) for s in specs if s.name in shapes)


def check_feed_size(specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]) -> None:
    """InputError before any allocation when the feeds would exceed ``max_feed_bytes()``."""
    limit = max_feed_bytes()
    total = 0
    for spec in specs:
        shape = shapes.get(spec.name)
        if shape is None:
            continue
        total += _spec_nbytes(spec, shape)
        if total > limit:
            raise InputError(
                f"input '{spec.name}' of shape {list(shape)} would need {total / 2**30:.3g} GiB of random data, over the "
                f"{limit / 2**30:.3g} GiB limit; give smaller --shapes/--dim, real data with --data DIR, "
                f"or raise TRTFORGE_MAX_FEED_BYTES"
            )


def random_integers(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], name: str = "") -> np.ndarray:
    """Small non-negative integers [0, 4), safe as indices, lengths and ids; an input named like a
    mask gets 0/1, what masks hold (a transformer's ``(1 - mask) * finfo.min`` turns 2 into +inf)."""
    high = 2 if "mask" in name.lower() else 4
    return rng.integers(0, high, size=shape).astype(dtype)


def random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], name: str = "") -> np.ndarray:
    """Uniform [-1, 1) floats; integers from ``random_integers`` (``name``: the input's)."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating) or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        return random_integers(rng, dtype, shape, name)
    if dtype == np.object_:
        return rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
    raise ConfigError(f"cannot generate random data of dtype {dtype}; pass real data with --data DIR")


def random_feeds(specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs at exactly ``shapes`` (one full shape per input); size-checked first."""
    missing = [s.name for s in specs if s.name not in shapes]
    if missing:
        raise ConfigError(f"no shape for input(s) {missing}; give them with --shapes")
    check_feed_size(specs, shapes)
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(object) if spec.dtype == "object" else np.dtype(spec.dtype)
        feeds[spec.name] = random_array(rng, dtype, tuple(int(d) for d in shapes[spec.name]), spec.name)
    return feeds


_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _activations(model: ir.Model) -> list[str]:
    """Names of the main graph's node outputs that may be float activations (see ``_empty_activation``)."""
    names = []
    for node in model.graph:
        for value in node.outputs:
            if value.name and (value.dtype is None or value.dtype in _FLOATS):
                names.append(value.name)
    return names


def _empty_activation(outputs: Mapping[str, np.ndarray]) -> str | None:
    """An empty float tensor of rank >= 2: the shape is too small for the network (a downsampling
    stack ran out of pixels). ONNX Runtime carries on through it; TensorRT refuses to build.
    Empty integer shape tensors are ordinary shape arithmetic and do not count."""
    for name, array in outputs.items():
        if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.ndim >= 2 and array.size == 0:
            return name
    return None


def ort_probe(model: ir.Model):
    """``probe(shapes) -> None | reason``: does ONNX Runtime run ``model`` on random inputs of ``shapes``?

    The session is built once, on first use, and shared by every probe (a session is
    shape-agnostic), so trying a ladder of sizes costs one load and a few small runs. A size at
    which an output or a float activation comes out empty does not count as running.
    """
    from optimizer.errors import TrtforgeError
    from optimizer.model import input_specs, structural_problem
    from optimizer.runners import session_for

    specs = input_specs(model)
    blocked = unfeedable_inputs(model)
    state: dict = {}

    def probe(shapes: Mapping[str, Sequence[int]]) -> str | None:
        if blocked:
            return next(iter(blocked.values()))
        if feed_nbytes(specs, shapes) > PROBE_MAX_FEED_BYTES:
            return f"the feeds would exceed the probe's {PROBE_MAX_FEED_BYTES >> 20} MiB"
        if "runner" not in state:
            try:
                state["runner"] = session_for(model, outputs=_activations(model), optimization="disable", prepack=False,
                                              max_activation_bytes=PROBE_MAX_ACTIVATION_BYTES)
            except TrtforgeError as exc:
                if problem := structural_problem(model):  # not a shape question: say so, once
                    raise InputError(f"this model is invalid: {problem}; fix it at its source (the exporter) and retry") from None
                state["runner"], state["load_error"] = None, " ".join(str(exc).split())[:300]
        if state["runner"] is None:
            return state["load_error"]
        try:
            outputs = state["runner"].run(random_feeds(specs, shapes, seed=0))
        except TrtforgeError as exc:
            if "BFCArena" in str(exc) or "bfc_arena" in str(exc):  # ORT's arena refused: the cap above
                return f"its activations at these shapes need more than the probe's {PROBE_MAX_ACTIVATION_BYTES >> 30} GiB"
            return " ".join(str(exc).split())[:300]
        empty = _empty_activation(outputs)
        return f"tensor '{empty}' comes out empty at these shapes" if empty else None

    return probe
