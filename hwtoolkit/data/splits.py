"""Deterministic train/validation split of sample indices."""

from __future__ import annotations

import torch


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into sorted (train_idx, val_idx) LongTensors; the same seed gives the same split."""
    for label, value in (("n", n), ("val_size", val_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"split_train_val: {label} must be an int, got {value!r}")
    if not 0 <= val_size < n:
        raise ValueError(f"split_train_val: need 0 <= val_size < n, got val_size={val_size}, n={n}")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(n, generator=generator)
    return permutation[val_size:].sort().values, permutation[:val_size].sort().values
