"""Numeric verification of graph passes against the original model in ONNX Runtime (CPU)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.errors import ConfigError, InputError, ValidationError, VerificationError
from optimizer.feeds import random_feeds, unfeedable_inputs
from optimizer.model import TensorSpec, input_specs, structural_problem
from optimizer.runners import session_for


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


def generate_feeds(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None, seed: int
) -> dict[str, np.ndarray]:
    """Random inputs for ``specs``; ``shapes`` gives a full shape per input whose dims are dynamic.

    Pinned shapes must agree with the model (rank, static dims): ConfigError naming the input otherwise.
    """
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise ConfigError(
            f"shapes given for {unknown}, which are not inputs of the model; its inputs are {[s.name for s in specs]}"
        )
    full: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        declared = spec.shape
        pinned = shapes.get(spec.name)
        if pinned is None:
            if declared is None or any(_is_dynamic(d) for d in declared):
                raise ConfigError(
                    f"input '{spec.name}' has dynamic shape {_show(declared)}: give it with --shapes "
                    f"'{spec.name}:{_example(declared)}' (or real data with --data DIR)"
                )
            full[spec.name] = tuple(declared)
            continue
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
                        f"input '{spec.name}': pinned shape {shape} has {got} at axis {i}, the model declares {want} there"
                    )
        if any(d < 0 for d in shape):
            raise ConfigError(f"input '{spec.name}': pinned shape {shape} has a negative dimension")
        full[spec.name] = shape
    return random_feeds(specs, full, seed)


def _show(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def _example(shape) -> str:
    if shape is None:
        return "1x3x224x224"
    return "x".join(str(d) if not _is_dynamic(d) else "1" for d in shape)


#: (rtol, atol) per output dtype: an output is judged at its own precision.
TOLERANCES = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (2e-3, 1e-3),
    "bfloat16": (1.6e-2, 8e-3),
}


def tolerance_for(dtype: np.dtype, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """The tolerance for an output of ``dtype``; explicit values override the float32 default only."""
    default = TOLERANCES.get(np.dtype(dtype).name, TOLERANCES["float32"])
    if np.dtype(dtype).name in ("float16", "bfloat16", "float64"):
        return default
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def compare(
    reference: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    rtol: float | None = None,
    atol: float | None = None,
) -> list[OutputDiff]:
    """Per-output differences of ``got`` against ``reference`` (see OutputDiff), each output at
    its dtype's tolerance (``TOLERANCES``; ``rtol``/``atol`` override the float32 one)."""
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
        out_rtol, out_atol = tolerance_for(ref.dtype, rtol, atol)
        tolerance = out_atol + out_rtol * scale
        ratio = 0.0 if max_abs == 0 else (max_abs / tolerance if tolerance > 0 else np.inf)
        diffs.append(OutputDiff(name, max_abs, max_rel, ratio))
    return diffs


def _runner(model: ir.Model):
    # A few check runs per session: pre-packing the weights would cost more than the runs.
    return session_for(model, optimization="disable", prepack=False)


def _loads(model: ir.Model) -> str | None:
    """None when ONNX Runtime can load ``model``, else why not."""
    try:
        _runner(model)
    except InputError as exc:
        return str(exc)
    return None


