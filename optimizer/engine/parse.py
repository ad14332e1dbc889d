"""Parsing an ONNX file into a TensorRT network, and the parse check ``inspect`` reports."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from optimizer.engine.loader import (
    available_builders,
    create_network,
    get_logger,
    load_tensorrt,
    one_line,
    version_of,
)
from optimizer.errors import InputError


@dataclass
class ParseIssue:
    node_index: int  # -1 when the problem is the model, not one node
    node_name: str
    op_type: str
    message: str

    def describe(self) -> str:
        where = "model" if self.node_index < 0 else f"node {self.node_index} {self.node_name!r} ({self.op_type})"
        return f"{where}: {self.message}"


@dataclass
class ParseCheck:
    builder: str
    version: str
    ok: bool
    issues: list[ParseIssue] = field(default_factory=list)
    num_layers: int = 0


@dataclass
class Parsed:
    """A parsed network. The parser owns the weights the network points at, so it must live
    as long as the network does (until the engine is built)."""

    network: Any
    parser: Any
    builder: Any
    issues: list[ParseIssue]


def check_model_file(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist; check the path")
    return path


def parse_network(trt: ModuleType, model_path: Path, strongly_typed: bool = True) -> Parsed:
    logger = get_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, strongly_typed)
    parser = trt.OnnxParser(network, logger)
    # From the path, not from bytes: the parser then finds external-data files next to it.
    with _native_stderr_captured() as native:
        ok = parser.parse_from_file(str(model_path))
    logger.take()  # parse messages are reported through the parser's own errors
    issues = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        code = getattr(err.code(), "name", str(err.code()))
        message = one_line(f"{code}: {err.desc()}")
        issues.append(ParseIssue(int(err.node()), err.node_name(), err.node_operator(), message))
    if not ok and not issues:  # never report a failed parse as clean
        said = one_line(native.read()) if native.read() else "the parser failed without saying why"
        issues.append(ParseIssue(-1, "", "", said))
    return Parsed(network, parser, builder, issues)


class _Captured:
    def __init__(self) -> None:
        self.text = ""

    def read(self) -> str:
        return self.text


@contextmanager
def _native_stderr_captured():
    """The ONNX parser's C++ code prints some errors straight to file descriptor 2, past the
    logger: capture them (they reach the user through the parse issues), so the CLI's one-line
    rule holds."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace").strip()[:400]


def is_unreadable(issues: list[ParseIssue]) -> bool:
    """The file is not an ONNX model at all (corrupt or truncated protobuf)."""
    return bool(issues) and all(i.node_index < 0 and "DESERIALIZE" in i.message for i in issues)


def parse_check(model_path: str | Path, builder: str | None = None) -> ParseCheck | None:
    """Parse the model with a TensorRT builder; ``None`` when none is installed (and none was asked for)."""
    path = check_model_file(model_path)
    if builder is None and not available_builders():
        return None
    trt, flavour = load_tensorrt(builder)
    parsed = parse_network(trt, path)
    return ParseCheck(
        builder=flavour,
        version=version_of(trt),
        ok=not parsed.issues,
        issues=parsed.issues,
        num_layers=parsed.network.num_layers,
    )
