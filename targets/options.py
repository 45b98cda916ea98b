"""Parsing of the options every torch-backed target shares: device, dtype and memory format."""

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


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def parse_memory_format(value: str) -> torch.memory_format:
    """``channels_last`` keeps convolutional weights, inputs and states NHWC (faster convolutions on GPUs)."""
    if isinstance(value, str) and value in MEMORY_FORMATS:
        return MEMORY_FORMATS[value]
    raise TargetError(f"target.memory_format = {value!r} is invalid; valid: {sorted(MEMORY_FORMATS)}")


def in_memory_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` laid out in ``memory_format`` if it is a 4-d (image or conv weight) tensor; others unchanged."""
    if t.dim() != 4 or memory_format == torch.contiguous_format:
        return t
    return t.contiguous(memory_format=memory_format)
