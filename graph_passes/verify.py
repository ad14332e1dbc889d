"""Numeric verification of graph passes against the original model in ONNX Runtime (CPU)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer.errors import ConfigError, InputError, ValidationError, VerificationError
from optimizer.model import TensorSpec, input_specs, save_model, to_proto_bytes


@dataclass(frozen=True)
class OutputDiff:
    """How far one output moved: worst absolute error, relative error and tolerance ratio.

    ``max_rel`` is ``max|got - ref| / max|ref|`` (normwise, against the output's scale) and
    ``ratio`` is ``max|got - ref| / (atol + rtol * max|ref|)``: above 1 the output is out of
    tolerance. NaN/inf must match exactly; a mismatch gives ``inf``.
    """

    name: str
    max_abs: float
    max_rel: float
    ratio: float
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem and self.ratio <= 1.0

    def describe(self) -> str:
        if self.problem:
            return f"output '{self.name}': {self.problem}"
        return f"output '{self.name}' max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g}"


def _is_dynamic(dim) -> bool:
    return not isinstance(dim, int) or dim < 0


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        # Small non-negative values: safe as indices, lengths and token ids.
        return rng.integers(0, 4, size=shape).astype(dtype)
    raise ConfigError(f"cannot generate random data of dtype {dtype}; pass feeds instead")


def generate_feeds(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None, seed: int
) -> dict[str, np.ndarray]:
    """Random inputs for ``specs``; ``shapes`` pins every dynamic dimension (ConfigError otherwise)."""
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise ConfigError(
            f"shapes given for {unknown}, which are not inputs of the model; its inputs are {[s.name for s in specs]}"
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        declared = spec.shape
        pinned = shapes.get(spec.name)
        if pinned is None:
            if declared is None or any(_is_dynamic(d) for d in declared):
                raise ConfigError(
                    f"input '{spec.name}' has dynamic shape {_show(declared)}: pin it, e.g. "
                    f"shapes={{'{spec.name}': {_example(declared)}}}, or pass feeds"
                )
            shape = tuple(declared)
        else:
            shape = tuple(int(d) for d in pinned)
            if declared is not None:
                if len(shape) != len(declared):
                    raise ConfigError(
                        f"input '{spec.name}': pinned shape {shape} has rank {len(shape)}, the model declares "
                        f"{_show(declared)} (rank {len(declared)})"
                    )
                for i, (want, got) in enumerate(zip(declared, shape)):
                    if not _is_dynamic(want) and want != got:
                        raise ConfigError(
                            f"input '{spec.name}': pinned shape {shape} has {got} at axis {i}, the model "
                            f"declares {want} there"
                        )
            if any(d < 0 for d in shape):
                raise ConfigError(f"input '{spec.name}': pinned shape {shape} has a negative dimension")
        feeds[spec.name] = _random_array(rng, np.dtype(spec.dtype), shape)
    return feeds


def _show(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def _example(shape) -> str:
    if shape is None:
        return "(1, 3, 224, 224)"
    dims = [str(d) if not _is_dynamic(d) else "1" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def compare(
    reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], rtol: float, atol: float
) -> list[OutputDiff]:
    """Per-output differences of ``got`` against ``reference`` (see OutputDiff)."""
    diffs = []
    for name, ref in reference.items():
        if name not in got:
            diffs.append(OutputDiff(name, np.inf, np.inf, np.inf, "is missing"))
            continue
        out = got[name]
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.dtype != out.dtype:
            diffs.append(OutputDiff(name, np.inf, np.inf, np.inf, f"dtype changed {ref.dtype} -> {out.dtype}"))
            continue
        if ref.shape != out.shape:
            diffs.append(OutputDiff(name, np.inf, np.inf, np.inf, f"shape changed {ref.shape} -> {out.shape}"))
            continue
        if ref.size == 0:
            diffs.append(OutputDiff(name, 0.0, 0.0, 0.0))
            continue
        if not (np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_):
            same = bool(np.array_equal(ref, out))
            diffs.append(OutputDiff(name, 0.0 if same else np.inf, 0.0 if same else np.inf, 0.0 if same else np.inf))
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            r, o = ref.astype(np.float64), out.astype(np.float64)
            matched = (np.isnan(r) & np.isnan(o)) | (np.isinf(r) & (r == o))
            err = np.where(matched, 0.0, np.abs(o - r))
            err = np.where(np.isnan(err), np.inf, err)  # NaN vs number, or inf vs -inf
            finite = np.abs(r[np.isfinite(r)])
            scale = float(finite.max()) if finite.size else 0.0
        max_abs = float(err.max())
        # Normwise: the error against the output's own scale. Element-wise relative error is
        # ill-conditioned where an output crosses zero (a logit of 1e-3 in a vector of 1e5s).
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
        tolerance = atol + rtol * scale
        ratio = 0.0 if max_abs == 0 else (max_abs / tolerance if tolerance > 0 else np.inf)
        diffs.append(OutputDiff(name, max_abs, max_rel, ratio))
    return diffs


def _runner(model: ir.Model):
    from optimizer.runners import OrtRunner

    data = to_proto_bytes(model)
    if data is not None:
        return OrtRunner(data, optimization="disable")
    # Over protobuf's limit: go through a file with external data.
    tmp = tempfile.TemporaryDirectory(prefix="trtforge-verify-")
    path = save_model(model, Path(tmp.name) / "model.onnx", external_data=True)
    runner = OrtRunner(path, optimization="disable")
    runner._tmpdir = tmp  # lives as long as the session
    return runner


class Verifier:
    """Checks that a transformed model still computes what the original computed.

    Reference outputs are captured once, from ONNX Runtime (CPU, graph optimisations off)
    on ``model`` as it is at construction time. Inputs are ``feeds`` when given, else one
    random sample generated from the declared input shapes and dtypes, with ``shapes``
    pinning dynamic dimensions (``{"x": (1, 3, 48, 320)}``). ``check`` re-runs a transformed
    model on the same inputs and raises VerificationError naming the pass and the worst
    output when an output moves by more than ``atol + rtol * max|reference output|``, or
    changes dtype, shape or NaN/inf pattern. Random integer inputs are drawn from [0, 4):
    models that index with them need feeds or dims of at least 4.
    """

    def __init__(
        self,
        model: ir.Model,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        seed: int = 0,
    ) -> None:
        self.rtol, self.atol, self.seed = rtol, atol, seed
        specs = input_specs(model)
        if feeds:
            self.feeds = [self._checked_feed(dict(f), specs, i) for i, f in enumerate(feeds)]
            self.synthetic = False
        else:
            self.feeds = [generate_feeds(specs, shapes, seed)]
            self.synthetic = True
        self.output_names = [v.name for v in model.graph.outputs]
        try:
            runner = _runner(model)
            self.reference = [runner.run(f, self.output_names) for f in self.feeds]
        except (InputError, ValidationError) as exc:
            raise InputError(f"cannot take reference outputs of the original model: {exc}") from None

    @staticmethod
    def _checked_feed(feed: dict, specs: Sequence[TensorSpec], index: int) -> dict:
        names = [s.name for s in specs]
        missing = [n for n in names if n not in feed]
        extra = [n for n in feed if n not in names]
        if missing or extra:
            raise ConfigError(
                f"feeds[{index}] does not fit the model's inputs {names}: "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {extra}" if extra else "")
            )
        return {k: np.asarray(v) for k, v in feed.items()}

    def measure(self, model: ir.Model) -> list[OutputDiff]:
        """Per-output error of ``model`` against the reference, worst sample per output."""
        runner = _runner(model)
        worst: dict[str, OutputDiff] = {}
        for feed, ref in zip(self.feeds, self.reference):
            got = runner.run(feed, [n for n in self.output_names if n in runner.output_names] or None)
            for diff in compare(ref, got, self.rtol, self.atol):
                prev = worst.get(diff.name)
                if prev is None or (diff.problem and not prev.problem) or diff.ratio > prev.ratio:
                    worst[diff.name] = diff
        return list(worst.values())

    def check(self, model: ir.Model, after_pass: str) -> list[OutputDiff]:
        """Raise VerificationError when ``model`` no longer matches the reference; else the diffs."""
        try:
            diffs = self.measure(model)
        except (InputError, ValidationError) as exc:
            raise VerificationError(
                f"after pass '{after_pass}' the model no longer runs in ONNX Runtime: {exc}; "
                f"rerun without it (skip=['{after_pass}'])"
            ) from None
        bad = [d for d in diffs if not d.ok]
        if bad:
            worst = max(bad, key=lambda d: (bool(d.problem), d.ratio))
            more = f" ({len(bad) - 1} more outputs out of tolerance)" if len(bad) > 1 else ""
            raise VerificationError(
                f"pass '{after_pass}' changed what the model computes: {worst.describe()} "
                f"(tolerance rtol={self.rtol:g}, atol={self.atol:g}){more}; rerun without it (skip=['{after_pass}'])"
            )
        return diffs
