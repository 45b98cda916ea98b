"""Evaluation at the free fixed point, and the convergence statistics every phase is judged by."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from hwtoolkit.config import EPConfig
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.output import loss
from targets import Target


@dataclass
class PhaseStats:
    """Running loss, accuracy and free-phase convergence over batches (never drops a batch)."""

    samples: int = 0
    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    residual_sum: float = 0.0
    residual_max: float = 0.0
    unconverged_samples: int = 0
    unconverged_batches: int = 0
    free_steps_sum: int = 0  # steps the free phases ran (fewer than configured when they stopped early)

    def add(self, target: Target, free: Relaxation, y: torch.Tensor, tol: float) -> None:
        y = y.to(free.logits.device)
        self.samples += y.shape[0]
        self.batches += 1
        self.loss_sum += loss(target.spec, free.logits.float(), y).sum().item()
        self.correct += (free.logits.argmax(1) == y).sum().item()
        self.residual_sum += free.residual.sum().item()
        self.residual_max = max(self.residual_max, free.residual.max().item())
        missed = int((~free.converged(tol)).sum().item())
        self.unconverged_samples += missed
        self.unconverged_batches += int(missed > 0)
        self.free_steps_sum += free.steps

    def summary(self, prefix: str) -> dict[str, float]:
        n = max(self.samples, 1)
        return {f"{prefix}_loss": self.loss_sum / n, f"{prefix}_accuracy": self.correct / n,
                f"{prefix}_residual_mean": self.residual_sum / n, f"{prefix}_residual_max": self.residual_max,
                f"{prefix}_unconverged_samples": self.unconverged_samples,
                f"{prefix}_unconverged_batches": self.unconverged_batches, f"{prefix}_batches": self.batches,
                f"{prefix}_free_steps_mean": self.free_steps_sum / max(self.batches, 1)}

    def state(self) -> dict[str, float]:
        return asdict(self)


def evaluate(target: Target, x_uint8: torch.Tensor, y: torch.Tensor, ep: EPConfig, batch_size: int,
             prefix: str) -> dict[str, float]:
    """Accuracy and loss of ``argmax(scores)`` at the free fixed point over a whole split."""
    stats = PhaseStats()
    for start in range(0, x_uint8.shape[0], batch_size):
        xb = x_uint8[start:start + batch_size].float().div_(255.0)
        yb = y[start:start + batch_size]
        stats.add(target, target.relax(xb, ep.free_steps, stop_tolerance=ep.stop_tolerance), yb, ep.tolerance)
    return stats.summary(prefix)
