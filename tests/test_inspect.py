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


# --- hostile models: inspect shows what it can, the CLI ends in one line ---------------------


def _weightless_conv(path):
    """A Conv model in TensorRT's weight-stripped format (as Polygraphy's ``surgeon weight-strip`` writes it)."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) { y = Conv <pads = [1, 1, 1, 1]> (x, w, b) }"""
    )
    for name, shape in (("w", (4, 3, 3, 3)), ("b", (4,))):
        t = numpy_helper.from_array(np.zeros(shape, np.float32), name)
        t.raw_data = b""
        t.doc_string = "TRT_WEIGHTLESS/"
        model.graph.initializer.append(t)
    model.doc_string = "TRT_WEIGHTLESS"
    onnx.save_model(model, str(path))
    return path


def test_weightless_model_is_inspected_and_refused_by_commands_that_need_weights(tmp_path):
    from click.testing import CliRunner

    from optimizer.cli import main

    path = _weightless_conv(tmp_path / "stripped.onnx")
    report = inspect_model(path, parse_check=False)
    assert report.weightless == ["w", "b"] and report.parameters == 112 and report.weights_2_4 == []
    assert any("weight-stripped: 2 of 2 tensors have no data" in n for n in report.notes)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0 and "weight-stripped" in result.output
    assert "TensorRT parse check skipped: its ONNX parser needs the weights" in result.output
    for args in (["passes", str(path), "-o", str(tmp_path / "o.onnx")], ["prune", str(path), "--channels", "0.3", "--dry-run"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "a weight-stripped model; this command needs the weights" in result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stripped.onnx"]


def test_names_are_printed_as_text_not_rich_markup(tmp_path):
    from click.testing import CliRunner

    from optimizer.cli import main

    model = onnx.parser.parse_model(IF_MODEL)
    model.graph.input[0].name = "[/bold]x"
    for node in model.graph.node:
        node.name = "[/]"
    model.producer_name = "[red"
    model.metadata_props.add(key="[/]", value="[link=file:///etc]z")
    for g in (model.graph, model.graph.node[0].attribute[0].g, model.graph.node[0].attribute[1].g):
        for node in g.node:
            node.input[:] = ["[/bold]x" if i == "x" else i for i in node.input]
    path = tmp_path / "markup.onnx"
    onnx.save_model(model, str(path))
    result = CliRunner().invoke(main, ["inspect", str(path), "--no-parse-check"])
    assert result.exit_code == 0, result.output
    assert "[/bold]x" in result.output and "producer: [red" in result.output


def test_undefined_input_type_is_shown(tmp_path, if_model):
    model = onnx.load(str(if_model))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    onnx.save_model(model, str(tmp_path / "u.onnx"))
    assert inspect_model(tmp_path / "u.onnx", parse_check=False).inputs[0]["dtype"] == "undefined"


def test_invalid_utf8_producer_is_one_line_and_exit_2(tmp_path, if_model):
    from click.testing import CliRunner

    from optimizer.cli import main

    model = onnx.load(str(if_model))
    model.producer_name = "PRODUCER"
    (tmp_path / "bad.onnx").write_bytes(model.SerializeToString().replace(b"PRODUCER", b"\xffRODUCER"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "bad.onnx"), "--json"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.count("\n") == 1 and "producer_name is not valid UTF-8" in result.output
