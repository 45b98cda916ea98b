"""CIFAR-10 training augmentation of Laborieux et al. (2021), vectorised over the batch.

Random 32x32 crop of the image padded by 4 with edge replication, then a horizontal
flip with probability 0.5, as torchvision's RandomCrop(32, padding=4,
padding_mode='edge') and RandomHorizontalFlip(0.5). Normalisation is left to the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PADDING = 4

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean used by Laborieux et al. (2021)'s code (transforms.Normalize)."""

CIFAR10_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)
"""Three times the usual CIFAR-10 per-channel std, as in Laborieux et al. (2021)'s code."""


def augment_cifar10(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop (edge padding 4) and flip a float batch N,C,H,W; deterministic given `generator`.

    Draws, in order: N vertical offsets, N horizontal offsets (each 0..8), N flip coins.
    Flipping after the crop instead of before gives the same distribution of outputs.
    """
    _check_images(x)
    n = x.shape[0]
    draw = dict(generator=generator, device=generator.device)
    top = torch.randint(0, 2 * PADDING + 1, (n,), **draw).to(x.device)
    left = torch.randint(0, 2 * PADDING + 1, (n,), **draw).to(x.device)
    flip = (torch.rand((n,), **draw) < 0.5).to(x.device)
    return crop_flip(x, top, left, flip)


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each image of x at (top, left) of its edge-padded version, mirroring it where `flip` is true.

    top, left are in 0..2*PADDING (PADDING, PADDING is the unshifted image); a pure function.
    """
    _check_images(x)
    n, channels, height, width = x.shape
    for label, values in (("top", top), ("left", left), ("flip", flip)):
        if tuple(values.shape) != (n,):
            raise ValueError(f"crop_flip: {label} must have shape ({n},) for {n} images, got {tuple(values.shape)}")
    padded = F.pad(x, (PADDING, PADDING, PADDING, PADDING), mode="replicate")
    rows = top[:, None] + torch.arange(height, device=x.device)
    cols = left[:, None] + torch.arange(width, device=x.device)
    cols = torch.where(flip[:, None].to(torch.bool), cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        described = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"augment_cifar10 expects a float tensor N,C,H,W (N,3,32,32 for CIFAR-10), got {described}")
