"""Semantics-preserving graph -> graph passes on onnx-ir models.

    records = run_passes(model)                                  # DEFAULT_PASSES, in place
    records = run_passes(model, ["fold_constants", "eliminate_dead_code"],
                         verifier=Verifier(model, shapes={"x": (1, 3, 48, 320)}))
    records = run_passes(model, opset=17, explain=True)          # upgrade first; say why rules refused
    records = run_passes(model, specialize={"x": (1, 3, 48, 320)})  # pin dynamic dims, then fold

Each pass lives in its own module (``graph_passes/<name>.py``); the default order is the
one commented list in ``graph_passes/default_order.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from graph_passes._base import GraphPass, Snapshot, count_nodes
from graph_passes.convert_opset import ConvertOpset
from graph_passes.specialize_shapes import specialize_input_shapes
from graph_passes.default_order import DEFAULT_ORDER, DEFAULT_PASSES, OPTIONAL_PASSES
from graph_passes.verify import OutputDiff, Verifier
from optimizer.errors import ConfigError, PassError, VerificationError

__all__ = [
    "DEFAULT_PASSES",
    "GraphPass",
    "OutputDiff",
    "PassRecord",
    "Verifier",
    "available_passes",
    "get_pass",
    "run_passes",
]


@dataclass
class PassRecord:
    """What one pass did: node counts include subgraphs and functions."""

    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: With ``explain``: one line per node the pass matched but refused, with the reason
    #: (without it, only the count, as a note).
    refusals: list[str] = field(default_factory=list)
    #: How many nodes the pass matched but refused (with or without ``explain``).
    refused: int = 0
    #: Set when the pass raised, broke the signature or changed the outputs: it was rolled back.
    warning: str | None = None



def _registry() -> dict[str, type[GraphPass]]:
    return {p.name: p for p in (*DEFAULT_ORDER, *OPTIONAL_PASSES)}


def available_passes() -> dict[str, str]:
    """Pass name -> one-line description; default passes first, in their default order."""
    return {name: cls.description() for name, cls in _registry().items()}


def get_pass(name: str) -> GraphPass:
    """A fresh instance of the pass called ``name`` (ConfigError listing valid names otherwise)."""
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown graph pass '{name}'; valid passes: {', '.join(registry)}")
    return registry[name]()


def _signature(model: ir.Model) -> tuple:
    def spec(v: ir.Value) -> tuple:
        return (v.name, v.dtype)

    return (
        tuple(spec(v) for v in model.graph.inputs if not v.is_initializer()),
        tuple(spec(v) for v in model.graph.outputs),
    )


def _declared_io_shapes(model: ir.Model) -> dict[str, ir.Shape | None]:
    return {v.name: v.shape for v in (*model.graph.inputs, *model.graph.outputs)}


def _keep_declared_io_shapes(model: ir.Model, declared: dict[str, ir.Shape | None]) -> None:
    """Shape inference inside a pass may rewrite the declared I/O shapes (rename symbolic
    dims, pin them to the sample's sizes). The declared ones are the model's contract
    (TensorRT builds its profiles from them): keep them, fill in only where none was declared."""
    for value in (*model.graph.inputs, *model.graph.outputs):
        old = declared.get(value.name)
        if old is not None and value.shape != old:
            value.shape = old


def _same_signature(before: tuple, after: tuple) -> bool:
    """Names must stay; a dtype may only go from unknown to known (inference filled it in)."""
    for old, new in zip(before, after):
        if len(old) != len(new):
            return False
        for (old_name, old_dtype), (new_name, new_dtype) in zip(old, new):
            if old_name != new_name or (old_dtype is not None and old_dtype != new_dtype):
                return False
    return True


def run_passes(
    model: ir.Model,
    names: Sequence[str | GraphPass] | None = None,
    *,
    skip: Sequence[str] = (),
    verifier: Verifier | None = None,
    explain: bool = False,
    opset: int | None = None,
    specialize: Mapping[str, Sequence[int]] | None = None,
    strict: bool = False,
) -> list[PassRecord]:
    """Run passes on ``model`` in place, in the order given (default: DEFAULT_PASSES).

    ``names`` holds pass names, or pass instances for passes outside the library (a
    project's own ``GraphPass``); ``skip`` removes names from the list.

    Callers pass a model they own (``model.clone()`` keeps an original). After each pass the
    model's signature (names and dtypes of the inputs a caller feeds and of all outputs) must
    be unchanged. A pass that raises or changes the signature is rolled back (the model holds
    every pass before it), named in its record's ``warning``, and the run goes on with the
    next pass; with ``strict`` it is an error instead (PassError).

    With a ``verifier`` the outputs are checked once, at the end (the verifier took its
    reference on the original). Only when that check fails are the intermediate states
    bisected to name the first pass that broke the outputs (O(log n) more runs, one ONNX
    Runtime session at a time); that pass is rolled back and warned about and the passes
    after it run again without it, or with ``strict`` VerificationError (exit code 1) is
    raised with the model as it was before that pass.

    With ``explain`` each record lists, per node a pass's pattern matched but its check
    refused, the reason (``refusals``); either way a note counts them. ``opset`` first
    upgrades the model with onnx's version converter (``convert_opset``), treated like a
    pass. ``specialize`` pins the named inputs' dynamic dims first (static-shape
    specialisation: ``{"x": (1, 3, 48, 320)}``); the model then runs at those shapes only.
    """
    plan = _plan(names, skip, opset)
    records: list[PassRecord] = []
    if specialize:
        before = count_nodes(model)
        notes = specialize_input_shapes(model, specialize)
        records.append(PassRecord("specialize_input_shapes", True, before, before, 0.0, notes))
    run = _Run(model, records, explain=explain, strict=strict, keep_history=verifier is not None)
    run.apply(plan, 0)
    while verifier is not None and run.history:
        failed_at = _verify_end(run, verifier)
        if failed_at is None:
            break
        # Roll back the culprit (strict: raise); the passes after it run again without it.
        step, error = failed_at
        run.roll_back(step, error)
        if strict:
            raise error
        run.apply(plan, step.plan_index + 1)
    return records


def _plan(names, skip: Sequence[str], opset: int | None) -> list[tuple[str, GraphPass]]:
    """(name, instance) per pass to run, in order; ConfigError for unknown names."""
    registry = _registry()
    requested = list(DEFAULT_PASSES if names is None else names)
    unknown = [n for n in (*requested, *skip) if isinstance(n, str) and n not in registry]
    if unknown:
        raise ConfigError(
            f"unknown graph pass{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid passes: {', '.join(registry)}"
        )
    if opset is not None:
        requested.insert(0, ConvertOpset(opset))
    plan = []
    for entry in requested:
        pass_ = registry[entry]() if isinstance(entry, str) else entry
        if not pass_.in_place:
            raise ConfigError(f"{pass_!r} is not an in-place pass; run_passes transforms the model it is given")
        name = getattr(pass_, "name", "") or type(pass_).__name__
        if name not in skip:
            plan.append((name, pass_))
    return plan


@dataclass
class _Step:
    """A pass that changed the model: where it sits, its record, and the state before it."""

    plan_index: int
    record: PassRecord
    before: Snapshot


class _Run:
    """Applies a plan of passes to a model, rolling back passes that raise, keeping history.

    ``history`` holds one ``_Step`` per pass that changed the model since the last state known
    to be good (kept only when verifying: the snapshots share tensors, so each costs the
    graph's structure, not its weights).
    """

    def __init__(self, model: ir.Model, records: list[PassRecord], *, explain: bool, strict: bool, keep_history: bool):
        self.model, self.records = model, records
        self.explain, self.strict, self.keep_history = explain, strict, keep_history
        self.history: list[_Step] = []
        # The state to roll back to. A pass that reports no change leaves it valid, so the
        # model is cloned only before the first pass and after each one that changed it.
        self._snapshot: Snapshot | None = None

    def apply(self, plan: list[tuple[str, GraphPass]], start: int) -> None:
        for index in range(start, len(plan)):
            name, pass_ = plan[index]
            if self._snapshot is None:
                self._snapshot = Snapshot(self.model)
            record = self._apply_one(name, pass_)
            self.records.append(record)
            if record.modified:
                if self.keep_history:
                    self.history.append(_Step(index, record, self._snapshot))
                self._snapshot = None

    def _apply_one(self, name: str, pass_: GraphPass) -> PassRecord:
        model = self.model
        if isinstance(pass_, GraphPass):
            pass_.explain = self.explain
        signature, io_shapes, nodes_before = _signature(model), _declared_io_shapes(model), count_nodes(model)
        start = time.perf_counter()
        try:
            result = pass_(model)
        except ConfigError:
            self._restore()
            raise
        except Exception as exc:
            return self._failed(
                name,
                nodes_before,
                f"pass '{name}' failed on this model ({type(exc).__name__}: {_one_line(exc)}); it was rolled back",
                exc,
            )
        seconds = time.perf_counter() - start
        _keep_declared_io_shapes(model, io_shapes)
        if not _same_signature(signature, _signature(model)):
            after = _signature(model)
            return self._failed(
                name,
                nodes_before,
                f"pass '{name}' changed the model's inputs/outputs (names, dtypes) from {signature} to {after}; "
                "this is a bug in the pass; it was rolled back",
            )
        notes = list(getattr(pass_, "notes", []))
        refusals = list(getattr(pass_, "refusals", []))
        if refusals:
            notes.append(_refusal_note(len(refusals), self.explain))
        return PassRecord(
            name=name,
            modified=result.modified,
            nodes_before=nodes_before,
            nodes_after=count_nodes(model),
            seconds=seconds,
            notes=notes,
            refusals=refusals if self.explain else [],
            refused=len(refusals),
        )

    def _restore(self) -> None:
        self._snapshot.restore(self.model)
        self._snapshot = None

    def _failed(self, name: str, nodes: int, message: str, cause: Exception | None = None) -> PassRecord:
        self._restore()
        if self.strict:
            hint = f"rerun without it (--skip {name}), or without --strict to skip it and go on"
            raise PassError(f"{message}; {hint}") from cause
        warning = f"{message}; the run went on without it"
        return PassRecord(name, False, nodes, nodes, 0.0, [warning], warning=warning)

    def roll_back(self, step: _Step, error: VerificationError) -> None:
        """Put the model back to the state before ``step``; records after it are dropped."""
        step.before.restore(self.model)
        # The state before the culprit was checked good (or is the original): bisections
        # after this start from it.
        self.history = []
        self._snapshot = None
        position = next(i for i, r in enumerate(self.records) if r is step.record)
        del self.records[position + 1 :]
        record = step.record
        record.modified, record.nodes_after = False, record.nodes_before
        record.warning = f"{_one_line(error)}; it was rolled back" + ("" if self.strict else " and the run went on without it")
        record.notes.append(record.warning)

    def mark_verified(self) -> None:
        """Everything applied so far is checked: later bisections start from here."""
        self.history.clear()


def _refusal_note(count: int, explain: bool) -> str:
    """The one summary of a pass's refusals (``GraphPass.refuse``): how many, and where the reasons are.

    Passes never summarise their own refusals; the per-node lines go to ``PassRecord.refusals``
    with ``explain`` only, so without it this note is the whole story and says how to get the rest.
    """
    matches = "match" if count == 1 else "matches"
    if explain:
        return f"refused {count} {matches}; each is listed with its reason"
    return f"refused {count} {matches} (explain=True, or --explain, lists which and why)"


def _verify_end(run: _Run, verifier: Verifier) -> tuple[_Step, VerificationError] | None:
    """Check the model once; on failure bisect ``run.history`` for the first breaking pass.

    States: S_0 (before history[0], known good) ... S_n (the model now). Returns the step
    whose pass turned a good state into a failing one, with the error that names it.
    """
    history, model = run.history, run.model
    try:
        diffs = verifier.check(model, after_pass=history[-1].record.name)
    except VerificationError as error:
        last_error = error
    else:
        last = history[-1].record
        worst = max(diffs, key=lambda d: d.ratio, default=None)
        if worst is not None:
            last.notes.append(f"verified: worst {worst.describe()} (one check after all passes)")
        partial = getattr(verifier, "partial", None)
        if partial:
            line = verifier.describe_partial() if hasattr(verifier, "describe_partial") else partial
            last.notes.append(line)
        run.mark_verified()
        return None
    good, bad = 0, len(history)
    errors = {bad: last_error}
    while bad - good > 1:
        mid = (good + bad) // 2
        try:
            # S_mid is the state before history[mid], i.e. right after history[mid - 1] ran.
            verifier.check(history[mid].before.model, after_pass=history[mid - 1].record.name)
        except VerificationError as error:
            bad, errors[mid] = mid, error
        else:
            good = mid
    return history[bad - 1], errors[bad]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # onnx-ir wraps pass errors; the root cause is the useful part.
    cause = exc.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is not None:
        text += f" <- {type(cause).__name__}: {' '.join(str(cause).split())}"
    return text[:400]
