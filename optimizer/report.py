"""The report: plain dataclasses, versioned JSON, and Markdown / terminal renderers.

A report is data first. Renderers only read it, so ``trtforge report`` can re-render any
saved JSON, and two reports can be compared field by field.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optimizer.errors import InputError
from optimizer.model import write_text_atomic
from optimizer.validation_record import DivergenceResult, Latency, ValidationResult, from_json, to_json

SCHEMA_VERSION = 1


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" | "cached" | "skipped" | "failed"
    seconds: float = 0.0
    artifact: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # the key numbers, shown in every rendering
    details: dict[str, Any] = field(default_factory=dict)  # everything else, JSON only
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None  # why it was skipped or failed


@dataclass
class GateResult:
    expression: str
    metric: str
    value: float | None
    passed: bool
    message: str
    default: bool = False  # one of the default gates (no --gate and no recipe gates were given)


@dataclass
class Report:
    command: str
    model: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    validation: ValidationResult | None = None
    gates: list[GateResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    tool: str = "trtforge"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = to_json(self)
        data["passed"] = self.passed
        return data

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return to_json(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def environment() -> dict[str, Any]:
    from optimizer.cache import tool_versions

    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": tool_versions(("polygraphy", "tensorrt", "tensorrt-rtx")),
    }


def load_report(path: str | Path) -> Report:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: report not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a trtforge JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("tool") != "trtforge":
        raise InputError(f"{path}: not a trtforge report (no 'tool: trtforge' field)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{path}: report schema version {data.get('schema_version')} is not supported (this trtforge reads {SCHEMA_VERSION})"
        )
    data.pop("passed", None)
    try:
        data["stages"] = [StageRecord(**s) for s in data.get("stages", [])]
        data["gates"] = [GateResult(**g) for g in data.get("gates", [])]
        data["validation"] = from_json(ValidationResult, data.get("validation"))
        return Report(**data)
    except TypeError as exc:  # a missing or unknown field: an edited or foreign file
        raise InputError(f"{path}: not a valid trtforge report ({exc})") from None


# ---------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _summary_text(summary: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {_fmt(v)}" for k, v in summary.items())


def accuracy_rows(validation: ValidationResult) -> list[list[str]]:
    return [[o.name, _fmt(o.max_abs), _fmt(o.mean_abs), _fmt(o.max_rel), _fmt(o.cosine_min), _fmt(o.snr_db)]
            for o in validation.outputs]


def _shape_text(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def data_sentence(validation: ValidationResult) -> str:
    """What the validation data was, in words (the fingerprint is JSON; people read this)."""
    fp = validation.data
    samples = validation.samples
    if not isinstance(fp, dict):
        return f"{samples} samples."
    kind = "SYNTHETIC random samples" if fp.get("synthetic") else "samples"
    text = f"{samples} {kind}"
    if fp.get("sha256"):
        text += f" (content sha256 `{str(fp['sha256'])[:12]}…`"
        text += f", labels sha256 `{str(fp['labels_sha256'])[:12]}…`)" if fp.get("labels_sha256") else ")"
    return text + "."


def data_rows(validation: ValidationResult) -> list[list[str]]:
    """Per input: dtype, the shapes seen and the value range of the validation data."""
    fp = validation.data
    if not isinstance(fp, dict):
        return []
    rows = []
    for name, stats in (fp.get("inputs") or {}).items():
        shapes = [_shape_text(s) for s in stats.get("shapes", [])]
        if len(shapes) > 3:
            shown = f"{len(shapes)} shapes, {shapes[0]} … {shapes[-1]}"
        else:
            shown = ", ".join(shapes) or "?"
        lo, hi = stats.get("min"), stats.get("max")
        value_range = f"{_fmt(float(lo))} … {_fmt(float(hi))}" if lo is not None and hi is not None else "n/a"
        rows.append([name, str(stats.get("dtype", "?")), shown, value_range])
    return rows


def gate_rows(report: Report) -> list[list[str]]:
    """gate, value, result, source: default gates say so, so a reader knows nobody chose them."""
    return [
        [g.expression, _fmt(g.value) if g.value is not None else "n/a", "pass" if g.passed else "FAIL: " + g.message,
         "default" if g.default else "given"]
        for g in report.gates
    ]


def to_markdown(report: Report) -> str:
    status = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# trtforge report: {Path(report.model.get('path', '?')).name} ({status})",
        "",
        f"- created: {report.created}",
        f"- command: `{report.command}`",
        f"- model sha256: `{report.model.get('sha256', '?')[:16]}…`, {report.model.get('nodes', '?')} nodes, "
        f"opset {report.model.get('opset', '?')}",
        "",
        "## Stages",
        "",
        "| stage | status | time (s) | key numbers |",
        "|---|---|---:|---|",
    ]
    for s in report.stages:
        what = _summary_text(s.summary) or (s.reason or "")
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.2f} | {what} |")
    if val := report.validation:
        lines += _markdown_accuracy(val) + _markdown_latency(val.latency) + _markdown_divergence(val.divergence)
    if report.gates:
        lines += ["", "## Gates", ""]
        if any(g.default for g in report.gates):
            from optimizer.gates import DEFAULT_GATES_DOC

            lines += [DEFAULT_GATES_DOC, ""]
        lines += ["| gate | value | result | source |", "|---|---:|---|---|"]
        lines += [f"| `{r[0]}` | " + " | ".join(r[1:]) + " |" for r in gate_rows(report)]
    warnings = report.warnings + [f"{s.name}: {w}" for s in report.stages for w in s.warnings]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    if report.artifacts:
        lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in report.artifacts.items()]
    return "\n".join(lines) + "\n"


def _markdown_accuracy(val: ValidationResult) -> list[str]:
    lines = ["", "## Accuracy (candidate vs FP32 reference, ONNX Runtime CPU)", "", f"Validation data: {data_sentence(val)}"]
    if rows := data_rows(val):
        lines += ["", "| input | dtype | shapes | value range |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| output | max abs | mean abs | max rel | min cosine | SNR (dB) |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in accuracy_rows(val)]
    if task := val.task:
        lines += [
            "",
            f"Task metric **{task.name}** ({'higher' if task.higher_is_better else 'lower'} is better): "
            f"reference {_fmt(task.reference)}{task.unit}, candidate {_fmt(task.candidate)}{task.unit} "
            f"(change {task.change:+.4g}{task.unit}).",
        ]
    return lines


def _markdown_latency(lat: Latency | None) -> list[str]:
    if lat is None:
        return []
    lines = [
        "",
        f"## Latency (ONNX Runtime CPU, {lat.threads} thread(s), {lat.iterations} interleaved iterations)",
        "",
        "| model | p50 (ms) | p90 (ms) | mean (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in (("reference", lat.reference), ("candidate", lat.candidate)):
        lines.append(f"| {name} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.mean_ms:.2f} |")
    paired = f" (median of per-iteration ratios: {lat.paired_speedup:.2f}x)" if lat.paired_speedup is not None else ""
    lines += ["", f"p50 speed-up (reference / candidate): **{lat.p50_speedup:.2f}x**" + paired]
    return lines + (["", f"_{lat.note}_"] if lat.note else [])


def _markdown_divergence(div: DivergenceResult | None) -> list[str]:
    if div is None:
        return []
    lines = ["", "## First divergent layer", ""]
    if (first := div.first) is None:
        return lines + [f"No tensor diverges beyond tolerance ({div.compared} tensors compared)."]
    lines.append(
        f"`{first.node}` ({first.op_type}), tensor `{first.tensor}`, SNR {first.snr_db:.1f} dB "
        f"(tolerance {div.tolerance['min_snr_db']:g} dB; {div.compared} tensors, {div.samples} samples, "
        f"peak RssAnon {div.peak_rss_anon_mb:.0f} MB). {div.reason}."
    )
    if div.hint:
        lines += ["", f"Fix: {div.hint}"]
    if fix := div.fix:
        names = list(fix.before)
        lines += ["", f"Measured fix: {fix.verdict}", "", "| trial | nodes in FP32 | " + " | ".join(names) + " | gates |",
                  "|---:|---:|" + "---:|" * len(names) + "---|"]
        lines += [f"| {i} | {len(t.exclude)} | " + " | ".join(_fmt(t.metrics[m]) for m in names)
                  + f" | {'pass' if t.passed else 'fail'} |" for i, t in enumerate(fix.rows())]
    return lines


def print_summary(report: Report, console) -> None:
    """The terminal summary: stages, accuracy, latency, gates, what was written."""
    from rich.markup import escape  # node names and hints contain [brackets]
    from rich.table import Table

    table = Table(title="pipeline", show_edge=False, title_justify="left")
    for col in ("stage", "status", "s", "key numbers"):
        table.add_column(col, overflow="fold")
    for s in report.stages:
        style = {"failed": "red", "skipped": "yellow", "cached": "cyan"}.get(s.status, "")
        table.add_row(s.name, f"[{style}]{s.status}[/]" if style else s.status, f"{s.seconds:.1f}", _summary_text(s.summary) or (s.reason or ""))
    console.print(table)
    if val := report.validation:
        _print_validation(val, console)
    for g in report.gates:
        mark = "[green]pass[/]" if g.passed else "[red]FAIL[/]"
        console.print(f"{'default gate' if g.default else 'gate'} {escape(g.expression)}: {mark} ({escape(g.message)})")
    warnings = report.warnings + [f"{s.name}: {w}" for s in report.stages for w in s.warnings]
    for w in warnings:
        console.print(f"[yellow]warning[/]: {escape(w)}")
    for k, v in report.artifacts.items():
        console.print(f"wrote {k}: {v}")


def _print_validation(val: ValidationResult, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    acc = Table(title=f"accuracy vs FP32 ({val.samples} samples)", show_edge=False, title_justify="left")
    for col in ("output", "max abs", "mean abs", "max rel", "min cos", "SNR dB"):
        acc.add_column(col)
    for row in accuracy_rows(val):
        acc.add_row(*row)
    console.print(acc)
    if task := val.task:
        console.print(
            f"{task.name}: reference {_fmt(task.reference)}{task.unit} → candidate "
            f"{_fmt(task.candidate)}{task.unit} ({task.change:+.3g})"
        )
    if lat := val.latency:
        console.print(
            f"latency p50 ({lat.threads} thread): reference {lat.reference.p50_ms:.2f} ms, "
            f"candidate {lat.candidate.p50_ms:.2f} ms → {lat.p50_speedup:.2f}x"
        )
        if lat.note:
            console.print(f"[dim]{lat.note}[/]")
    if (div := val.divergence) and (first := div.first):
        console.print(
            f"first divergent layer: [bold]{first.node}[/] ({first.op_type}, SNR {first.snr_db:.1f} dB; "
            f"{div.compared} tensors in {div.sessions} sessions, peak RssAnon {div.peak_rss_anon_mb:.0f} MB)"
        )
        if div.hint:
            console.print(f"  fix: {escape(div.hint)}")
        if div.fix:
            console.print(f"  {escape(div.fix.verdict)}")


def print_diff(old: Report, new: Report, console) -> None:
    """Release N-1 against release N: every gate metric side by side, and both verdicts."""
    from rich.table import Table

    from optimizer.gates import diff_metrics

    table = Table(title=f"{old.created} → {new.created}", show_edge=False, title_justify="left")
    for col in ("metric", "baseline", "this run", "change"):
        table.add_column(col)
    for name, a, b in diff_metrics(old.validation, new.validation):
        change = f"{b - a:+.4g}" if a is not None and b is not None else ""
        table.add_row(name, _fmt(a) if a is not None else "-", _fmt(b) if b is not None else "-", change)
    console.print(table)
    console.print(f"baseline {'PASSED' if old.passed else 'FAILED'}; this run {'PASSED' if new.passed else 'FAILED'}")
