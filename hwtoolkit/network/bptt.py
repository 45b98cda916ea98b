"""Backpropagation through time over the free phase: the gradient EP approximates (docs/ep.md#bptt-as-an-estimator)."""

from __future__ import annotations

from typing import Mapping

import torch

from .dynamics import Relaxation, finish, input_drive, step, zero_states
from .output import logits, loss
from .spec import NetworkSpec


def bptt_grads(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               steps: int) -> tuple[dict[str, torch.Tensor], Relaxation]:
    """Batch-mean gradient of the loss at the end of a ``steps``-step free phase from zero, through every step.

    Returns the gradient (not a descent direction) and the free phase it unrolled.
    """
    with torch.enable_grad():
        p = {name: t.detach().requires_grad_(True) for name, t in params.items()}
        drive = input_drive(spec, p, x)
        states = zero_states(spec, x.shape[0], drive)
        previous = states
        for _ in range(steps):
            previous, states = states, step(spec, p, drive, states)
        value = loss(spec, logits(spec, p, states[-1]), y).mean()
        grads = torch.autograd.grad(value, list(p.values()), allow_unused=True)
    grads = {name: (g if g is not None else torch.zeros_like(params[name])) for name, g in zip(p, grads)}
    detached = [s.detach() for s in states]
    return grads, finish(spec, params, detached, [s.detach() for s in previous], steps)
