"""Tests for hwtoolkit.data: file formats, locating and verifying, loading, splits, batches, augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hwtoolkit.data.download as download_mod
import hwtoolkit.data.locate as locate_mod
from hwtoolkit.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    BatchSampler,
    ChecksumError,
    Dataset,
    DatasetInfo,
    DatasetNotFoundError,
    FileSpec,
    augment_cifar10,
    get_info,
    load_dataset,
    read_idx,
    search_paths,
    split_train_val,
    to_float,
    write_idx,
)
from hwtoolkit.data.augment import crop_flip
from hwtoolkit.data.cifar import CifarFormatError, read_batch, write_cifar10_batches
from hwtoolkit.data.idx import IdxFormatError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TINY_TRAIN, TINY_TEST, TINY_CLASSES = 12, 5, 3


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the cache, env var and system directory into tmp_path, and forbid real network access."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("HWTOOLKIT_DATA", raising=False)
    monkeypatch.setattr(locate_mod, "SYSTEM_DATA_DIR", tmp_path / "system")

    def no_network(url, timeout):
        raise AssertionError(f"test tried to reach the network: {url}")

    monkeypatch.setattr(download_mod, "open_url", no_network)


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tiny_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (TINY_TRAIN, 4, 5), dtype=np.uint8)
    test_x = rng.integers(0, 256, (TINY_TEST, 4, 5), dtype=np.uint8)
    train_y = (np.arange(TINY_TRAIN) % TINY_CLASSES).astype(np.uint8)
    test_y = (np.arange(TINY_TEST) % TINY_CLASSES).astype(np.uint8)
    return train_x, train_y, test_x, test_y


def write_tiny_idx(directory: Path, gz: bool = True) -> None:
    """Write a 4x5-pixel, 3-class IDX data set with the standard MNIST file names."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, tiny_arrays()):
        write_idx(directory / (name + (".gz" if gz else "")), array)


def tiny_idx_info(reference: Path, with_raw_md5: bool = True) -> DatasetInfo:
    """A DatasetInfo whose checksums are those of the tiny files written into `reference` (gzipped)."""
    specs = []
    for name in IDX_NAMES:
        gz_path = reference / f"{name}.gz"
        raw = hashlib.md5(gzip.decompress(gz_path.read_bytes())).hexdigest() if with_raw_md5 else None
        specs.append(FileSpec(f"{name}.gz", md5_file(gz_path), raw))
    return DatasetInfo(
        name="tiny",
        shape=(1, 4, 5),
        classes=TINY_CLASSES,
        format="idx",
        train_files=tuple(specs[:2]),
        test_files=tuple(specs[2:]),
        train_size=TINY_TRAIN,
        test_size=TINY_TEST,
        urls=("https://mirror-a.invalid/tiny/", "https://mirror-b.invalid/tiny/"),
        system_dirs=("tiny",),
    )


@pytest.fixture
def tiny(tmp_path) -> tuple[DatasetInfo, Path]:
    reference = tmp_path / "reference"
    write_tiny_idx(reference)
    return tiny_idx_info(reference), reference


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 3)])
def test_idx_round_trip(tmp_path, suffix, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_idx_rejects_bad_magic_naming_the_file(tmp_path):
    path = tmp_path / "bad-magic-idx"
    write_idx(path, np.zeros((2, 3), np.uint8))
    data = bytearray(path.read_bytes())
    data[0] = 0x12
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_rejects_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad-code-idx"
    write_idx(path, np.zeros((2, 3), np.uint8))
    data = bytearray(path.read_bytes())
    data[2] = 0x42
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="0x42") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "0x08" in str(info.value)


