"""Anderson acceleration of a relaxation: the same fixed point as ``dynamics.relax`` in fewer steps.

A phase iterates the step map ``s <- F(s)`` to its fixed point. Anderson acceleration (Walker & Ni 2011,
type II) evaluates ``F`` once per step as well, but moves to the combination of the last ``memory`` images
``F(s_k)`` whose residuals ``F(s_k) - s_k`` cancel best in least squares. Samples of a batch are
independent systems, so every sample gets its own coefficients (a batched ``(memory-1)``-square solve).

It is a numerical method for simulated dynamics (the reference target), not a physical one: a device
relaxes by its own dynamics. The combination may leave the activation's range, so it is clipped back;
the fixed point lies inside, so clipping does not move it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from . import layers as L
from .activations import get_activation
from .dynamics import Drive, Relaxation, check_phase, finish, input_drive, step, zero_states
from .spec import NetworkSpec

DEFAULT_MEMORY = 3
RIDGE_EPS = 100.0  # Tikhonov term of the least squares, in machine epsilons of the trace: solvable when residuals vanish


def mix(image: torch.Tensor, residual: torch.Tensor, d_images: Sequence[torch.Tensor],
        d_residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """The next iterate from the last image ``F(s_k)``, its residual ``F(s_k) - s_k`` (each ``(B, N)``) and the
    differences of consecutive images and residuals over the last steps.

    Minimises ``|g_k - sum_j gamma_j dg_j|`` per sample and returns ``F(s_k) - sum_j gamma_j df_j``. The
    least squares is solved through its normal equations, a few dot products per sample: on small networks
    the mixing costs about as much as a step, so it is kept to contiguous ``(B, N)`` vector operations.
    """
    if not d_residuals:
        return image
    k = len(d_residuals)
    normal = image.new_empty((image.shape[0], k, k))
    for i in range(k):
        for j in range(i, k):
            normal[:, i, j] = normal[:, j, i] = torch.linalg.vecdot(d_residuals[i], d_residuals[j])
    rhs = torch.stack([torch.linalg.vecdot(d, residual) for d in d_residuals], dim=1).unsqueeze(2)
    info = torch.finfo(image.dtype)
    ridge = (RIDGE_EPS * info.eps * normal.diagonal(dim1=1, dim2=2).sum(1)).clamp_min(info.tiny)
    eye = torch.eye(k, dtype=image.dtype, device=image.device)
    gamma = torch.linalg.solve(normal + ridge[:, None, None] * eye, rhs).squeeze(2)
    out = image
    for j, d in enumerate(d_images):
        out = torch.addcmul(out, gamma[:, j:j + 1], d, value=-1.0)
    return out


def relax_anderson(spec: NetworkSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, steps: int,
                   beta: float = 0.0, y: torch.Tensor | None = None, init: Sequence[torch.Tensor] | None = None,
                   drive: Drive | None = None, stop_tolerance: float = 0.0, memory: int = DEFAULT_MEMORY,
                   reads: L.Reads = L.EXACT) -> Relaxation:
    """One phase like ``dynamics.relax``, each step accelerated over the last ``memory`` steps.

    ``steps`` counts evaluations of the step map, as for ``dynamics.relax``. The phase ends with the last
    image ``F(s)``; its residual is ``|F(s) - s|``, so ``stop_tolerance`` means what it means there.
    ``memory = 1`` is the plain iteration.
    """
    check_phase(steps, beta, y, stop_tolerance)
    if memory < 1:
        raise ValueError(f"memory = {memory} is invalid: Anderson acceleration needs at least 1 (1 = no mixing)")
    drive = input_drive(spec, params, x, reads) if drive is None else drive
    read_drive = drive if callable(drive) else (lambda: drive)
    rho = get_activation(spec.activation)
    states = list(init) if init is not None else zero_states(spec, x.shape[0], x)
    sizes = [s[0].numel() for s in states]

    def unflatten(flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.reshape(s.shape) for part, s in zip(flat.split(sizes, dim=1), states)]

    s = torch.cat([t.flatten(1) for t in states], dim=1)
    d_images: list[torch.Tensor] = []
    d_residuals: list[torch.Tensor] = []
    last: tuple[torch.Tensor, torch.Tensor] | None = None
    for done in range(1, steps + 1):
        image = torch.cat([t.flatten(1) for t in step(spec, params, read_drive(), unflatten(s), beta, y, reads)], 1)
        residual = image - s
        if done == steps or (stop_tolerance and residual.abs().max().item() <= stop_tolerance):
            break
        if last is not None and memory > 1:
            d_images = (d_images + [image - last[0]])[1 - memory:]
            d_residuals = (d_residuals + [residual - last[1]])[1 - memory:]
        last = (image, residual)
        s = mix(image, residual, d_images, d_residuals).clamp(rho.low, rho.high)
    return finish(spec, params, unflatten(image), unflatten(s), done)
