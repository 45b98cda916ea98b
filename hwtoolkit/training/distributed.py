"""Data-parallel EP across processes and machines with torch.distributed.

Every worker holds a full copy of the network on its own target, relaxes its
contiguous shard of each global batch, and the EP directions are averaged
(weighted by shard size, so uneven shards give the global batch mean). All
workers then apply the same optimizer step and stay identical; only the
leader (rank 0) evaluates and writes the run directory. Launch with
``torchrun --nproc_per_node N -m hwtoolkit train ...``: gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .evaluate import PhaseStats

if TYPE_CHECKING:
    from .estimators import BatchResult


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel workers (a single worker by default)."""

    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This worker's contiguous part of a global batch of ``n`` samples (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def average(self, direction: dict[str, torch.Tensor], count: int, total: int) -> dict[str, torch.Tensor]:
        """The global-batch mean of per-shard means: ``sum_r count_r d_r / total``, in one all-reduce."""
        if self.size == 1:
            return direction
        names = list(direction)
        flat = torch.cat([direction[n].flatten() for n in names]) * count
        dist.all_reduce(flat)
        flat /= total
        out, offset = {}, 0
        for n in names:
            size = direction[n].numel()
            out[n] = flat[offset:offset + size].view_as(direction[n])
            offset += size
        return out

    def average_result(self, result: "BatchResult", count: int, total: int) -> "BatchResult":
        """``result`` with its direction (and its two phase terms, if any) averaged over the global batch."""
        parts = None if result.parts is None else tuple(self.average(p, count, total) for p in result.parts)
        return dataclasses.replace(result, direction=self.average(result.direction, count, total), parts=parts)

    def total_stats(self, stats: PhaseStats) -> PhaseStats:
        """The counters of every worker added up (the residual maximum taken over workers)."""
        if self.size == 1:
            return stats
        names = [f.name for f in fields(PhaseStats) if f.name != "residual_max"]
        sums = torch.tensor([float(getattr(stats, n)) for n in names], dtype=torch.float64)
        peak = torch.tensor([stats.residual_max], dtype=torch.float64)
        dist.all_reduce(sums)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        values = {n: (int(v) if isinstance(getattr(stats, n), int) else float(v)) for n, v in zip(names, sums.tolist())}
        return PhaseStats(**values, residual_max=float(peak.item()))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device_type: str = "cpu") -> Workers:
    """Join the process group that ``torchrun`` describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Workers()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size())


def local_device(device: str) -> str:
    """``cuda`` means this worker's own GPU (``LOCAL_RANK``) when several workers share a machine."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device
