"""Parsing of the options every torch-backed target shares: device and dtype."""

from __future__ import annotations

import torch

from .base import TargetError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise TargetError(f"target.dtype = {value!r} is invalid; valid: {sorted(DTYPES)}")


def parse_device(value: str | torch.device) -> torch.device:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise TargetError(f"target.device = {value!r} is invalid; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TargetError(f"target.device = {value!r}, but CUDA is not available on this machine; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise TargetError(f"target.device = {value!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return device
