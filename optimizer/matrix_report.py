"""A matrix's outputs: index.html (models × variants), junit.xml (one testsuite per model),
summary.md (for CI job summaries) and matrix.json (every row, with timings and placement).

index.html, junit.xml and summary.md hold no times, hosts or process ids: for the same
inputs they are byte-identical whatever the number of workers or the placement. Those
live in matrix.json only.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from optimizer.gates import gate_metrics
from optimizer.model import write_text_atomic
from optimizer.report import Report, _fmt

# Headline metrics, in the order the index shows them (those the validation measured).
HEADLINE = ("min_cosine", "min_snr_db", "min_top1_agreement", "p50_speedup")


def _base_row(variant, status: str, seconds: float) -> dict[str, Any]:
    import os
    import socket

    return {
        "key": variant.key,
        "model": variant.model,
        "variant": variant.variant,
        "recipe": variant.recipe,
        "target": variant.target,
        "status": status,
        "gates": [],
        "metrics": {},
        "engine": None,
        "warnings": [],
        "error": None,
        "report": None,
        "seconds": round(seconds, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def error_row(variant, message: str, seconds: float) -> dict[str, Any]:
    """The row of a variant that could not finish (a TrtforgeError, or retries exhausted)."""
    row = _base_row(variant, "error", seconds)
    row["error"] = message
    return row


def report_row(variant, report: Report, out_root: Path, seconds: float) -> dict[str, Any]:
    """The row of a finished variant: its gates, headline metrics, engine and report links."""
    row = _base_row(variant, "passed" if report.passed else "failed", seconds)
    row["gates"] = [{"expression": g.expression, "passed": g.passed, "message": g.message} for g in report.gates]
    metrics = gate_metrics(report.validation)
    row["metrics"] = {k: metrics[k] for k in HEADLINE if k in metrics}
    if report.validation and (task := report.validation.task):
        row["metrics"][f"{task.name} ref → cand"] = f"{_fmt(task.reference)} → {_fmt(task.candidate)}{task.unit}"
    build = report.stage("build")
    if build is not None:
        row["engine"] = build.reason if build.status == "skipped" else "; ".join(
            f"{k}: {v}" for k, v in build.summary.items() if k in ("builder", "engine MB", "carries")
        )
    row["warnings"] = list(report.warnings)
    row["report"] = f"{variant.key}/report.html"
    return row


def write_outputs(result) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "index.html", to_index_html(result.rows))
    write_text_atomic(out / "junit.xml", to_junit(result.rows))
    write_text_atomic(out / "summary.md", to_summary_md(result.rows))
    meta = {"mode": result.mode, "seconds": round(result.seconds, 3), "notes": result.notes, "passed": result.passed}
    write_text_atomic(out / "matrix.json", json.dumps({**meta, "rows": result.rows}, indent=1, default=str) + "\n")


def _grid(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    return models, variants, {(r["model"], r["variant"]): r for r in rows}


def _gate_count(row: dict) -> str:
    gates = row["gates"]
    return f"{sum(g['passed'] for g in gates)}/{len(gates)} gates" if gates else "no gates"


# ---------------------------------------------------------------- index.html

_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1300px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 6px} .meta{color:#5b6475;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:12px 0} th,td{border:1px solid #dde2ea;padding:6px 9px;text-align:left;vertical-align:top}
th{background:#f2f4f8} .badge{display:inline-block;padding:2px 9px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.passed{background:#1f8a4c} .failed{background:#c62828} .error{background:#7b1fa2} .none{color:#9aa3b2}
.m{font-size:12px;color:#3a4252;font-variant-numeric:tabular-nums} .warn{color:#9a6400;font-size:12px;max-width:380px} .bad{color:#c62828;font-size:12px} .dim{color:#5b6475;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(row: dict | None) -> str:
    if row is None:
        return '<td class="none">-</td>'
    parts = [f'<span class="badge {row["status"]}">{row["status"].upper()}</span> <span class="dim">{_e(_gate_count(row))}</span>']
    if row["error"]:
        parts.append(f'<div class="bad">{_e(row["error"])}</div>')
    parts += [f'<div class="bad">✗ {_e(g["message"])}</div>' for g in row["gates"] if not g["passed"]]
    parts += [f'<div class="m">{_e(k)}: {_e(_fmt(v))}</div>' for k, v in row["metrics"].items()]
    if row["engine"]:
        parts.append(f'<div class="dim">engine: {_e(row["engine"])}</div>')
    parts += [f'<div class="warn">⚠ {_e(w)}</div>' for w in row["warnings"]]
    if row["report"]:
        parts.append(f'<div><a href="{_e(row["report"])}">report</a></div>')
    return "<td>" + "".join(parts) + "</td>"


def to_index_html(rows: list[dict]) -> str:
    models, variants, grid = _grid(rows)
    passed = all(r["status"] == "passed" for r in rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed", "error")}
    head = "<tr><th>model</th>" + "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(m)}</th>" + "".join(_cell(grid.get((m, v))) for v in variants) + "</tr>" for m in models
    )
    status = "PASSED" if passed else "FAILED"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>trtforge matrix: {status}</title><style>{_CSS}</style></head>\n<body>\n"
        f'<h1>trtforge matrix <span class="badge {"passed" if passed else "failed"}">{status}</span></h1>\n'
        f'<div class="meta">{len(models)} model(s) × {len(variants)} variant(s): {counts["passed"]} passed, '
        f'{counts["failed"]} failed a gate, {counts["error"]} did not finish</div>\n'
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table>\n</body></html>\n"
    )


# ---------------------------------------------------------------- junit.xml


def to_junit(rows: list[dict]) -> str:
    """One testsuite per model; one testcase per gate per variant (an error case for a variant that did not finish)."""
    models, _, _ = _grid(rows)
    suites = ET.Element("testsuites", name="trtforge matrix")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for model in models:
        suite = ET.SubElement(suites, "testsuite", name=model)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for row in (r for r in rows if r["model"] == model):
            _cases(suite, row, counts)
        for key, value in counts.items():
            suite.set(key, str(value))
        for key in totals:
            totals[key] += counts[key]
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _cases(suite: ET.Element, row: dict, counts: dict[str, int]) -> None:
    classname = f"trtforge.matrix.{row['model']}.{row['variant']}"
    if row["status"] == "error":
        case = ET.SubElement(suite, "testcase", classname=classname, name="variant finished")
        ET.SubElement(case, "error", message=row["error"], type="VariantError").text = row["error"]
        counts["tests"] += 1
        counts["errors"] += 1
        return
    for gate in row["gates"]:
        case = ET.SubElement(suite, "testcase", classname=classname, name=gate["expression"])
        counts["tests"] += 1
        if not gate["passed"]:
            ET.SubElement(case, "failure", message=gate["message"], type="GateFailed").text = gate["message"]
            counts["failures"] += 1
        else:
            ET.SubElement(case, "system-out").text = gate["message"]
    if not row["gates"]:
        case = ET.SubElement(suite, "testcase", classname=classname, name="no gates declared")
        ET.SubElement(case, "skipped", message="no gate applied to this variant (no validation data, or none declared)")
        counts["tests"] += 1
        counts["skipped"] += 1


# ---------------------------------------------------------------- summary.md


def to_summary_md(rows: list[dict]) -> str:
    models, variants, grid = _grid(rows)
    mark = {"passed": "✅", "failed": "❌", "error": "💥"}
    passed = all(r["status"] == "passed" for r in rows)
    lines = [
        f"## trtforge matrix: {'PASSED' if passed else 'FAILED'}",
        "",
        "| model | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for m in models:
        cells = []
        for v in variants:
            row = grid.get((m, v))
            cells.append("-" if row is None else f"{mark[row['status']]} {_gate_count(row)}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    problems = [
        f"- `{r['key']}`: {r['error'] or '; '.join(g['message'] for g in r['gates'] if not g['passed'])}"
        for r in rows
        if r["status"] != "passed"
    ]
    if problems:
        lines += ["", "### Failed", *problems]
    lines += ["", "Per-variant reports: `<model>/<recipe>[/<target>]/report.md`; all variants: `index.html`."]
    return "\n".join(lines) + "\n"
