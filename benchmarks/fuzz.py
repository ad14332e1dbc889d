"""Mutation fuzzer: hostile ONNX files through the real CLI. Nothing may end in a traceback or hang.

    .venv/bin/python benchmarks/fuzz.py                         # 2,000 cases, seed 0, every command
    .venv/bin/python benchmarks/fuzz.py --cases 5000 --seed 7 --commands inspect,passes

Each case takes a real model (PP-OCRv4 cls from rapidocr-onnxruntime, ddddocr's common.onnx
from ``build/corpus/wheels`` when present, small ONNX conformance models from the onnx
package, an ``If`` model written in ONNX text), applies one to three mutations (byte flips,
truncation, and structural edits: wrong dtypes, huge dims, dangling inputs, cycles, bad
attributes, bad external-data paths, undefined types, invalid UTF-8, unsorted nodes,
weight-stripped initializers, raw data of the wrong length, rich markup in names...) and runs
one real CLI command on it in-process through ``click.testing.CliRunner`` (a few through a
real subprocess). A case passes when it exits 0, 1 or 2 with no traceback, no numpy
RuntimeWarning, within its time limit, with the input file untouched, and, when it failed,
without leaving its output (or a temp file) behind.

``tests/test_fuzz.py`` runs a few hundred cases of this in ``make test``; this script runs
thousands and writes its RESULTS.md section.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

# --------------------------------------------------------------------------- base models

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17], producer_name: "trtforge-fuzz">
g (float[N, 4] x, bool c) => (float[N, 4] y) <float[4] w = {1.0, 2.0, 3.0, 4.0}> {
    y = If (c) <
        then_branch = t () => (float[N, 4] a) { r = Relu (x)  a = Add (r, w) },
        else_branch = e () => (float[N, 4] b) { s = Sigmoid (x)  b = Mul (s, w) }
    >
}
"""

CONFORMANCE = (
    "pytorch-converted/test_Conv2d",
    "pytorch-converted/test_Linear",
    "pytorch-converted/test_BatchNorm2d_eval",
    "pytorch-converted/test_Embedding",
    "pytorch-converted/test_GLU",
    "pytorch-operator/test_operator_conv",
    "pytorch-operator/test_operator_basic",
    "simple/test_expand_shape_model1",
    "simple/test_sequence_model1",
    "simple/test_single_relu_model",
)


@dataclasses.dataclass
class Base:
    name: str
    data: bytes
    #: One sample of inputs (name -> array) for ``validate --data``; None when unknown.
    feeds: dict[str, np.ndarray] | None
    real: bool  # a real network shipped with weights (as opposed to a conformance case)


def _conformance_feeds(folder: Path, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """The reference inputs of a conformance model (its real inputs, not the weights it lists as inputs)."""
    from onnx import numpy_helper

    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    files = sorted((folder / "test_data_set_0").glob("input_*.pb"))
    if len(files) != len(names):
        return None
    feeds = {}
    for name, f in zip(names, files):
        t = onnx.TensorProto()
        try:
            t.ParseFromString(f.read_bytes())
            feeds[name] = numpy_helper.to_array(t)
        except Exception:
            return None  # a sequence or optional input
    return feeds


@functools.cache
def base_models() -> tuple[Base, ...]:
    """The seed models, real ones first. ddddocr is used when its wheel is in build/corpus/wheels."""
    bases = []
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is not None and spec.origin is not None:
        cls = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        if cls.exists():
            x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
            bases.append(Base("ppocr_cls", cls.read_bytes(), {"x": x}, True))
    wheel = next(iter(sorted((ROOT / "build" / "corpus" / "wheels").glob("ddddocr-1.6.1-*.whl"))), None)
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            data = z.read("ddddocr/common.onnx")
        x = np.random.default_rng(0).random((1, 1, 64, 160), dtype=np.float32)
        bases.append(Base("ddddocr_common", data, {"input1": x}, True))
    data_root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for rel in CONFORMANCE:
        folder = data_root / rel
        if (folder / "model.onnx").exists():
            data = (folder / "model.onnx").read_bytes()
            bases.append(Base(rel.split("/")[-1], data, _conformance_feeds(folder, onnx.load_from_string(data)), False))
    if_model = onnx.parser.parse_model(IF_MODEL)
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "c": np.array(True)}
    bases.append(Base("if_text", if_model.SerializeToString(), feeds, False))
    return tuple(bases)


