"""The validation record: typed results shared by validation, the gates and every renderer.

``optimizer.validate`` and the divergence search write these; ``optimizer.gates``, the
Markdown/terminal/HTML reports, JUnit and the matrix index read them by attribute, so a
renamed field fails at import and in the type checker, not as a ``KeyError`` in a release job.

The JSON form (``to_json``) is the report's schema: fields in declaration order, and an
optional field that is ``None`` left out (``optional()``), so a report without a task metric
has no ``task`` key. ``from_json`` reads it back (``trtforge report``, ``--baseline``) and
rejects an unknown or missing field with ``TypeError`` for the caller to turn into one line.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

_OMIT = "omit_if_none"
_LEGACY = "absent_in_old_reports"


def optional(default: Any = None) -> Any:
    """A field left out of the JSON when it is None (absent in older reports, too)."""
    return field(default=default, metadata={_OMIT: True})


def added_later(value: Any) -> Any:
    """A required field that schema-1 reports written before it existed lack: ``from_json`` reads
    them with ``value`` (a release N-1 report must still serve as the --baseline of release N)."""
    return field(metadata={_LEGACY: value})


# ---------------------------------------------------------------- accuracy


@dataclass
class OutputError:
    """Candidate against reference for one output, over every sample."""

    name: str
    max_abs: float
    mean_abs: float
    max_rel: float  # the largest error relative to the reference's range
    cosine_min: float  # the worst sample's cosine similarity
    snr_db: float  # +-999 stand for +-inf (JSON has no infinity)
    nonfinite: int = 0  # NaN/inf values in the candidate
    top1_agreement: float | None = optional()  # class-like outputs only: argmax agrees, per row
    top5_agreement: float | None = optional()


@dataclass
class TaskResult:
    """The user's task metric (``NAME``/``UNIT``/``HIGHER_IS_BETTER`` of the metric file) on both models."""

    name: str
    unit: str
    higher_is_better: bool
    reference: float
    candidate: float
    change: float  # candidate - reference


@dataclass
class NoiseFloor:
    """The reference against itself under two ORT configurations: the error no candidate can beat."""

    samples: int
    configurations: list[str]
    outputs: list[OutputError]
    max_abs: float


# ---------------------------------------------------------------- latency


@dataclass
class Timing:
    """One model's timed iterations."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    samples_ms: list[float] = added_later([])  # every timed iteration, for the report's histogram


@dataclass
class Latency:
    """Reference and candidate timed side by side, interleaved iteration by iteration."""

    runtime: str
    ort_level: str = added_later("")  # "" in reports from before it was recorded
    threads: int
    iterations: int
    reference: Timing
    candidate: Timing
    p50_speedup: float  # reference p50 / candidate p50
    paired_speedup: float | None = optional()  # median of the per-iteration ratios
    note: str | None = optional()  # why CPU latency is only informational for this target


# ---------------------------------------------------------------- divergence


@dataclass
class LayerError:
    order: int  # position of the node in the reference's topological order
    node: str  # the reference node that produces the tensor
    op_type: str
    tensor: str  # the reference tensor name
    candidate_tensor: str  # what it is called in the candidate
    # "node": the node's output in the candidate (all error up to here); "requantized": the
    # tensor after the candidate's Q/DQ or Cast; "local": the error this node adds on exact inputs
    kind: str
    snr_db: float
    cosine_min: float
    max_rel: float
    mean_abs: float
    nonfinite: int
    diverges: bool


@dataclass
class FixTrial:
    exclude: list[str]  # nodes put back in float for this run
    metrics: dict[str, float]  # the failing gates' metrics, measured
    passed: bool  # every re-measured gate holds


@dataclass
class MeasuredFix:
    gates: list[str]  # the failing accuracy gates, re-measured after each trial
    before: dict[str, float]
    trials: list[FixTrial]
    passed: bool
    exclude: list[str]  # the first passing trial's nodes, else the last one tried
    distributed: bool  # the recommendation closed less than LOCAL_GAP_SHARE of the gap
    verdict: str  # one paragraph: what was measured and what to do
    seconds: float = 0.0
    stopped: str = ""  # why the greedy extension stopped: passed, no progress, or its limits

    def rows(self) -> list[FixTrial]:
        """The trials, the candidate as it was first in row 0 (nothing excluded)."""
        return [FixTrial(exclude=[], metrics=self.before, passed=False), *self.trials]


@dataclass
class DivergenceResult:
    reference: str
    candidate: str
    samples: int
    tolerance: dict[str, float]
    chunk: int
    sessions: int  # ORT session pairs built (one per chunk)
    compared: int  # tensors compared
    layers: list[LayerError]
    first: LayerError | None
    recommend_exclude: list[str]  # node names for precision.exclude / --exclude
    reason: str  # why these nodes
    quantized: list[str] = added_later([])  # every quantized compute node of the candidate, in topological order
    peak_rss_anon_mb: float  # sampled after every session build and run
    baseline_rss_anon_mb: float  # before the search started
    seconds: float = 0.0
    hint: str = ""  # the recommendation as the flag or recipe line that applies it
    fix: MeasuredFix | None = optional()  # the recommendation re-run and measured, when gates failed


# ---------------------------------------------------------------- the record


@dataclass
class ValidationResult:
    """Everything ``validate`` measured: what the gates check and every renderer shows."""

    samples: int
    outputs: list[OutputError]
    task: TaskResult | None = optional()
    data: dict[str, Any] | None = optional()  # the validation data's fingerprint (calibration.data)
    noise: NoiseFloor | None = optional()
    latency: Latency | None = optional()
    divergence: DivergenceResult | None = optional()

    def class_like(self) -> list[OutputError]:
        """The outputs top-1/top-5 agreement was counted on."""
        return [o for o in self.outputs if o.top1_agreement is not None]


# ---------------------------------------------------------------- JSON


def to_json(value: Any) -> Any:
    """Dataclasses to plain dicts (declaration order, optional Nones left out); lists and dicts recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get(_OMIT):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type, data: Any) -> Any:
    """``to_json``'s inverse for the dataclasses here; TypeError on a missing, unknown or mistyped field."""
    return _build(cls, data)


_SCALARS = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}


def _build(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    if hint in _SCALARS:
        # A number where a number belongs: a renderer's format spec must never meet a string.
        if not isinstance(data, _SCALARS[hint]) or (hint is not bool and isinstance(data, bool)):
            raise TypeError(f"expected {hint.__name__}, got {type(data).__name__} {data!r:.40}")
        return data
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _build(inner[0], data) if len(inner) == 1 else data
    if origin is dict:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        _, value = typing.get_args(hint)
        return {k: _build(value, v) for k, v in data.items()}
    if origin is list:
        if not isinstance(data, list):
            raise TypeError(f"expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(hint)
        return [_build(item, v) for v in data]
    if dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise TypeError(f"{hint.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(hint)
        known = {f.name for f in dataclasses.fields(hint)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"{hint.__name__}: unknown field(s) {unknown}")
        legacy = {f.name: copy.deepcopy(f.metadata[_LEGACY])
                  for f in dataclasses.fields(hint) if _LEGACY in f.metadata and f.name not in data}
        return hint(**{k: _field(k, hints[k], v) for k, v in (data | legacy).items()})
    return data


def _field(name: str, hint: Any, data: Any) -> Any:
    try:
        return _build(hint, data)
    except TypeError as exc:  # the path to the bad field: "latency: p50_speedup: expected float, got str"
        raise TypeError(f"{name}: {exc}") from None
