"""``trtforge inspect``: what a model is, and whether TensorRT can parse it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from optimizer.model import (
    count_nodes,
    external_data_files,
    input_specs,
    iter_tensors,
    load_model,
    output_specs,
    weightless_tensors,
)

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


@dataclass
class InspectReport:
    path: str
    file_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: int
    subgraphs: int
    op_histogram: dict[str, int]
    custom_domains: list[str]
    parameters: int
    parameter_bytes: int
    initializer_dtypes: dict[str, int]
    external_data: list[str]
    metadata_keys: list[str]
    parse_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: Conv/Gemm/MatMul nodes whose weight already satisfies 2:4 in TensorRT's layout (build with sparse weights).
    weights_2_4: list[str] = field(default_factory=list)
    #: Tensors that declare a shape but carry no data (a weight-stripped model, TensorRT's TRT_WEIGHTLESS format).
    weightless: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def op_histogram(model: ir.Model) -> Counter:
    counts: Counter = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        counts[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return counts


def _count_subgraphs(model: ir.Model) -> int:
    return sum(
        1 if a.type == ir.AttributeType.GRAPH else len(a.value)
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        for a in node.attributes.values()
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    )


def _weights_2_4(model: ir.Model) -> list[str]:
    from optimizer.pruning import weights_2_4

    return [name for name, ok in weights_2_4(model).items() if ok]


def inspect_model(path: str | Path, *, parse_check: bool = True, builder: str | None = None) -> InspectReport:
    path = Path(path)
    model = load_model(path, for_inspection=True)
    dtypes: Counter = Counter()
    params = nbytes = 0
    for _, tensor in iter_tensors(model):
        dtypes[tensor.dtype.name.lower()] += 1
        params += tensor.size
        nbytes += tensor.nbytes
    domains = sorted({n.domain for n in ir.traversal.RecursiveGraphIterator(model.graph)} - STANDARD_DOMAINS)
    report = InspectReport(
        path=str(path),
        file_bytes=path.stat().st_size + sum(f.stat().st_size for f in external_data_files(model)),
        ir_version=model.ir_version,
        opsets={(k or "ai.onnx"): v for k, v in model.opset_imports.items()},
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        inputs=[s.to_dict() for s in input_specs(model)],
        outputs=[s.to_dict() for s in output_specs(model)],
        nodes=count_nodes(model),
        subgraphs=_count_subgraphs(model),
        op_histogram=dict(op_histogram(model).most_common()),
        custom_domains=domains,
        parameters=params,
        parameter_bytes=nbytes,
        initializer_dtypes=dict(dtypes),
        external_data=[str(f.name) for f in external_data_files(model)],
        metadata_keys=sorted(dict(model.metadata_props)),
        weights_2_4=_weights_2_4(model),
        weightless=weightless_tensors(model),
    )
    if report.weightless:
        report.notes.append(
            f"weight-stripped: {len(report.weightless)} of {sum(dtypes.values())} tensors have no data; "
            "passes, quantize, prune, build and validate need the model with its weights"
        )
    if domains:
        report.notes.append(f"custom op domains {domains}: TensorRT needs plugins for these")
    if parse_check and report.weightless:
        report.notes.append("TensorRT parse check skipped: its ONNX parser needs the weights (inspect the model with its weights)")
    elif parse_check:
        from optimizer.engine import parse_check as trt_parse_check

        check = trt_parse_check(path, builder=builder)
        if check is None:
            report.notes.append("TensorRT parse check skipped: neither tensorrt nor tensorrt_rtx is installed (pip install 'trtforge[rtx]')")
        else:
            report.parse_check = dataclasses.asdict(check)
    return report


def print_inspect(report: InspectReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    # Names, paths and producers come from the model file: printed as text, never as rich markup.
    console.print(f"[bold]{escape(report.path)}[/]  ({report.file_bytes / 1e6:.2f} MB)")
    opsets = ", ".join(f"{k} {v}" for k, v in report.opsets.items())
    console.print(f"IR version {report.ir_version}; opsets: {escape(opsets)}; producer: {escape(report.producer or 'unknown')}")
    io = Table(show_edge=False, title="inputs / outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, specs in (("in", report.inputs), ("out", report.outputs)):
        for s in specs:
            shape = "?" if s["shape"] is None else "[" + ", ".join("?" if d is None else str(d) for d in s["shape"]) + "]"
            io.add_row(kind, escape(s["name"]), s["dtype"], escape(shape))
    console.print(io)
    console.print(
        f"{report.nodes} nodes ({report.subgraphs} subgraphs), {report.parameters:,} parameters "
        f"({report.parameter_bytes / 1e6:.2f} MB; {', '.join(f'{k}: {v}' for k, v in report.initializer_dtypes.items())})"
    )
    console.print("ops: " + ", ".join(f"{op} {n}" for op, n in report.op_histogram.items()), markup=False)
    if report.external_data:
        console.print(f"external data: {', '.join(report.external_data)}", markup=False)
    check = report.parse_check
    if check is not None:
        if check["ok"]:
            console.print(f"TensorRT parse ({check['builder']} {check['version']}): [green]ok[/], {check['num_layers']} layers")
        else:
            console.print(f"TensorRT parse ({check['builder']} {check['version']}): [red]{len(check['issues'])} node(s) failed[/]")
            for issue in check["issues"]:
                line = f"  node {issue['node_index']} {issue['node_name']} ({issue['op_type']}): {issue['message']}"
                console.print(line, markup=False)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
