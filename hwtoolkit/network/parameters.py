"""Initial parameters of an EP network and checks on parameter dictionaries.

Parameters are a plain ``dict[str, Tensor]``: ``w{l}``/``b{l}`` for layer ``l``
(1-based), ``fb{l}`` for the feedback weights of an untied network, and
``w_out``/``b_out`` for a cross-entropy readout. Plain tensors keep checkpoints
weights-only and let any target hold them however it likes.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .spec import NetworkSpec


def init_parameters(spec: NetworkSpec, seed: int, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Uniform ``U(-g/sqrt(fan_in), g/sqrt(fan_in))`` for every weight and bias (torch's default, gain ``g``).

    Drawn in float64 on the CPU from ``seed`` alone, so a seed gives the same
    network on every device and in every precision.
    """
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    for name, shape in spec.parameter_shapes().items():
        fan_in = _fan_in(spec, name)
        bound = spec.init_gain / math.sqrt(fan_in)
        t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        params[name] = t.to(device=device, dtype=dtype)
    return params


def _fan_in(spec: NetworkSpec, name: str) -> int:
    if name in ("w_out", "b_out"):
        return spec.readout_shape[1]
    index = int(name.lstrip("wbf"))
    return spec.layers[index - 1].fan_in


def check_parameters(spec: NetworkSpec, params: Mapping[str, torch.Tensor], complete: bool = True) -> None:
    """Raise ``ValueError`` naming any unknown, missing, mis-shaped or non-finite parameter."""
    shapes = spec.parameter_shapes()
    unknown = sorted(set(params) - set(shapes))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; this network has {list(shapes)}")
    missing = sorted(set(shapes) - set(params)) if complete else []
    if missing:
        raise ValueError(f"missing parameters {missing} for network {spec.describe()}")
    for name, t in params.items():
        if tuple(t.shape) != tuple(shapes[name]):
            raise ValueError(f"parameter {name!r} has shape {tuple(t.shape)}, expected {tuple(shapes[name])}")
        if not torch.isfinite(t.sum()):  # one pass: NaN and infinities propagate into the sum
            raise ValueError(f"parameter {name!r} contains NaN or infinite values")
