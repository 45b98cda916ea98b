"""The three linear maps of one EP layer, computed analytically (no autograd of Phi).

For layer ``l`` with weights ``W`` the energy term is ``s_l . (P(W * s_{l-1}) + b_l)``
(``P`` a pooling, ``*`` a matmul or convolution). Its three derivatives are all a
relaxation and an update need:

* ``forward``: dPhi/ds_l, the drive of ``s_l`` from below;
* ``transpose``: dPhi/ds_{l-1}, the feedback of ``s_l`` to the layer below;
* ``weight_grad`` / ``bias_grad``: dPhi/dW and dPhi/db, batch-averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from .output import nudge_force
from .spec import LayerGeometry


def forward(geo: LayerGeometry, w: torch.Tensor, s_prev: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``P(W * s_{l-1})`` and the pooling context (max-pool indices) its transpose needs."""
    if geo.kind == "dense":
        return s_prev.flatten(1) @ w.t(), None
    c = geo.conv
    z = F.conv2d(s_prev, w, stride=c.stride, padding=c.padding)
    if c.pool == "max":
        return F.max_pool2d(z, c.pool_size, return_indices=True)
    if c.pool == "avg":
        return F.avg_pool2d(z, c.pool_size), None
    return z, None


def pool_context(geo: LayerGeometry, w: torch.Tensor, s_prev: torch.Tensor) -> Any:
    """The max-pool indices of ``P(W * s_{l-1})``, the only context a transpose or weight gradient needs.

    Computed (one convolution) for max-pooling layers only; every other layer needs none.
    """
    if geo.kind == "conv" and geo.conv.pool == "max":
        return forward(geo, w, s_prev)[1]
    return None


def _unpool(geo: LayerGeometry, s: torch.Tensor, ctx: Any) -> torch.Tensor:
    """``P^T s``: a state on the pooled grid spread back onto the conv output grid."""
    c = geo.conv
    if c.pool == "max":
        if torch.onnx.is_in_onnx_export():
            # max_unpool2d has no ONNX exporter; it is a scatter of s to its per-channel flat indices (the same
            # values, as ScatterElements), kept for export only: on the CPU the scatter takes twice as long
            n, channels, h, w = s.shape[0], s.shape[1], geo.conv_shape[1], geo.conv_shape[2]
            return s.new_zeros((n, channels, h * w)).scatter(2, ctx.flatten(2), s.flatten(2)).view(n, channels, h, w)
        return F.max_unpool2d(s, ctx, c.pool_size, output_size=geo.conv_shape[1:])
    if c.pool == "avg":
        k = c.pool_size
        g = s.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3) / (k * k)
        return F.pad(g, (0, geo.conv_shape[2] - g.shape[3], 0, geo.conv_shape[1] - g.shape[2]))
    return s


def transpose(geo: LayerGeometry, w: torch.Tensor, s: torch.Tensor, ctx: Any) -> torch.Tensor:
    """``W^T P^T s_l`` in the shape of ``s_{l-1}``: the feedback term of the layer below."""
    if geo.kind == "dense":
        return (s.flatten(1) @ w).view(s.shape[0], *geo.in_shape)
    c = geo.conv
    g = _unpool(geo, s, ctx)
    out_h = (geo.conv_shape[1] - 1) * c.stride - 2 * c.padding + c.kernel
    out_w = (geo.conv_shape[2] - 1) * c.stride - 2 * c.padding + c.kernel
    pad = (geo.in_shape[1] - out_h, geo.in_shape[2] - out_w)
    return F.conv_transpose2d(g, w, stride=c.stride, padding=c.padding, output_padding=pad)


def weight_grad(geo: LayerGeometry, s_prev: torch.Tensor, s: torch.Tensor, ctx: Any) -> torch.Tensor:
    """dPhi/dW averaged over the batch: ``s_l s_{l-1}^T`` or its convolutional correlation."""
    batch = s.shape[0]
    if geo.kind == "dense":
        return s.flatten(1).t() @ s_prev.flatten(1) / batch
    c = geo.conv
    return conv2d_weight(s_prev, geo.weight_shape, _unpool(geo, s, ctx), stride=c.stride, padding=c.padding) / batch


def bias_grad(geo: LayerGeometry, s: torch.Tensor) -> torch.Tensor:
    """dPhi/db averaged over the batch (conv biases are per channel, added after pooling)."""
    if geo.kind == "dense":
        return s.mean(0)
    return s.sum(dim=(2, 3)).mean(0)


def add_bias(geo: LayerGeometry, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return u + (b if geo.kind == "dense" else b.view(1, -1, 1, 1))


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


def _stored_as_is(index: int, s: torch.Tensor) -> torch.Tensor:
    return s


@dataclass(frozen=True)
class Reads:
    """How the dynamics read weights and inputs and store states: exactly (the default) or through a device.

    ``forward`` and ``transpose`` have the signatures of this module's functions of the same names;
    a device target swaps in its own to add converters, noise and parasitics to every read. Layer 1's
    product with the input is not one of these reads: it is the input drive, computed once per input
    (``dynamics.input_drive``); a device whose input read changes from step to step passes its own drive
    to ``dynamics.relax`` (a callable giving each step's drive), as the crossbar target does.
    ``input`` maps the normalised input before layer 1 reads it, and ``store(i, s)`` maps the new state
    of the 0-based layer ``i`` as the layer keeps it: a quantized network rounds both to its formats.
    ``nudge`` has ``output.nudge_force``'s signature: a fixed-point network swaps in its integer CE nudge.
    """

    forward: Callable[..., tuple[torch.Tensor, Any]] = forward
    transpose: Callable[..., torch.Tensor] = transpose
    input: Callable[[torch.Tensor], torch.Tensor] = _as_is
    store: Callable[[int, torch.Tensor], torch.Tensor] = _stored_as_is
    nudge: Callable[..., torch.Tensor] = nudge_force


EXACT = Reads()
