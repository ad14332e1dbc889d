"""Model I/O on onnx-ir: safe loading, atomic saving, content hashing.

Protobuf stays at the edges: a model is read into ``onnx_ir.Model`` (weights in external
files stay memory-mapped, so models over 2 GB load at the cost of their graph only) and
written back with ``ir.save``. The input file is never modified; outputs appear complete
or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import socket
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


# Typed-data entries per element where it is not one: complex numbers take two, 4-bit types pack two per entry.
_ENTRIES_PER_ELEMENT = {ir.DataType.COMPLEX64: 2.0, ir.DataType.COMPLEX128: 2.0}


# Where TensorProto keeps values that are not in raw_data (every other type uses int32_data).
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
_TYPED_FIELD = {
    ir.DataType.FLOAT: "float_data",
    ir.DataType.COMPLEX64: "float_data",
    ir.DataType.DOUBLE: "double_data",
    ir.DataType.COMPLEX128: "double_data",
    ir.DataType.INT64: "int64_data",
    ir.DataType.UINT32: "uint64_data",
    ir.DataType.UINT64: "uint64_data",
}


def _expected_entries(dtype: ir.DataType, count: int) -> int:
    if dtype.bitwidth == 4:
        return (count + 1) // 2
    return int(count * _ENTRIES_PER_ELEMENT.get(dtype, 1.0))


_PROBLEM_KEY = "trtforge.data_problem"


def _data_problem(tensor: ir.TensorProtocol) -> str | None:
    """``_measure_data_problem``, remembered in the tensor's metadata (onnx-ir tensors are
    immutable): measuring raw data copies it, and pruning asks about every weight repeatedly."""
    meta = getattr(tensor, "meta", None)
    if meta is not None and _PROBLEM_KEY in meta:
        return meta[_PROBLEM_KEY]
    problem = _measure_data_problem(tensor)
    if meta is not None:
        meta[_PROBLEM_KEY] = problem
    return problem


def _measure_data_problem(tensor: ir.TensorProtocol) -> str | None:
    """Why a tensor's element type, shape or stored data do not fit together (None when they do).

    Checked from the protobuf fields and the declared dims only: nothing is allocated, so a
    dim of 2**40 is refused here instead of asking numpy for a petabyte. "no data" marks a
    weight-stripped tensor.
    """
    try:
        dtype = tensor.dtype
    except ValueError as exc:
        return f"has an unknown element type ({first_line(exc)})"
    if dtype == ir.DataType.UNDEFINED:
        return "has element type UNDEFINED"
    dims = tensor.shape.dims
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return f"has an invalid shape {list(dims)}"
    count = math.prod(dims)
    if isinstance(tensor, ir.StringTensor):
        found, expected, unit = len(tensor.raw), count, "strings"
    elif not isinstance(tensor, ir.TensorProtoTensor):
        return None  # external data (checked against its file) or built in memory from an array
    elif dtype == ir.DataType.STRING:
        found, expected, unit = len(tensor.raw.string_data), count, "strings"
    elif tensor.raw.HasField("raw_data"):
        proto = tensor.raw
        found, expected, unit = len(proto.raw_data), (count * dtype.bitwidth + 7) // 8, "bytes"
    else:
        proto = tensor.raw
        field = _TYPED_FIELD.get(dtype, "int32_data")
        stray = [f for f in _TYPED_FIELDS if f != field and len(getattr(proto, f))]
        if stray:
            return f"stores its values in {stray[0]}, which element type {dtype.name} does not use"
        found, expected, unit = len(getattr(proto, field)), _expected_entries(dtype, count), "values"
    if found == expected:
        return None
    if found == 0:
        return "no data"
    return f"holds {found} {unit} of data where its type {dtype.name} and shape {list(dims)} need {expected}"


def _check_tensors(model: ir.Model, model_path: Path) -> list[str]:
    """Refuse tensors whose type, shape and data disagree; return the names of those without data."""
    weightless = []
    for name, tensor in iter_tensors(model):
        problem = _data_problem(tensor)
        if problem == "no data":
            weightless.append(name)
        elif problem is not None:
            raise InputError(f"{model_path}: tensor '{name}' {problem}; the model is corrupt (re-export it)")
    return weightless


def _check_graph(model: ir.Model, model_path: Path) -> None:
    """Refuse node inputs and graph outputs that nothing defines (onnx-ir invents a value for
    them with a warning, and later clones of the graph fail), and attributes of no type (onnx-ir
    reads them, then cannot write the model for ONNX Runtime)."""

    def defined(value: ir.Value) -> bool:
        return value.producer() is not None or value.is_graph_input() or value.is_initializer()

    for graph in _all_graphs(model):
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.UNDEFINED:
                    raise InputError(
                        f"{model_path}: attribute '{attr.name}' of node '{node.name or node.op_type}' ({node.op_type}) "
                        "has no type (UNDEFINED); the model is invalid (re-export it)"
                    )
            for value in node.inputs:
                if value is not None and not defined(value):
                    raise InputError(
                        f"{model_path}: node '{node.name or node.op_type}' ({node.op_type}) reads '{value.name}', which no "
                        "node, input or initializer defines; the model is invalid (re-export it)"
                    )
        for value in graph.outputs:
            if not defined(value):
                raise InputError(
                    f"{model_path}: graph output '{value.name}' is computed by no node; the model is invalid (re-export it)"
                )


def _check_input_types(model: ir.Model, model_path: Path) -> None:
    """Refuse graph inputs and outputs declared with element type UNDEFINED (nothing can feed or
    read them), and inputs whose fixed shape is larger than any feed trtforge allows: ONNX
    Runtime allocates by the declared shape when it loads some graphs (a 2^62 dim took 18 GB)."""
    from optimizer.feeds import max_feed_bytes

    limit = max_feed_bytes()
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.type is not None and value.dtype == ir.DataType.UNDEFINED:
                raise InputError(
                    f"{model_path}: graph {kind} '{value.name}' has element type UNDEFINED; the model is invalid "
                    "(set the element type in the exporter)"
                )
            if kind == "output" or value.shape is None or value.name in model.graph.initializers:
                continue
            dims = [d for d in value.shape if isinstance(d, int) and d > 0]
            itemsize = max(1, (value.dtype.bitwidth + 7) // 8) if value.dtype not in (None, ir.DataType.STRING) else 8
            if math.prod(dims) * itemsize > limit:
                raise InputError(
                    f"{model_path}: graph input '{value.name}' declares shape {list(value.shape)}, "
                    f"{math.prod(dims) * itemsize / 2**30:.3g} GiB per sample, over the {limit / 2**30:.3g} GiB limit "
                    "(TRTFORGE_MAX_FEED_BYTES); fix the shape in the exporter, or raise the limit if it is real"
                )


def weightless_tensors(model: ir.Model) -> list[str]:
    """Names of the tensors that declare a shape but carry no data (a weight-stripped model)."""
    return [name for name, tensor in iter_tensors(model) if _data_problem(tensor) == "no data"]


def has_data(tensor: ir.TensorProtocol | None) -> bool:
    """True when ``tensor`` can be read: its data is there and fits its type and shape."""
    return tensor is not None and _data_problem(tensor) is None


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
        if "\x00" in location or not location.strip():
            raise InputError(
                f"{model_path}: tensor '{name}' has an invalid external-data path {location!r}; re-save the model "
                "with its external data"
            )
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
            try:
                is_file = target.is_file()
            except OSError as exc:  # a name too long for the file system, ...
                raise InputError(f"{model_path}: external-data path of tensor '{name}' is unusable ({first_line(exc)})") from None
            if not is_file:
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


def load_model(path: str | os.PathLike, *, for_inspection: bool = False) -> ir.Model:
    """Load an ONNX model (with its external data memory-mapped) or raise InputError.

    Corrupt, truncated and non-ONNX files, invalid UTF-8 strings, tensors whose data does not
    fit their type and shape, unsafe or missing external data and cyclic graphs all end in
    one clear line, before any tensor is read. Nodes are put in topological order (ONNX
    requires it; some exporters do not). What can be shown but not run is refused unless
    ``for_inspection`` (``trtforge inspect``): weight-stripped models (initializers without
    data, TensorRT's ``TRT_WEIGHTLESS`` format) and inputs of UNDEFINED element type. The file
    is only read.
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
    if (field := _invalid_utf8_field(proto)) is not None:
        raise InputError(
            f"{path}: {field} is not valid UTF-8 (ONNX strings must be); fix it in the exporter or re-save "
            "the model with valid strings"
        )
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir raises several types for malformed graphs
        raise InputError(f"{path}: malformed ONNX graph ({_root_cause(exc)}); the model is invalid (re-export it)") from None
    del proto
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    weightless = _check_tensors(model, path)
    _check_external_data(model, path)
    _check_graph(model, path)
    if not for_inspection:
        _check_input_types(model, path)
    if weightless and not for_inspection:
        raise InputError(
            f"{path}: {len(weightless)} initializer(s) have no data (e.g. '{weightless[0]}'): a weight-stripped model; "
            "this command needs the weights: run it on the model with its weights (`trtforge inspect` reads weight-stripped models)"
        )
    try:
        model.graph.sort()  # onnx-ir's cloner and our passes expect topological order
    except ValueError as exc:
        raise InputError(f"{path}: the graph is not a DAG ({first_line(exc)}); the model is invalid") from None
    return model


# Fields that are ``string`` in onnx.proto arrive as ``bytes`` from protobuf when they are not
# valid UTF-8; onnx-ir keeps them as bytes and then cannot save the model, rich cannot print them.
def _invalid_utf8_field(message, where: str = "") -> str | None:
    """The path of the first ``string`` field holding invalid UTF-8 (e.g. ``producer_name``), or None."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        name = f"{where}.{field.name}" if where else field.name
        items = list(enumerate(value)) if field.is_repeated else [(None, value)]
        for i, item in items:
            label = name if i is None else f"{name}[{i}]"
            if field.type == field.TYPE_STRING:
                if isinstance(item, bytes):
                    return label
            elif (found := _invalid_utf8_field(item, label)) is not None:
                return found
    return None


def model_nbytes(model: ir.Model) -> int:
    return sum(t.nbytes for _, t in iter_tensors(model))


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; return the path.

    With ``external_data`` (default: when the weights would not fit one protobuf), tensors go
    to ``<name>.data`` beside the model. Both files are written to a temporary folder next
    to the destination and moved into place data-first, so readers never see a model whose
    data is missing, and a failure leaves any existing file untouched. A temporary folder
    left by a killed run is removed by the next write into the same folder.
    """
    path = Path(path)
    if external_data is None:
        external_data = model_nbytes(model) > PROTOBUF_LIMIT
    data_name = path.name + ".data" if external_data else None
    tmpdir = temp_dir_beside(path)
    try:
        tmp_model = tmpdir / path.name
        try:
            ir.save(model, tmp_model, external_data=data_name, size_threshold_bytes=EXTERNAL_DATA_THRESHOLD)
        except ir.serde.SerdeError as exc:  # e.g. a name or metadata value that is not valid UTF-8
            raise InputError(f"{path}: cannot write the model ({_root_cause(exc)})") from None
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


# Temporary files and folders of atomic writes are named ``.<name>.tmp-<host>-<pid>-<random>``:
# a later write into the same folder removes those whose process (on this host) is gone.
_TEMP_RE = re.compile(r"^\..*\.tmp-(?P<host>[A-Za-z0-9_]{1,32})-(?P<pid>[0-9]+)-[A-Za-z0-9_]+(\..*)?$")


@functools.cache
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary names for an output called ``name``."""
    return f".{name}.tmp-{_host_tag()}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or not a pid we can judge): keep its files
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files/folders in ``folder`` left by dead trtforge processes of this host.

    Only names made by ``temp_prefix`` are considered, and only when their process is gone,
    so a concurrent writer's temporaries and other programs' files are never touched.
    Returns what was removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or match["host"] != _host_tag() or _process_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass  # another run cleaned it first
        except OSError:
            continue
        removed.append(path)
    return removed


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new temporary folder next to ``path`` (same file system), after removing stale ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))


def _temp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file next to ``path`` (same file system, so a rename is atomic).

    mkstemp makes the file private (0600); reports and engines get the usual mode instead.
    Stale temporaries of dead processes in the same folder are removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix + ".tmp", dir=path.parent)
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


def _dtype_name(dtype: ir.DataType | None) -> str:
    """numpy's name for an element type ('float32'), ONNX's where numpy has none ('undefined', 'float4e2m1')."""
    if dtype is None:
        return "unknown"
    try:
        return dtype.numpy().name
    except TypeError:  # UNDEFINED, and types numpy cannot hold
        return dtype.name.lower()


def _spec(value: ir.Value) -> TensorSpec:
    dtype = _dtype_name(value.dtype)
    shape = None
    if value.shape is not None:
        # Exporters sometimes declare a dynamic dim as -1: it is dynamic, not a size.
        shape = tuple(
            (d if d >= 0 else None) if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
            for d in value.shape
        )
    return TensorSpec(value.name or "", dtype, shape)


def opset_of(model: ir.Model) -> int:
    """The model's default-domain ("" or "ai.onnx") opset; 0 when it imports none."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


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
    try:
        return ir.serde.serialize_model(model).SerializeToString()
    except ir.serde.SerdeError as exc:
        raise InputError(f"cannot serialise the model for ONNX Runtime ({_root_cause(exc)}); the model is invalid") from None


def _root_cause(exc: BaseException) -> str:
    """onnx-ir's SerdeError wraps the real reason: that one, as one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return first_line(exc)


def structural_problem(model: ir.Model) -> str | None:
    """What the ONNX checker (with strict shape inference) finds wrong with ``model``, or None.

    Models over protobuf's limit are not checked here (the checker needs one message).
    """
    import onnx

    if any(isinstance(t, ir.ExternalTensor) for _, t in iter_tensors(model)):
        # The checker looks for external data beside the file it reads: give it one.
        with tempfile.TemporaryDirectory(prefix="trtforge-check-") as tmp:
            path = save_model(model, Path(tmp) / "model.onnx", external_data=True)
            return _checker_problem(lambda: onnx.checker.check_model(str(path), full_check=True))
    data = to_proto_bytes(model)
    if data is None:
        return None
    return _checker_problem(lambda: onnx.checker.check_model(onnx.load_from_string(data), full_check=True))


def _checker_problem(check) -> str | None:
    try:
        check()
    except Exception as exc:  # the checker raises ValidationError, InferenceError, ...
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    return None
