"""Estimators: how one batch becomes a descent direction, driving the target through its interface.

EP estimators only relax and read states back (docs/ep.md#phases-and-estimators). The BPTT
baseline computes the exact gradient of the same dynamics on the host from the
weights the target reports, and writes its step through the same update path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hwtoolkit.config import ESTIMATORS as config_estimators, EPConfig
from hwtoolkit.network.bptt import bptt_grads
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.energy import ep_update, phase_grads
from hwtoolkit.network.spec import NetworkSpec
from targets import Target

Direction = dict[str, torch.Tensor]


@dataclass
class BatchResult:
    """A descent direction (the negative of a gradient estimate) and the free phase it came from."""

    direction: Direction
    free: Relaxation
    parts: tuple[Direction, Direction] | None = None  # direction = parts[0] - parts[1], one term per phase,
    # formed only for a target that writes an update as two pulse trains (capabilities.update_trains)


Estimator = Callable[[Target, torch.Tensor, torch.Tensor, torch.Generator], BatchResult]
"""``estimate(target, x, y, generator)``: one batch's direction."""


def _weights_for_update(target: Target, spec: NetworkSpec, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weights the local update needs: only max-pooling layers read them (for their pool indices)."""
    if not spec.has_max_pool:
        return {}
    return {n: t.to(like.device, like.dtype) for n, t in target.read_weights().items()}


def one_sided(ep: EPConfig) -> Estimator:
    """Free phase, one ``+beta`` phase: ``(dPhi(s+) - dPhi(s*)) / beta``."""
    def estimate(target: Target, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> BatchResult:
        return _signed(target, x, y, ep.beta, ep)
    return estimate


def random_sign(ep: EPConfig) -> Estimator:
    """One nudged phase whose beta has a random sign per batch."""
    def estimate(target: Target, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> BatchResult:
        sign = 1.0 if torch.rand((), generator=gen).item() < 0.5 else -1.0
        return _signed(target, x, y, sign * ep.beta, ep)
    return estimate


def _signed(target: Target, x: torch.Tensor, y: torch.Tensor, beta: float, ep: EPConfig) -> BatchResult:
    free = target.relax(x, ep.free_steps, stop_tolerance=ep.stop_tolerance)
    nudged = target.relax(x, ep.nudged_steps, beta, y, init=free, stop_tolerance=ep.stop_tolerance)
    return _update(target, x, y, free, (nudged, beta), (free, 0.0))


def symmetric(ep: EPConfig) -> Estimator:
    """Free phase, then ``+beta`` and ``-beta`` phases from it: ``(dPhi(s+) - dPhi(s-)) / (2 beta)``."""
    def estimate(target: Target, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> BatchResult:
        free = target.relax(x, ep.free_steps, stop_tolerance=ep.stop_tolerance)
        plus = target.relax(x, ep.nudged_steps, ep.beta, y, init=free, stop_tolerance=ep.stop_tolerance)
        minus = target.relax(x, ep.nudged_steps, -ep.beta, y, init=free, stop_tolerance=ep.stop_tolerance)
        return _update(target, x, y, free, (plus, ep.beta), (minus, -ep.beta))
    return estimate


def _update(target: Target, x: torch.Tensor, y: torch.Tensor, free: Relaxation, a: tuple[Relaxation, float],
            b: tuple[Relaxation, float]) -> BatchResult:
    """The EP update from two phases, computed where the target's states live (and its two terms for a target
    that writes them as two pulse trains)."""
    like = free.logits
    weights = _weights_for_update(target, target.spec, like)
    x, y = x.to(like.device, like.dtype), y.to(like.device)

    def stored(grads: Direction) -> Direction:  # in the states' dtype, whatever precision computed it
        return {n: g.to(like.dtype) for n, g in grads.items()}

    with target.compute_context():
        if not target.capabilities.update_trains:
            return BatchResult(stored(ep_update(target.spec, weights, x, y, a, b)), free)
        span = a[1] - b[1]
        parts = tuple(stored({n: g / span for n, g in phase_grads(target.spec, weights, x, y, *phase).items()})
                      for phase in (a, b))
    return BatchResult({n: parts[0][n] - parts[1][n] for n in parts[0]}, free, parts)


def bptt(ep: EPConfig) -> Estimator:
    """Backpropagation through the ``free_steps`` steps of the free phase, on the host."""
    def estimate(target: Target, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> BatchResult:
        caps = target.capabilities
        if caps.update_trains:
            raise ValueError(f"the bptt estimator has no phases to write as two pulse trains, which the "
                             f"{caps.name} target needs ({caps.notes})")
        dtype = getattr(torch, caps.dtype)
        weights = {n: t.to(caps.device, dtype) for n, t in target.read_weights().items()}
        grads, free = bptt_grads(target.spec, weights, x.to(caps.device, dtype), y.to(caps.device), ep.free_steps)
        return BatchResult({n: -g for n, g in grads.items()}, free)
    return estimate


_FACTORIES: dict[str, Callable[[EPConfig], Estimator]] = {
    "symmetric": symmetric, "one_sided": one_sided, "random_sign": random_sign, "bptt": bptt,
}
ESTIMATORS = {name: _FACTORIES[name] for name in config_estimators}  # one factory per name the config accepts


def make_estimator(name: str, ep: EPConfig) -> Estimator:
    """The estimator ``name``; for a target that writes two pulse trains its results carry both phase terms."""
    try:
        factory = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"estimator = {name!r} is invalid; valid: {sorted(ESTIMATORS)}") from None
    return factory(ep)
