"""The GDU property: per-step EP updates vs BPTT gradients (Ernoult et al. 2019, docs/ep.md#bptt-and-the-gdu-property).

From a converged free fixed point ``s*`` the last ``K`` free steps are unrolled
and ``L(s_K)`` is backpropagated through them, with a separate copy of the
parameters per step, giving ``g_s(t)`` and ``g_theta(t)`` for ``t`` steps before
the end. The nudged phase from ``s*`` gives the per-step EP updates
``dEP(t) = (X^beta_{t+1} - X^beta_t) / beta`` (``X`` a state, or ``dPhi/dtheta``);
the symmetric form uses ``(dX^beta(t) - dX^-beta(t)) / 2``. The property is
``dEP(t) -> -g(t)`` as ``beta -> 0``.

State gradients are compared through the activation: ``g_s`` is multiplied by
``rho'(u*)`` at the free fixed point. A saturated unit cannot move (its EP update
is exactly 0), while BPTT still assigns it a gradient that the dynamics never
propagate; the parameter gradients are unaffected by this convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..network.activations import get_activation
from ..network.dynamics import Relaxation, input_drive, iterate, pre_activations, relax, step
from ..network.energy import phi_grads
from ..network.output import logits, loss
from ..network.spec import NetworkSpec

ESTIMATORS = ("one_sided", "symmetric")


@dataclass
class Fidelity:
    """How well a sequence of EP updates matches ``-g`` for one state layer or parameter."""

    relative_error: float  # ||dEP + g|| / ||g|| over all steps and units: the normalised RMSE
    sign_disagreement: float  # fraction of entries (|g| not negligible) with sign(dEP) != sign(-g)
    cosine: float  # cosine between dEP and -g, all steps and units flattened

    def as_dict(self) -> dict[str, float]:
        return {"relative_error": self.relative_error, "sign_disagreement": self.sign_disagreement,
                "cosine": self.cosine}


@dataclass
class GDUResult:
    """Per-step EP updates and BPTT gradients, keyed ``s1..sL`` and by parameter name, shaped ``(K, ...)``."""

    beta: float
    estimator: str
    steps: int
    free_residual: float
    ep: dict[str, torch.Tensor]
    neg_bptt: dict[str, torch.Tensor]
    fidelity: dict[str, Fidelity] = field(default_factory=dict)
    asymmetry: dict[str, float] = field(default_factory=dict)

    def worst_relative_error(self) -> float:
        return max(f.relative_error for f in self.fidelity.values())

    def as_dict(self) -> dict:
        return {"beta": self.beta, "estimator": self.estimator, "steps": self.steps,
                "free_residual": self.free_residual,
                "fidelity": {k: f.as_dict() for k, f in self.fidelity.items()},
                "asymmetry": self.asymmetry}


def fidelity(ep: torch.Tensor, neg_g: torch.Tensor) -> Fidelity:
    """Normalised RMSE, sign disagreement and cosine between two sequences of updates."""
    e, g = ep.flatten().double(), neg_g.flatten().double()
    norm = g.norm()
    rel = ((e - g).norm() / norm).item() if norm > 0 else float((e - g).norm() > 0)
    mask = g.abs() > 1e-6 * g.abs().max() if norm > 0 else torch.zeros_like(g, dtype=torch.bool)
    disagree = (torch.sign(e[mask]) != torch.sign(g[mask])).double().mean().item() if mask.any() else 0.0
    cos = torch.nn.functional.cosine_similarity(e, g, dim=0).item() if norm > 0 and e.norm() > 0 else 0.0
    return Fidelity(rel, disagree, cos)


def asymmetry(spec: NetworkSpec, params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``||W_l - B_l|| / ||W_l||`` per untied layer (``B_l`` is stored in ``W_l``'s layout, so ``B = W^T`` is 0)."""
    if spec.tied:
        return {}
    return {f"w{g.index}": ((params[f"w{g.index}"] - params[f"fb{g.index}"]).norm()
                            / params[f"w{g.index}"].norm()).item() for g in spec.layers[1:]}