# --------------------------------------------------------------------------- mutations

BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80abc"]
BAD_LOCATIONS = ["a\x00b.bin", "../../etc/passwd", "/etc/passwd", "missing.bin", "sub/../../x.bin", "x" * 300, "", "."]
MARKUP = ["[bold]x", "[/]", "[red", "x[/bold]y", "\x1b[31mred", "tab\there", "a\nb", "[link=file:///etc]z[/link]"]


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    found = [model.graph]
    i = 0
    while i < len(found):
        for node in found[i].node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    found.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    found.extend(attr.graphs)
        i += 1
    return found


def _graph(m: onnx.ModelProto, rng: random.Random) -> onnx.GraphProto:
    return rng.choice(_graphs(m))


def _values(g: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*g.input, *g.output, *g.value_info]


def mut_wrong_dtype(m, rng):
    g = _graph(m, rng)
    if g.initializer:
        rng.choice(g.initializer).data_type = rng.choice([2, 3, 5, 6, 7, 9, 10, 11, 16, 17, 21, 22, 23, 40, 999])
    elif _values(g):
        rng.choice(_values(g)).type.tensor_type.elem_type = rng.choice([2, 7, 9, 10, 16, 999])


def mut_huge_dim(m, rng):
    g = _graph(m, rng)
    value = rng.choice([2**40, 2**62, 2**31, -7, 0])
    if g.initializer and rng.random() < 0.5:
        t = rng.choice(g.initializer)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = value
        else:
            t.dims.append(value)
        return
    vals = [v for v in _values(g) if v.type.tensor_type.shape.dim]
    if vals:
        dims = rng.choice(vals).type.tensor_type.shape.dim
        dims[rng.randrange(len(dims))].dim_value = value


def mut_dangling_input(m, rng):
    g = _graph(m, rng)
    nodes = [n for n in g.node if n.input]
    if nodes:
        n = rng.choice(nodes)
        n.input[rng.randrange(len(n.input))] = rng.choice(["does_not_exist", "", "x" * 500])


def mut_dangling_output(m, rng):
    g = m.graph
    if g.output:
        g.output[rng.randrange(len(g.output))].name = "nobody_makes_this"


def mut_cycle(m, rng):
    g = _graph(m, rng)
    if len(g.node) >= 1:
        last = g.node[-1]
        first = rng.choice(list(g.node))
        if first.input and last.output:
            first.input[0] = last.output[0]


def mut_bad_attribute(m, rng):
    g = _graph(m, rng)
    nodes = list(g.node)
    if not nodes:
        return
    n = rng.choice(nodes)
    choice = rng.randrange(5)
    if n.attribute and choice == 0:
        del n.attribute[rng.randrange(len(n.attribute))]
    elif n.attribute and choice == 1:
        a = rng.choice(n.attribute)
        a.type = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 13])
    elif n.attribute and choice == 2:
        a = rng.choice(n.attribute)
        a.ClearField("ints")
        a.ints.extend([rng.choice([2**40, -(2**40), 0, -1])] * rng.randrange(1, 5))
        a.i = rng.choice([2**62, -(2**62), 0])
    elif choice == 3:
        n.attribute.add(name="no_such_attribute", type=onnx.AttributeProto.INT, i=3)
    else:
        n.op_type = rng.choice(["NoSuchOp", "Conv", "If", "Loop", "", "Relu"])


