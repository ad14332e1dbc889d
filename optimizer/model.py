"""Model I/O on onnx-ir: safe loading, atomic saving, content hashing.

Protobuf stays at the edges: a model is read into ``onnx_ir.Model`` (weights in external
files stay memory-mapped, so models over 2 GB load at the cost of their graph only) and
written back with ``ir.save``. The input file is never modified; outputs appear complete
or not at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from optimizer.errors import ConfigError, InputError, first_line

# Tensors at least this large go to the external-data file when a model is saved with one.
EXTERNAL_DATA_THRESHOLD = 1024
# Protobuf refuses to serialise a single message over 2 GiB; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 2**24


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and shape (ints, names of dynamic dims, or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.shape or ()) if not isinstance(d, int)]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape) if self.shape is not None else None}


def _all_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    yield model.graph
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.value
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.value


def count_nodes(model: ir.Model) -> int:
    """Nodes of the main graph, of every subgraph inside it (If/Loop/Scan) and of the model's functions."""
    graphs = [model.graph, *model.functions.values()]
    return sum(1 for g in graphs for _ in ir.traversal.RecursiveGraphIterator(g))


def iter_tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol]]:
    """Every constant tensor of the model: initializers of all graphs and Constant/tensor attributes."""
    for graph in _all_graphs(model):
        for name, value in graph.initializers.items():
            if value.const_value is not None:
                yield name, value.const_value
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                yield f"{node.name or node.op_type}.{attr.name}", attr.value


def external_data_files(model: ir.Model) -> list[Path]:
    """The distinct external-data files the model's tensors point into."""
    files = {Path(t.path) for _, t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)}
    return sorted(files)


def _check_external_data(model: ir.Model, model_path: Path) -> None:
    """Refuse external data that escapes the model's folder, is missing or is too short.

    onnx-ir checks containment lazily, on first access; we check everything up front so a
    bad model fails before any work and with a message that names the tensor.
    """
    folder = model_path.resolve().parent
    sizes: dict[Path, int] = {}
    for name, tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = tensor.location
        if os.path.isabs(location) or Path(location).drive:
            raise InputError(
                f"{model_path}: tensor '{name}' points to external data at the absolute path "
                f"'{location}'; only paths inside the model's folder are allowed (re-save the model with relative external data)"
            )
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise InputError(
                f"{model_path}: tensor '{name}' points to external data '{location}', outside the model's folder "
                f"{folder}; refusing to read it (move the data next to the model and re-save)"
            )
        if target not in sizes:
            if not target.is_file():
                raise InputError(
                    f"{model_path}: external-data file '{location}' of tensor '{name}' is missing; "
                    f"copy it next to the model (expected at {target})"
                )
            sizes[target] = target.stat().st_size
        end = (tensor.offset or 0) + tensor.length if tensor.length is not None else (tensor.offset or 0) + tensor.nbytes
        if end > sizes[target]:
            raise InputError(
                f"{model_path}: external-data file '{location}' is truncated: tensor '{name}' needs bytes up to {end}, "
                f"the file has {sizes[target]}; re-export or re-copy the model's data"
            )


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model (with its external data memory-mapped) or raise InputError.

    Corrupt, truncated and non-ONNX files, unsafe or missing external data all end in one
    clear line. The file is only read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc)}); is the file complete?") from None
    # Protobuf happily parses many non-ONNX byte strings into an empty or garbled message.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise InputError(f"{path}: not an ONNX model (no IR version, graph or opset); is it the right file?")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir raises several types for malformed graphs
        raise InputError(f"{path}: malformed ONNX graph ({first_line(exc)})") from None
    del proto
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    _check_external_data(model, path)
    return model



def model_nbytes(model: ir.Model) -> int:
    return sum(t.nbytes for _, t in iter_tensors(model))


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; return the path.

    With ``external_data`` (default: when the weights would not fit one protobuf), tensors go
    to ``<name>.data`` beside the model. Both files are written to a temporary folder next
    to the destination and moved into place data-first, so readers never see a model whose
    data is missing, and a failure leaves any existing file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model_nbytes(model) > PROTOBUF_LIMIT
    data_name = path.name + ".data" if external_data else None
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_model = tmpdir / path.name
        ir.save(
            model,
            tmp_model,
            external_data=data_name,
            size_threshold_bytes=EXTERNAL_DATA_THRESHOLD,
        )
        if data_name is not None:
            os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def artifact_files(path: str | os.PathLike) -> list[Path]:
    """A saved model's files: the model first, then the external-data files it references.

    Whatever copies a model (the stage cache) must copy these together, or a >2 GB model
    arrives without its weights.
    """
    path = Path(path)
    return [path, *external_data_files(load_model(path))]


def refuse_overwrite(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """ConfigError when ``output`` is ``source`` itself: the input file is never modified."""
    source, output = Path(source), Path(output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise ConfigError(f"{output}: the output would overwrite the input model; choose another path")


def _temp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file next to ``path`` (same file system, so a rename is atomic).

    mkstemp makes the file private (0600); reports and engines get the usual mode instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_files_atomic(pairs: list[tuple[Path, bytes | memoryview]]) -> None:
    """Write every file to a temporary name, then rename them all in the given order.

    A failure while writing leaves no temporary file and every destination as it was.
    """
    temps: list[Path] = []
    try:
        for path, data in pairs:
            tmp = _temp_beside(Path(path))
            temps.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, (path, _) in zip(temps, pairs):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    tmp_path = _temp_beside(path, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 over the model file and the external-data files it references (sorted by name)."""
    path = Path(path)
    model = load_model(path)
    h = hashlib.sha256()
    _hash_file(h, path)
    for data in external_data_files(model):
        h.update(os.path.relpath(data, path.parent).encode())
        _hash_file(h, data)
    return h.hexdigest()


def _spec(value: ir.Value) -> TensorSpec:
    dtype = value.dtype.numpy().name if value.dtype is not None else "unknown"
    shape = None
    if value.shape is not None:
        # Exporters sometimes declare a dynamic dim as -1: it is dynamic, not a size.
        shape = tuple(
            (d if d >= 0 else None) if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
            for d in value.shape
        )
    return TensorSpec(value.name or "", dtype, shape)


def input_specs(model: ir.Model) -> list[TensorSpec]:
    """Graph inputs that are real inputs (not initializers exposed as inputs)."""
    return [_spec(v) for v in model.graph.inputs if v.name not in model.graph.initializers]


def output_specs(model: ir.Model) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.outputs]


def metadata(model: ir.Model) -> dict[str, str]:
    return dict(model.metadata_props)


def to_proto_bytes(model: ir.Model) -> bytes | None:
    """Serialized model for an in-memory ONNX Runtime session, or None when it exceeds protobuf's limit."""
    if model_nbytes(model) > PROTOBUF_LIMIT:
        return None
    return ir.serde.serialize_model(model).SerializeToString()
