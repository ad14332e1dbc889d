"""inspect: op histogram through subgraphs, dynamic dims, parameters, custom domains."""

from __future__ import annotations

import onnx
import pytest

from optimizer.inspect import inspect_model

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
g (float[N, 4] x, bool c) => (float[N, 4] y, float[N, 4] z) <float[4] w = {1.0, 2.0, 3.0, 4.0}> {
    y = If (c) <
        then_branch = t () => (float[N, 4] a) { a = Relu (x) },
        else_branch = e () => (float[N, 4] b) { s = Sigmoid (x)  b = Mul (s, w) }
    >
    z = com.acme.Fancy (x)
}
"""


@pytest.fixture
def if_model(tmp_path):
    path = tmp_path / "if.onnx"
    onnx.save_model(onnx.parser.parse_model(IF_MODEL), str(path))
    return path


def test_histogram_counts_subgraph_nodes(if_model):
    report = inspect_model(if_model, parse_check=False)
    assert report.op_histogram == {"If": 1, "Relu": 1, "Sigmoid": 1, "Mul": 1, "com.acme::Fancy": 1}
    assert report.nodes == 5 and report.subgraphs == 2
    assert report.custom_domains == ["com.acme"]
    assert any("com.acme" in n for n in report.notes)


def test_io_dynamic_dims_and_parameters(if_model):
    report = inspect_model(if_model, parse_check=False)
    assert report.inputs[0] == {"name": "x", "dtype": "float32", "shape": ["N", 4]}
    assert report.inputs[1]["dtype"] == "bool"
    assert report.parameters == 4 and report.parameter_bytes == 16
    assert report.initializer_dtypes == {"float": 1}
    assert report.opsets == {"ai.onnx": 17, "com.acme": 1}


@pytest.mark.rtx
def test_parse_check_names_the_failing_node(if_model):
    report = inspect_model(if_model)
    check = report.parse_check
    assert check is not None and check["ok"] is False
    assert any(issue["op_type"] == "Fancy" for issue in check["issues"])
