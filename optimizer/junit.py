"""JUnit XML for CI: one testcase per release gate, so a failed gate shows up as a failed test.

CI systems (GitLab, Jenkins, GitHub test reporters) read this format natively; the failure
message is the gate's own message, and the testsuite carries the key accuracy numbers as
properties for dashboards.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from optimizer.report import Report


def to_junit(report: Report) -> str:
    name = Path(report.model.get("path", "model")).name
    failures = sum(not g.passed for g in report.gates)
    seconds = sum(s.seconds for s in report.stages)
    suites = ET.Element("testsuites", name="trtforge", tests=str(len(report.gates)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"trtforge gates: {name}",
        tests=str(len(report.gates)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{seconds:.3f}",
        timestamp=report.created,
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in _properties(report).items():
        ET.SubElement(properties, "property", name=key, value=value)
    for gate in report.gates:
        # Default gates carry their own class, so CI shows that nobody chose these thresholds.
        kind = "default_gates" if gate.default else "gates"
        case = ET.SubElement(suite, "testcase", classname=f"trtforge.{kind}.{name}", name=gate.expression, time="0")
        if not gate.passed:
            failure = ET.SubElement(case, "failure", message=gate.message, type="GateFailed")
            failure.text = gate.message
        else:
            ET.SubElement(case, "system-out").text = gate.message
    if not report.gates:
        # An empty suite reads as "nothing ran" to some CI tools; say so explicitly instead.
        case = ET.SubElement(suite, "testcase", classname=f"trtforge.gates.{name}", name="no gates declared", time="0")
        ET.SubElement(case, "skipped", message="no gates checked: none given and --no-default-gates, or no validation data for the default gates")
        suite.set("skipped", "1")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _properties(report: Report) -> dict[str, str]:
    from optimizer.gates import gate_metrics

    props = {"model.sha256": str(report.model.get("sha256", "")), "passed": str(report.passed).lower()}
    if any(g.default for g in report.gates):
        from optimizer.gates import DEFAULT_GATES_DOC

        props["default_gates"] = DEFAULT_GATES_DOC
    for key, value in gate_metrics(report.validation).items():
        props[key] = f"{value:.6g}"
    return props
