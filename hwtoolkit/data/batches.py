"""Per-epoch shuffled mini-batches that any epoch can recompute on its own.

The permutation of epoch e comes from a generator seeded with derive_seed(seed, e),
so a run resumed mid-epoch rebuilds the same batches without replaying earlier epochs.
"""

from __future__ import annotations

import hashlib
import struct

import torch

_INT64 = (-(1 << 63), (1 << 63) - 1)


def derive_seed(*parts: int) -> int:
    """Mix int64 values (e.g. seed, epoch) into a 63-bit seed; stable across platforms and versions."""
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int) or not _INT64[0] <= part <= _INT64[1]:
            raise ValueError(f"derive_seed: every part must be an int64, got {part!r}")
    digest = hashlib.sha256(struct.pack(f"<{len(parts)}q", *parts)).digest()
    return int.from_bytes(digest[:8], "little") & _INT64[1]


class BatchSampler:
    """Splits `indices` into batches of `batch_size`, reshuffled per epoch from (seed, epoch)."""

    def __init__(
        self,
        indices: torch.Tensor,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(indices, torch.Tensor) or indices.ndim != 1 or indices.dtype != torch.int64:
            described = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise TypeError(f"BatchSampler: indices must be a 1-D torch.int64 tensor, got {described}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"BatchSampler: batch_size must be a positive int, got {batch_size!r}")
        derive_seed(seed)
        self.indices = indices.detach().cpu()
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The batches of one epoch, in order; a pure function of (indices, seed, epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"BatchSampler.epoch_batches: epoch must be an int >= 0, got {epoch!r}")
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = order[torch.randperm(len(order), generator=generator)]
        return [batch.clone() for batch in order.split(self.batch_size)][: len(self)]
