"""The compute precisions a relaxation can run in, and a context manager that switches to one.

States and parameters are stored in float32 in every precision here; what changes is how the
matmuls and convolutions compute:

* ``float32``: IEEE float32. CUDA's TF32 is turned off for cuBLAS matmuls *and* for cuDNN
  convolutions (``torch.backends.cudnn.allow_tf32`` is on by default, so a float32 ConvNet on a
  GPU otherwise computes its convolutions with 10 mantissa bits).
* ``tf32``: TF32 tensor cores for both (CUDA only; on a CPU it is IEEE float32, since TF32 is a
  CUDA format, and the TF32 flags are set off there as for ``float32``).
* ``bfloat16`` / ``float16``: ``torch.autocast`` runs matmuls and convolutions in that format
  (float32 accumulation) while every other op, and so every state, stays in float32; TF32 is off
  for what remains in float32. float16 needs CUDA.

Only the two legacy TF32 flags are touched (PyTorch >= 2.9 raises if they are mixed with its
``fp32_precision`` API); oneDNN's reduced-precision CPU modes (``torch.set_float32_matmul_precision
("medium")``) are left as the caller set them, off by default.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch


@dataclass(frozen=True)
class Precision:
    """One compute precision: whether CUDA may use TF32, and the autocast format (None: no autocast)."""

    name: str
    description: str
    tf32: bool = False
    autocast: torch.dtype | None = None
    cuda_only: bool = False


_REGISTRY: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("float32", "IEEE float32 matmuls and convolutions (TF32 off on CUDA, cuDNN included)"),
        Precision("tf32", "TF32 tensor-core matmuls and convolutions on CUDA; IEEE float32 on a CPU", tf32=True),
        Precision("bfloat16", "autocast bfloat16 matmuls and convolutions, float32 states", autocast=torch.bfloat16),
        Precision("float16", "autocast float16 matmuls and convolutions, float32 states (CUDA only)",
                  autocast=torch.float16, cuda_only=True),
    )
}

PRECISIONS: dict[str, str] = {name: p.description for name, p in _REGISTRY.items()}
"""Every compute precision by name, with a one-line description."""

DEVICE_TYPES = ("cpu", "cuda")


def check_precision(name: str, device: torch.device | str) -> Precision:
    """The precision called ``name`` if ``device`` can run it; ``ValueError`` naming the bad value otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"precision = {name!r} is not known; valid: {sorted(PRECISIONS)}")
    device = torch.device(device)
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device = {str(device)!r} is not supported for compute precisions; valid types: "
                         f"{list(DEVICE_TYPES)}")
    precision = _REGISTRY[name]
    if precision.cuda_only and device.type != "cuda":
        valid = sorted(n for n, p in _REGISTRY.items() if not p.cuda_only)
        raise ValueError(f"precision = {name!r} needs a CUDA device, got device = {str(device)!r}; "
                         f"valid on {device.type}: {valid}")
    return precision


def tf32_flags() -> tuple[bool, bool]:
    """``(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)``: the global state switched here."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def _autocast(precision: Precision, device: torch.device) -> ContextManager[object]:
    """Autocast to the precision's format, or off (inside an enclosing autocast too) for float32 and tf32."""
    if precision.autocast is not None:
        return torch.autocast(device.type, dtype=precision.autocast)
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


@contextmanager
def compute_precision(name: str, device: torch.device | str) -> Iterator[Precision]:
    """Run the block in precision ``name`` on ``device``; the TF32 flags and autocast are restored on exit.

    The flags are process-global: other threads computing on the GPU meanwhile see them too.
    """
    precision = check_precision(name, device)
    device = torch.device(device)
    tf32 = precision.tf32 and device.type == "cuda"
    saved = tf32_flags()
    try:
        _set_tf32_flags(tf32, tf32)
        with _autocast(precision, device):
            yield precision
    finally:
        _set_tf32_flags(*saved)
