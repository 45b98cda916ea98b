"""Convolution and pooling on int64 tensors (NCHW): the fixed-point model's conv layers, exact and without floats.

torch has no integer convolution on the CPU; these loop over the kernel positions and contract the channels
with an integer ``einsum``, so every sum is exact in int64. Pooling windows are ``k x k`` with stride ``k``; a
conv map whose side is not a multiple of ``k`` loses its last rows and columns (as ``max_pool2d`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _window(size: int, stride: int, at: int) -> slice:
    """The input rows (or columns) kernel position ``at`` reads for each of the ``size`` outputs."""
    return slice(at, at + stride * (size - 1) + 1, stride)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, w, stride=stride, padding=padding)`` without bias, in integers."""
    k = w.shape[2]
    xp = F.pad(x, (padding,) * 4)
    oh = (xp.shape[2] - k) // stride + 1
    ow = (xp.shape[3] - k) // stride + 1
    out = x.new_zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, _window(oh, stride, i), _window(ow, stride, j)]
            out += torch.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def conv_transpose2d(g: torch.Tensor, w: torch.Tensor, stride: int, padding: int,
                     in_hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of ``conv2d``: ``g`` on the conv grid back onto an ``in_hw`` input (rows it never read get 0)."""
    k = w.shape[2]
    oh, ow = g.shape[2], g.shape[3]
    height = max(in_hw[0] + 2 * padding, stride * (oh - 1) + k)
    width = max(in_hw[1] + 2 * padding, stride * (ow - 1) + k)
    out = g.new_zeros((g.shape[0], w.shape[1], height, width))
    for i in range(k):
        for j in range(k):
            out[:, :, _window(oh, stride, i), _window(ow, stride, j)] += \
                torch.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return out[:, :, padding:padding + in_hw[0], padding:padding + in_hw[1]]


def conv2d_weight(x: torch.Tensor, g: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """``sum_n`` of the correlation of ``g`` (conv grid) with ``x``: dPhi/dW of a conv layer, summed over the batch."""
    xp = F.pad(x, (padding,) * 4)
    oh, ow = g.shape[2], g.shape[3]
    out = x.new_zeros((g.shape[1], x.shape[1], kernel, kernel))
    for i in range(kernel):
        for j in range(kernel):
            patch = xp[:, :, _window(oh, stride, i), _window(ow, stride, j)]
            out[:, :, i, j] = torch.einsum("nchw,nohw->oc", patch, g)
    return out


def _blocks(z: torch.Tensor, k: int) -> torch.Tensor:
    """``z`` cut into its pooling windows: ``(N, C, H//k, W//k, k*k)``, each window in row-major order."""
    n, c, h, w = z.shape
    oh, ow = h // k, w // k
    return (z[:, :, :oh * k, :ow * k].reshape(n, c, oh, k, ow, k).permute(0, 1, 2, 4, 3, 5)
            .reshape(n, c, oh, ow, k * k))


def max_pool(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest value of each window and its flat index ``row * W + col`` on the conv grid.

    Ties go to the first maximum in row-major order within the window, as torch's CPU ``max_pool2d`` does.
    """
    values, at = _blocks(z, k).max(-1)  # max(-1) returns the first of equal maxima
    width = z.shape[3]
    rows = torch.arange(values.shape[2]).view(-1, 1) * k + at // k
    cols = torch.arange(values.shape[3]).view(1, -1) * k + at % k
    return values, rows * width + cols


def sum_pool(z: torch.Tensor, k: int) -> torch.Tensor:
    """The sum of each window (``k * k`` times the average: the division is left to the caller's shifts)."""
    return _blocks(z, k).sum(-1)


def max_unpool(s: torch.Tensor, index: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``s`` placed at ``index`` (from ``max_pool``) on an ``hw`` conv grid, zeros elsewhere."""
    n, c = s.shape[:2]
    out = s.new_zeros((n, c, hw[0] * hw[1]))
    return out.scatter(2, index.flatten(2), s.flatten(2)).view(n, c, *hw)


def spread(s: torch.Tensor, k: int, hw: tuple[int, int]) -> torch.Tensor:
    """Each value copied to every position of its ``k x k`` window on an ``hw`` conv grid (the sum pool's adjoint)."""
    g = s.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
    return F.pad(g, (0, hw[1] - g.shape[3], 0, hw[0] - g.shape[2]))
