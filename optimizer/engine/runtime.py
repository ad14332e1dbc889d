"""Running a built engine where a GPU exists: a Runner like ``optimizer.runners.OrtRunner``.

The engine's sidecar is checked against this machine before TensorRT sees the file, so a
mismatch is one clear line instead of a deserialization failure. Execution uses the
tensor-address API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) on
one CUDA stream; latency is timed with CUDA events on that stream, after warm-up runs.

CUDA memory, streams and events go through Polygraphy's ctypes wrapper of the CUDA runtime
(``polygraphy.cuda``): Polygraphy is already a dependency, and neither TensorRT wheel ships
Python CUDA bindings of its own. It is imported only when a runner is created.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.engine.cuda import cuda_available
from optimizer.engine.loader import get_logger, load_tensorrt, one_line
from optimizer.engine.precision import dtype_name
from optimizer.engine.sidecar import read_sidecar, require_compatible
from optimizer.errors import InputError, ValidationError
from optimizer.model import TensorSpec

# dtype_name() -> numpy dtype for the I/O types an engine can have.
_NUMPY = {
    "fp32": np.float32, "fp16": np.float16, "int8": np.int8, "uint8": np.uint8, "int32": np.int32,
    "int64": np.int64, "bool": np.bool_,
}  # fmt: skip


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """The latency summary every runner reports (milliseconds)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "min_ms": float(a.min()),
        "iterations": int(a.size),
    }


class _Events:
    """cudaEvent timing on a stream, through the CUDA runtime library Polygraphy loaded."""

    def __init__(self, cudart: Any) -> None:
        self.lib = cudart.handle
        self.check = cudart.check
        self.start, self.stop = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(self.start)))
        self.check(self.lib.cudaEventCreate(ctypes.byref(self.stop)))

    def record(self, event: ctypes.c_void_p, stream_ptr: int) -> None:
        self.check(self.lib.cudaEventRecord(event, ctypes.c_void_p(stream_ptr)))

    def elapsed_ms(self) -> float:
        self.check(self.lib.cudaEventSynchronize(self.stop))
        ms = ctypes.c_float()
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), self.start, self.stop))
        return float(ms.value)

    def free(self) -> None:
        for event in (self.start, self.stop):
            if event.value:
                self.lib.cudaEventDestroy(event)
                event.value = None


