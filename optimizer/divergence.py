"""First divergent layer: where a failing candidate starts to differ from its reference.

The candidate is the reference with Q/DQ (or Cast) nodes inserted, so every original node
survives under its own name. We pair tensors of the two models by name:

* a node's output ``t`` in the candidate is the node's result computed from the candidate's
  (possibly quantized) inputs and weights: comparing it with the reference's ``t`` measures
  everything up to and including that node;
* a tensor the candidate re-creates through Q → DQ (or a Cast round trip) is mapped back to
  its original name, so the error of quantizing the activation itself shows as its own row.

Intermediate tensors are exposed as extra outputs a chunk at a time (``chunk`` tensors per
ONNX Runtime session), and each pair keeps streaming statistics only, so memory stays bounded
by one chunk of one sample, not by the model's depth times the data.

The first node (topological order) whose output falls below tolerance is the divergence
point; the recommendation names the quantized compute nodes responsible, in the form the
precision stage takes (``precision.exclude`` / ``trtforge quantize --exclude``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx_ir as ir

from optimizer.errors import ConfigError, ValidationError
from optimizer.model import PROTOBUF_LIMIT, load_model, opset_of, save_model
from optimizer.runners import OrtRunner
from optimizer.validate import OutputStats
from optimizer.validation_record import DivergenceResult, FixTrial, LayerError, MeasuredFix, OutputError, ValidationResult
from calibration.opset import upgrade_opset

# Ops a precision stage inserts that carry a tensor's value through unchanged in meaning.
_CARRIERS = {"QuantizeLinear", "DequantizeLinear", "Cast"}
_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


@dataclass
class Tolerance:
    """A tensor diverges when its SNR falls below ``min_snr_db`` or its worst-sample cosine below ``min_cosine``."""

    min_snr_db: float = 20.0
    min_cosine: float = 0.99

    def diverges(self, stats: OutputError) -> bool:
        return stats.snr_db < self.min_snr_db or stats.cosine_min < self.min_cosine or stats.nonfinite > 0


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process (excludes memory-mapped weight files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------- pairing


@dataclass
class _Pair:
    order: int
    node: str
    op_type: str
    ref_name: str
    cand_name: str
    kind: str  # "node" | "requantized": cand_name is in the candidate; "local": in the reference's probes


def _origin(value: ir.Value, ref_names: set[str]) -> str | None:
    """The reference tensor a candidate value re-creates through Q/DQ/Cast carriers, if any."""
    seen = 0
    while value is not None and seen < 8:
        if value.name in ref_names:
            return value.name
        producer = value.producer()
        if producer is None or producer.op_type not in _CARRIERS or not producer.inputs:
            return None
        value = producer.inputs[0]
        seen += 1
    return None


def _float_output(node: ir.Node) -> bool:
    """Whether a carrier yields a float tensor (saved models often carry no value types, so read the op)."""
    if node.op_type == "DequantizeLinear":
        return True
    if node.op_type == "Cast":
        to = node.attributes.get("to")
        return to is not None and ir.DataType(to.as_int()) in _FLOAT_TYPES
    return False


def pair_tensors(reference: ir.Model, candidate: ir.Model) -> tuple[list[_Pair], dict[str, list[str]]]:
    """Tensors to compare, in the reference's topological order, and each candidate node's quantized inputs.

    The second result maps a candidate node name to the reference tensors it reads through a
    Q/DQ pair: those nodes are the ones a precision stage can keep in float.
    """
    ref_graph, cand_graph = reference.graph, candidate.graph
    ref_producer: dict[str, tuple[int, ir.Node]] = {}
    for i, node in enumerate(ref_graph):
        for out in node.outputs:
            if out.name:
                ref_producer[out.name] = (i, node)
    ref_names = set(ref_producer) | {v.name for v in ref_graph.inputs}
    cand_values = {out.name: out for node in cand_graph for out in node.outputs if out.name}

    pairs: list[_Pair] = []
    requantized: dict[str, list[str]] = {}
    for node in cand_graph:
        if node.op_type in _CARRIERS:
            out = node.outputs[0]
            origin = _origin(node.inputs[0], ref_names) if node.inputs and node.inputs[0] is not None else None
            consumed_as_float = _float_output(node) and any(u.node.op_type not in _CARRIERS for u in out.uses())
            if origin is not None and origin in ref_producer and consumed_as_float and out.name not in ref_names:
                requantized.setdefault(origin, []).append(out.name)
    quantized_inputs: dict[str, list[str]] = {}
    for node in cand_graph:
        if node.op_type in _CARRIERS:
            continue
        for value in node.inputs:
            if value is None or value.producer() is None or value.producer().op_type != "DequantizeLinear":
                continue
            origins = quantized_inputs.setdefault(node.name, [])  # a DQ'd weight alone makes it quantized too
            if (origin := _origin(value, ref_names)) is not None:
                origins.append(origin)

    for name, (order, node) in sorted(ref_producer.items(), key=lambda item: item[1][0]):
        if name in cand_values:
            pairs.append(_Pair(order, node.name, node.op_type, name, name, "node"))
        for cand_name in requantized.get(name, []):
            pairs.append(_Pair(order, node.name, node.op_type, name, cand_name, "requantized"))
    # Stable: a node's own output before the requantized copy of it.
    pairs.sort(key=lambda p: (p.order, p.kind != "node"))
    return pairs, quantized_inputs


# ---------------------------------------------------------------- local error probes


_PROBE = "__local__/"


def add_local_probes(reference: ir.Model, candidate: ir.Model, nodes: Iterable[str]) -> list[tuple[str, str, str]]:
    """Add to ``reference`` a copy of each candidate node in ``nodes`` that reads the reference's exact tensors.

    The copy keeps the candidate's Q/DQ (or Cast) chains on its inputs and its quantized
    weights, so comparing its output with the reference node's output measures the error
    that node introduces by itself, free of everything upstream. Returns
    ``(node, reference tensor, probe tensor)`` triples.
    """
    ref_values = {v.name: v for v in reference.graph.inputs}
    ref_values |= {name: v for name, v in reference.graph.initializers.items()}
    ref_values |= {out.name: out for node in reference.graph for out in node.outputs if out.name}
    cand_nodes = {n.name: n for n in candidate.graph}
    cloned: dict[str, ir.Value | None] = {}

    def clone(value: ir.Value | None) -> ir.Value | None:
        if value is None:
            return None
        producer = value.producer()
        if value.name in ref_values and (producer is None or producer.op_type not in _CARRIERS):
            return ref_values[value.name]  # the exact tensor
        if value.name in cloned:
            return cloned[value.name]
        result = None
        if value.const_value is not None:  # a constant the candidate added (int8 weight, scale, zero point)
            result = ir.Value(name=_PROBE + value.name, type=value.type, shape=value.shape, const_value=value.const_value)
            reference.graph.register_initializer(result)
        elif producer is not None and producer.op_type in _CARRIERS:
            inputs = [clone(v) for v in producer.inputs]
            if all(v is not None for v, orig in zip(inputs, producer.inputs) if orig is not None):
                node = ir.Node(producer.domain, producer.op_type, inputs, attributes=list(producer.attributes.values()),
                               num_outputs=1, name=_PROBE + producer.name)
                node.outputs[0].name = _PROBE + value.name
                node.outputs[0].type = value.type
                reference.graph.append(node)
                result = node.outputs[0]
        cloned[value.name] = result
        return result

    probes = []
    for name in nodes:
        node = cand_nodes.get(name)
        if node is None or not node.outputs or node.outputs[0].name not in ref_values:
            continue
        inputs = [clone(v) for v in node.inputs]
        if any(v is None for v, orig in zip(inputs, node.inputs) if orig is not None):
            continue
        copy = ir.Node(node.domain, node.op_type, inputs, attributes=list(node.attributes.values()),
                       num_outputs=len(node.outputs), name=_PROBE + node.name)
        for out, orig in zip(copy.outputs, node.outputs):
            out.name, out.type = _PROBE + orig.name, orig.type
        reference.graph.append(copy)
        probes.append((node.name, node.outputs[0].name, copy.outputs[0].name))
    return probes


# ---------------------------------------------------------------- sessions with extra outputs


def _session(model: ir.Model, names: list[str], tmp: Path) -> OrtRunner:
    """An ORT session whose outputs are exactly ``names``, over only the nodes they depend on.

    Pruning matters: ORT runs every node of a graph, so the early chunks would otherwise pay for
    the whole model and every local probe. The model itself is left as it was.
    """
    graph = model.graph
    values = {out.name: out for node in graph for out in node.outputs if out.name}
    needed: set[int] = set()
    stack = [values[n].producer() for n in names]
    index = {id(node): i for i, node in enumerate(graph)}
    while stack:
        node = stack.pop()
        if node is None or index[id(node)] in needed:
            continue
        needed.add(index[id(node)])
        stack.extend(v.producer() for v in node.inputs if v is not None)
    saved = list(graph.outputs)
    graph.outputs.clear()
    graph.outputs.extend(values[n] for n in names)
    try:
        proto = ir.to_proto(model)
    finally:
        graph.outputs.clear()
        graph.outputs.extend(saved)
    if proto.ByteSize() > PROTOBUF_LIMIT:  # over 2 GB: through a file with external data, unpruned
        return _session_from_file(model, names, tmp)
    kept = [n for i, n in enumerate(proto.graph.node) if i in needed]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return OrtRunner(proto.SerializeToString())


def _session_from_file(model: ir.Model, names: list[str], tmp: Path) -> OrtRunner:
    values = {out.name: out for node in model.graph for out in node.outputs if out.name}
    saved = list(model.graph.outputs)
    model.graph.outputs.clear()
    model.graph.outputs.extend(values[n] for n in names)
    try:
        path = save_model(model, tmp / "divergence.onnx", external_data=True)
    finally:
        model.graph.outputs.clear()
        model.graph.outputs.extend(saved)
    return OrtRunner(path)


# ---------------------------------------------------------------- the search


def _layer_errors(pairs: list, stats: dict[int, OutputStats], tolerance: Tolerance) -> list[LayerError]:
    """One record per compared tensor, in graph order, marked where it is beyond ``tolerance``."""
    layers = []
    for i, p in enumerate(pairs):
        if i not in stats:
            continue
        s = stats[i].result()
        layers.append(
            LayerError(
                order=p.order, node=p.node, op_type=p.op_type, tensor=p.ref_name, candidate_tensor=p.cand_name, kind=p.kind,
                snr_db=s.snr_db, cosine_min=s.cosine_min, max_rel=s.max_rel, mean_abs=s.mean_abs,
                nonfinite=s.nonfinite, diverges=tolerance.diverges(s),
            )
        )
    return layers


def find_divergence(
    reference: str | Path,
    candidate: str | Path,
    samples: Iterable[dict[str, np.ndarray]],
    *,
    tolerance: Tolerance | None = None,
    chunk: int = 32,
    max_samples: int = 8,
    progress: Callable[[int], None] | None = None,
) -> DivergenceResult:
    """Compare every intermediate tensor of ``candidate`` with ``reference`` and find where it diverges.

    ``samples`` are input feeds (the first ``max_samples`` are used); ``chunk`` is how many
    tensors one session exposes at a time. ``progress(done_chunks)`` is called per chunk.
    """
    import time

    if chunk < 1:
        raise ConfigError(f"divergence chunk must be >= 1 tensor per session, got {chunk}")
    tolerance = tolerance or Tolerance()
    start = time.perf_counter()
    baseline = rss_anon_mb()
    peak = baseline
    ref_model, cand_model = load_model(reference), load_model(candidate)
    feeds = []
    for feed in samples:
        feeds.append(feed)
        if len(feeds) >= max_samples:
            break
    if not feeds:
        raise ValidationError("the divergence search needs at least one input sample")

    if opset_of(ref_model) < opset_of(cand_model):
        # The candidate was upgraded before quantizing; compare like with like (the upgrade is checked numerically).
        ref_model = upgrade_opset(ref_model, opset_of(cand_model), feeds[0])
    pairs, quantized_inputs = pair_tensors(ref_model, cand_model)
    if not pairs:
        raise ValidationError(
            f"{Path(candidate).name} shares no tensor names with {Path(reference).name}: "
            "give the model the candidate was made from as the reference (e.g. the passes stage's .opt.onnx)"
        )
    probes = add_local_probes(ref_model, cand_model, sorted(quantized_inputs))
    order = {p.node: p.order for p in pairs}
    pairs += [_Pair(order[node], node, "", ref_out, probe_out, "local") for node, ref_out, probe_out in probes if node in order]
    op_types = {p.node: p.op_type for p in pairs if p.op_type}
    for p in pairs:
        p.op_type = p.op_type or op_types.get(p.node, "")
    pairs.sort(key=lambda p: (p.order, ("node", "local", "requantized").index(p.kind)))

    stats: dict[int, OutputStats] = {}
    sessions = 0
    with tempfile.TemporaryDirectory(prefix="trtforge-divergence-") as tmp:
        for c, first in enumerate(range(0, len(pairs), chunk)):
            part = list(range(first, min(first + chunk, len(pairs))))
            ref_names = list(dict.fromkeys(
                [pairs[i].ref_name for i in part] + [pairs[i].cand_name for i in part if pairs[i].kind == "local"]
            ))
            cand_names = list(dict.fromkeys(pairs[i].cand_name for i in part if pairs[i].kind != "local"))
            ref_run = _session(ref_model, ref_names, Path(tmp))
            cand_run = _session(cand_model, cand_names, Path(tmp)) if cand_names else None
            sessions += 1
            peak = max(peak, rss_anon_mb())
            for feed in feeds:
                r = ref_run.run(feed)
                k = cand_run.run(feed) if cand_run else {}
                for i in part:
                    p = pairs[i]
                    a = r[p.ref_name]
                    b = r[p.cand_name] if p.kind == "local" else k[p.cand_name]
                    if a.dtype.kind != "f" or a.shape != b.shape:  # shape tensors; a layout the candidate changed
                        continue
                    stats.setdefault(i, OutputStats(p.ref_name)).add(a, b)
                del r, k
                peak = max(peak, rss_anon_mb())
            del ref_run, cand_run
            if progress:
                progress(c + 1)

    layers = _layer_errors(pairs, stats, tolerance)
    first = next((layer for layer in layers if layer.diverges and layer.kind != "local"), None)
    recommend, reason = _recommend(first, layers, cand_model, quantized_inputs)
    return DivergenceResult(
        reference=str(reference),
        candidate=str(candidate),
        samples=len(feeds),
        tolerance={"min_snr_db": tolerance.min_snr_db, "min_cosine": tolerance.min_cosine},
        chunk=chunk,
        sessions=sessions,
        compared=len(layers),
        layers=layers,
        first=first,
        recommend_exclude=recommend,
        reason=reason,
        quantized=sorted(quantized_inputs, key=lambda n: (order.get(n, 1 << 30), n)),
        peak_rss_anon_mb=round(peak, 1),
        baseline_rss_anon_mb=round(baseline, 1),
        seconds=time.perf_counter() - start,
        hint=exclude_hint(recommend),
    )


def _recommend(
    first: LayerError | None,
    layers: list[LayerError],
    cand_model: ir.Model,
    quantized_inputs: dict[str, list[str]],
) -> tuple[list[str], str]:
    """Quantized nodes to keep in float: those behind the first divergent tensor, and every node
    that loses accuracy by itself on exact inputs (its local error), in topological order.

    Behind the first divergent tensor: the node itself when it reads Q/DQ inputs; the
    quantized readers when the tensor is an activation's Q/DQ copy; otherwise (an elementwise
    op that amplifies upstream error) the nearest quantized producers up the candidate graph.
    """
    if first is None:
        return [], "no tensor diverges beyond tolerance"
    quantized = set(quantized_inputs)
    culprits = _behind(first, cand_model, quantized, quantized_inputs)
    local = [layer for layer in layers if layer.kind == "local" and layer.diverges and layer.node in quantized]
    order = {layer.node: layer.order for layer in layers}
    names = sorted(set(culprits) | {layer.node for layer in local}, key=lambda n: (order.get(n, 1 << 30), n))
    reason = f"'{first.tensor}' of '{first.node}' ({first.op_type}) diverges first (SNR {first.snr_db:.1f} dB)"
    reason += f", behind it: {', '.join(culprits)}" if culprits else ", and no quantized node feeds it"
    if local:
        worst = min(local, key=lambda layer: layer.snr_db)
        reason += (
            f"; {len(local)} quantized node(s) lose more than tolerance by themselves on exact inputs "
            f"(local SNR down to {worst.snr_db:.1f} dB at '{worst.node}')"
        )
    return names, reason


def _behind(first: LayerError, cand_model: ir.Model, quantized: set[str], quantized_inputs: dict[str, list[str]]) -> list[str]:
    if first.kind == "requantized":
        readers = sorted(n for n, origins in quantized_inputs.items() if first.tensor in origins and n in quantized)
        if readers:
            return readers
    if first.node in quantized:
        return [first.node]
    # Breadth-first up the candidate graph to the nearest quantized producers.
    nodes = {n.name: n for n in cand_model.graph}
    found: list[str] = []
    frontier = [nodes[first.node]] if first.node in nodes else []
    seen: set[str] = set()
    while frontier and not found:
        nxt = []
        for node in frontier:
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is None or producer.name in seen:
                    continue
                seen.add(producer.name)
                if producer.name in quantized:
                    found.append(producer.name)
                else:
                    nxt.append(producer)
        frontier = nxt
    return sorted(found)


def exclude_hint(nodes: list[str]) -> str:
    """The recommendation as the recipe line and the flag that apply it."""
    if not nodes:
        return ""
    return f"keep in FP32: recipe precision.exclude: [{', '.join(nodes)}] or trtforge quantize --exclude {','.join(nodes)}"


# ---------------------------------------------------------------- a recommendation, measured

# Greedy extension of the recommendation: at most this many trial runs, and never more than
# this share of the quantized nodes back in float (beyond it, excluding layers is not a fix).
MAX_FIX_TRIALS = 5
MAX_FIX_SHARE = 0.5
# The recommendation fixes a local error when it closes at least this share of the gap to the
# failing gate's threshold; below it the error is spread over the layers.
LOCAL_GAP_SHARE = 0.5
# A further trial that closes less than this share of the gap than the one before is not progress: stop.
MIN_FIX_PROGRESS = 0.02
# What accuracy metrics can be at all: a gate outside these bounds cannot pass, whatever is excluded.
_BOUNDS = {"min_cosine": (-1.0, 1.0), "min_top1_agreement": (0.0, 1.0), "min_top5_agreement": (0.0, 1.0),
           "nonfinite_values": (0.0, math.inf), "max_abs_error": (0.0, math.inf), "max_rel_error": (0.0, math.inf)}


def exclude_in_candidate(reference: ir.Model, candidate: ir.Model, nodes: Iterable[str]) -> list[str]:
    """Put ``nodes`` of ``candidate`` back in float, in place, as the precision stage's exclude would.

    Each input a node reads through a Q/DQ (or Cast) chain is replaced by the float tensor the
    reference node reads there: the candidate's own tensor of that name (an activation, before
    its Q/DQ), else a copy of the reference's constant (a weight). Readers that stay quantized
    keep their Q/DQ. Returns the nodes changed.
    """
    from onnx_ir.convenience import get_const_tensor

    ref_nodes = {n.name: n for n in reference.graph}
    values = {v.name: v for v in candidate.graph.inputs} | dict(candidate.graph.initializers)
    values |= {out.name: out for node in candidate.graph for out in node.outputs if out.name}
    changed = []
    for node in candidate.graph:
        original = ref_nodes.get(node.name) if node.name in nodes else None
        if original is None or node.op_type != original.op_type:
            continue
        for index, (mine, theirs) in enumerate(zip(node.inputs, original.inputs)):
            if mine is None or theirs is None or mine.producer() is None or mine.producer().op_type not in _CARRIERS:
                continue
            own = values.get(theirs.name)
            if own is not None and (own.producer() is None or own.producer().op_type not in _CARRIERS) and own.name != mine.name:
                node.replace_input_with(index, own)
            elif (tensor := get_const_tensor(theirs)) is not None:
                name = next(f"{theirs.name}__float{i or ''}" for i in range(1 << 20) if f"{theirs.name}__float{i or ''}" not in values)
                weight = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                                  const_value=ir.tensor(tensor.numpy(), name=name))
                candidate.graph.register_initializer(weight)
                values[name] = weight
                node.replace_input_with(index, weight)
            else:
                continue
            if node.name not in changed:
                changed.append(node.name)
    _drop_dead(candidate.graph)
    return changed


def _drop_dead(graph: ir.Graph) -> None:
    """Remove Q/DQ/Cast nodes and initializers nothing reads any more (ORT warns about them otherwise)."""
    for node in reversed(list(graph)):
        if node.op_type in _CARRIERS and not any(out.uses() or out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]


def _per_tensor_weights(candidate: ir.Model) -> bool:
    """Whether the candidate's weights carry one scale per tensor (a DequantizeLinear of a constant with a scalar scale)."""
    from onnx_ir.convenience import get_const_tensor

    for node in candidate.graph:
        if node.op_type == "DequantizeLinear" and len(node.inputs) > 1 and get_const_tensor(node.inputs[0]) is not None:
            scale = get_const_tensor(node.inputs[1])
            if scale is not None and scale.numpy().size == 1:
                return True
    return False


