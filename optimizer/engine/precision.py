"""Which precisions a parsed (strongly typed) network carries.

TensorRT 11 and TensorRT-RTX take precision from the graph, so the network definition
already says it: a Conv whose data and weights both come out of DequantizeLinear from INT8
(or FP8) runs in INT8 (FP8) once TensorRT fuses the Q/DQ; a MatMul whose weights come out of a
block-wise INT4 DequantizeLinear and whose data is float is an INT4 weight-only GEMM ("int4");
a Conv fed FP16 tensors runs in FP16. Reading
this before the build lets ``expect="int8"`` fail fast, and works without a GPU (the built
engine's own layer report needs a runtime, which TensorRT-RTX cannot start on a CPU).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# TensorRT DataType name -> the name used in reports and ``expect``.
DTYPE_NAMES = {
    "FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT8": "int8", "FP8": "fp8",
    "INT4": "int4", "FP4": "fp4", "UINT8": "uint8", "INT32": "int32", "INT64": "int64",
    "BOOL": "bool", "E8M0": "e8m0",
}  # fmt: skip
# Narrowest first: the order of ``carries``.
PRECISION_ORDER = ["fp4", "int4", "fp8", "int8", "fp16", "bf16", "fp32"]
FLOAT_PRECISIONS = {"fp32", "fp16", "bf16"}
QUANTIZED = {"int8", "fp8", "int4", "fp4"}
# Formats TensorRT takes as weight-only (block-quantized weights, float activations).
WEIGHT_ONLY = {"int4", "fp4"}
# Layers that do the arithmetic worth quantizing; the rest follow their inputs' type.
COMPUTE_LAYERS = {"CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "FULLY_CONNECTED", "EINSUM"}
# Layers TensorRT moves Q/DQ across when it fuses them (weights often pass a transpose).
PASS_THROUGH = {"SHUFFLE", "IDENTITY"}


@dataclass
class LayerPrecisionSummary:
    by_type: dict[str, int] = field(default_factory=dict)  # layer count per TensorRT layer type
    by_dtype: dict[str, int] = field(default_factory=dict)  # layer count per first-output dtype
    quantize_layers: int = 0
    dequantize_layers: int = 0
    cast_layers: int = 0
    carries: list[str] = field(default_factory=list)  # precisions compute layers run in, narrowest first
    compute_by_precision: dict[str, int] = field(default_factory=dict)  # e.g. {"int8": 38, "fp32": 13}


def dtype_name(dtype: Any) -> str:
    return DTYPE_NAMES.get(dtype.name, dtype.name.lower())


def _quantized_source(tensor: Any, producers: dict[str, Any]) -> str | None:
    """The quantized dtype a tensor was dequantized from, looking through pass-through layers."""
    for _ in range(8):  # chains are short; the bound guards against odd graphs
        layer = producers.get(tensor.name)
        if layer is None:
            return None
        kind = layer.type.name
        if kind == "DEQUANTIZE":
            src = dtype_name(layer.get_input(0).dtype)
            return src if src in QUANTIZED else None
        if kind not in PASS_THROUGH or layer.get_input(0) is None:
            return None
        tensor = layer.get_input(0)
    return None


def _compute_precision(layer: Any, producers: dict[str, Any]) -> str:
    # Data and weights (inputs 0 and 1; a bias is not quantized). With static weights a
    # Conv has one tensor input, and then Q/DQ on the data alone does not make it INT8.
    inputs = [layer.get_input(i) for i in range(min(layer.num_inputs, 2))]
    inputs = [t for t in inputs if t is not None]
    sources = {_quantized_source(t, producers) for t in inputs}
    if len(inputs) == 2 and len(sources) == 1 and None not in sources:
        return sources.pop()  # type: ignore[return-value]
    # Weight-only formats: INT4 (or FP4) weights dequantized into a GEMM whose data stays float.
    # TensorRT runs these as weight-only GEMMs, so the layer carries the weight's format.
    if weight_only := sources & WEIGHT_ONLY:
        return min(weight_only, key=PRECISION_ORDER.index)
    return dtype_name(inputs[0].dtype) if inputs else "fp32"


def network_precision(network: Any, trt: Any = None) -> LayerPrecisionSummary:
    """Count layers by type and dtype and say which precisions the compute layers run in.

    ``trt`` is accepted for symmetry with the other entry points; everything needed is
    reachable from the network's own objects.
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producers = {layer.get_output(j).name: layer for layer in layers for j in range(layer.num_outputs)}
    by_type: Counter[str] = Counter()
    by_dtype: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    float_outputs: Counter[str] = Counter()
    for layer in layers:
        kind = layer.type.name
        by_type[kind] += 1
        if layer.num_outputs:
            out = dtype_name(layer.get_output(0).dtype)
            by_dtype[out] += 1
            if out in FLOAT_PRECISIONS and kind not in {"CONSTANT", "CAST", "DEQUANTIZE"}:
                float_outputs[out] += 1
        if kind in COMPUTE_LAYERS:
            compute[_compute_precision(layer, producers)] += 1
    # A network without Conv/MatMul (all elementwise) still runs in some float type.
    basis = compute or float_outputs
    carries = sorted(basis, key=lambda p: PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER))
    return LayerPrecisionSummary(
        by_type=dict(by_type.most_common()),
        by_dtype=dict(by_dtype.most_common()),
        quantize_layers=by_type["QUANTIZE"] + by_type["DYNAMIC_QUANTIZE"],
        dequantize_layers=by_type["DEQUANTIZE"],
        cast_layers=by_type["CAST"],
        carries=carries,
        compute_by_precision=dict(compute.most_common()),
    )