@pytest.mark.parametrize("cut", [1, 100, 10_000])
def test_idx_rejects_truncated_file(tmp_path, cut):
    path = tmp_path / "cut-idx"
    write_idx(path, np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(IdxFormatError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "cut-idx.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IdxFormatError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_rejects_short_header(tmp_path):
    path = tmp_path / "short-idx"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(IdxFormatError, match="header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_write_idx_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="float32"):
        write_idx(tmp_path / "x-idx", np.zeros(3, np.float32))


# ---------------------------------------------------------------- CIFAR-10 batches


def tiny_cifar_arrays(n_train: int = 10, n_test: int = 4):
    rng = np.random.default_rng(2)
    return (
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_test),
    )


def test_cifar_batches_round_trip(tmp_path):
    train_x, train_y, test_x, test_y = tiny_cifar_arrays()
    folder = write_cifar10_batches(tmp_path, train_x, train_y, test_x, test_y)
    assert folder == tmp_path / "cifar-10-batches-py"
    parts = [read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    assert all(len(x) == 2 for x, _ in parts)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), train_x)
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), train_y)
    x, y = read_batch(folder / "test_batch")
    assert x.dtype == np.uint8 and x.shape == (4, 3, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(x, test_x)
    np.testing.assert_array_equal(y, test_y)


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2, 3], "expected a dict"),
        ({b"labels": [0]}, "lacks key"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "one per image"),
    ],
)
def test_cifar_rejects_malformed_batch(tmp_path, payload, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CifarFormatError, match=message) as info:
        read_batch(path)
    assert str(path) in str(info.value)


class _Touch:
    """Unpickling this would create a file: a stand-in for code a hostile pickle could run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_cifar_refuses_pickle_globals_outside_numpy(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Touch(marker), b"labels": []}, protocol=2))
    with pytest.raises(CifarFormatError, match="not allowed"):
        read_batch(path)
    assert not marker.exists()


class _Python2Pickler(pickle._Pickler):
    """Writes like the 2009 CIFAR-10 files: py2 str opcodes, numpy arrays under numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    def save_str(self, obj):
        raw = obj.encode("latin1")
        self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = "numpy.core.multiarray" if obj.__name__ == "_reconstruct" else "numpy"
        self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch[bytes], dispatch[str], dispatch[type] = save_bytes, save_str, save_global


