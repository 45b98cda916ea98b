"""The read path of the crossbar: converters with a fixed scale, per-read noise, IR drop (docs/crossbar.md, "Reads").

A read of ``y = W s`` goes: DAC(s) -> array (conductance pairs, optionally with IR drop) -> per-read
noise -> ADC, averaged over ``read_averages`` reads. Device read noise is independent per device and
per read, so on a dense read its sum is Gaussian with std ``sqrt(2) w_read_noise scale ||s||`` per
output and sample: drawn that way, it costs one random number per output, not one per device.
Convolutions draw a noisy kernel per read instead (one draw shared by the patches of a read).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from hwtoolkit.network import layers as L
from hwtoolkit.network.spec import LayerGeometry

from . import native
from .config import Periphery, ReadSettings
from .costs import Counts


def quantize(x: torch.Tensor, bits: int, bound: float | torch.Tensor, in_place: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """A symmetric ``bits``-bit converter on ``[-bound, bound]``: ``2^bits - 1`` levels, zero included.

    ``in_place`` overwrites ``x`` (for a fresh array output nobody else holds); ``out`` receives the result otherwise.
    """
    if bits == 0:
        return x
    res = 2 * bound / (2 ** bits - 2)
    clipped = x.clamp_(-bound, bound) if in_place else torch.clamp(x, -bound, bound, out=out)
    return clipped.mul_(1 / res).round_().mul_(res)


class ArrayReads:
    """Builds the ``Reads`` the dynamics use, for weights held by the crossbar.

    ``scale_of(name)`` gives a parameter's weight scale; ``ir_weight(name, transposed)`` the weights as
    an IR-dropped read sees them, inputs first (needed with ``ir_drop`` only); ``noisy`` switches per-read
    noise on and off; ``numerics`` (``TileConfig.numerics``) says who draws that noise.
    """

    def __init__(self, cfg: ReadSettings, tied: bool, scale_of: Callable[[str], float],
                 ir_weight: Callable[[str, bool], torch.Tensor], gen: Callable[[], torch.Generator],
                 numerics: str = "native") -> None:
        self.cfg = cfg
        self.numerics = numerics
        self.tied = tied
        self.scale_of = scale_of
        self.ir_weight = ir_weight
        self.gen = gen
        self.noisy = True
        self.counts: Counts | None = None  # where every read is counted (costs.py), if anywhere
        self._inputs: dict[tuple, torch.Tensor] = {}  # DAC outputs, one buffer per shape, valid during one read

    def reads(self) -> L.Reads:
        return L.Reads(forward=self.forward, transpose=self.transpose)

    def forward(self, geo: LayerGeometry, w: torch.Tensor, s_prev: torch.Tensor) -> tuple[torch.Tensor, Any]:
        name = f"w{geo.index}"
        p = self.cfg.forward
        s_in = self._dac(p, s_prev)
        if geo.kind == "conv":
            self._count_conv(geo, s_prev.shape[0], transposed=False)
            return self._average(p, name, lambda: L.forward(geo, self._noisy_kernel(w, name), s_in)[0],
                                 L.forward(geo, w, s_in)[1])
        exact = s_in.flatten(1) @ (self.ir_weight(name, False) if self.cfg.ir_drop else w.t())
        return self._dense_reads(p, exact, s_in.flatten(1), name, transposed=False), None

    def transpose(self, geo: LayerGeometry, w: torch.Tensor, s: torch.Tensor, ctx: Any) -> torch.Tensor:
        name = f"w{geo.index}" if self.tied else f"fb{geo.index}"
        p = self.cfg.transposed
        s_in = self._dac(p, s)
        if geo.kind == "conv":
            self._count_conv(geo, s.shape[0], transposed=True)
            return self._average(p, name, lambda: L.transpose(geo, self._noisy_kernel(w, name), s_in, ctx))
        exact = s_in.flatten(1) @ (self.ir_weight(name, True) if self.cfg.ir_drop else w)
        return self._dense_reads(p, exact, s_in.flatten(1), name, transposed=True).view(s.shape[0], *geo.in_shape)

    def drive(self, geo: LayerGeometry, w: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
              memo: dict) -> Callable[[], torch.Tensor]:
        """The input drive of a phase as a function that reads it afresh (with new noise) at each call.

        A dense layer's array product is kept in ``memo`` for the quiet and the noisy drive of the same input and
        weights (the caller empties it when either changes).
        """
        if geo.kind == "conv":
            fixed = L.add_bias(geo, self.forward(geo, w, x)[0], bias)
            self._count_adds(fixed.numel())
            return lambda: fixed
        p = self.cfg.forward
        if "product" not in memo:
            x_in = quantize(x.flatten(1), p.dac_bits, p.in_bound)
            memo["product"] = x_in, x_in @ (self.ir_weight("w1", False) if self.cfg.ir_drop else w.t())
        x_in, exact = memo["product"]
        if not (self.noisy and self.cfg.has_noise):  # read once, kept for every step of the phase
            fixed = L.add_bias(geo, quantize(exact, p.adc_bits, p.out_bound * self.unit(p, "w1")), bias)
            if self.counts is not None:
                self.counts.read(False, exact.shape[0], x_in.shape[1], exact.shape[1], adds=exact.numel())
            return lambda: fixed

        def read() -> torch.Tensor:
            self._count_adds(exact.numel())
            return L.add_bias(geo, self._dense_reads(p, exact, x_in, "w1", transposed=False, exact_is_fresh=False,
                                                     memo=memo), bias)
        return read

    def columns(self, name: str, exact: torch.Tensor) -> torch.Tensor:
        """Read columns of an array with one-hot inputs, through the forward converters and with read noise.

        ``exact`` holds the columns' weights, one per row (``(k, outputs)``), of an array with the weight scale of
        parameter ``name``; each is read with one input line driven at ``min(1, in_bound)`` (after the DAC) and
        the output divided by that drive. IR drop is not modelled on these reads (docs/crossbar.md).
        """
        p = self.cfg.forward
        drive = quantize(exact.new_full((exact.shape[0], 1), min(1.0, p.in_bound)), p.dac_bits, p.in_bound)
        noisy, self.noisy = self.noisy, True
        try:
            out = self._dense_reads(p, exact * drive, drive, name, transposed=False)
        finally:
            self.noisy = noisy
        return out / drive

    def unit(self, p: Periphery, name: str) -> float:
        """One output unit of array ``name``: a full-range weight times a full-range input."""
        return self.scale_of(name) * p.in_bound

    def _dense_reads(self, p: Periphery, exact: torch.Tensor, s_in: torch.Tensor, name: str, transposed: bool,
                     exact_is_fresh: bool = True, memo: dict | None = None) -> torch.Tensor:
        """Read ``exact = s_in @ W`` as the converters and the noise give it (``read_averages`` noisy reads).

        ``memo`` keeps the noise's standard deviation, which depends on ``s_in`` and the weight scale only, for
        reads of the same input and weights (the input drive's, read afresh in every phase)."""
        key = ("noise_std", self.noisy)
        if memo is None or key not in memo:
            std = self._noise_std(p, s_in, name)
            if memo is not None:
                memo[key] = std
        else:
            std = memo[key]
        bound = p.out_bound * self.unit(p, name)
        k = 1 if std is None else self.cfg.read_averages
        if self.counts is not None:
            self.counts.read(transposed, k * exact.shape[0], s_in.shape[1], exact.shape[1])
        if std is None:
            return quantize(exact, p.adc_bits, bound, in_place=exact_is_fresh)
        if p.adc_bits == 0:  # averaging k Gaussian reads is one read with std / sqrt(k)
            return self._randn(exact).mul_(std).div_(math.sqrt(k)).add_(exact)
        return sum(quantize(self._randn(exact).mul_(std).add_(exact), p.adc_bits, bound, in_place=True)
                   for _ in range(k)) / k

    def _noise_std(self, p: Periphery, s_in: torch.Tensor, name: str) -> torch.Tensor | float | None:
        if not self.noisy:
            return None
        device = math.sqrt(2) * self.cfg.w_read_noise * self.scale_of(name)
        out = p.out_noise * self.unit(p, name)
        if device == 0 and out == 0:
            return None
        if device == 0:
            return out
        return (device ** 2 * s_in.square().sum(1, keepdim=True) + out ** 2).sqrt()

    def _reads_per_read(self) -> int:
        return self.cfg.read_averages if self.noisy and self.cfg.has_noise else 1

    def _count_conv(self, geo: LayerGeometry, batch: int, transposed: bool) -> None:
        """A convolution's read: one input vector per output position (its patch, or its channels transposed)."""
        if self.counts is not None:
            vectors = self._reads_per_read() * batch * math.prod(geo.conv_shape[1:])
            outputs, inputs = geo.weight_shape[0], geo.fan_in
            self.counts.read(transposed, vectors, outputs if transposed else inputs, inputs if transposed else outputs)

    def _count_adds(self, n: int) -> None:
        if self.counts is not None:
            self.counts.adds += n

    def _average(self, p: Periphery, name: str, read: Callable[[], torch.Tensor], ctx: Any = None):
        k = self._reads_per_read()
        unit = self.unit(p, name)
        y = sum(self._out(p, read(), unit) for _ in range(k)) / k
        return y if ctx is None else (y, ctx)

    def _out(self, p: Periphery, y: torch.Tensor, unit: float) -> torch.Tensor:
        if self.noisy and p.out_noise:
            y = self._randn(y).mul_(p.out_noise * unit).add_(y)
        return quantize(y, p.adc_bits, p.out_bound * unit, in_place=True)

    def _noisy_kernel(self, w: torch.Tensor, name: str) -> torch.Tensor:
        if not (self.noisy and self.cfg.w_read_noise):
            return w
        return self._randn(w).mul_(math.sqrt(2) * self.cfg.w_read_noise * self.scale_of(name)).add_(w)

    def _dac(self, p: Periphery, s: torch.Tensor) -> torch.Tensor:
        """The input converter's output for states ``s``, in a buffer that the next read of that shape reuses."""
        if p.dac_bits == 0:
            return s
        key = (s.shape, s.dtype, s.device)
        if key not in self._inputs:
            self._inputs[key] = torch.empty_like(s)
        return quantize(s, p.dac_bits, p.in_bound, out=self._inputs[key])

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        lib = native.generator(self.numerics, like.device, like.dtype)
        if lib is not None:
            return native.randn(lib, native.seed(self.gen()), like.shape)
        return torch.randn(like.shape, generator=self.gen(), device=like.device, dtype=like.dtype)
