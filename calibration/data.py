"""Calibration data: sources of feeds, and the one validation pass that runs before any work.

A data source is any re-iterable of feeds (``dict[input name, np.ndarray]``): a list, a
``NpzFolderSource`` over files on disk, or ``synthetic_source`` when random data is asked for
by name. ``validate_source`` streams through it once, checks every sample against the model's
inputs and returns a ``DataFingerprint`` for the report and the stage cache, so a wrong
folder fails in seconds with a message that names the file and the input, not after an hour
of calibration.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optimizer.errors import ConfigError, InputError, first_line
from optimizer.feeds import check_feed_size, random_integers
from optimizer.model import TensorSpec

# Distinct shapes remembered per input in a fingerprint: enough to see the spread of a
# dynamic dim, bounded so a folder of 10,000 differently sized images stays small.
MAX_SHAPES_SEEN = 10


class Feed(dict):
    """A sample (``{input name: array}``) that remembers the file it came from.

    Messages can then name the file even when the source is wrapped, sliced or listed.
    """

    origin: Path | None = None


def _feed(arrays: dict[str, np.ndarray], origin: Path) -> Feed:
    feed = Feed(arrays)
    feed.origin = origin
    return feed


class NpzFolderSource:
    """Feeds from a folder of ``.npz`` files (keys = input names) and/or ``.npy`` files.

    A ``.npy`` file holds the single input of a single-input model; the input's name comes
    from ``input_name`` or from ``bind(specs)`` (``validate_source`` and ``quantize`` bind for
    you). Files are read lazily, one at a time, in sorted name order. An optional
    ``labels.json`` ({file name: label}) gives ``labels`` in the same order (None where absent).
    """

    def __init__(self, folder: str | Path, *, input_name: str | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.exists():
            raise InputError(f"{self.folder}: calibration folder does not exist")
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: is a file, expected a folder of .npz/.npy files")
        self.files: list[Path] = sorted(
            p for p in self.folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy")
        )
        if not self.files:
            raise InputError(
                f"{self.folder}: no .npz or .npy files in the calibration folder "
                "(save one sample per file: np.savez(path, **{input_name: array}))"
            )
        self.input_name = input_name
        self.labels: list | None = self._read_labels()

    def _read_labels(self) -> list | None:
        path = self.folder / "labels.json"
        if not path.exists():
            return None
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable labels file ({exc})") from None
        if not isinstance(table, dict):
            raise InputError(f"{path}: expected an object {{file name: label}}, found {type(table).__name__}")
        return [table.get(p.name) for p in self.files]

    def bind(self, specs: list[TensorSpec]) -> None:
        """Name the input that ``.npy`` files feed; only possible for single-input models."""
        if self.input_name is not None or not any(p.suffix == ".npy" for p in self.files):
            return
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputError(
                f"{self.folder}: .npy files hold one array, but the model has {len(specs)} inputs ({names}); "
                "save each sample as .npz with one key per input"
            )
        self.input_name = specs[0].name

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.files:
            yield self._read(path)

    def _read(self, path: Path) -> Feed:
        try:
            if path.suffix == ".npy":
                if self.input_name is None:
                    raise InputError(
                        f"{path}: a .npy sample needs the model's input name; pass input_name= or call bind(specs)"
                    )
                return _feed({self.input_name: np.load(path, allow_pickle=False)}, path)
            with np.load(path, allow_pickle=False) as npz:
                return _feed({key: npz[key] for key in npz.files}, path)
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: unreadable calibration file ({first_line(exc)}); is it a complete .npz/.npy?") from None


class SyntheticSource:
    """Seeded random feeds. Only ever built on explicit request; its fingerprint says so."""

    synthetic = True

    def __init__(self, specs: list[TensorSpec], count: int, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        self.specs, self.count, self.shapes, self.seed = specs, count, shapes, seed

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)  # a fresh generator: every pass yields the same data
        for _ in range(self.count):
            feed = {}
            for spec in self.specs:
                shape, dtype = self.shapes[spec.name], np.dtype(spec.dtype)
                if dtype.kind == "f":
                    feed[spec.name] = rng.standard_normal(shape).astype(dtype)
                elif dtype.kind == "b":
                    feed[spec.name] = rng.random(shape) < 0.5
                else:
                    feed[spec.name] = random_integers(rng, dtype, shape, spec.name)
            yield feed


SYNTHETIC_SAMPLES = 16  # random calibration samples when the user asks for synthetic data without a count


def synthetic_source(
    specs: list[TensorSpec], count: int, shapes: dict[str, Iterable[int]] | None = None, seed: int = 0
) -> SyntheticSource:
    """Random feeds for ``specs``; dynamic dims need a size in ``shapes`` ({input: full shape})."""
    if count < 1:
        raise ConfigError(f"synthetic data needs a sample count >= 1, got {count}")
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    resolved = {}
    for spec in specs:
        if spec.name in shapes:
            resolved[spec.name] = shapes[spec.name]
        elif spec.shape is not None and not spec.dynamic_dims:
            resolved[spec.name] = tuple(spec.shape)
        else:
            raise ConfigError(
                f"synthetic data: input '{spec.name}' has shape {list(spec.shape or [])} with dynamic dims; "
                f"give its full shape, e.g. shapes={{'{spec.name}': [...]}}"
            )
    check_feed_size(specs, resolved)  # before any sample is drawn: a hostile dim costs nothing
    return SyntheticSource(specs, count, resolved, seed)


@dataclass
class InputStats:
    dtype: str
    min: float | None = None
    max: float | None = None
    shapes: list[list[int]] = field(default_factory=list)
    #: Over every sample: element-wise smallest and largest shape, and the most common one
    #: (first seen on a tie). They size the engine profile when no shapes are given.
    min_shape: list[int] | None = None
    max_shape: list[int] | None = None
    opt_shape: list[int] | None = None


@dataclass
class DataFingerprint:
    """What the data was: sample count, content hash, per-input ranges and shapes, and whether it was random."""

    count: int
    sha256: str
    inputs: dict[str, InputStats]
    synthetic: bool


def bind_source(source, specs: list[TensorSpec]) -> None:
    """Let a source that needs the model's input names (``.npy`` files) learn them."""
    bind = getattr(source, "bind", None)
    if callable(bind):
        bind(specs)


