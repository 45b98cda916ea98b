"""The output side of an EP network: readout, loss, and the nudging force (docs/ep.md#outputs-and-nudging)."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .spec import NetworkSpec


def logits(spec: NetworkSpec, params: Mapping[str, torch.Tensor], s_last: torch.Tensor) -> torch.Tensor:
    """Class scores: the CE readout ``W_out s_L + b_out``, or ``s_L`` itself for an MSE output layer."""
    flat = s_last.flatten(1)
    if spec.output == "ce":
        return flat @ params["w_out"].t() + params["b_out"]
    return flat


def loss(spec: NetworkSpec, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss: cross-entropy of the readout, or ``1/2 ||s_L - onehot(y)||^2``."""
    if spec.output == "ce":
        return F.cross_entropy(scores, y, reduction="none")
    return 0.5 * (scores - F.one_hot(y, spec.classes).to(scores.dtype)).pow(2).sum(1)


def loss_grad_scores(spec: NetworkSpec, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/d(scores) per sample: ``softmax(o) - onehot(y)`` for CE, ``s_L - onehot(y)`` for MSE."""
    onehot = F.one_hot(y, spec.classes).to(scores.dtype)
    if spec.output == "ce":
        return torch.softmax(scores, dim=1) - onehot
    return scores - onehot


def nudge_force(spec: NetworkSpec, params: Mapping[str, torch.Tensor], s_last: torch.Tensor,
                scores: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``-beta dL/ds_L``, the term nudging adds inside rho for the last state layer."""
    g = loss_grad_scores(spec, scores, y)
    if spec.output == "ce":
        g = g @ params["w_out"]
    return (-beta * g).view_as(s_last)


def readout_loss_grads(spec: NetworkSpec, s_last: torch.Tensor, scores: torch.Tensor,
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch-mean dL/dW_out and dL/db_out (empty for an MSE output, whose loss has no parameters)."""
    if spec.output != "ce":
        return {}
    g = loss_grad_scores(spec, scores, y)
    return {"w_out": g.t() @ s_last.flatten(1) / g.shape[0], "b_out": g.mean(0)}
