"""Phi, its parameter derivatives, and the EP update (docs/ep.md#the-network-and-its-primitive-function, #the-update).

``Phi(x, s) = sum_l s_l . (P(W_l s_{l-1}) + b_l)``; nudging adds ``-beta L``.
The EP update of every parameter is a difference of ``dPhi^beta/dtheta`` between
two phases divided by the difference of their betas, which covers the
one-sided, symmetric and random-sign estimators with one formula.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from . import layers as L
from .dynamics import Relaxation, normalize_input
from .output import loss, logits, readout_loss_grads
from .spec import NetworkSpec

Grads = dict[str, torch.Tensor]


def phi(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
        states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Phi summed over the batch (tied networks only: an untied network has no primitive function)."""
    if not spec.tied:
        raise ValueError("Phi is defined for tied networks only (network.tied = false has none)")
    below = normalize_input(spec, x)
    total = below.new_zeros(())
    for geo, s in zip(spec.layers, states):
        term, _ = L.forward(geo, params[f"w{geo.index}"], below)
        total = total + (s * L.add_bias(geo, term, params[f"b{geo.index}"])).sum()
        below = s
    return total


def phi_beta(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
             states: Sequence[torch.Tensor], beta: float, y: torch.Tensor | None) -> torch.Tensor:
    """``Phi - beta L`` summed over the batch: the function whose state gradient drives a nudged phase."""
    value = phi(spec, params, x, states)
    if beta != 0.0:
        value = value - beta * loss(spec, logits(spec, params, states[-1]), y).sum()
    return value


def phi_grads(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
              states: Sequence[torch.Tensor]) -> Grads:
    """Batch-mean dPhi/dtheta at ``states``; untied feedback weights get the same local term as W.

    ``params`` are read only by max-pooling layers (for their pool indices).
    """
    grads: Grads = {}
    below = normalize_input(spec, x)
    for geo, s in zip(spec.layers, states):
        ctx = L.pool_context(geo, params.get(f"w{geo.index}"), below)
        grads[f"w{geo.index}"] = L.weight_grad(geo, below, s, ctx)
        grads[f"b{geo.index}"] = L.bias_grad(geo, s)
        if not spec.tied and geo.index >= 2:
            grads[f"fb{geo.index}"] = grads[f"w{geo.index}"]
        below = s
    return grads


def phase_grads(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None,
                phase: Relaxation, beta: float) -> Grads:
    """Batch-mean dPhi^beta/dtheta at the end of a phase: ``dPhi/dtheta - beta dL/dtheta``."""
    grads = phi_grads(spec, params, x, phase.states)
    if beta != 0.0:
        for name, g in readout_loss_grads(spec, phase.states[-1], phase.logits, y).items():
            grads[name] = -beta * g
    elif spec.output == "ce":
        like = phase.logits
        grads["w_out"] = like.new_zeros(spec.readout_shape)
        grads["b_out"] = like.new_zeros((spec.classes,))
    return grads


def ep_update(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              a: tuple[Relaxation, float], b: tuple[Relaxation, float]) -> Grads:
    """The EP descent direction from two phases ``(relaxation, beta)``: ``(G_a - G_b) / (beta_a - beta_b)``.

    One-sided: ``a = (s+, beta), b = (s*, 0)``; symmetric: ``a = (s+, beta), b = (s-, -beta)``.
    Dense layers form the difference inside one matmul (``[s_a, -s_b]^T [p_a; p_b]``, or
    ``(s_a - s_b)^T x`` for layer 1), which halves the work of the update.
    """
    (phase_a, beta_a), (phase_b, beta_b) = a, b
    if beta_a == beta_b:
        raise ValueError(f"the two phases of an EP update need different betas, got {beta_a} twice")
    batch = x.shape[0]
    scale = 1.0 / (batch * (beta_a - beta_b))
    grads: Grads = {}
    below_a = below_b = normalize_input(spec, x)
    for geo, s_a, s_b in zip(spec.layers, phase_a.states, phase_b.states):
        w, bias = f"w{geo.index}", f"b{geo.index}"
        if geo.kind == "dense":
            if below_a is below_b:
                grads[w] = (s_a - s_b).t() @ below_a.flatten(1)
            else:
                grads[w] = torch.cat([s_a, -s_b]).t() @ torch.cat([below_a.flatten(1), below_b.flatten(1)])
            grads[w].mul_(scale)
        else:
            ctx_a = L.pool_context(geo, params.get(w), below_a)
            ctx_b = L.pool_context(geo, params.get(w), below_b)
            grads[w] = (L.weight_grad(geo, below_a, s_a, ctx_a) - L.weight_grad(geo, below_b, s_b, ctx_b)) * (
                scale * batch)
        grads[bias] = (L.bias_grad(geo, s_a) - L.bias_grad(geo, s_b)) / (beta_a - beta_b)
        if not spec.tied and geo.index >= 2:
            grads[f"fb{geo.index}"] = grads[w]
        below_a, below_b = s_a, s_b
    if spec.output == "ce":
        ra = readout_loss_grads(spec, phase_a.states[-1], phase_a.logits, y)
        rb = readout_loss_grads(spec, phase_b.states[-1], phase_b.logits, y)
        for name in ("w_out", "b_out"):
            grads[name] = (-beta_a * ra[name] + beta_b * rb[name]) / (beta_a - beta_b)
    return grads
