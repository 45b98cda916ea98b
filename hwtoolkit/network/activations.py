"""Activation functions rho of EP networks, by name (docs/ep.md#activations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Activation:
    """A bounded activation: its function and the range its states live in."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    low: float = 0.0
    high: float = 1.0
    description: str = ""

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.fn(u)


def _hard_sigmoid(u: torch.Tensor) -> torch.Tensor:
    return u.clamp(0.0, 1.0)


def _hard_sigmoid_half(u: torch.Tensor) -> torch.Tensor:
    return (0.5 * u).clamp(0.0, 1.0)


def _sigmoid_2019(u: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(4.0 * (u - 0.5))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("hard_sigmoid", _hard_sigmoid, description="clip(u, 0, 1) (Ernoult 2019, Laborieux 2021)"),
        Activation("hard_sigmoid_half", _hard_sigmoid_half, description="clip(u/2, 0, 1) (the 2021 ConvNet code)"),
        Activation("sigmoid_2019", _sigmoid_2019, description="1 / (1 + exp(-4 (u - 1/2))) (Ernoult 2019 code)"),
    )
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name, with an error that lists the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"network.activation = {name!r} is not known; valid: {sorted(ACTIVATIONS)}") from None