def test_cifar_reads_python2_era_pickles(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump({b"data": images, b"labels": [4, 0, 9], b"batch_label": "b"})
    assert b"numpy.core.multiarray\n_reconstruct" in buffer.getvalue()
    path = tmp_path / "data_batch_1"
    path.write_bytes(buffer.getvalue())
    x, y = read_batch(path)
    np.testing.assert_array_equal(x.reshape(3, -1), images)
    assert y.tolist() == [4, 0, 9]


# ---------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "cifar10"}
    assert get_info("FMNIST") is DATASETS["fashion-mnist"]
    assert get_info("Fashion-MNIST") is DATASETS["fashion-mnist"]
    assert get_info("CIFAR-10") is DATASETS["cifar10"]
    assert DATASETS["cifar10"].shape == (3, 32, 32) and DATASETS["mnist"].shape == (1, 28, 28)
    with pytest.raises(ValueError, match="imagenet") as info:
        get_info("imagenet")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("svhn", download=False)


# ---------------------------------------------------------------- locating


def test_search_paths_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HWTOOLKIT_DATA", str(tmp_path / "env"))
    paths = search_paths("fmnist", root=tmp_path / "root")
    assert paths == [
        tmp_path / "root",
        tmp_path / "root" / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "xdg-cache" / "hwtoolkit" / "datasets" / "fashion-mnist",
        tmp_path / "system" / "fashion-mnist",
    ]
    assert search_paths("cifar-10")[-2:] == [tmp_path / "system" / "cifar10", tmp_path / "system" / "cifar-10"]


def test_cache_defaults_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_paths("mnist")[0] == tmp_path / "home" / ".cache" / "hwtoolkit" / "datasets" / "mnist"


def test_explicit_root_beats_env_beats_cache(tmp_path, monkeypatch, tiny):
    info, _ = tiny
    root, env = tmp_path / "root", tmp_path / "env"
    cache = tmp_path / "xdg-cache" / "hwtoolkit" / "datasets" / "tiny"
    write_tiny_idx(root)
    write_tiny_idx(env / "tiny")
    write_tiny_idx(cache, gz=False)
    monkeypatch.setenv("HWTOOLKIT_DATA", str(env))
    assert load_dataset(info, root=root, download=False).source == root
    assert load_dataset(info, download=False).source == env / "tiny"
    monkeypatch.delenv("HWTOOLKIT_DATA")
    assert load_dataset(info, download=False).source == cache


def test_missing_data_lists_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HWTOOLKIT_DATA", str(tmp_path / "env"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path / "root", download=False)
    message = str(info.value)
    expected = search_paths("fashion-mnist", root=tmp_path / "root")
    assert info.value.searched == expected
    for path in expected:
        assert str(path) in message
    assert "missing train-labels-idx1-ubyte[.gz]" in message
    assert "dataset-fashion-mnist" in message and "HWTOOLKIT_DATA" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in message


# ---------------------------------------------------------------- checksums


def test_checksum_mismatch_names_file_and_digests(tmp_path, tiny):
    info, reference = tiny
    bad_spec = dataclasses.replace(info.train_files[1], md5="0" * 32, raw_md5="1" * 32)
    bad = dataclasses.replace(info, train_files=(info.train_files[0], bad_spec))
    with pytest.raises(ChecksumError) as error:
        load_dataset(bad, root=reference, download=False)
    message = str(error.value)
    assert str(reference / "train-labels-idx1-ubyte.gz") in message
    assert "0" * 32 in message and "1" * 32 in message
    assert md5_file(reference / "train-labels-idx1-ubyte.gz") in message
    assert error.value.actual == md5_file(reference / "train-labels-idx1-ubyte.gz")


def test_checksum_catches_altered_content(tmp_path, tiny):
    info, _ = tiny
    copy = tmp_path / "copy"
    write_tiny_idx(copy)
    labels = read_idx(copy / "t10k-labels-idx1-ubyte.gz")
    labels[0] = (labels[0] + 1) % TINY_CLASSES
    write_idx(copy / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset(info, root=copy, download=False)


def test_recompressed_or_decompressed_copies_verify_by_content(tmp_path, tiny):
    info, reference = tiny
    repacked = tmp_path / "repacked"
    repacked.mkdir()
    for name in IDX_NAMES:
        content = gzip.decompress((reference / f"{name}.gz").read_bytes())
        (repacked / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
        assert md5_file(repacked / f"{name}.gz") != md5_file(reference / f"{name}.gz")
    expected = load_dataset(info, root=reference, download=False)
    got = load_dataset(info, root=repacked, download=False)
    assert torch.equal(got.train_x, expected.train_x) and torch.equal(got.test_y, expected.test_y)
    plain = tmp_path / "plain"
    write_tiny_idx(plain, gz=False)
    assert torch.equal(load_dataset(info, root=plain, download=False).train_x, expected.train_x)
    (plain / "t10k-images-idx3-ubyte").write_bytes((plain / "t10k-images-idx3-ubyte").read_bytes()[:-1] + b"\x07")
    with pytest.raises(ChecksumError, match="decompressed"):
        load_dataset(info, root=plain, download=False)


def test_uncompressed_copy_without_raw_md5_checks_header_and_count(tmp_path, tiny):
    _, reference = tiny
    info = tiny_idx_info(reference, with_raw_md5=False)
    plain = tmp_path / "plain"
    write_tiny_idx(plain, gz=False)
    assert load_dataset(info, root=plain, download=False).train_x.shape == (TINY_TRAIN, 1, 4, 5)
    write_idx(plain / "train-images-idx3-ubyte", np.zeros((TINY_TRAIN - 1, 4, 5), np.uint8))
    write_idx(plain / "train-labels-idx1-ubyte", np.zeros(TINY_TRAIN - 1, np.uint8))
    with pytest.raises(ValueError, match=f"has {TINY_TRAIN - 1} samples, expected {TINY_TRAIN}"):
        load_dataset(info, root=plain, download=False)


# ---------------------------------------------------------------- downloads


class _BrokenStream(io.BytesIO):
    """Yields its first chunk, then fails like a dropped connection."""

    def read(self, size=-1):
        if self.tell() == 0:
            return super().read(3)
        raise ConnectionResetError("connection reset by peer")


def cache_of(tmp_path: Path, name: str) -> Path:
    return tmp_path / "xdg-cache" / "hwtoolkit" / "datasets" / name


def serve(files: dict[str, bytes], requested: list[str]):
    def opener(url, timeout):
        requested.append(url)
        if url not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return io.BytesIO(files[url])

    return opener


def test_download_into_cache(tmp_path, monkeypatch, tiny):
    info, reference = tiny
    files = {f"https://mirror-b.invalid/tiny/{n}.gz": (reference / f"{n}.gz").read_bytes() for n in IDX_NAMES}
    requested: list[str] = []
    monkeypatch.setattr(download_mod, "open_url", serve(files, requested))
    data = load_dataset(info, download=True)
    cache = cache_of(tmp_path, "tiny")
    assert data.source == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    assert requested[:2] == [f"https://mirror-a.invalid/tiny/{IDX_NAMES[0]}.gz", f"https://mirror-b.invalid/tiny/{IDX_NAMES[0]}.gz"]
    np.testing.assert_array_equal(data.train_x[:, 0].numpy(), tiny_arrays()[0])
    requested.clear()
    assert load_dataset(info, download=True).source == cache
    assert requested == []


@pytest.mark.parametrize("failure", ["refused", "mid-stream"])
def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch, tiny, failure):
    info, _ = tiny

    def opener(url, timeout):
        if failure == "refused":
            raise urllib.error.URLError("no route to host")
        return _BrokenStream(b"\x1f\x8b" + b"x" * 100)

    monkeypatch.setattr(download_mod, "open_url", opener)
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(info, download=True)
    message = str(error.value)
    assert "Download failed" in message and "mirror-b.invalid" in message
    for path in search_paths(info):
        assert str(path) in message
    cache = cache_of(tmp_path, "tiny")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch, tiny):
    info, _ = tiny
    monkeypatch.setattr(download_mod, "open_url", lambda url, timeout: io.BytesIO(b"not the file"))
    with pytest.raises(ChecksumError) as error:
        load_dataset(info, download=True)
    assert error.value.expected == info.train_files[0].md5
    assert error.value.actual == hashlib.md5(b"not the file").hexdigest()
    assert "train-images-idx3-ubyte.gz" in str(error.value)
    assert list(cache_of(tmp_path, "tiny").iterdir()) == []


# ---------------------------------------------------------------- loading


def test_load_applies_limit_and_converts(tiny):
    info, reference = tiny
    full = load_dataset(info, root=reference, download=False)
    assert full.train_x.dtype == torch.uint8 and full.train_y.dtype == torch.int64
    assert full.train_x.shape == (TINY_TRAIN, 1, 4, 5) and full.test_x.shape == (TINY_TEST, 1, 4, 5)
    assert full.classes == TINY_CLASSES and full.name == "tiny"
    small = load_dataset(info, root=reference, download=False, limit=3)
    assert small.train_x.shape[0] == 3 and small.test_y.shape[0] == 3
    assert torch.equal(small.train_x, full.train_x[:3]) and torch.equal(small.test_y, full.test_y[:3])
    with pytest.raises(ValueError, match="limit"):
        load_dataset(info, root=reference, download=False, limit=0)


def test_load_rejects_mismatched_counts_and_labels(tmp_path, tiny):
    _, reference = tiny
    info = tiny_idx_info(reference, with_raw_md5=False)
    plain = tmp_path / "plain"
    write_tiny_idx(plain, gz=False)
    write_idx(plain / "train-labels-idx1-ubyte", np.zeros(TINY_TRAIN - 2, np.uint8))
    with pytest.raises(ValueError, match="labels but"):
        load_dataset(info, root=plain, download=False)
    write_idx(plain / "train-labels-idx1-ubyte", np.full(TINY_TRAIN, TINY_CLASSES, np.uint8))
    with pytest.raises(ValueError, match="valid range is 0..2"):
        load_dataset(info, root=plain, download=False)


def test_dataset_validates_its_tensors():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 1])
    Dataset("d", x, y, x, y, classes=3, source=Path("."))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        Dataset("d", x, y[:3], x, y, classes=3, source=Path("."))
    with pytest.raises(ValueError, match="valid range is 0..1"):
        Dataset("d", x, y, x, y, classes=2, source=Path("."))