class TensorRTRunner:
    """Runs ``engine_path`` with the TensorRT flavour its sidecar names.

    ``run(feeds) -> {output: array}`` and ``inputs``/``outputs``/``output_names`` as in
    ``OrtRunner``; ``latency(feeds)`` times it. Call ``close()`` (or use ``with``) to free
    GPU memory early; otherwise it is freed with the runner.
    """

    def __init__(self, engine_path: str | os.PathLike, *, check: bool = True) -> None:
        path = Path(engine_path)
        if not cuda_available():
            raise InputError(
                f"cannot run {path.name}: no CUDA GPU here (the CUDA driver libcuda did not load or sees no device); "
                f"run it on a machine with an NVIDIA GPU, or validate the ONNX model with ONNX Runtime instead"
            )
        # The sidecar check first: it explains a missing or foreign TensorRT in one line.
        record = require_compatible(path) if check else read_sidecar(path)
        trt, flavour = load_tensorrt(record.get("builder"))
        from polygraphy import cuda

        self._cuda = cuda
        self._cudart = cuda.wrapper()
        self.trt = trt
        self.name = flavour
        self.runtime = trt.Runtime(get_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            errors, _ = get_logger(trt).take()
            raise InputError(f"{flavour} cannot load {path.name}: {one_line('; '.join(errors[:2]) or 'no reason logged')}")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self._buffers: dict[str, Any] = {}  # name -> DeviceArray, grown as shapes grow
        self._keepalive: dict[str, np.ndarray] = {}
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            # numpy dtype names, as OrtRunner reports them
            dtype = np.dtype(_NUMPY.get(dtype_name(self.engine.get_tensor_dtype(name)), np.float32)).name
            shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, shape)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)
        self.output_names = [o.name for o in self.outputs]

    # --- execution -----------------------------------------------------------------------

    def _buffer(self, name: str, nbytes: int) -> int:
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = self._cuda.DeviceArray.raw((0,))
        buf.resize((max(nbytes, 1),))  # reallocates only when it must grow
        return buf.ptr

    def _select_profile(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Switch to the first optimization profile whose ranges hold every input shape."""
        def fits(index: int) -> bool:
            for spec in self.inputs:
                if None not in spec.shape:  # static input: no range to check
                    continue
                lo, _, hi = self.engine.get_tensor_profile_shape(spec.name, index)
                shape = shapes[spec.name]
                if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                    return False
            return True

        for index in range(self.engine.num_optimization_profiles):
            if fits(index):
                if index != self.context.active_optimization_profile:
                    self.context.set_optimization_profile_async(index, self.stream.ptr)
                return
        got = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
        raise ValidationError(
            f"input shapes {got} are outside every optimization profile of the engine; rebuild with a --shapes range that covers them"
        )

    def _enqueue(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bind inputs and outputs and queue one inference; returns host output arrays (not yet filled)."""
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise ValidationError(f"engine inputs {', '.join(missing)} are missing from the feeds (it has {', '.join(s.name for s in self.inputs)})")
        h2d = self._cuda.MemcpyKind.HostToDevice
        arrays = {s.name: np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs}
        self._select_profile({name: a.shape for name, a in arrays.items()})
        for spec in self.inputs:
            array = arrays[spec.name]
            if not self.context.set_input_shape(spec.name, array.shape):
                raise ValidationError(f"TensorRT refused input {spec.name!r} with shape {array.shape}; check the engine's profiles")
            ptr = self._buffer(spec.name, array.nbytes)
            self._cudart.memcpy(ptr, array.ctypes.data, array.nbytes, h2d, self.stream.ptr)
            self.context.set_tensor_address(spec.name, ptr)
            self._keepalive[spec.name] = array  # the async copy reads it until the stream syncs
        results = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ValidationError(f"output {spec.name!r} has a data-dependent shape {shape}; this runner does not support it")
            host = np.empty(shape, dtype=spec.dtype)
            self.context.set_tensor_address(spec.name, self._buffer(spec.name, host.nbytes))
            results[spec.name] = host
        if not self.context.execute_async_v3(self.stream.ptr):
            errors, _ = get_logger(self.trt).take()
            raise ValidationError(f"TensorRT failed to run the engine: {one_line('; '.join(errors[:2]) or 'no reason logged')}")
        return results

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        results = self._enqueue(feeds)
        d2h = self._cuda.MemcpyKind.DeviceToHost
        for name, host in results.items():
            self._cudart.memcpy(host.ctypes.data, self._buffers[name].ptr, host.nbytes, d2h, self.stream.ptr)
        self.stream.synchronize()
        names = output_names or self.output_names
        return {n: results[n] for n in names}

    def latency(self, feeds: dict[str, np.ndarray], warmup: int = 5, iterations: int = 50) -> dict[str, float]:
        """GPU time of ``execute_async_v3`` per inference (inputs stay on the device), in ms percentiles."""
        if iterations < 1:
            raise ValidationError("latency needs at least 1 iteration")
        self._enqueue(feeds)  # binds shapes and addresses once
        for _ in range(warmup):
            self.context.execute_async_v3(self.stream.ptr)
        self.stream.synchronize()
        events = _Events(self._cudart)
        samples = []
        try:
            for _ in range(iterations):
                events.record(events.start, self.stream.ptr)
                self.context.execute_async_v3(self.stream.ptr)
                events.record(events.stop, self.stream.ptr)
                samples.append(events.elapsed_ms())
        finally:
            events.free()
        return percentiles(samples)

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        buffers = getattr(self, "_buffers", {})
        for buf in buffers.values():
            buf.free()
        buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.stream.free()
            self.stream = None
        self.context = self.engine = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have unloaded CUDA already
            pass

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
