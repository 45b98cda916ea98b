"""A user's own data set in the MNIST file layout: ``dataset = "idx"`` with ``data.root`` pointing at it.

The directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally
``.gz``); images are ``(N, H, W)`` or ``(N, C, H, W)`` uint8. There is no published
checksum for such data, so only the IDX headers and the counts are checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DatasetNotFoundError
from .idx import read_idx

FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFoundError(f"dataset = 'idx': no {stem}[.gz] in {root} (data.root); the directory needs "
                               f"{', '.join(FILES.values())}", searched=[root])


def load_idx_directory(root: Path | str | None):
    """Read the four IDX files of a custom data set; returns arrays keyed like ``FILES``."""
    if not root:
        raise ValueError("dataset = 'idx' needs data.root: the directory that holds the IDX files")
    root = Path(root)
    arrays = {key: read_idx(_find(root, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise ValueError(f"{root}: {split} images must be uint8 (N,H,W) or (N,C,H,W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{root}: {len(x)} {split} images but labels of shape {y.shape}")
        arrays[f"{split}_x"] = x[:, None] if x.ndim == 3 else x
        arrays[f"{split}_y"] = y.astype(np.int64)
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise ValueError(f"{root}: train images {arrays['train_x'].shape[1:]} and test images "
                         f"{arrays['test_x'].shape[1:]} differ in shape")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
