"""SGD with momentum, per-layer learning rates and weight decay, turning directions into weight increments.

The optimizer lives on the host and produces the increment a target writes;
it never touches device weights itself. Its arithmetic is torch.optim.SGD's
(no dampening, no Nesterov), so a direction equal to ``-grad`` reproduces it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from targets import Update

if TYPE_CHECKING:
    from .estimators import BatchResult


class SGD:
    """``buf = m * buf + (-direction + wd * w)``; increment ``= -lr * factor * buf``."""

    def __init__(self, lrs: Mapping[str, float], momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lrs = dict(lrs)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers: dict[str, torch.Tensor] = {}

    def step(self, direction: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None,
             lr_factor: float = 1.0) -> dict[str, torch.Tensor]:
        """The increment for every parameter in ``direction``; ``weights`` are needed only with weight decay."""
        if self.weight_decay and weights is None:
            raise ValueError("weight decay needs the current weights")
        delta: dict[str, torch.Tensor] = {}
        for name, d in direction.items():
            g = -d
            if self.weight_decay:
                g = g + self.weight_decay * weights[name].to(g.device, g.dtype)
            if self.momentum:
                buf = self.buffers.get(name)
                g = g.clone() if buf is None else buf.mul_(self.momentum).add_(g)
                self.buffers[name] = g
            delta[name] = -self.lrs[name] * lr_factor * g
        return delta

    def update(self, result: "BatchResult", weights: Mapping[str, torch.Tensor] | None,
               lr_factor: float = 1.0) -> Update:
        """The ``Update`` a target writes for one batch: the increment, plus the result's two phase terms times
        the learning rate where it carries them (the config allows that only without momentum and weight decay).
        """
        delta = self.step(result.direction, weights, lr_factor)
        if result.parts is None:
            return Update(delta)
        return Update(delta, tuple({n: self.lrs[n] * lr_factor * t for n, t in part.items()}
                                   for part in result.parts))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: b.detach().cpu().clone() for n, b in self.buffers.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], like: torch.Tensor | None = None) -> None:
        self.buffers = {n: (b.to(like.device, like.dtype) if like is not None else b).clone() for n, b in state.items()}


def _constant(epoch: int, epochs: int, final: float) -> float:
    return 1.0


def _cosine(epoch: int, epochs: int, final: float) -> float:
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


# the learning-rate schedules by name, in the order config.SCHEDULES lists them
SCHEDULES: dict[str, Callable[[int, int, float], float]] = {"cosine": _cosine, "constant": _constant}


def lr_factor(schedule: str, epoch: int, epochs: int, final: float = 0.0) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based): constant, or cosine from 1 down towards ``final``."""
    if epochs < 1:
        raise ValueError(f"epochs = {epochs}: a schedule needs at least one epoch")
    try:
        factor = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"optim.schedule = {schedule!r} is invalid; valid: {sorted(SCHEDULES)}") from None
    return factor(epoch, epochs, final)