def cifar_info(folder: Path, n_train: int, n_test: int, archive: Path | None = None) -> DatasetInfo:
    real = DATASETS["cifar10"]
    spec = lambda s: FileSpec(s.name, md5_file(folder / s.name))  # noqa: E731
    return dataclasses.replace(
        real,
        train_files=tuple(spec(s) for s in real.train_files),
        test_files=tuple(spec(s) for s in real.test_files),
        train_size=n_train,
        test_size=n_test,
        archive=FileSpec(real.archive.name, md5_file(archive)) if archive else real.archive,
    )


def test_load_fake_cifar10_from_batches_and_archive(tmp_path, monkeypatch):
    train_x, train_y, test_x, test_y = tiny_cifar_arrays()
    folder = write_cifar10_batches(tmp_path / "batches", train_x, train_y, test_x, test_y)
    archive = tmp_path / "archive" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    info = cifar_info(folder, 10, 4, archive)
    monkeypatch.setitem(DATASETS, "cifar10", info)
    for root, source in ((tmp_path / "batches", folder), (tmp_path / "archive", archive)):
        data = load_dataset("CIFAR-10", root=root, download=False)
        assert data.source == source
        assert data.train_x.shape == (10, 3, 32, 32) and data.train_x.dtype == torch.uint8
        np.testing.assert_array_equal(data.train_x.numpy(), train_x)
        np.testing.assert_array_equal(data.test_y.numpy(), test_y)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": 0}, protocol=2))
    with pytest.raises(ChecksumError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path / "batches", download=False)


