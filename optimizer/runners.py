"""Runners: ``run(feeds) -> outputs`` over one backend, plus the model's I/O metadata.

ONNX Runtime on the CPU is always here. Sessions are built from the model *file* so external
data and models over 2 GB work, and ONNX Runtime's own graph optimisations are switched to
BASIC so that what we measure is our graph, not ORT's contrib-op rewrite of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from optimizer.errors import InputError, ValidationError, first_line
from optimizer.model import TensorSpec

_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_TO_NUMPY.get(arg.type, arg.type), shape)


_CAPPED_ARENA: list[int] = []  # the cap of the process-wide capped CPU arena, once registered


def _cap_activations(ort, opts, limit: int) -> None:
    """Run this session's activations in a CPU arena that refuses to grow past ``limit`` bytes.

    The arena is ONNX Runtime's environment allocator, registered once per process (the first
    cap stays); only sessions that opt in use it, and their initializers stay outside it, so
    a large model's weights do not count. An allocation past the cap fails the run with an
    error instead of taking the machine's memory.
    """
    if not _CAPPED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(limit, -1, -1, -1))
        except Exception:  # another CPU allocator is already registered in this process: run uncapped
            _CAPPED_ARENA.append(0)
        else:
            _CAPPED_ARENA.append(limit)
    if not _CAPPED_ARENA[0]:
        return
    opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")


class OrtRunner:
    """An ONNX Runtime CPU session over a model file (or serialized bytes).

    ``threads`` pins intra-op threads (1 for latency comparisons that must not fight over
    two cores); ``optimization`` is ORT's graph level: "basic" keeps standard ops only.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        optimization: str = "basic",
        providers: list[str] | None = None,
        prepack: bool = True,
        max_activation_bytes: int | None = None,
    ) -> None:
        import onnxruntime as ort

        # Errors come back as exceptions (one line each); ORT's own logger would print them
        # a second time, with colour codes, to the user's terminal.
        ort.set_default_logger_severity(4)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if not prepack:
            # Pre-packing copies every MatMul weight into anonymous memory at load (about 30 s and
            # the weights' size on a 2.5 GB model): right for serving, wasted on a few check runs.
            opts.add_session_config_entry("session.disable_prepacking", "1")
        if max_activation_bytes:
            _cap_activations(ort, opts, max_activation_bytes)
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.threads = threads
        self.name = "onnxruntime-cpu"
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types with long messages
            where = "model" if isinstance(model, bytes) else Path(model).name
            raise InputError(f"ONNX Runtime cannot load {where}: {first_line(exc, 300)}") from None
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]

    keepalive = None  # a temporary folder the session reads from (session_for); removed by close()

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the session and any temporary files it was built from."""
        self.session = None
        if self.keepalive is not None:
            self.keepalive.cleanup()
            self.keepalive = None

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = output_names or self.output_names
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:
            raise ValidationError(f"ONNX Runtime failed to run the model: {first_line(exc, 300)}") from None
        return dict(zip(names, values))



def session_for(model, outputs=(), **options) -> OrtRunner:
    """An ONNX Runtime CPU session over an in-memory ``onnx_ir.Model`` of any size.

    ``outputs`` names main-graph tensors to fetch as extra outputs (statistics, divergence
    search, probing); the model itself is left as it was. Under protobuf's 2 GB limit the model
    is serialised to bytes; above it, it goes through a temporary file with external data that
    lives as long as the runner (``with session_for(...) as runner`` removes it on exit).
    ``options`` are OrtRunner's (``threads``, ``optimization``, ``providers``).
    """
    import tempfile

    from optimizer.model import save_model, to_proto_bytes

    graph_outputs = model.graph.outputs
    known = {v.name for v in graph_outputs}
    producers = {v.name: v for node in model.graph for v in node.outputs if v.name}
    missing = [n for n in outputs if n not in producers and n not in known]
    if missing:
        raise ValidationError(f"no tensor named '{missing[0]}' in the model's main graph to fetch")
    added = [producers[n] for n in dict.fromkeys(outputs) if n not in known]
    # Appending, serialising and popping the outputs again is cheaper than copying a large graph:
    # the bytes (or the temporary file) are the copy ONNX Runtime sees.
    graph_outputs.extend(added)
    tmp = None
    try:
        source = to_proto_bytes(model)
        if source is None:
            tmp = tempfile.TemporaryDirectory(prefix="trtforge-session-")
            source = save_model(model, Path(tmp.name) / "model.onnx", external_data=True)
    finally:
        for _ in added:
            graph_outputs.pop()
    try:
        runner = OrtRunner(source, **options)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    runner.keepalive = tmp  # the session reads external data lazily: keep the folder with it
    return runner
