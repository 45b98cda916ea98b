"""The autograd-of-Phi formulation of the dynamics, as the public EP research code computes it.

Each step evaluates ``Phi^beta`` (input layer included) and takes ``dPhi^beta/ds``
with ``torch.autograd.grad``. It is correct but slow; the toolkit keeps it as the
reference that the analytic step of ``dynamics`` is tested and benchmarked against.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .activations import get_activation
from .dynamics import Relaxation, finish, zero_states
from .energy import phi_beta
from .spec import NetworkSpec


def step_autograd(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                  states: Sequence[torch.Tensor], beta: float = 0.0, y: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One step ``s <- rho(dPhi^beta/ds)`` (or its leaky form) with the state gradient from autograd."""
    rho = get_activation(spec.activation)
    with torch.enable_grad():
        s = [t.detach().requires_grad_(True) for t in states]
        grads = torch.autograd.grad(phi_beta(spec, params, x, s, beta, y), s)
    if spec.dynamics == "prototypical":
        return [rho(g) for g in grads]
    return [((1 - spec.eps) * t.detach() + spec.eps * rho(g)).clamp(rho.low, rho.high) for t, g in zip(s, grads)]


def relax_autograd(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, steps: int,
                   beta: float = 0.0, y: torch.Tensor | None = None,
                   init: Sequence[torch.Tensor] | None = None) -> Relaxation:
    """One phase with the autograd step, returned like ``dynamics.relax``."""
    states = list(init) if init is not None else zero_states(spec, x.shape[0], x)
    previous = states
    for _ in range(steps):
        previous, states = states, step_autograd(spec, params, x, states, beta, y)
    return finish(spec, params, states, previous, steps)


def ep_update_autograd(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       a: tuple[Relaxation, float], b: tuple[Relaxation, float]) -> dict[str, torch.Tensor]:
    """The EP descent direction as the research code forms it: autograd of the difference of ``Phi^beta``."""
    (phase_a, beta_a), (phase_b, beta_b) = a, b
    with torch.enable_grad():
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        delta = (phi_beta(spec, leaves, x, list(phase_a.states), beta_a, y)
                 - phi_beta(spec, leaves, x, list(phase_b.states), beta_b, y)) / ((beta_a - beta_b) * x.shape[0])
        grads = torch.autograd.grad(delta, list(leaves.values()))
    return dict(zip(leaves, grads))