def _trial_sizes(first: int, available: int) -> list[int]:
    """How many nodes each trial excludes: the recommendation, then doubling, within the share limit."""
    limit = max(first, int(available * MAX_FIX_SHARE))
    sizes, size = [first], first
    while len(sizes) < MAX_FIX_TRIALS and size < limit:
        size = min(limit, max(size + 1, size * 2))
        sizes.append(size)
    return sizes


def _ranked(result: DivergenceResult) -> list[str]:
    """The recommendation first, then the other quantized nodes by their own (local) error, worst first."""
    local = sorted((layer for layer in result.layers if layer.kind == "local"), key=lambda layer: layer.snr_db)
    ranked = list(result.recommend_exclude)
    for name in [layer.node for layer in local] + result.quantized:
        if name not in ranked:
            ranked.append(name)
    return ranked


def measure_fix(
    result: DivergenceResult,
    validation_reference: str | Path,
    samples,
    failing: list[str],
    validation: ValidationResult,
    *,
    labels: list[Any] | None = None,
    metric=None,
    context=None,
    method: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> MeasuredFix | None:
    """Re-run the candidate with the recommendation applied, extend it greedily, and measure every step.

    ``failing``: the gate expressions that failed on ``validation`` (the record they were checked
    on); only those that validation accuracy measures (not latency, not baselines) are re-checked,
    on the same ``samples`` and against the same ``validation_reference``. Returns None when
    there is nothing to measure.
    """
    import time

    from optimizer.gates import evaluate_gates, gate_metrics, parse_gate
    from optimizer.runners import OrtRunner
    from optimizer.validate import class_like_outputs, compare

    if not result.recommend_exclude:
        return None
    start = time.perf_counter()
    reference = OrtRunner(validation_reference)
    accuracy = {"nonfinite_values", "max_abs_error", "max_rel_error", "min_cosine", "min_snr_db", "min_top1_agreement",
                "min_top5_agreement"}
    task_names = {metric.name, f"{metric.name}_increase", f"{metric.name}_drop"} if metric is not None else set()
    gates = [g for g in failing if parse_gate(g)[0] in accuracy | task_names and _reachable(g)]
    if not gates:
        return None

    class_like = class_like_outputs(load_model(validation_reference))

    def measure(model: ir.Model, tmp: Path, step: int) -> ValidationResult:
        path = save_model(model, tmp / f"fix{step}.onnx")  # external data when over protobuf's limit, by itself
        return compare(reference, OrtRunner(path), samples, labels=labels, metric=metric, context=context, class_like=class_like)

    ref_model = load_model(result.reference)
    ranked = _ranked(result)
    with tempfile.TemporaryDirectory(prefix="trtforge-fix-") as tmp:
        before = {parse_gate(g)[0]: gate_metrics(validation)[parse_gate(g)[0]] for g in gates}
        trials: list[FixTrial] = []
        for step, size in enumerate(_trial_sizes(len(result.recommend_exclude), len(ranked)), start=1):
            model = load_model(result.candidate)
            applied = exclude_in_candidate(ref_model, model, ranked[:size])
            checks = evaluate_gates(gates, measure(model, Path(tmp), step))
            trials.append(FixTrial(exclude=applied, metrics={c.metric: c.value for c in checks}, passed=all(c.passed for c in checks)))
            if progress:
                progress(step)
            if trials[-1].passed or (len(trials) > 1 and _gap_closed(gates, before, trials[-1].metrics)
                                     - _gap_closed(gates, before, trials[-2].metrics) < MIN_FIX_PROGRESS):
                break
    fix = MeasuredFix(gates=gates, before=before, trials=trials, passed=trials[-1].passed, exclude=trials[-1].exclude,
                      distributed=False, verdict="", seconds=time.perf_counter() - start,
                      stopped=_stop_reason(trials, _trial_sizes(len(result.recommend_exclude), len(ranked)), len(ranked)))
    fix.distributed = _gap_closed(gates, before, trials[0].metrics) < LOCAL_GAP_SHARE and not trials[0].passed
    fix.verdict = _verdict(fix, result, _per_tensor_weights(load_model(result.candidate)), method)
    return fix


def _stop_reason(trials: list[FixTrial], sizes: list[int], available: int) -> str:
    if trials[-1].passed:
        return "the failing gates pass"
    if len(trials) < len(sizes):
        return f"still fails: the last step closed less than {MIN_FIX_PROGRESS:.0%} more of the gap"
    if sizes[-1] >= available * MAX_FIX_SHARE:
        return f"still fails: the limit of {MAX_FIX_SHARE:.0%} of the nodes in FP32 is reached"
    return f"still fails: the limit of {MAX_FIX_TRIALS} trials is reached"


def _reachable(gate: str) -> bool:
    """Whether any model could pass ``gate`` (``min_cosine>=1.01`` cannot): only those are worth re-running for."""
    from optimizer.conditions import OPERATORS, parse_gate

    name, op, threshold = parse_gate(gate)
    lo, hi = _BOUNDS.get(name, (-math.inf, math.inf))
    if op == "==":
        return lo <= threshold <= hi
    return bool(OPERATORS[op](hi if op in (">=", ">") else lo, threshold))


def _gap_closed(gates: list[str], before: dict[str, float], after: dict[str, float]) -> float:
    """The smallest share, over the gates, of the distance to the threshold the trial covered."""
    from optimizer.gates import parse_gate

    shares = []
    for gate in gates:
        name, _, threshold = parse_gate(gate)
        gap = threshold - before[name]
        shares.append(1.0 if gap == 0 or not np.isfinite(gap) else (after[name] - before[name]) / gap)
    return min(shares, default=1.0)


def _change_text(fix: MeasuredFix, trial: FixTrial) -> str:
    return ", ".join(f"{name} {fix.before[name]:.4g} → {trial.metrics[name]:.4g}" for name in fix.before)


def _verdict(fix: MeasuredFix, result: DivergenceResult, per_tensor: bool, method: str | None) -> str:
    first, last = fix.trials[0], fix.trials[-1]
    text = f"measured: excluding the {len(first.exclude)} recommended node(s) gives {_change_text(fix, first)}"
    text += " (the failing gates pass)" if first.passed else f" (still fails {', '.join(fix.gates)})"
    if len(fix.trials) > 1:
        text += (f"; extended greedily (worst local error first) to {len(last.exclude)} of {len(result.quantized)} quantized nodes: "
                 f"{_change_text(fix, last)} ({fix.stopped})")
    if not fix.distributed:
        return text + f". The error is local: keep {'those nodes' if last.passed else 'the nodes above'} in FP32."
    closed = _gap_closed(fix.gates, fix.before, first.metrics)
    local = [layer.snr_db for layer in result.layers if layer.kind == "local"]
    spread = (f"; on exact inputs every quantized node loses a little (local SNR {min(local):.0f} to {max(local):.0f} dB), none stands out"
              if local else "")
    instead = []
    if per_tensor:
        instead.append("per-channel weights (the candidate has one scale per weight tensor: drop --per-tensor / set precision.per_channel: true)")
    if method in (None, "max"):
        instead.append("another calibration method (--method mse, or percentile" + ("; MinMax is the most fragile)" if method else "; if it was MinMax, that is the most fragile)"))
    instead.append("an accuracy budget that keeps only as many layers in FP32 as the gate needs (trtforge quantize --budget "
                   "'output_nrmse<=0.02' --val DIR, or precision.budget with the task metric)")
    return (text + f". The error is distributed, not local: the recommended node(s) closed {max(closed, 0.0):.0%} of the gap "
            f"(a local error closes {LOCAL_GAP_SHARE:.0%} or more){spread}, so excluding a few layers is not the fix"
            + (f" ({len(last.exclude)} in FP32 cost much of the INT8 speed-up)" if last.passed else "")
            + ". Try instead: " + "; ".join(instead) + ".")