def test_to_float_range():
    x = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    y = to_float(x, "cpu", torch.float64)
    assert y.dtype == torch.float64 and float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert y[0, 1].item() == pytest.approx(128 / 255)
    with pytest.raises(TypeError, match="uint8"):
        to_float(y)


# ---------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_covering():
    train, val = split_train_val(100, 20, seed=7)
    train2, val2 = split_train_val(100, 20, seed=7)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert len(val) == 20 and len(train) == 80
    assert torch.equal(val, val.sort().values) and torch.equal(train, train.sort().values)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert not torch.equal(val, split_train_val(100, 20, seed=8)[1])
    assert len(split_train_val(5, 0, seed=0)[1]) == 0


@pytest.mark.parametrize("n, val_size", [(10, 10), (10, -1), (0, 0)])
def test_split_rejects_bad_sizes(n, val_size):
    with pytest.raises(ValueError, match=f"val_size={val_size}, n={n}"):
        split_train_val(n, val_size, seed=0)


# ---------------------------------------------------------------- batches


def test_batch_sampler_same_seed_same_batches():
    indices = torch.arange(100, 150)
    a = BatchSampler(indices, 8, seed=3).epoch_batches(2)
    b = BatchSampler(indices.clone(), 8, seed=3).epoch_batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 7
    c = BatchSampler(indices, 8, seed=4).epoch_batches(2)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_batch_sampler_epochs_differ_and_cover_each_index_once():
    indices = split_train_val(200, 50, seed=1)[0]
    sampler = BatchSampler(indices, 16, seed=0)
    epochs = [torch.cat(sampler.epoch_batches(e)) for e in range(3)]
    for order in epochs:
        assert torch.equal(order.sort().values, indices.sort().values)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(epochs[0], indices)


def test_batch_sampler_epoch_recomputable_independently():
    indices = torch.arange(37)
    replayed = BatchSampler(indices, 5, seed=11)
    for epoch in range(6):
        last = replayed.epoch_batches(epoch)
    fresh = BatchSampler(indices, 5, seed=11).epoch_batches(5)
    assert all(torch.equal(x, y) for x, y in zip(last, fresh)) and len(fresh) == 8


