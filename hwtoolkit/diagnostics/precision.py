"""How much a reduced compute precision changes the EP update, against an exact float64 one.

The symmetric EP update (free phase, then ``+beta`` and ``-beta`` phases from its states) is
computed twice from the same parameters and inputs: once in float64 (the reference) and once
with float32 storage under ``compute_precision``. A precision is fit for training where every
parameter's update keeps a cosine of at least 0.999 with the reference. The measurement matters
because relaxation is not a smooth map of its inputs: hard-sigmoid units that sit at a clip
boundary, and max-pool windows with near ties, can land on the other side in one precision, and
the update is a difference of two nudged relaxations divided by ``2 beta``, small where the nudge
has barely reached a layer. ``clip_flips`` and ``pool_flips`` count such branch changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from ..network.activations import get_activation
from ..network import layers as L
from ..network.dynamics import normalize_input, relax
from ..network.energy import Grads, ep_update
from ..network.precision import check_precision, compute_precision
from ..network.spec import NetworkSpec

DEFAULT_THRESHOLD = 0.999


@dataclass(frozen=True)
class Agreement:
    """One parameter's update in a precision against its float64 reference."""

    cosine: float  # 1.0 where both are zero, 0.0 where only one is
    relative_error: float  # ||u - u_ref|| / ||u_ref|| (||u|| > 0 counts as 1.0 where u_ref = 0)

    def as_dict(self) -> dict[str, float]:
        return {"cosine": self.cosine, "relative_error": self.relative_error}


@dataclass(frozen=True)
class UpdateFidelity:
    """The EP update in one compute precision against the float64 one, per parameter and in the worst case."""

    precision: str
    device: str
    parameters: dict[str, Agreement]
    max_state_difference: float  # max |s - s_ref| over every unit of the free phase's end
    clip_flips: float  # fraction of free-phase units at a bound of rho (clipped) in one precision, not the other
    pool_flips: float  # fraction of max-pool windows whose argmax differs at the free phase's end (0 if none)

    @property
    def worst_parameter(self) -> str:
        return min(self.parameters, key=lambda n: self.parameters[n].cosine)

    @property
    def worst_cosine(self) -> float:
        return self.parameters[self.worst_parameter].cosine

    def passes(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        """Does every parameter's update keep a cosine of at least ``threshold`` with the reference?"""
        return self.worst_cosine >= threshold

    def as_dict(self) -> dict:
        return {"precision": self.precision, "device": self.device, "worst_cosine": self.worst_cosine,
                "worst_parameter": self.worst_parameter, "max_state_difference": self.max_state_difference,
                "clip_flips": self.clip_flips, "pool_flips": self.pool_flips,
                "parameters": {n: a.as_dict() for n, a in self.parameters.items()}}


@dataclass(frozen=True)
class EPRun:
    """The free phase's end states, its max-pool argmaxes, and the symmetric EP update computed from them."""

    free_states: tuple[torch.Tensor, ...]
    pool_indices: tuple[torch.Tensor, ...]
    update: Grads


@dataclass(frozen=True)
class PrecisionJudgement:
    """Several precisions measured against one float64 reference, and which of them pass the threshold."""

    threshold: float
    results: dict[str, UpdateFidelity] = field(default_factory=dict)

    @property
    def accepted(self) -> tuple[str, ...]:
        return accepted_precisions(self.results.values(), self.threshold)

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "accepted": list(self.accepted),
                "results": {n: r.as_dict() for n, r in self.results.items()}}


def symmetric_ep(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 free_steps: int, nudged_steps: int, beta: float) -> EPRun:
    """Free phase, ``+beta`` and ``-beta`` phases from its states, and their EP update, in the current precision."""
    if beta <= 0:
        raise ValueError(f"beta = {beta} is invalid: the symmetric EP update needs beta > 0")
    free = relax(spec, params, x, free_steps)
    pools = max_pool_indices(spec, params, x, free.states)
    plus = relax(spec, params, x, nudged_steps, beta, y, init=free.states)
    minus = relax(spec, params, x, nudged_steps, -beta, y, init=free.states)
    return EPRun(free.states, pools, ep_update(spec, params, x, y, (plus, beta), (minus, -beta)))


