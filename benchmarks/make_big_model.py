"""Write a >2 GB ONNX model with external data: a stack of large MatMul+Add+Relu layers plus foldable bits.

    .venv/bin/python benchmarks/make_big_model.py /tmp/big/big.onnx [--layers 40] [--width 4096]

Each layer is ``Relu(MatMul(x, W_i) + b_i)`` with ``W_i`` a ``width x width`` float32 weight
(40 x 4096^2 x 4 B = 2.7 GB). Around them sit things a graph optimizer should clean up: an
Identity and a Dropout per layer, a ``Mul`` by a constant computed from a small foldable
constant subgraph, and a Reshape whose target shape is computed by ``Shape -> Gather ->
Concat``. Weights are written straight into the data file one layer at a time, so the
generator itself never holds more than one layer in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx_ir as ir


def make_big_model(path: Path, layers: int = 40, width: int = 4096, batch: int = 4, seed: int = 0):
    """Write the model (``path`` and ``path.data``); return (path, feeds for its input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    scale = np.float32(np.sqrt(2.0 / width))

    initializers: list[ir.Value] = []
    offset = 0
    with open(path.parent / data_name, "wb") as data:

        def external(name: str, array: np.ndarray) -> ir.Value:
            nonlocal offset
            array = np.ascontiguousarray(array)
            data.write(array.tobytes())
            tensor = ir.ExternalTensor(
                data_name,
                offset=offset,
                length=array.nbytes,
                dtype=ir.DataType.from_numpy(array.dtype),
                shape=ir.Shape(array.shape),
                name=name,
                base_dir=str(path.parent),
            )
            offset += array.nbytes
            pad = (-offset) % 4096  # page-aligned tensors map cleanly
            data.write(b"\0" * pad)
            offset += pad
            value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
            initializers.append(value)
            return value

        x = ir.Value(name="x", shape=ir.Shape([batch, width]), type=ir.TensorType(ir.DataType.FLOAT))
        nodes: list[ir.Node] = []

        def node(op, inputs, **attrs):
            n = ir.node(op, inputs, attributes=attrs)
            nodes.append(n)
            return n.outputs[0]

        def const(name, array):
            v = ir.Value(name=name, shape=ir.Shape(np.shape(array)), type=ir.TensorType(ir.DataType.from_numpy(np.asarray(array).dtype)), const_value=ir.tensor(np.asarray(array), name=name))
            initializers.append(v)
            return v

        h = x
        for i in range(layers):
            w = (rng.standard_normal((width, width), dtype=np.float32) * scale).astype(np.float32)
            b = (rng.standard_normal(width, dtype=np.float32) * 0.01).astype(np.float32)
            W, B = external(f"W{i}", w), external(f"b{i}", b)
            del w
            h = node("Identity", [h])
            h = node("MatMul", [h, W])
            h = node("Add", [h, B])
            h = node("Relu", [h])
            h = node("Dropout", [h])
            # Foldable: one = (2 * 0.5) computed from constants; h * one.
            one = node("Mul", [const(f"two{i}", np.array(2.0, np.float32)), const(f"half{i}", np.array(0.5, np.float32))])
            h = node("Mul", [h, one])
        # Shape -> Gather -> Concat -> Reshape: a no-op once dims are known.
        shape = node("Shape", [h])
        d0 = node("Gather", [shape, const("idx0", np.array([0], np.int64))], axis=0)
        target = node("Concat", [d0, const("minus1", np.array([-1], np.int64))], axis=0)
        y = node("Reshape", [h, target])
        y.name = "y"
        y.type, y.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([batch, width])

    graph = ir.Graph([x], [y], nodes=nodes, initializers=initializers, opset_imports={"": 17}, name="big_mlp")
    model = ir.Model(graph, ir_version=8, producer_name="trtforge-benchmarks")
    ir.save(model, path)  # tensors already point into data_name; nothing is copied
    feeds = {"x": np.random.default_rng(seed + 1).standard_normal((batch, width)).astype(np.float32)}
    return path, feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    path, _ = make_big_model(args.out, args.layers, args.width)
    data = path.parent / (path.name + ".data")
    print(f"wrote {path} ({path.stat().st_size} B) and {data} ({data.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