def test_batch_sampler_len_drop_last_and_no_shuffle():
    indices = torch.arange(10)
    assert len(BatchSampler(indices, 4, seed=0)) == 3
    dropped = BatchSampler(indices, 4, seed=0, drop_last=True)
    assert len(dropped) == 2 and [len(b) for b in dropped.epoch_batches(0)] == [4, 4]
    ordered = BatchSampler(indices, 4, seed=0, shuffle=False).epoch_batches(9)
    assert [b.tolist() for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(indices, 0, seed=0)
    with pytest.raises(TypeError, match="int64"):
        BatchSampler(indices.int(), 4, seed=0)


# ---------------------------------------------------------------- augmentation


def edge_padded(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Reference edge padding by index clamping (independent of F.pad)."""
    h, w = image.shape[-2:]
    rows = (torch.arange(h + 2 * pad) - pad).clamp(0, h - 1)
    cols = (torch.arange(w + 2 * pad) - pad).clamp(0, w - 1)
    return image[..., rows[:, None], cols[None, :]]


def test_cifar_constants():
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert CIFAR10_STD == pytest.approx((0.6069, 0.5982, 0.6030))


def test_augment_shape_and_determinism():
    x = torch.rand(16, 3, 32, 32)
    a = augment_cifar10(x, torch.Generator().manual_seed(5))
    b = augment_cifar10(x, torch.Generator().manual_seed(5))
    c = augment_cifar10(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    with pytest.raises(ValueError, match="float tensor"):
        augment_cifar10(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.Generator())


def test_flip_mirrors_the_image():
    x = torch.rand(2, 3, 32, 32)
    centre = torch.full((2,), 4)
    assert torch.equal(crop_flip(x, centre, centre, torch.tensor([True, False])), torch.stack([x[0].flip(-1), x[1]]))
    ramp = torch.linspace(0, 1, 32).expand(64, 3, 32, 32).contiguous()
    out = augment_cifar10(ramp, torch.Generator().manual_seed(0))
    steps = out[:, 0, 0, 1:] - out[:, 0, 0, :-1]
    increasing, decreasing = (steps >= 0).all(1), (steps <= 0).all(1)
    assert bool((increasing | decreasing).all())
    assert 16 <= int(decreasing.sum()) <= 48


def test_crops_are_shifts_of_edge_padded_image():
    image = torch.rand(3, 32, 32)
    padded = edge_padded(image)
    candidates = {
        (dy, dx, flip): padded[:, dy : dy + 32, dx : dx + 32].flip(-1) if flip else padded[:, dy : dy + 32, dx : dx + 32]
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
    }
    out = augment_cifar10(image.expand(128, 3, 32, 32).contiguous(), torch.Generator().manual_seed(1))
    seen = set()
    for sample in out:
        match = [key for key, crop in candidates.items() if torch.equal(sample, crop)]
        assert match, "an output is not a ±4-pixel shift (optionally mirrored) of the edge-padded image"
        seen.add(match[0])
    offsets = {(dy, dx) for dy, dx, _ in seen}
    assert len(offsets) > 30 and {dy for dy, _ in offsets} == set(range(9)) == {dx for _, dx in offsets}
    assert torch.equal(F.pad(image[None], (4, 4, 4, 4), mode="replicate")[0], padded)


# ---------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason=f"{REAL_FMNIST} not installed (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(locate_mod, "SYSTEM_DATA_DIR", REAL_FMNIST.parent)
    data = load_dataset("fashion-mnist", download=False)
    assert data.source == REAL_FMNIST
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(data.test_y.bincount(), torch.full((10,), 1000))
    for spec in DATASETS["fashion-mnist"].files:
        stored = (REAL_FMNIST / spec.name).read_bytes()
        assert spec.md5 == hashlib.md5(stored).hexdigest() or spec.raw_md5 == hashlib.md5(gzip.decompress(stored)).hexdigest()
    assert os.environ.get("HWTOOLKIT_DATA") is None


def test_downsample_averages_blocks_rounding_half_to_even():
    from hwtoolkit.data import downsample_images

    x = torch.tensor([[[[0, 1, 2, 2, 9], [1, 2, 2, 3, 9], [7, 7, 7, 7, 9]]]], dtype=torch.uint8)
    y = downsample_images(x, 2)
    assert y.dtype == torch.uint8 and y.shape == (1, 1, 1, 2)  # edges that do not fill a block are dropped
    assert y.tolist() == [[[[1, 2]]]]  # mean 1.0 -> 1; mean 2.25 -> 2
    assert downsample_images(torch.tensor([[[[1, 2], [2, 1]]]], dtype=torch.uint8), 2).item() == 2  # 1.5 -> 2
    assert downsample_images(torch.tensor([[[[3, 2], [2, 3]]]], dtype=torch.uint8), 2).item() == 2  # 2.5 -> 2
    assert downsample_images(x, 1) is x
    with pytest.raises(ValueError, match="factor 0"):
        downsample_images(x, 0)
    with pytest.raises(ValueError, match="cannot be downsampled by 4"):
        downsample_images(x, 4)


def test_config_downsample_shrinks_the_images_and_checks_the_input_shape(idx_dataset):
    from hwtoolkit import config
    from hwtoolkit.runs import load_splits
    from tests.conftest import tiny_config_text

    text = tiny_config_text(idx_dataset).replace("input_shape = [1, 8, 8]", "input_shape = [1, 4, 4]")
    splits = load_splits(config.loads(text, ["data.downsample=2"]))
    assert splits.train_x.shape[1:] == (1, 4, 4) and splits.test_x.shape[1:] == (1, 4, 4)
    with pytest.raises(config.ConfigError, match=r"after data.downsample = 2, which are \[1, 4, 4\]"):
        load_splits(config.loads(tiny_config_text(idx_dataset), ["data.downsample=2"]))
    with pytest.raises(config.ConfigError, match="data.downsample = 0 is invalid"):
        config.loads(text, ["data.downsample=0"])