def bptt_per_step(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  free: Relaxation, steps: int) -> dict[str, torch.Tensor]:
    """``-g(t)`` for t = 0..K-1 steps before the end of ``K`` free steps unrolled from ``free.states``."""
    names = [n for n in spec.parameter_shapes() if n not in ("w_out", "b_out")]
    with torch.enable_grad():
        copies = [{n: params[n].detach().clone().requires_grad_(n in names) for n in params} for _ in range(steps)]
        states = [s.detach().clone().requires_grad_(True) for s in free.states]
        trajectory = [states]
        for k in range(steps):
            states = step(spec, copies[k], input_drive(spec, copies[k], x), states)
            for s in states:
                s.retain_grad()
            trajectory.append(states)
        loss(spec, logits(spec, copies[-1], states[-1]), y).mean().backward()
    neg: dict[str, torch.Tensor] = {}
    batch = x.shape[0]  # states are per sample: their gradient is of the summed, not the mean, loss
    for i in range(spec.num_state_layers):
        # t steps before the end is trajectory[K - t]; t = 0..K-1
        neg[f"s{i + 1}"] = torch.stack([-batch * _grad(trajectory[steps - t][i]) for t in range(steps)])
    for n in names:
        neg[n] = torch.stack([-_grad(copies[steps - 1 - t][n]) for t in range(steps)])
    return neg


def _grad(t: torch.Tensor) -> torch.Tensor:
    """A leaf's gradient, zero where the loss did not depend on it."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def ep_per_step(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                free: Relaxation, beta: float, steps: int) -> dict[str, torch.Tensor]:
    """``(X^beta_{t+1} - X^beta_t) / beta`` for t = 0..K-1 along a nudged phase from the free fixed point."""
    drive = input_drive(spec, params, x)
    trajectory = [list(free.states)] + list(iterate(spec, params, x, steps, beta, y, free.states, drive))
    grads = [phi_grads(spec, params, x, s) for s in trajectory]
    out: dict[str, torch.Tensor] = {}
    for i in range(spec.num_state_layers):
        out[f"s{i + 1}"] = torch.stack([(trajectory[t + 1][i] - trajectory[t][i]) / beta for t in range(steps)])
    for n in grads[0]:
        out[n] = torch.stack([(grads[t + 1][n] - grads[t][n]) / beta for t in range(steps)])
    return out


def activation_slope(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                     states: list[torch.Tensor]) -> list[torch.Tensor]:
    """``rho'(u)`` at the given states, by autograd of the activation alone."""
    rho = get_activation(spec.activation)
    u = pre_activations(spec, params, input_drive(spec, params, x), states)
    slopes = []
    with torch.enable_grad():
        for ul in u:
            v = ul.detach().requires_grad_(True)
            slopes.append(torch.autograd.grad(rho(v).sum(), v)[0])
    return slopes


def gdu(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
        beta: float, steps: int, free_steps: int, estimator: str = "one_sided") -> GDUResult:
    """Compare EP's per-step updates with BPTT's per-step gradients over the last ``steps`` steps."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator = {estimator!r} is invalid for the GDU check; valid: {ESTIMATORS}")
    if beta <= 0:
        raise ValueError(f"beta = {beta} is invalid: the GDU check needs beta > 0")
    if steps < 1 or free_steps < 1:
        raise ValueError(f"steps = {steps}, free_steps = {free_steps}: both must be >= 1")
    free = relax(spec, params, x, free_steps)
    neg_g = bptt_per_step(spec, params, x, y, free, steps)
    ep = ep_per_step(spec, params, x, y, free, beta, steps)
    if estimator == "symmetric":
        minus = ep_per_step(spec, params, x, y, free, -beta, steps)
        ep = {n: (ep[n] + minus[n]) / 2 for n in ep}
    for i, slope in enumerate(activation_slope(spec, params, x, list(free.states))):
        neg_g[f"s{i + 1}"] = neg_g[f"s{i + 1}"] * slope
    ep = {n: ep[n] for n in neg_g}
    result = GDUResult(beta, estimator, steps, free.residual.max().item(), ep, neg_g)
    result.fidelity = {n: fidelity(ep[n], neg_g[n]) for n in neg_g}
    result.asymmetry = asymmetry(spec, params)
    return result