def sample_label(index: int, feed=None) -> str:
    """How to name a sample in a message: its index, and its file when it came from one."""
    origin = getattr(feed, "origin", None)
    return f"sample {index} ({Path(origin).name})" if origin is not None else f"sample {index}"


def validate_source(source, specs: list[TensorSpec]) -> DataFingerprint:
    """Check every sample against the model's inputs in one streaming pass; raise InputError on the first problem."""
    bind_source(source, specs)
    by_name = {s.name: s for s in specs}
    stats = {s.name: InputStats(dtype=s.dtype) for s in specs}
    digest = hashlib.sha256()
    count = 0
    shape_counts = {s.name: Counter() for s in specs}
    for index, feed in enumerate(source):
        where = sample_label(index, feed)
        if not isinstance(feed, Mapping):
            raise InputError(f"{where}: expected a dict {{input name: array}}, found {type(feed).__name__}")
        missing = [n for n in by_name if n not in feed]
        unknown = [n for n in feed if n not in by_name]
        if missing or unknown:
            parts = ([f"missing inputs {missing}"] if missing else []) + ([f"unknown inputs {unknown}"] if unknown else [])
            raise InputError(f"{where}: {'; '.join(parts)}; the model's inputs are {list(by_name)}")
        named_dims: dict[str, tuple[str, int]] = {}
        for name, spec in by_name.items():
            array = np.asarray(feed[name])
            _check_array(where, spec, array, named_dims)
            _update_stats(stats[name], array)
            shape_counts[name][tuple(int(d) for d in array.shape)] += 1
            digest.update(f"{index}:{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        count += 1
    if count == 0:
        raise InputError("the calibration data source yielded no samples")
    for name, counts in shape_counts.items():
        shapes = list(counts)
        if len({len(sh) for sh in shapes}) == 1:  # ranks agree (checked above when the model declares one)
            stats[name].min_shape = [min(dims) for dims in zip(*shapes)]
            stats[name].max_shape = [max(dims) for dims in zip(*shapes)]
            stats[name].opt_shape = list(counts.most_common(1)[0][0])
    return DataFingerprint(count, digest.hexdigest(), stats, bool(getattr(source, "synthetic", False)))


def _check_array(where: str, spec: TensorSpec, array: np.ndarray, named_dims: dict[str, tuple[str, int]]) -> None:
    if spec.dtype != "unknown" and array.dtype.name != spec.dtype:
        raise InputError(
            f"{where}: input '{spec.name}' has dtype {array.dtype.name}, the model expects {spec.dtype} "
            f"(convert with array.astype(np.{spec.dtype}))"
        )
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise InputError(
            f"{where}: input '{spec.name}' has rank {array.ndim} (shape {list(array.shape)}), "
            f"the model expects rank {len(spec.shape)} (shape {list(spec.shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(
                f"{where}: input '{spec.name}' has size {got} in dim {axis}, the model fixes it to {want} "
                f"(found shape {list(array.shape)}, expected {list(spec.shape)})"
            )
        # A named dynamic dim shared by several inputs (a batch "N") must agree within a sample;
        # "?" and unnamed dims are independent by definition.
        if isinstance(want, str) and want != "?":
            seen = named_dims.setdefault(want, (f"'{spec.name}' dim {axis}", got))
            if seen[1] != got:
                raise InputError(
                    f"{where}: dynamic dim '{want}' is {seen[1]} in {seen[0]} but {got} in '{spec.name}' dim {axis}"
                )
    if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise InputError(f"{where}: input '{spec.name}' contains {bad} NaN/Inf values; calibration data must be finite")


def _update_stats(stats: InputStats, array: np.ndarray) -> None:
    if array.size and array.dtype.kind in "fiub":
        lo, hi = float(array.min()), float(array.max())
        stats.min = lo if stats.min is None else min(stats.min, lo)
        stats.max = hi if stats.max is None else max(stats.max, hi)
    shape = [int(d) for d in array.shape]
    if shape not in stats.shapes and len(stats.shapes) < MAX_SHAPES_SEEN:
        stats.shapes.append(shape)


class Limited:
    """At most ``limit`` samples of a data source (keeps its labels aligned)."""

    def __init__(self, source, limit: int | None) -> None:
        self.source = source
        self.limit = limit
        labels = getattr(source, "labels", None)
        self.labels = labels[:limit] if labels is not None and limit else labels

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.source), self.limit)

    def __len__(self) -> int:
        n = len(self.source)
        return min(n, self.limit) if self.limit else n


def open_folder(folder: str | Path, specs: list[TensorSpec], limit: int | None = None) -> tuple[Limited, DataFingerprint]:
    """A folder of samples, checked against the model's inputs in one pass: (source, fingerprint).

    ``.npy`` samples learn the input name before any wrapping; ``limit`` keeps the first samples.
    """
    folder_source = NpzFolderSource(folder)
    bind_source(folder_source, specs)
    source = Limited(folder_source, limit)
    return source, validate_source(source, specs)
