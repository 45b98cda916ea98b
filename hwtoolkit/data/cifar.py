"""Reader and writer for the CIFAR-10 "python version" pickle batches.

The batches are pickles, and unpickling can run code. load_dataset unpickles a
batch only after its md5 matched the published one; read_batch reads files the
user put there unchecked. Either way the unpickler admits nothing but numpy
arrays and dtypes.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32

# (module, name) pairs a CIFAR-10 batch pickle needs; numpy 2 moved numpy.core to numpy._core.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
    ("_codecs", "encode"): ("_codecs",),
}


class CifarFormatError(ValueError):
    """A file is not a well-formed CIFAR-10 python batch."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the numpy array machinery."""

    def find_class(self, module: str, name: str):
        candidates = _ALLOWED_GLOBALS.get((module, name))
        if candidates is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        for candidate in candidates:
            try:
                return getattr(importlib.import_module(candidate), name)
            except ImportError:
                continue
        raise pickle.UnpicklingError(f"cannot import {module}.{name}")


def parse_batch(data: bytes, source: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch into uint8 images (N,3,32,32) and int64 labels (N,)."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise CifarFormatError(f"{source}: not a readable CIFAR-10 batch pickle ({error})") from error
    if not isinstance(batch, dict):
        raise CifarFormatError(f"{source}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    missing = [key for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise CifarFormatError(f"{source}: batch dict lacks key(s) {missing}; has {sorted(map(repr, batch))}")
    images, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != _PIXELS:
        described = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}".strip()
        raise CifarFormatError(f"{source}: b'data' must be a uint8 array of shape (N, {_PIXELS}), got {described}")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as error:
        raise CifarFormatError(f"{source}: b'labels' is not a list of integers ({error})") from error
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise CifarFormatError(
            f"{source}: b'labels' must be {len(images)} integers (one per image), got dtype {labels.dtype} shape {labels.shape}"
        )
    return images.reshape(-1, *IMAGE_SHAPE).copy(), labels.astype(np.int64)


def read_batch(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file from disk (no checksum: callers verify first)."""
    path = Path(path)
    return parse_batch(path.read_bytes(), path)


def read_archive_members(archive: Path, names: Iterable[str]) -> dict[str, bytes]:
    """Return the bytes of the named batches inside cifar-10-python.tar.gz, in one pass."""
    wanted = {f"{BATCH_DIR}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CifarFormatError(f"{archive}: cannot read the archive ({error})") from error
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise CifarFormatError(f"{archive}: archive lacks {', '.join(f'{BATCH_DIR}/{m}' for m in missing)}")
    return found


def write_batch(path: Path | str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one batch in the layout of the real files (for building test data)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"write_batch({path}): images must be uint8 (N,3,32,32), got {images.dtype} {images.shape}")
    batch = {
        b"batch_label": Path(path).name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images.reshape(len(images), _PIXELS),
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with Path(path).open("wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar10_batches(
    directory: Path | str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
) -> Path:
    """Write a fake CIFAR-10 as directory/cifar-10-batches-py/{data_batch_1..5,test_batch}; returns that folder.

    The training set is split over the five batches like the real one (sizes may differ by one).
    """
    folder = Path(directory) / BATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(
            f"write_cifar10_batches: image/label counts differ: train {len(train_x)}/{len(train_y)}, test {len(test_x)}/{len(test_y)}"
        )
    for name, chunk in zip(TRAIN_BATCHES, np.array_split(np.arange(len(train_x)), len(TRAIN_BATCHES))):
        write_batch(folder / name, np.asarray(train_x)[chunk], np.asarray(train_y)[chunk])
    write_batch(folder / TEST_BATCH, test_x, test_y)
    return folder
