"""The HTML report: one self-contained file (inline CSS, plots as inline SVG, no network).

Sections: verdict and gates, pipeline summary, per-pass table, precision map, accuracy,
per-layer error (from the first-divergent-layer search, when it ran) and the latency
histogram. It reads only the Report, so ``trtforge report report.json --html`` re-renders any
saved run. matplotlib is imported lazily; without it the plots are replaced by a note.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from optimizer.report import Report, _fmt, _summary_text, accuracy_rows, data_rows, data_sentence
from optimizer.validation_record import DivergenceResult, Latency, ValidationResult

_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.meta{color:#5b6475;font-size:13px} code{background:#f2f4f8;padding:1px 4px;border-radius:3px;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #dde2ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:14px}
.pass{background:#1f8a4c} .fail{background:#c62828} .warn{color:#9a6400}
.chips{display:flex;flex-wrap:wrap;gap:3px;margin:6px 0}
.chip{font-size:11px;padding:2px 5px;border-radius:3px;border:1px solid transparent}
.int8{background:#d7f0df;border-color:#1f8a4c} .fp32{background:#eceff3;border-color:#9aa3b2} .culprit{background:#fde0e0;border-color:#c62828;font-weight:600}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0} .kpi{border:1px solid #dde2ea;border-radius:6px;padding:8px 12px;min-width:130px}
.kpi .v{font-size:20px;font-weight:600} .kpi .l{font-size:12px;color:#5b6475}
svg{max-width:100%;height:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kpi(label: str, value: str) -> str:
    return f'<div class="kpi"><div class="v">{_e(value)}</div><div class="l">{_e(label)}</div></div>'


# ---------------------------------------------------------------- plots


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height))


def layer_error_plot(divergence: DivergenceResult) -> str:
    layers = divergence.layers
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    clip = lambda v: max(min(v, 80.0), -20.0)  # noqa: E731  (SNR of exact tensors is 999)
    for kind, style, label in (
        ("node", dict(color="#1f5fbf", lw=1.2), "node output (all error so far)"),
        ("local", dict(color="#e07b00", ls="none", marker="o", ms=3), "quantized node on exact inputs (its own error)"),
    ):
        points = [(layer.order, clip(layer.snr_db)) for layer in layers if layer.kind == kind]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, **style)
    tol = divergence.tolerance["min_snr_db"]
    ax.axhline(tol, color="#c62828", ls="--", lw=1, label=f"tolerance {tol:g} dB")
    if first := divergence.first:
        ax.axvline(first.order, color="#c62828", lw=0.8)
        ax.annotate(f"first divergent: {first.node}", (first.order, clip(first.snr_db)), xytext=(8, 8),
                    textcoords="offset points", fontsize=8, color="#c62828")
    ax.set_xlabel("node position (topological order)")
    ax.set_ylabel("SNR vs FP32 (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _svg(fig)


def latency_histogram(latency: Latency) -> str:
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    timings = {"reference": latency.reference, "candidate": latency.candidate}
    series = {name: t.samples_ms for name, t in timings.items()}
    values = [v for s in series.values() if s for v in s]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    for (name, samples), color in zip(series.items(), ("#1f5fbf", "#e07b00")):
        if samples:
            ax.hist(samples, bins=bins, alpha=0.55, color=color, label=f"{name} (p50 {timings[name].p50_ms:.2f} ms)")
            ax.axvline(timings[name].p50_ms, color=color, lw=1)
    ax.set_xlabel("latency per inference (ms)")
    ax.set_ylabel("iterations")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)


def _plot(fn, *args) -> str:
    try:
        return fn(*args)
    except ImportError:
        return '<p class="warn">plots need matplotlib: pip install "trtforge[report]"</p>'


# ---------------------------------------------------------------- sections


def _gates(report: Report) -> str:
    if not report.gates:
        return "<p>No gates declared.</p>"
    rows = [[g.expression, _fmt(g.value) if g.value is not None else "n/a", "pass" if g.passed else "FAIL", g.message,
             "default" if g.default else "given"] for g in report.gates]
    note = ""
    if any(g.default for g in report.gates):
        from optimizer.gates import DEFAULT_GATES_DOC

        note = f'<p class="meta">{_e(DEFAULT_GATES_DOC)}</p>'
    return _table(["gate", "value", "result", "detail", "source"], rows, {1}) + note


def _passes(report: Report) -> str:
    stage = report.stage("passes")
    if not stage or not stage.details.get("passes"):
        return "<p>Graph passes did not run.</p>"
    rows = [
        [p["name"], "changed" if p["modified"] else "-", p["nodes_before"], p["nodes_after"], f"{p['seconds']:.3f}", "; ".join(p.get("notes", []))]
        for p in stage.details["passes"]
    ]
    refused = [
        f"<details><summary>{_e(p['name'])}: {len(p['refusals'])} node(s) matched but kept</summary><ul>"
        + "".join(f"<li>{_e(line)}</li>" for line in p["refusals"]) + "</ul></details>"
        for p in stage.details["passes"] if p.get("refusals")
    ]
    return _table(["pass", "effect", "nodes before", "nodes after", "s", "notes"], rows, {2, 3, 4}) + "".join(refused)


def _precision(report: Report, culprits: set[str]) -> str:
    stage = report.stage("precision")
    if not stage or stage.status not in ("ran", "cached"):
        return "<p>No precision stage in this run.</p>"
    d = stage.details
    quantized, skipped = d.get("quantized_nodes", []), d.get("skipped", {})
    parts = [
        f"<p>{len(quantized)} node(s) in INT8, {len(skipped)} compute node(s) left in FP32; "
        f"INT8 weight share {d.get('quantized_weight_share', 0):.1%}; target <code>{_e(d.get('target'))}</code>, "
        f"method <code>{_e(d.get('method'))}</code>{', per-tensor weights' if d.get('per_channel') is False else ''}.</p>",
        '<div class="chips">',
    ]
    for name in quantized:
        cls = "chip culprit" if name in culprits else "chip int8"
        tip = "INT8; the divergence search recommends keeping it in FP32" if name in culprits else "INT8"
        parts.append(f'<span class="{cls}" title="{_e(tip)}">{_e(name)}</span>')
    for name, reason in skipped.items():
        parts.append(f'<span class="chip fp32" title="{_e(reason)}">{_e(name)}</span>')
    parts.append("</div>")
    parts.append('<p class="meta">green: INT8; grey: FP32 (hover for the reason); red: recommended for <code>precision.exclude</code>.</p>')
    if build := report.stage("build"):
        prec = build.details.get("precision") or {}
        if prec.get("by_dtype"):
            parts.append("<p>Engine layers by type: " + _e(", ".join(f"{k} {v}" for k, v in prec["by_dtype"].items())) + "</p>")
    return "".join(parts)


def _accuracy(val: ValidationResult) -> str:
    headers = ["output", "max abs", "mean abs", "max rel", "min cosine", "SNR (dB)"]
    rows = accuracy_rows(val)
    if val.class_like():
        headers += ["top-1 agree", "top-5 agree"]
        for row, out in zip(rows, val.outputs):
            row += [f"{out.top1_agreement:.2%}", f"{out.top5_agreement:.2%}"] if out.top1_agreement is not None else ["", ""]
    parts = [f"<p>Validation data: {_e(data_sentence(val).replace('`', ''))}</p>"]
    if inputs := data_rows(val):
        parts.append(_table(["input", "dtype", "shapes", "value range"], inputs))
    parts.append(_table(headers, rows, set(range(1, len(headers)))))
    if task := val.task:
        unit = task.unit
        parts.append(
            f"<p>Task metric <b>{_e(task.name)}</b> ({'higher' if task.higher_is_better else 'lower'} is better): "
            f"reference <b>{_e(_fmt(task.reference))}{_e(unit)}</b>, candidate <b>{_e(_fmt(task.candidate))}{_e(unit)}</b> "
            f"(change {task.change:+.4g}{_e(unit)}).</p>"
        )
    if noise := val.noise:
        parts.append(
            f"<p>Reference noise floor ({_e(' vs '.join(noise.configurations))}, {noise.samples} samples): "
            f"max abs {_e(_fmt(noise.max_abs))}.</p>"
        )
    return "".join(parts)


def _divergence(div: DivergenceResult) -> str:
    parts = [
        f"<p>{div.compared} tensors compared on {div.samples} sample(s), {div.chunk} per ORT session "
        f"({div.sessions} sessions); peak RssAnon {div.peak_rss_anon_mb:.0f} MB "
        f"(before: {div.baseline_rss_anon_mb:.0f} MB); {div.seconds:.1f} s.</p>"
    ]
    if first := div.first:
        parts.append(
            f"<p>First divergent: <b>{_e(first.node)}</b> ({_e(first.op_type)}), tensor <code>{_e(first.tensor)}</code>, "
            f"SNR {first.snr_db:.1f} dB.</p><p>{_e(div.reason)}</p>"
        )
        if div.recommend_exclude:
            parts.append(f"<p>Fix: <code>{_e(div.hint)}</code></p>")
        if fix := div.fix:
            names = list(fix.before)
            rows = [[i, len(t.exclude), *(_fmt(t.metrics[m]) for m in names), "pass" if t.passed else "fail"]
                    for i, t in enumerate(fix.rows())]
            parts.append(f"<p>Measured fix: {_e(fix.verdict)}</p>")
            parts.append(_table(["trial", "nodes in FP32", *names, "gates"], rows, set(range(0, len(names) + 2))))
    else:
        parts.append("<p>No tensor diverges beyond tolerance.</p>")
    parts.append(_plot(layer_error_plot, div))
    return "".join(parts)


def _latency(lat: Latency) -> list[str]:
    timings = (("reference", lat.reference), ("candidate", lat.candidate))
    body = [
        f"<h2>Latency ({_e(lat.runtime)}, {_e(lat.threads)} thread(s), {_e(lat.iterations)} interleaved iterations)</h2>",
        _table(["model", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)"],
               [[n, f"{t.p50_ms:.2f}", f"{t.p90_ms:.2f}", f"{t.p99_ms:.2f}", f"{t.mean_ms:.2f}"] for n, t in timings], {1, 2, 3, 4}),
        _plot(latency_histogram, lat),
    ]
    return body + ([f'<p class="meta">{_e(lat.note)}</p>'] if lat.note else [])


def _kpis(report: Report) -> list[str]:
    val = report.validation
    kpis = []
    if val and (task := val.task):
        kpis.append(_kpi(f"{task.name} reference → candidate", f"{_fmt(task.reference)} → {_fmt(task.candidate)}{task.unit}"))
    if val and val.outputs:
        kpis.append(_kpi("min SNR (dB)", _fmt(min(o.snr_db for o in val.outputs))))
    if val and (lat := val.latency):
        paired = f" (paired {lat.paired_speedup:.2f}x)" if lat.paired_speedup is not None else ""
        kpis.append(_kpi("p50 speed-up", f"{lat.p50_speedup:.2f}x{paired}"))
    if prec := report.stage("precision"):
        if "INT8 weight share" in prec.summary:
            kpis.append(_kpi("INT8 weight share", f"{prec.summary['INT8 weight share']:.1%}"))
    return kpis


def to_html(report: Report) -> str:
    status = "PASSED" if report.passed else "FAILED"
    name = Path(report.model.get("path", "?")).name
    val = report.validation
    div = val.divergence if val else None
    culprits = set(div.recommend_exclude) if div else set()
    kpis = _kpis(report)
    body = [
        f"<h1>trtforge report: {_e(name)} <span class=\"badge {'pass' if report.passed else 'fail'}\">{status}</span></h1>",
        f"<div class=\"meta\">created {_e(report.created)} · model sha256 <code>{_e(str(report.model.get('sha256', '?'))[:16])}</code> · "
        f"{_e(report.model.get('nodes', '?'))} nodes · opset {_e(report.model.get('opset', '?'))}<br>command <code>{_e(report.command)}</code></div>",
        f'<div class="kpis">{"".join(kpis)}</div>',
        "<h2>Gates</h2>", _gates(report),
        "<h2>Pipeline</h2>",
        _table(["stage", "status", "time (s)", "key numbers"],
               [[s.name, s.status, f"{s.seconds:.2f}", _summary_text(s.summary) or (s.reason or "")] for s in report.stages], {2}),
        "<h2>Graph passes</h2>", _passes(report),
        "<h2>Precision map</h2>", _precision(report, culprits),
    ]
    if val:
        body += ["<h2>Accuracy (candidate vs FP32 reference)</h2>", _accuracy(val)]
        if div:
            body += ["<h2>Per-layer error (first-divergent-layer search)</h2>", _divergence(div)]
        if val.latency:
            body += _latency(val.latency)
    warnings = report.warnings + [f"{s.name}: {w}" for s in report.stages for w in s.warnings]
    if warnings:
        body += ["<h2>Warnings</h2><ul>", *[f'<li class="warn">{_e(w)}</li>' for w in warnings], "</ul>"]
    if report.artifacts:
        body += ["<h2>Artifacts</h2>", _table(["artifact", "path"], [[k, v] for k, v in report.artifacts.items()])]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>trtforge: {_e(name)} {status}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<p class=\"meta\">trtforge report schema {report.schema_version}</p>\n</body></html>\n"
    )