class Verifier:
    """Checks that a transformed model still computes what the original computed.

    Reference outputs are captured once, from ONNX Runtime (CPU, graph optimisations off) on
    ``model`` as it is at construction time. Inputs are ``feeds`` when given (real data), else
    one seeded random sample at ``shapes`` (``{"x": (1, 3, 48, 320)}``; dynamic dims nobody
    pinned are resolved by ``optimizer.shapes``: batch-like 1, the rest the first size ORT runs).

    Where random inputs cannot run the model (sequence or optional inputs, shape tensors and
    indices that need a valid range, ops ONNX Runtime lacks) numeric verification is partial:
    ``partial`` says why and how to make it full, and ``check`` still holds the ONNX checker
    with strict shape inference. A model the checker itself rejects is an InputError.

    ``check`` re-runs a transformed model on the same inputs and raises VerificationError naming
    the pass and the worst output when an output moves by more than its dtype's tolerance
    (``TOLERANCES``), or changes dtype, shape or NaN/inf pattern.
    """

    def __init__(
        self,
        model: ir.Model,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        seed: int = 0,
    ) -> None:
        self.rtol, self.atol, self.seed = rtol, atol, seed
        self.output_names = [v.name for v in model.graph.outputs]
        self.partial: str | None = None
        self.feeds: list[dict] = []
        self.reference: list[dict] = []
        self.synthetic = not feeds
        specs = input_specs(model)
        if feeds:
            self.feeds = [self._checked_feed(dict(f), specs, i) for i, f in enumerate(feeds)]
        else:
            self.feeds = self._random_feeds(model, specs, shapes)
        self._unloadable = False
        self._baseline_problem: str | None = None
        if self.feeds:
            self._take_reference(model)
        if self.partial is not None:
            self._baseline_problem = structural_problem(model)
            if self._baseline_problem is not None and not self._unloadable:
                self._unloadable = _loads(model) is not None
            if self._unloadable and self._baseline_problem is not None:
                raise InputError(
                    f"this model is invalid: {self._baseline_problem}; fix it at its source (the exporter) and retry"
                )

    def _random_feeds(self, model: ir.Model, specs, shapes) -> list[dict]:
        blocked = unfeedable_inputs(model)
        if blocked:
            self.partial = f"{next(iter(blocked.values()))}: random inputs cannot stand for it"
            return []
        pinned = dict(shapes or {})
        unpinned = [s for s in specs if s.name not in pinned and (s.shape is None or any(_is_dynamic(d) for d in s.shape))]
        if unpinned:
            from optimizer.feeds import ort_probe
            from optimizer.shapes import ShapeProfile, resolve_shapes

            given = ShapeProfile({n: (tuple(v), tuple(v), tuple(v)) for n, v in pinned.items()}) if pinned else None
            resolved = resolve_shapes(specs, profiles=[given] if given else [], probe=ort_probe(model))
            if resolved.unresolved:
                self.partial = next(iter(resolved.unresolved.values()))
                return []
            pinned = {**resolved.opt(), **pinned}
        return [generate_feeds(specs, pinned, self.seed)]

    def _take_reference(self, model: ir.Model) -> None:
        try:
            runner = _runner(model)
        except InputError as exc:
            self.partial = f"ONNX Runtime cannot load the original model ({exc})"
            self.feeds, self._unloadable = [], True
            return
        try:
            self.reference = [runner.run(f, self.output_names) for f in self.feeds]
        except (InputError, ValidationError) as exc:
            if not self.synthetic:
                raise InputError(f"the original model does not run on the given data: {exc}") from None
            self.partial = f"ONNX Runtime cannot run the original model on random inputs ({exc})"
            self.feeds, self.reference = [], []

    @property
    def numeric(self) -> bool:
        """True when ``check`` compares outputs (else it checks structure only: see ``partial``)."""
        return bool(self.reference)

    def describe_partial(self) -> str | None:
        """One line for the user when numeric verification was partial, with the way to make it full."""
        if self.partial is None:
            return None
        return (
            f"numeric verification was partial: {self.partial}; the ONNX checker, shape inference and the I/O "
            f"signature were verified; pass real samples with --data DIR for full verification"
        )

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
        if not self.reference:
            return []
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
        if not self.reference:
            # A problem the original already had (strict inference failing on a valid graph) is not the pass's.
            problem = structural_problem(model) if self._baseline_problem is None else None
            if problem is not None:
                raise VerificationError(
                    f"after pass '{after_pass}' the model fails the ONNX checker: {problem}; rerun without it "
                    f"(--skip {after_pass})"
                )
            return []
        try:
            diffs = self.measure(model)
        except (InputError, ValidationError) as exc:
            raise VerificationError(
                f"after pass '{after_pass}' the model no longer runs in ONNX Runtime: {exc}; "
                f"rerun without it (--skip {after_pass})"
            ) from None
        bad = [d for d in diffs if not d.ok]
        if bad:
            worst = max(bad, key=lambda d: (bool(d.problem), d.ratio))
            more = f" ({len(bad) - 1} more outputs out of tolerance)" if len(bad) > 1 else ""
            raise VerificationError(
                f"pass '{after_pass}' changed what the model computes: {worst.describe()} "
                f"(tolerance per output dtype){more}; rerun without it (--skip {after_pass})"
            )
        return diffs
