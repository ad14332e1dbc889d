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
    #: With ``explain``: one line per node a rule matched but refused, with the reason.
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes),
            "refusals": list(self.refusals),
        }


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
) -> list[PassRecord]:
    """Run passes on ``model`` in place, in the order given (default: DEFAULT_PASSES).

    ``names`` holds pass names, or pass instances for passes outside the library (a
    project's own ``GraphPass``); ``skip`` removes names from the list.

    Callers pass a model they own (``model.clone()`` keeps an original). After each pass
    the model's signature (names and dtypes of the inputs a caller feeds and of all
    outputs) must be unchanged, and with a ``verifier`` its outputs must still match the
    reference. A pass that raises, changes the signature or fails verification is rolled
    back (the model holds every pass before it) and the error names it: PassError, or
    VerificationError (exit code 1) for a numeric change. With ``explain`` each record
    lists, per node a pass's pattern matched but its check refused, the reason. ``opset``
    first upgrades the model with onnx's version converter (``convert_opset``), verified like
    a pass. ``specialize`` pins the named inputs' dynamic dims first (static-shape
    specialisation: ``{"x": (1, 3, 48, 320)}``); the model then runs at those shapes only.
    """
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
    records: list[PassRecord] = []
    # The state to roll back to. A pass that reports no change leaves it valid, so the
    # model is cloned only before the first pass and after each one that changed it.
    snapshot: Snapshot | None = None
    if specialize:
        before = count_nodes(model)
        notes = specialize_input_shapes(model, specialize)
        records.append(PassRecord("specialize_input_shapes", True, before, before, 0.0, notes))
    for entry in requested:
        pass_ = registry[entry]() if isinstance(entry, str) else entry
        if not pass_.in_place:
            raise ConfigError(f"{pass_!r} is not an in-place pass; run_passes transforms the model it is given")
        name = getattr(pass_, "name", "") or type(pass_).__name__
        if name in skip:
            continue
        if isinstance(pass_, GraphPass):
            pass_.explain = explain
        if snapshot is None:
            snapshot = Snapshot(model)
        signature = _signature(model)
        io_shapes = _declared_io_shapes(model)
        nodes_before = count_nodes(model)
        start = time.perf_counter()
        try:
            result = pass_(model)
        except ConfigError:
            snapshot.restore(model)
            raise
        except Exception as exc:
            snapshot.restore(model)
            raise PassError(
                f"pass '{name}' failed on this model ({type(exc).__name__}: {_one_line(exc)}); the model was "
                f"left as it was before the pass; rerun without it (skip=['{name}'])"
            ) from exc
        seconds = time.perf_counter() - start
        _keep_declared_io_shapes(model, io_shapes)
        notes = list(getattr(pass_, "notes", []))
        refusals = list(getattr(pass_, "refusals", []))
        if refusals and not explain:
            notes.append(f"refused {len(refusals)} matches (explain=True says why)")
        if not _same_signature(signature, _signature(model)):
            before, after = signature, _signature(model)
            snapshot.restore(model)
            raise PassError(
                f"pass '{name}' changed the model's inputs/outputs (names, dtypes) from {before} to {after}; "
                "this is a bug in the pass; it was rolled back"
            )
        if verifier is not None and result.modified:
            try:
                diffs = verifier.check(model, after_pass=name)
            except VerificationError:
                snapshot.restore(model)
                raise
            worst = max(diffs, key=lambda d: d.ratio, default=None)
            if worst is not None:
                notes.append(f"verified: worst {worst.describe()}")
        records.append(
            PassRecord(
                name=name,
                modified=result.modified,
                nodes_before=nodes_before,
                nodes_after=count_nodes(model),
                seconds=seconds,
                notes=notes,
                refusals=refusals if explain else [],
            )
        )
        if result.modified:
            snapshot = None
    return records


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # onnx-ir wraps pass errors; the root cause is the useful part.
    cause = exc.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is not None:
        text += f" <- {type(cause).__name__}: {' '.join(str(cause).split())}"
    return text[:400]