def mut_bad_external_data(m, rng):
    inits = [t for g in _graphs(m) for t in g.initializer]
    if not inits:
        return
    t = rng.choice(inits)
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value=rng.choice(BAD_LOCATIONS))
    if rng.random() < 0.5:
        t.external_data.add(key="offset", value=rng.choice(["-1", "abc", str(2**62), "0"]))
    if rng.random() < 0.5:
        t.external_data.add(key="length", value=rng.choice(["-5", "1e3", str(2**62), "4"]))


def mut_undefined_type(m, rng):
    g = _graph(m, rng)
    if rng.random() < 0.3 and g.initializer:
        rng.choice(g.initializer).data_type = 0
        return
    vals = _values(g)
    if vals:
        v = rng.choice(vals)
        if rng.random() < 0.7:
            v.type.tensor_type.elem_type = 0
        else:
            v.ClearField("type")


def mut_unsorted(m, rng):
    g = _graph(m, rng)
    nodes = list(g.node)
    rng.shuffle(nodes) if rng.random() < 0.5 else nodes.reverse()
    del g.node[:]
    g.node.extend(nodes)


def mut_raw_length(m, rng):
    inits = [t for g in _graphs(m) for t in g.initializer if t.raw_data]
    if inits:
        t = rng.choice(inits)
        cut = rng.choice([1, 3, len(t.raw_data) // 2, len(t.raw_data)])
        t.raw_data = t.raw_data[:-cut] if rng.random() < 0.7 else t.raw_data + b"\x01\x02\x03"
    elif m.graph.initializer:
        t = m.graph.initializer[0]
        t.dims.append(3)


def mut_weightless(m, rng):
    """TensorRT's weight-stripped format (Polygraphy ``surgeon weight-strip``): initializers without data."""
    inits = [t for g in _graphs(m) for t in g.initializer]
    for t in inits if rng.random() < 0.6 else inits[: max(1, len(inits) // 3)]:
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(name)
        t.doc_string = "TRT_WEIGHTLESS/"
    m.doc_string = "TRT_WEIGHTLESS"


def mut_markup_names(m, rng):
    g = m.graph
    text = rng.choice(MARKUP)
    if rng.random() < 0.5 and g.node:
        rng.choice(g.node).name = text
    elif g.input:
        v = rng.choice(g.input)
        old, v.name = v.name, text
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = text
    m.producer_name = rng.choice(MARKUP)
    m.metadata_props.add(key=rng.choice(MARKUP), value=rng.choice(MARKUP))


def mut_opset(m, rng):
    choice = rng.randrange(4)
    if choice == 0:
        m.opset_import[0].version = rng.choice([0, 1, 5, 999, -1])
    elif choice == 1:
        m.opset_import.add(domain="", version=13)  # a duplicate domain
    elif choice == 2:
        m.ir_version = rng.choice([0, 1, 2, 99, -3])
    else:
        m.opset_import.add(domain="com.acme.fuzz", version=1)
        if m.graph.node:
            rng.choice(m.graph.node).domain = "com.acme.fuzz"


def mut_drop_or_duplicate(m, rng):
    g = _graph(m, rng)
    if not g.node:
        return
    i = rng.randrange(len(g.node))
    if rng.random() < 0.5:
        del g.node[i]
    else:
        g.node.append(g.node[i])  # two producers of one value


def mut_empty(m, rng):
    choice = rng.randrange(3)
    if choice == 0:
        del m.graph.node[:]
    elif choice == 1:
        del m.graph.output[:]
    else:
        del m.graph.input[:]


def mut_bad_constant(m, rng):
    """A Constant node whose tensor is inconsistent (dims without data, or with a wrong dtype)."""
    g = _graph(m, rng)
    t = onnx.TensorProto(name="", data_type=rng.choice([0, 1, 7, 8, 999]), dims=[rng.choice([3, 2**40, 0])])
    if rng.random() < 0.5:
        t.raw_data = b"\x00" * rng.choice([1, 4, 12])
    node = onnx.helper.make_node("Constant", [], [f"fuzz_const_{rng.randrange(1000)}"], value=t)
    g.node.insert(0, node)
    if g.node[1:] and g.node[1].input:
        g.node[1].input[0] = node.output[0]


def mut_sparse_or_string(m, rng):
    g = m.graph
    if rng.random() < 0.5 and g.initializer:
        t = rng.choice(g.initializer)
        t.data_type = onnx.TensorProto.STRING
        t.ClearField("raw_data")
        t.string_data.extend([b"\xff\xfe", b"ok"])
    else:
        sparse = onnx.SparseTensorProto()
        sparse.dims.extend([4, 4])
        sparse.values.CopyFrom(onnx.helper.make_tensor("sp", onnx.TensorProto.FLOAT, [2], [1.0, 2.0]))
        sparse.indices.CopyFrom(onnx.helper.make_tensor("sp_i", onnx.TensorProto.INT64, [2], [0, 99]))
        g.sparse_initializer.append(sparse)


STRUCTURAL: dict[str, Callable[[onnx.ModelProto, random.Random], None]] = {
    "wrong_dtype": mut_wrong_dtype,
    "huge_dim": mut_huge_dim,
    "dangling_input": mut_dangling_input,
    "dangling_output": mut_dangling_output,
    "cycle": mut_cycle,
    "bad_attribute": mut_bad_attribute,
    "bad_external_data": mut_bad_external_data,
    "undefined_type": mut_undefined_type,
    "unsorted": mut_unsorted,
    "raw_length": mut_raw_length,
    "weightless": mut_weightless,
    "markup_names": mut_markup_names,
    "opset": mut_opset,
    "drop_or_duplicate": mut_drop_or_duplicate,
    "empty": mut_empty,
    "bad_constant": mut_bad_constant,
    "sparse_or_string": mut_sparse_or_string,
}
# Placeholders swapped for invalid UTF-8 after serialising (protobuf will not write it itself).
_UTF8_SLOTS = ("producer_name", "metadata", "node_name", "doc_string", "input_name")


def mut_invalid_utf8(data: bytes, rng: random.Random) -> bytes:
    try:
        m = onnx.load_from_string(data)
    except Exception:
        return data  # already unparseable
    bad = rng.choice(BAD_UTF8)
    marker = "Z" * len(bad)
    where = rng.choice(_UTF8_SLOTS)
    if where == "producer_name":
        m.producer_name = marker
    elif where == "metadata":
        m.metadata_props.add(key=rng.choice([marker, "k"]), value=marker)
    elif where == "node_name" and m.graph.node:
        rng.choice(m.graph.node).name = marker
    elif where == "input_name" and m.graph.input:
        m.graph.input[0].name = marker  # the nodes that read it now dangle
    else:
        m.doc_string = marker
    out = m.SerializeToString()
    return out.replace(marker.encode(), bad)


def mut_byte_flip(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        # Mostly in the graph structure (the first bytes), sometimes anywhere.
        limit = len(buf) if rng.random() < 0.3 else min(len(buf), 4096)
        buf[rng.randrange(limit)] ^= 1 << rng.randrange(8)
    return bytes(buf)


def mut_truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def mut_garbage(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at:]


BYTES: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "byte_flip": mut_byte_flip,
    "truncate": mut_truncate,
    "garbage": mut_garbage,
    "invalid_utf8": mut_invalid_utf8,
}
MUTATIONS = (*STRUCTURAL, *BYTES)
# Edits a valid model can survive (it must still work, not only fail cleanly): half the cases
# of the commands that run a network use these, so the fuzzer reaches past the loader.
SURVIVABLE = ("unsorted", "markup_names", "bad_attribute", "opset", "drop_or_duplicate", "huge_dim")
DEEP_COMMANDS = ("passes", "quantize", "prune", "build", "validate")


def mutate(data: bytes, kinds: list[str], rng: random.Random) -> bytes:
    """Apply ``kinds`` in order (structural edits on the parsed model, byte edits on the file)."""
    for kind in kinds:
        if kind in BYTES:
            data = BYTES[kind](data, rng)
            continue
        try:
            m = onnx.load_from_string(data)
        except Exception:
            continue  # an earlier byte mutation made it unparseable; that is the case then
        try:
            STRUCTURAL[kind](m, rng)
            data = m.SerializeToString()
        except (ValueError, TypeError, IndexError):
            continue  # protobuf refused this edit: the case keeps the model as it was
    return data


# --------------------------------------------------------------------------- commands and cases

COMMANDS = ("inspect", "inspect-json", "passes", "quantize", "prune", "build", "validate")


@dataclasses.dataclass
class Case:
    index: int
    seed: int
    base: str
    kinds: list[str]
    command: str
    subprocess: bool = False

    def describe(self) -> str:
        how = "subprocess" if self.subprocess else "in-process"
        return f"seed={self.seed} case={self.index} base={self.base} mutations={'+'.join(self.kinds)} command={self.command} ({how})"


@dataclasses.dataclass
class Outcome:
    case: Case
    exit_code: int | None
    problem: str | None  # None: the case passed; else "traceback" | "hang" | "warning" | "exit" | "input-changed" | "leftover"
    detail: str = ""
    seconds: float = 0.0


def plan(seed: int, count: int, commands: dict[str, float], subprocess_every: int = 0) -> list[Case]:
    """``count`` cases; ``commands`` maps a command to its share. Deterministic for a seed."""
    bases = base_models()
    names, weights = zip(*commands.items())
    cases = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        command = rng.choices(names, weights)[0]
        # ddddocr (54 MB) only for inspect; the real PP-OCR classifier weighs in more where a
        # network runs, since many conformance models keep their weights as graph inputs.
        pool = [b for b in bases if b.name != "ddddocr_common" or command.startswith("inspect")]
        base_weights = [3 if b.real and command in DEEP_COMMANDS else 1 for b in pool]
        base = rng.choices(pool, base_weights)[0]
        pool_kinds = SURVIVABLE if command in DEEP_COMMANDS and rng.random() < 0.5 else MUTATIONS
        kinds = rng.sample(pool_kinds, rng.choice([1, 1, 1, 2, 3]))
        sub = bool(subprocess_every) and i % subprocess_every == subprocess_every - 1
        cases.append(Case(i, seed, base.name, kinds, command, sub))
    return cases


def _args(command: str, model: Path, out: Path, ref: Path, data_dir: Path | None) -> list[str]:
    if command == "inspect":
        return ["inspect", str(model), "--no-parse-check"]
    if command == "inspect-json":
        return ["inspect", str(model), "--json"]
    if command == "passes":
        return ["passes", str(model), "-o", str(out / "out.onnx")]
    if command == "quantize":
        return ["quantize", str(model), "-o", str(out / "out.onnx"), "--synthetic", "2"]
    if command == "prune":
        return ["prune", str(model), "--channels", "0.3", "--dry-run"]
    if command == "build":
        return ["build", str(model), "-o", str(out / "out.engine")]
    if command == "validate":
        args = ["validate", str(model), "--reference", str(ref), "--no-latency"]
        return args + ["--data", str(data_dir or out / "no-data")]
    raise ValueError(command)


def _write_data(base: Base, folder: Path) -> Path | None:
    if base.feeds is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "sample0.npz", **base.feeds)
    return folder


class CaseTimeout(BaseException):
    """Raised by SIGALRM inside a hung case (a BaseException, so no ``except Exception`` eats it)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def fire(signum, frame):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


TIMEOUTS = {"inspect": 30, "inspect-json": 60, "passes": 90, "quantize": 90, "prune": 60, "build": 180, "validate": 90}


def _in_process(args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str | None, str]:
    from click.testing import CliRunner

    from optimizer.cli import main

    runner = CliRunner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _deadline(timeout):
                result = runner.invoke(main, args, env=env, catch_exceptions=True)
        except CaseTimeout:
            return None, "hang", f"no exit after {timeout}s"
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception))
        return result.exit_code, "traceback", tb
    if "Traceback (most recent call last)" in output:
        return result.exit_code, "traceback", output
    numpy_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if numpy_warnings:
        w = numpy_warnings[0]
        return result.exit_code, "warning", f"{w.filename}:{w.lineno}: {w.message}"
    return result.exit_code, None, output


def _subprocess(args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str | None, str]:
    cmd = [sys.executable, "-W", "default", "-c", "from optimizer.cli import main; main()", *args]
    try:
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "hang", f"no exit after {timeout}s"
    if "Traceback (most recent call last)" in proc.stderr:
        return proc.returncode, "traceback", proc.stderr
    if "RuntimeWarning" in proc.stderr:
        return proc.returncode, "warning", proc.stderr
    return proc.returncode, None, proc.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(case: Case, workdir: Path, timeout_scale: float = 1.0) -> Outcome:
    """Write the mutated model, run the command, and judge the result."""
    base = {b.name: b for b in base_models()}[case.base]
    rng = random.Random(f"{case.seed}:{case.index}:mutate")
    data = mutate(base.data, case.kinds, rng)
    folder = workdir / f"case{case.index:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    model.write_bytes(data)
    before = _sha(model)
    ref = workdir / f"{base.name}.ref.onnx"
    if not ref.exists():
        ref.write_bytes(base.data)
    data_dir = _write_data(base, workdir / f"{base.name}.data") if case.command == "validate" else None
    out = folder / "out"
    out.mkdir()
    env = {"TRTFORGE_CACHE_DIR": str(workdir / "cache")}
    args = _args(case.command, model, out, ref, data_dir)
    timeout = TIMEOUTS[case.command] * timeout_scale
    start = time.perf_counter()
    code, problem, detail = (_subprocess if case.subprocess else _in_process)(args, env, timeout)
    seconds = time.perf_counter() - start
    if problem is None and code not in (0, 1, 2):
        problem, detail = "exit", f"exit code {code}: {detail[-500:]}"
    if problem is None and _sha(model) != before:
        problem, detail = "input-changed", "the input model was modified"
    if problem is None:
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or code == 2]
        if leftovers:
            problem, detail = "leftover", f"exit {code} left {leftovers} in the output folder"
    return Outcome(case, code, problem, detail, seconds)


# A hostile model may make a library allocate by its declared shapes: under this cap that ends
# in a MemoryError (reported as a traceback) instead of the kernel's OOM killer taking the
# machine's other processes with it. RLIMIT_DATA counts heap and anonymous mmaps.
MEMORY_CAP_BYTES = 8 << 30


@contextlib.contextmanager
def memory_cap(limit: int = MEMORY_CAP_BYTES) -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    new = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (new, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def run(cases: list[Case], workdir: Path, progress: Callable[[Outcome], None] | None = None, timeout_scale: float = 1.0) -> list[Outcome]:
    import shutil

    outcomes = []
    with memory_cap():
        for case in cases:
            outcome = run_case(case, workdir, timeout_scale)
            outcomes.append(outcome)
            if progress:
                progress(outcome)
            if outcome.problem is None:
                shutil.rmtree(workdir / f"case{case.index:05d}", ignore_errors=True)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    problems = Counter(o.problem for o in outcomes if o.problem)
    return {
        "cases": len(outcomes),
        "tracebacks": problems.get("traceback", 0),
        "hangs": problems.get("hang", 0),
        "other_problems": {k: v for k, v in problems.items() if k not in ("traceback", "hang")},
        "exit_codes": dict(sorted(Counter(str(o.exit_code) for o in outcomes).items())),
        "by_command": dict(sorted(Counter(o.case.command for o in outcomes).items())),
        "by_mutation": dict(sorted(Counter(k for o in outcomes for k in o.case.kinds).items())),
        "subprocess_cases": sum(o.case.subprocess for o in outcomes),
    }


def failure_lines(outcomes: list[Outcome], limit: int = 20) -> list[str]:
    lines = []
    for o in outcomes:
        if o.problem and len(lines) < limit:
            last = [line for line in o.detail.strip().splitlines() if line.strip()][-3:]
            lines.append(f"{o.problem}: {o.case.describe()} :: {' | '.join(last)[:400]}")
    return lines


DEFAULT_SHARES = {"inspect": 30, "inspect-json": 10, "passes": 25, "quantize": 12, "prune": 12, "build": 3, "validate": 8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default=",".join(DEFAULT_SHARES), help="comma-separated subset of " + ", ".join(COMMANDS))
    parser.add_argument("--subprocess-every", type=int, default=100, help="every Nth case runs in a real subprocess")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    shares = {c: DEFAULT_SHARES.get(c, 10) for c in args.commands.split(",") if c}
    import shutil
    import tempfile

    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"seed{args.seed}-", dir=args.workdir))
    cases = plan(args.seed, args.cases, shares, args.subprocess_every)
    start = time.perf_counter()

    def progress(o: Outcome) -> None:
        if o.problem:
            print(f"  {o.problem}: {o.case.describe()}\n    {o.detail.strip().splitlines()[-1][:300] if o.detail.strip() else ''}", flush=True)
        elif (o.case.index + 1) % 100 == 0:
            print(f"  {o.case.index + 1}/{len(cases)} cases, {time.perf_counter() - start:.0f}s", flush=True)

    outcomes = run(cases, workdir, progress)
    elapsed = time.perf_counter() - start
    s = summary(outcomes)
    command = f".venv/bin/python benchmarks/fuzz.py --cases {args.cases} --seed {args.seed} --commands {args.commands}"
    print(f"{s['cases']} cases, {s['tracebacks']} tracebacks, {s['hangs']} hangs, other problems {s['other_problems']}; "
          f"seed {args.seed}; {elapsed:.0f}s\ncommand: {command}")
    for line in failure_lines(outcomes):
        print(line)
    if not args.no_results:
        _write_results(s, outcomes, command, elapsed)
    if not any(o.problem for o in outcomes):
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if s["tracebacks"] or s["hangs"] else 0


def _write_results(s: dict, outcomes: list[Outcome], command: str, elapsed: float) -> None:
    from importlib import metadata

    from benchmarks._results import replace_section

    versions = ", ".join(f"{d} {metadata.version(d)}" for d in ("onnx", "onnx-ir", "onnxruntime", "tensorrt-rtx") if _has(d))
    bases = ", ".join(b.name for b in base_models())
    failures = "\n".join(f"- {line}" for line in failure_lines(outcomes)) or "- none"
    body = f"""
{time.strftime('%Y-%m-%d')}; {versions}; `{command}` ({elapsed:.0f} s on this machine).

| cases | tracebacks | hangs | other problems | exit codes | subprocess cases |
|---|---|---|---|---|---|
| {s['cases']} | {s['tracebacks']} | {s['hangs']} | {s['other_problems'] or 'none'} | {s['exit_codes']} | {s['subprocess_cases']} |

Commands: {s['by_command']}. Mutations (a case applies 1 to 3): {s['by_mutation']}. Base models: {bases}.
A case fails on a traceback, a hang (per-command time limit), a numpy RuntimeWarning, an exit code outside 0/1/2,
a modified input, or an output/temp file left behind by a failed run.

Failures:
{failures}
"""
    replace_section("Fuzzing: hostile ONNX files through the CLI", body)


def _has(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
