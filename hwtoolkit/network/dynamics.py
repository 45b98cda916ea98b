"""Relaxation dynamics of an EP network, one analytic step at a time (docs/ep.md#dynamics).

One synchronous step computes, for every state layer,

    u_l = P(W_l s_{l-1}) + b_l + W_{l+1}^T P^T s_{l+1}   (B_{l+1} instead of W_{l+1}^T when untied)

adds the nudging force ``-beta dL/ds_L`` to the last layer, and sets
``s_l = rho(u_l)`` (prototypical) or ``clip((1-eps) s_l + eps rho(u_l))`` (leaky).
The input drive ``P(W_1 x) + b_1`` does not change during a phase and is passed
in precomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence, Union

import torch

from . import layers as L
from .activations import get_activation
from .output import logits, nudge_force
from .spec import NetworkSpec

States = list[torch.Tensor]


@dataclass
class Relaxation:
    """The end of one phase: states, class scores there, and how well the phase converged."""

    states: tuple[torch.Tensor, ...]
    logits: torch.Tensor
    steps: int
    residual: torch.Tensor  # per sample: max |s_T - s_{T-1}| over all units of all layers

    def converged(self, tol: float) -> torch.Tensor:
        """Per-sample flag: did the last step move every unit by at most ``tol``?"""
        return self.residual <= tol


def normalize_input(spec: NetworkSpec, x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], NCHW, to the network's input: per-channel ``(x - mean) / std`` if configured."""
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"input has shape {tuple(x.shape[1:])} per sample, network expects {tuple(spec.input_shape)}")
    if not spec.input_mean:
        return x
    mean = torch.tensor(spec.input_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.input_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def input_drive(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                reads: L.Reads = L.EXACT) -> torch.Tensor:
    """``P(W_1 x) + b_1``: the constant part of layer 1's pre-activation during a phase."""
    geo = spec.layers[0]
    term, _ = L.forward(geo, params["w1"], reads.input(normalize_input(spec, x)))
    return L.add_bias(geo, term, params["b1"])


def zero_states(spec: NetworkSpec, batch: int, like: torch.Tensor) -> States:
    return [like.new_zeros((batch, *shape)) for shape in spec.state_shapes]


def feedback_weight(spec: NetworkSpec, params: Mapping[str, torch.Tensor], index: int) -> torch.Tensor:
    """The weights that carry ``s_index`` back to layer ``index - 1``: ``W`` itself if tied, ``B`` if not."""
    return params[f"w{index}"] if spec.tied else params[f"fb{index}"]


def pre_activations(spec: NetworkSpec, params: Mapping[str, torch.Tensor], drive: torch.Tensor,
                    states: Sequence[torch.Tensor], reads: L.Reads = L.EXACT) -> States:
    """``u_l`` for every layer from the current states (without the nudging force)."""
    geos = spec.layers
    u: States = [drive]
    for geo in geos[1:]:
        term, ctx = reads.forward(geo, params[f"w{geo.index}"], states[geo.index - 2])
        u.append(L.add_bias(geo, term, params[f"b{geo.index}"]))
        u[geo.index - 2] = u[geo.index - 2] + reads.transpose(
            geo, feedback_weight(spec, params, geo.index), states[geo.index - 1], ctx)
    return u


def layer_pre_activation(spec: NetworkSpec, params: Mapping[str, torch.Tensor], drive: torch.Tensor,
                         states: Sequence[torch.Tensor], i: int, reads: L.Reads = L.EXACT) -> torch.Tensor:
    """``u`` of the state layer at 0-based position ``i`` alone (used by the alternating schedule)."""
    geos = spec.layers
    if i == 0:
        u = drive
    else:
        term, _ = reads.forward(geos[i], params[f"w{i + 1}"], states[i - 1])
        u = L.add_bias(geos[i], term, params[f"b{i + 1}"])
    if i + 1 < len(geos):
        above = geos[i + 1]
        ctx = L.pool_context(above, params[f"w{i + 2}"], states[i])
        u = u + reads.transpose(above, feedback_weight(spec, params, i + 2), states[i + 1], ctx)
    return u


def _settle(spec: NetworkSpec, params: Mapping[str, torch.Tensor], old: torch.Tensor, u: torch.Tensor,
            i: int, last: bool, nudged: bool, beta: float | torch.Tensor, y: torch.Tensor | None,
            s_last: torch.Tensor, reads: L.Reads) -> torch.Tensor:
    """The new state of layer ``i`` from its pre-activation (plus the nudge, for the last layer)."""
    rho = get_activation(spec.activation)
    if last and nudged:
        u = u + reads.nudge(spec, params, s_last, logits(spec, params, s_last), y, beta)
    if spec.dynamics == "prototypical":
        return reads.store(i, rho(u))
    return reads.store(i, ((1 - spec.eps) * old + spec.eps * rho(u)).clamp(rho.low, rho.high))


def step(spec: NetworkSpec, params: Mapping[str, torch.Tensor], drive: torch.Tensor,
         states: Sequence[torch.Tensor], beta: float | torch.Tensor = 0.0, y: torch.Tensor | None = None,
         reads: L.Reads = L.EXACT, nudged: bool | None = None) -> States:
    """One step of the (nudged, if ``beta != 0``) dynamics, synchronous or alternating per ``spec.update``.

    Alternating (asynchronous) updates layers 1, 3, 5, ... first and then layers 2, 4, ... from the
    fresh odd states; it has the same fixed points and usually needs fewer steps to reach them.
    A compiled or captured step passes ``beta`` as a tensor and says with ``nudged`` whether it nudges.
    """
    nudged = beta != 0.0 if nudged is None else nudged
    last = len(states) - 1
    if spec.update == "alternating":
        new = list(states)
        for parity in (0, 1):
            for i in range(parity, len(states), 2):
                new[i] = _settle(spec, params, states[i], layer_pre_activation(spec, params, drive, new, i, reads),
                                 i, i == last, nudged, beta, y, new[last], reads)
        return new
    u = pre_activations(spec, params, drive, states, reads)
    return [_settle(spec, params, s, ul, i, i == last, nudged, beta, y, states[last], reads)
            for i, (s, ul) in enumerate(zip(states, u))]


def check_phase(steps: int, beta: float, y: torch.Tensor | None, stop_tolerance: float = 0.0) -> None:
    """The checks every way of running a phase makes, with errors that name the bad argument."""
    if steps < 1:
        raise ValueError(f"steps = {steps} is invalid: a phase needs at least one step")
    if beta != 0.0 and y is None:
        raise ValueError("a nudged phase (beta != 0) needs targets y")
    if stop_tolerance < 0:
        raise ValueError(f"stop_tolerance = {stop_tolerance} is invalid: expected >= 0 (0 runs every step)")


Drive = Union[torch.Tensor, Callable[[], torch.Tensor]]
"""The input drive of a phase: one tensor, or a function that reads it afresh at every step (noisy devices)."""


def iterate(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, steps: int,
            beta: float = 0.0, y: torch.Tensor | None = None, init: Sequence[torch.Tensor] | None = None,
            drive: Drive | None = None, reads: L.Reads = L.EXACT) -> Iterator[States]:
    """Yield the states after each of ``steps`` steps (for diagnostics that need the trajectory)."""
    check_phase(steps, beta, y)
    drive = input_drive(spec, params, x, reads) if drive is None else drive
    read_drive = drive if callable(drive) else (lambda: drive)
    states = list(init) if init is not None else zero_states(spec, x.shape[0], x)
    for _ in range(steps):
        states = step(spec, params, read_drive(), states, beta, y, reads)
        yield states


def relax(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, steps: int,
          beta: float = 0.0, y: torch.Tensor | None = None, init: Sequence[torch.Tensor] | None = None,
          drive: Drive | None = None, stop_tolerance: float = 0.0, reads: L.Reads = L.EXACT) -> Relaxation:
    """Run one phase of at most ``steps`` steps from ``init`` (zeros if ``None``) and report its end.

    With ``stop_tolerance > 0`` the phase ends early once a step moves no unit of any sample by more than it
    (checked after every step; ``Relaxation.steps`` says how many ran).
    """
    check_phase(steps, beta, y, stop_tolerance)
    drive = input_drive(spec, params, x, reads) if drive is None else drive
    states = list(init) if init is not None else zero_states(spec, x.shape[0], x)
    previous, done = states, 0
    for new in iterate(spec, params, x, steps, beta, y, states, drive, reads):
        previous, states, done = states, new, done + 1
        if stop_tolerance and max((s - p).abs().max().item() for s, p in zip(states, previous)) <= stop_tolerance:
            break
    return finish(spec, params, states, previous, done)


def finish(spec: NetworkSpec, params: Mapping[str, torch.Tensor], states: Sequence[torch.Tensor],
           previous: Sequence[torch.Tensor], steps: int) -> Relaxation:
    """Package the last two states of a phase as a ``Relaxation``."""
    residual = torch.stack([(s - p).abs().flatten(1).amax(1) for s, p in zip(states, previous)]).amax(0)
    return Relaxation(tuple(states), logits(spec, params, states[-1]), steps, residual)
