"""Smaller images for small devices: average k x k pixel blocks of a whole data set, still uint8."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .dataset import Dataset


def downsample_images(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``factor x factor`` blocks of uint8 images (N, C, H, W), rounded half to even; edges that do not
    fill a block are dropped."""
    if factor < 1:
        raise ValueError(f"downsample factor {factor} is invalid: expected an integer >= 1")
    if factor == 1:
        return x
    if x.shape[-1] < factor or x.shape[-2] < factor:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels cannot be downsampled by {factor}")
    pooled = F.avg_pool2d(x.double(), factor)
    return torch.round(pooled).clamp(0, 255).to(torch.uint8)


def downsample(data: Dataset, factor: int) -> Dataset:
    """The data set with every image downsampled by ``factor``."""
    return dataclasses.replace(data, train_x=downsample_images(data.train_x, factor),
                               test_x=downsample_images(data.test_x, factor))
