"""A loaded data set held as uint8 images and int64 labels, and the function that loads one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checksum import verified_content
from .cifar import parse_batch, read_archive_members
from .custom import load_idx_directory
from .idx import parse_idx
from .locate import Location, locate
from .registry import DatasetInfo, FileSpec, get_info


Split = tuple[np.ndarray, np.ndarray]


@dataclass
class Dataset:
    """Train and test splits as uint8 images (N,C,H,W) and int64 labels, plus where they came from."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    source: Path

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            _check_split(f"{self.name} {split}", x, y, self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def load_dataset(
    name: str | DatasetInfo,
    root: Path | str | None = None,
    download: bool = True,
    limit: int | None = None,
) -> Dataset:
    """Find (or download), verify and load a data set; `limit` keeps the first `limit` train and test samples.

    Raises ValueError for an unknown name, DatasetNotFoundError, ChecksumError, or a
    format error naming the file that is malformed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if isinstance(name, str) and name.lower() == "idx":
        return _load_custom(root, limit)
    info = get_info(name)
    location = locate(info, root=root, download=download)
    if info.format == "idx":
        train_x, train_y = _read_idx_split(info, location, info.train_files)
        test_x, test_y = _read_idx_split(info, location, info.test_files)
    else:
        (train_x, train_y), (test_x, test_y) = _read_cifar(info, location)
    for split, x, expected in (("train", train_x, info.train_size), ("test", test_x, info.test_size)):
        if len(x) != expected:
            raise ValueError(f"{info.name} {split} split in {location.directory} has {len(x)} samples, expected {expected}")
    if limit is not None:
        train_x, train_y, test_x, test_y = (a[:limit].copy() for a in (train_x, train_y, test_x, test_y))
    return Dataset(
        name=info.name,
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        classes=info.classes,
        source=location.archive or location.directory,
    )


def _load_custom(root: Path | str | None, limit: int | None) -> Dataset:
    arrays = load_idx_directory(root)
    if limit is not None:
        arrays = {k: v[:limit].clone() for k, v in arrays.items()}
    classes = int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1
    return Dataset(name="idx", classes=classes, source=Path(root), **arrays)


def to_float(x: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert uint8 images to floats in [0, 1] on `device`, moving the compact uint8 tensor first."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects a torch.uint8 tensor, got {x.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"to_float needs a floating dtype, got {dtype}")
    return x.to(device=device).to(dtype).div_(255)


def _read_idx_split(info: DatasetInfo, location: Location, specs: tuple[FileSpec, ...]) -> Split:
    image_spec, label_spec = specs
    image_path, label_path = location.files[image_spec.name], location.files[label_spec.name]
    images = parse_idx(verified_content(image_path.read_bytes(), image_path, image_spec), image_path)
    labels = parse_idx(verified_content(label_path.read_bytes(), label_path, label_spec), label_path)
    if images.ndim != 3 or images.shape[1:] != info.shape[1:] or images.dtype != np.uint8:
        expected = f"(N, {info.shape[1]}, {info.shape[2]})"
        raise ValueError(f"{image_path}: expected uint8 images of shape {expected}, got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{label_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{label_path} has {len(labels)} labels but {image_path} has {len(images)} images")
    return images[:, None], labels.astype(np.int64)


def _read_cifar(info: DatasetInfo, location: Location) -> tuple[Split, Split]:
    if location.archive is not None:
        members = read_archive_members(location.archive, [spec.name for spec in info.files])
        sources = {spec.name: location.archive / info.archive_dir / spec.name for spec in info.files}
    else:
        members = {spec.name: location.files[spec.name].read_bytes() for spec in info.files}
        sources = location.files
    splits = []
    for specs in (info.train_files, info.test_files):
        parts = [parse_batch(verified_content(members[s.name], sources[s.name], s), sources[s.name]) for s in specs]
        splits.append((np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])))
    return splits[0], splits[1]


def _check_split(what: str, x: torch.Tensor, y: torch.Tensor, classes: int) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"{what}: images must be torch.uint8 of shape (N,C,H,W), got {x.dtype} {tuple(x.shape)}")
    if y.dtype != torch.int64 or y.ndim != 1:
        raise ValueError(f"{what}: labels must be torch.int64 of shape (N,), got {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{what}: labels span {int(y.min())}..{int(y.max())}, valid range is 0..{classes - 1}")
