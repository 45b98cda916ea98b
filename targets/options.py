"""The options every torch-backed target shares (device, dtype) and their parsing, plus the memory format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hwtoolkit import schema

from .base import TargetError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_option(key: str, value: object, low: float, high: float, *, integer: bool = False,
                 low_open: bool = False) -> None:
    """A ``TargetError`` naming ``target.<key>`` unless ``value`` is a finite number in range (``schema.check_number``)."""
    try:
        schema.check_number(f"target.{key}", value, low, high, integer=integer, low_open=low_open)
    except schema.SchemaError as e:
        raise TargetError(str(e)) from None


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise TargetError(f"target.dtype = {value!r} is invalid; valid: {sorted(DTYPES)}")


def parse_device(value: str | torch.device, available: bool = True) -> torch.device:
    """``value`` as a torch device; with ``available``, also an error if this machine has no such device."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise TargetError(f"target.device = {value!r} is invalid; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise TargetError(f"target.device = {value!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if available and device.type == "cuda" and not torch.cuda.is_available():
        raise TargetError(f"target.device = {value!r}, but CUDA is not available on this machine; use 'cpu'")
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


@dataclass(frozen=True)
class TorchOptions:
    """Where a torch-backed target keeps its tensors: ``device`` (``cpu``, ``cuda``, ``cuda:N``) and ``dtype``.

    A config names its device as written; whether this machine has it is checked when the target opens.
    """

    device: str | torch.device = "cpu"
    dtype: str | torch.dtype = "float32"

    def __post_init__(self) -> None:
        parse_device(self.device, available=False)
        parse_dtype(self.dtype)

    @property
    def torch_device(self) -> torch.device:
        """The device, checked to exist on this machine."""
        return parse_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)


def parse_quant(value: Any) -> Any:
    """The ``quant`` option as a ``quantize.config.QuantConfig`` (from its table where given as one), or ``None``."""
    if not isinstance(value, Mapping):
        return value
    from quantize.config import QuantConfig, QuantConfigError

    try:
        return QuantConfig(**value)
    except TypeError as e:
        raise TargetError(f"target option quant = {dict(value)!r} is invalid: {e}") from None
    except QuantConfigError as e:
        raise TargetError(str(e)) from None
