"""Data sources and the validation pass: every bad input fails before any work, naming the sample and input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from calibration.data import NpzFolderSource, synthetic_source, validate_source
from optimizer.errors import ConfigError, InputError
from optimizer.model import TensorSpec

SPECS = [TensorSpec("x", "float32", ("N", 3, "?", "W")), TensorSpec("ids", "int64", ("N", 5))]


def _write_samples(folder, count=5, widths=(8, 16, 8, 24, 8)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        np.savez(
            folder / f"{i:03d}.npz",
            x=rng.random((1, 3, 4, widths[i % len(widths)]), dtype=np.float32),
            ids=np.arange(5, dtype=np.int64)[None],
        )
    return folder


def test_folder_source_reads_sorted_files_with_labels(tmp_path):
    folder = _write_samples(tmp_path / "d")
    (folder / "labels.json").write_text(json.dumps({"001.npz": "b", "000.npz": "a"}))
    (folder / "notes.txt").write_text("ignored")
    source = NpzFolderSource(folder)
    assert [p.name for p in source.files] == [f"{i:03d}.npz" for i in range(5)]
    assert source.labels == ["a", "b", None, None, None]
    assert len(source) == 5 and len(list(source)) == len(list(source)) == 5  # re-iterable
    fp = validate_source(source, SPECS)
    assert fp.count == 5 and not fp.synthetic
    assert fp.inputs["x"].shapes == [[1, 3, 4, 8], [1, 3, 4, 16], [1, 3, 4, 24]]  # dynamic W varies: fine
    assert 0 <= fp.inputs["x"].min <= fp.inputs["x"].max <= 1 and fp.inputs["ids"].max == 4
    assert validate_source(NpzFolderSource(folder), SPECS).sha256 == fp.sha256


def test_fingerprint_follows_content(tmp_path):
    a = [{"x": np.zeros((1, 3, 2, 2), np.float32), "ids": np.zeros((1, 5), np.int64)}]
    b = [{"x": np.ones((1, 3, 2, 2), np.float32), "ids": np.zeros((1, 5), np.int64)}]
    assert validate_source(a, SPECS).sha256 != validate_source(b, SPECS).sha256


def test_npy_files_feed_the_single_input(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s{i}.npy", np.full((1, 4), i, np.float32))
    spec = [TensorSpec("input", "float32", (1, 4))]
    source = NpzFolderSource(folder)
    assert validate_source(source, spec).count == 3
    assert [float(f["input"][0, 0]) for f in source] == [0.0, 1.0, 2.0]
    with pytest.raises(InputError, match="model has 2 inputs"):
        validate_source(NpzFolderSource(folder), SPECS)


def test_missing_empty_and_unreadable(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        NpzFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npz or .npy files"):
        NpzFolderSource(tmp_path / "empty")
    folder = _write_samples(tmp_path / "d", count=3)
    (folder / "001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="001.npz: unreadable"):
        validate_source(NpzFolderSource(folder), SPECS)
    (folder / "labels.json").write_text("{not json")
    with pytest.raises(InputError, match="labels.json"):
        NpzFolderSource(folder)


def _good(width=8):
    return {"x": np.zeros((1, 3, 4, width), np.float32), "ids": np.zeros((1, 5), np.int64)}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.update(idz=f.pop("ids")), r"missing inputs \['ids'\]; unknown inputs \['idz'\]"),
        (lambda f: f.update(x=f["x"].astype(np.float64)), "input 'x' has dtype float64, the model expects float32"),
        (lambda f: f.update(x=f["x"][0]), "input 'x' has rank 3 .*expects rank 4"),
        (lambda f: f.update(x=np.zeros((1, 4, 4, 8), np.float32)), "input 'x' has size 4 in dim 1, the model fixes it to 3"),
        (lambda f: f.update(ids=np.zeros((2, 5), np.int64)), "dynamic dim 'N' is 1 in 'x' dim 0 but 2 in 'ids'"),
    ],
    ids=["name", "dtype", "rank", "static-dim", "shared-dynamic-dim"],
)
def test_mismatches_name_sample_and_input(change, message):
    samples = [_good(), _good(16), _good()]
    change(samples[2])
    with pytest.raises(InputError, match="sample 2: " + message):
        validate_source(samples, SPECS)


def test_nan_in_sample_3_is_named_with_its_file(tmp_path):
    folder = _write_samples(tmp_path / "d")
    with np.load(folder / "003.npz") as npz:
        x, ids = npz["x"].copy(), npz["ids"]
    x[0, 1, 2, 3] = np.nan
    x[0, 0, 0, 0] = np.inf
    np.savez(folder / "003.npz", x=x, ids=ids)
    with pytest.raises(InputError, match=r"sample 3 \(003.npz\): input 'x' contains 2 NaN/Inf values"):
        validate_source(NpzFolderSource(folder), SPECS)
    # Samples carry their file, so a wrapped or sliced source still names it.
    with pytest.raises(InputError, match=r"sample 3 \(003.npz\)"):
        validate_source(list(itertools.islice(NpzFolderSource(folder), 4)), SPECS)


def test_empty_source_and_non_dict_samples():
    with pytest.raises(InputError, match="no samples"):
        validate_source([], SPECS)
    with pytest.raises(InputError, match="sample 0: expected a dict"):
        validate_source([np.zeros(3)], SPECS)


def test_synthetic_source_only_with_sizes_and_says_so():
    with pytest.raises(ConfigError, match="'x' has shape .* dynamic dims"):
        synthetic_source(SPECS, 4)
    source = synthetic_source(SPECS, 4, shapes={"x": (1, 3, 4, 8), "ids": (1, 5)}, seed=3)
    first, second = list(source), list(source)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, second))  # same data every pass
    fp = validate_source(source, SPECS)
    assert fp.synthetic and fp.count == 4 and fp.inputs["ids"].shapes == [[1, 5]]