def max_pool_indices(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                     states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The argmax of every max-pool window at ``states``, for the max-pooling layers in order.

    Where two conv outputs of a window (nearly) tie, rounding picks the winner, and the feedback
    ``W^T P^T s`` then goes to another unit: a jump, not a small error.
    """
    below, indices = normalize_input(spec, x), []
    for geo, s in zip(spec.layers, states):
        ctx = L.pool_context(geo, params[f"w{geo.index}"], below)
        if ctx is not None:
            indices.append(ctx)
        below = s
    return tuple(indices)


def _pool_flips(indices: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    total = sum(i.numel() for i in ref)
    return sum(int((i.cpu() != r.cpu()).sum()) for i, r in zip(indices, ref)) / total if total else 0.0


def _cast(params: Mapping[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    return {n: t.detach().to(device=device, dtype=dtype) for n, t in params.items()}


def reference_run(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  free_steps: int, nudged_steps: int, beta: float, device: torch.device | str) -> EPRun:
    """The float64 run every precision is measured against (parameters and inputs cast to float64)."""
    device = torch.device(device)
    with compute_precision("float32", device):  # no autocast; TF32 never applies to float64
        return symmetric_ep(spec, _cast(params, torch.float64, device), x.to(device, torch.float64),
                            y.to(device), free_steps, nudged_steps, beta)


def agreement(u: torch.Tensor, ref: torch.Tensor) -> Agreement:
    """Cosine and relative L2 error of ``u`` against ``ref``, both flattened, in float64."""
    a, b = u.detach().flatten().double().cpu(), ref.detach().flatten().double().cpu()
    na, nb = a.norm().item(), b.norm().item()
    if nb == 0.0:
        return Agreement(1.0 if na == 0.0 else 0.0, 0.0 if na == 0.0 else 1.0)
    cosine = (a @ b).item() / (na * nb) if na > 0.0 else 0.0
    return Agreement(max(-1.0, min(1.0, cosine)), (a - b).norm().item() / nb)


def _clip_flips(spec: NetworkSpec, states: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    rho = get_activation(spec.activation)
    flips = total = 0
    for s, r in zip(states, ref):  # both at float32 storage, so float32's own saturation is no flip
        s, r = s.detach().float().cpu(), r.detach().float().cpu()
        at_bound_s = (s <= rho.low) | (s >= rho.high)
        at_bound_r = (r <= rho.low) | (r >= rho.high)
        flips += int((at_bound_s != at_bound_r).sum())
        total += s.numel()
    return flips / total


def update_fidelity(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    free_steps: int, nudged_steps: int, beta: float, precision: str,
                    device: torch.device | str = "cpu", reference: EPRun | None = None) -> UpdateFidelity:
    """The symmetric EP update in ``precision`` (float32 storage) on ``device`` against the float64 one.

    ``reference`` (from ``reference_run`` with the same arguments) saves recomputing the float64 run
    when several precisions are measured.
    """
    check_precision(precision, device)
    device = torch.device(device)
    if reference is None:
        reference = reference_run(spec, params, x, y, free_steps, nudged_steps, beta, device)
    with compute_precision(precision, device):
        run = symmetric_ep(spec, _cast(params, torch.float32, device), x.to(device, torch.float32), y.to(device),
                           free_steps, nudged_steps, beta)
    parameters = {n: agreement(run.update[n], reference.update[n]) for n in reference.update}
    state_diff = max((s.double() - r).abs().max().item() for s, r in zip(run.free_states, reference.free_states))
    return UpdateFidelity(precision, str(device), parameters, state_diff,
                          _clip_flips(spec, run.free_states, reference.free_states),
                          _pool_flips(run.pool_indices, reference.pool_indices))


def judge_precisions(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     free_steps: int, nudged_steps: int, beta: float, precisions: Iterable[str],
                     device: torch.device | str = "cpu", threshold: float = DEFAULT_THRESHOLD) -> PrecisionJudgement:
    """Measure every precision against one float64 reference and say which keep every cosine >= ``threshold``."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold = {threshold} is invalid: a cosine threshold lies in [-1, 1]")
    names = list(precisions)
    for name in names:
        check_precision(name, device)
    reference = reference_run(spec, params, x, y, free_steps, nudged_steps, beta, device)
    return PrecisionJudgement(threshold, {name: update_fidelity(spec, params, x, y, free_steps, nudged_steps, beta,
                                                                name, device, reference) for name in names})


def accepted_precisions(results: Iterable[UpdateFidelity], threshold: float = DEFAULT_THRESHOLD) -> tuple[str, ...]:
    """The precisions whose every per-parameter cosine is at least ``threshold``, in the order given."""
    return tuple(r.precision for r in results if r.passes(threshold))
