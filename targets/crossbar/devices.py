"""Conductance pairs that hold one parameter tensor: fixed device draws, the write path, time and wear.

A weight is ``w = scale (g+ - g-)`` with normalized conductances (docs/crossbar.md, "Weights"). Device-to-device
values (bounds, steps, asymmetry, stuck devices, drift exponents) are drawn once from the seed on the CPU in
float64, so a seed gives the same devices on every torch device; the per-device constants a write needs are
computed from them once. Pulses, noise and time are vectorised over all devices at once; a write touches only the
pulsed devices when they are few, and works in reusable buffers; on the CPU in float32 a fused kernel (native.py)
does a write's per-device work in one pass, with the same numbers (docs/crossbar.md, "Speed").
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy
import torch

from . import native
from .config import TileConfig
from .response import Move, Value, select


class Scratch:
    """Named flat buffers that writes compute into, kept from write to write.

    A fresh large tensor costs page faults that can take longer than the arithmetic on it. The arrays of a target
    write one after another, so they can share one ``Scratch``; a buffer grows to the largest size asked for.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __call__(self, name: str, size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first ``size`` elements of buffer ``name`` of ``dtype`` (the simulation's by default)."""
        key = (name, dtype or self.dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[key] = torch.empty(size, device=self.device, dtype=key[1])
        return buffer if buffer.numel() == size else buffer[:size]


def count(mask: torch.Tensor) -> int:
    """How many entries of a 0/1 float tensor are 1 (exact at any size)."""
    return int(mask.sum(dtype=torch.float64 if mask.numel() >= 2 ** 24 else None))


class Constants:
    """Per-device constants of the write path: one value, or an (up, down) pair resolved by each device's direction.

    Per-device tensors are stacked once (a pair's up and down values side by side), so that a sparse write gathers
    all of them in two calls and picks each pair's half by the index.
    """

    def __init__(self, values: dict[str, Value | tuple[Value, Value]], like: torch.Tensor) -> None:
        self.values = values
        self.numel = like.numel()
        self._one = [k for k, v in values.items() if _per_device(v)]
        self._pairs = [k for k, v in values.items() if isinstance(v, tuple) and any(map(_per_device, v))]
        self._stacks = [torch.stack([self._row(values[k], like) for k in names]) if names else None
                        for names in (self._one, self._pairs)]

    @staticmethod
    def _row(value: Value | tuple[Value, Value], like: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, tuple):
            return value.reshape(-1)
        return torch.stack([torch.as_tensor(x, dtype=like.dtype, device=like.device).expand(like.shape).reshape(-1)
                            for x in value], 1).view(-1)

    def at(self, idx: torch.Tensor | None, up: Value, scratch: Scratch) -> dict[str, Value]:
        """The flat constants of the devices ``idx`` (every device if None) moving in direction ``up`` (1 up, 0 down),
        computed into ``scratch`` where they have to be."""
        size = self.numel if idx is None else len(idx)
        c: dict[str, Value] = {}
        if idx is not None:
            if self._one:
                c.update(zip(self._one, self._gather(0, idx, scratch)))
            if self._pairs:  # device i's up value sits at 2 i, its down value at 2 i + 1
                where = scratch("constant.where", size, torch.long)
                if torch.is_tensor(up):
                    where.copy_(up).neg_().add_(1).add_(idx, alpha=2)
                else:
                    torch.mul(idx, 2, out=where)
                c.update(zip(self._pairs, self._gather(1, where, scratch)))
        for name, value in self.values.items():
            if name not in c:
                if isinstance(value, tuple):
                    value = select(up, *(x.view(-1) if _per_device(x) else x for x in value),
                                   out=scratch(f"constant.{name}", size))
                c[name] = value.view(-1) if _per_device(value) else value
        return c

    def _gather(self, which: int, idx: torch.Tensor, scratch: Scratch) -> torch.Tensor:
        stack = self._stacks[which]
        rows, size = len(stack), len(idx)
        return torch.index_select(stack, 1, idx, out=scratch(f"constant.gathered{which}", rows * size).view(rows, size))


def _per_device(value: object) -> bool:
    return torch.is_tensor(value) and value.dim() > 0


@dataclass
class Devices:
    """One polarity of an array: its drawn properties, its state, and the write path's per-device constants."""

    g: torch.Tensor  # hidden conductance, what pulses act on
    lo: Value
    hi: Value
    gain_up: Value  # this device's up step / the nominal dw_min
    gain_down: Value  # this device's down step / the nominal dw_min
    stuck: torch.Tensor | None  # mask of stuck devices ...
    stuck_value: torch.Tensor | None  # ... and the conductance they are stuck at
    nu: Value  # drift exponent
    pulses: torch.Tensor | None = None  # pulses received, per device
    offset: torch.Tensor | None = None  # write noise seen by reads, redrawn at each write
    written_at: torch.Tensor | None = None  # simulated time of each device's last write (drift)
    neg_nu: Value = 0.0  # -nu, the drift factor's exponent
    refresh_at: Value = 1.0  # where a one-sided pair is refreshed
    constants: Constants | None = None  # what the write path needs per device

    def visible(self, now: float, t0: float, out: torch.Tensor | None = None, work: torch.Tensor | None = None,
                kernel: ctypes.CDLL | None = None) -> torch.Tensor:
        """The conductance a read sees: hidden value, write noise, drift since the last write (into ``out`` if given,
        using ``work`` as scratch space; the drift computed by ``kernel``, native.py, if given)."""
        if self.written_at is not None and kernel is not None:
            return native.visible(kernel, self, now, t0, out)
        g = self.g if self.offset is None else torch.add(self.g, self.offset, out=out)
        if self.written_at is not None:
            drift = torch.sub(self.written_at, now, out=work).neg_().add_(t0).div_(t0).pow_(self.neg_nu)
            g = torch.mul(g, drift, out=out)
        return g


def _spread(gen: torch.Generator, shape: tuple[int, ...], std: float, lognormal: bool = False) -> Value:
    """A per-device multiplier with mean 1 and relative spread ``std`` (1.0 when there is none)."""
    if std == 0:
        return 1.0
    xi = torch.randn(shape, generator=gen, dtype=torch.float64)
    if lognormal:
        return torch.exp(std * xi - std * std / 2)
    return (1 + std * xi).clamp_min(0.0)


def draw_devices(cfg: TileConfig, shape: tuple[int, ...], gen: torch.Generator) -> Devices:
    """Draw the fixed (device-to-device) properties of ``prod(shape)`` devices, float64 on the CPU."""
    var = cfg.variation
    f64 = {"generator": gen, "dtype": torch.float64}
    lo: Value = 0.0
    hi: Value = 1.0
    if var.bound_dtod:  # each bound's distance from mid-range varies by bound_dtod, relative
        lo = 0.5 - 0.5 * (1 + var.bound_dtod * torch.randn(shape, **f64)).clamp_min(0.05)
        hi = 0.5 + 0.5 * (1 + var.bound_dtod * torch.randn(shape, **f64)).clamp_min(0.05)
    gain = _spread(gen, shape, var.dw_min_dtod, var.dw_min_dtod_lognormal)
    up_down = cfg.device.up_down
    if var.up_down_dtod:
        up_down = (up_down + var.up_down_dtod * torch.randn(shape, **f64)).clamp(-0.99, 0.99)
    stuck = stuck_value = None
    if var.stuck_prob:
        stuck = torch.rand(shape, **f64) < var.stuck_prob
        split = torch.tensor(var.stuck_split, dtype=torch.float64)
        kind = torch.multinomial(split / split.sum(), stuck.numel(), replacement=True, generator=gen).view(shape)
        lo_t, hi_t = (torch.as_tensor(v, dtype=torch.float64).expand(shape) for v in (lo, hi))
        random = lo_t + (hi_t - lo_t) * torch.rand(shape, **f64)
        stuck_value = torch.where(kind == 0, lo_t, torch.where(kind == 1, hi_t, random))
    nu: Value = cfg.time.drift_nu
    if cfg.time.drift_nu_dtod:
        nu = (nu + cfg.time.drift_nu_dtod * torch.randn(shape, **f64)).clamp_min(0)
    return Devices(g=torch.zeros(shape, dtype=torch.float64), lo=lo, hi=hi, gain_up=gain,
                   gain_down=gain * (1 - up_down), stuck=stuck, stuck_value=stuck_value, nu=nu)


def _move(value, device: torch.device, dtype: torch.dtype):
    if torch.is_tensor(value):
        return value.to(device, torch.bool if value.dtype == torch.bool else dtype)
    return value


class Pulses(NamedTuple):
    """What one polarity's devices get in a write (every device, or those of the write's indices)."""

    travel: torch.Tensor  # nominal travel: pulses x dw_min (the change itself for a continuous device)
    up: Value  # 1 where a device goes up, 0 where it goes down (1.0: every device up)
    sign: Value  # +1 / -1 likewise
    n: torch.Tensor | None  # pulse counts (None for a continuous device)
    pulsed: torch.Tensor | None  # 1 where a device got pulses, 0 elsewhere (None: every one did)
    c2c: torch.Tensor | None  # cycle-to-cycle noise per unit of change, 1 / sqrt(n) (None without it)


class Selection(NamedTuple):
    """The weights a write sends pulses to: their flat indices (None: every weight), their pulse counts and their
    requested changes, per index, or per weight where ``per_weight`` (for the fused kernel, which reads them in
    place instead of gathered)."""

    idx: torch.Tensor | None
    n: torch.Tensor | None  # None: a continuous device, whose change is the request itself
    d: torch.Tensor
    per_weight: bool = False


MUTABLE = ("g", "pulses", "offset", "written_at")  # the fields of Devices that writes, time and wear change


@dataclass
class WriteStats:
    """What one write did to an array."""

    pulses: float = 0.0
    saturated: int = 0  # devices that ended at a bound after being pulsed
    refreshed: int = 0  # one-sided pairs reprogrammed
    writes: int = 0  # write operations on an array


class PairArray:
    """The differential (or one-sided) pairs holding one parameter tensor, and its write path."""

    def __init__(self, cfg: TileConfig, shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
                 dtype: torch.dtype, scale: float, scratch: Scratch | None = None) -> None:
        self.cfg = cfg
        self.scale = scale
        self.shape = shape
        self.numel = math.prod(shape)
        self.device, self.dtype = device, dtype
        self.differential = cfg.write.pair == "differential"
        self.pos, self.neg = (self._place(draw_devices(cfg, shape, gen)) for _ in range(2))
        self.scratch = scratch or Scratch(device, dtype)
        self._weight = torch.empty(shape, device=device, dtype=dtype)
        self._indices = torch.empty(0, 1, device=device, dtype=torch.long)
        self._sparse_skips = 0
        self._kernel = native.library() if native.usable(cfg.response, device, dtype) else None
        self._random = native.generator(cfg.numerics, device, dtype)  # the kernel, where it draws the random numbers

    def _place(self, d: Devices) -> Devices:
        """The drawn devices on the simulation's device and dtype, with their state and write-path constants."""
        cast = functools.partial(_move, device=self.device, dtype=self.dtype)
        moved = Devices(**{k: cast(v) for k, v in vars(d).items()})
        cfg = self.cfg
        if cfg.variation.write_noise_std:
            moved.offset = torch.zeros_like(moved.g)
        if cfg.time.drift_nu:
            moved.written_at = torch.zeros_like(moved.g)
        moved.pulses = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        moved.neg_nu = cast(-d.nu)
        moved.refresh_at = moved.lo + cfg.write.refresh_threshold * (moved.hi - moved.lo)
        values: dict[str, Value | tuple[Value, Value]] = {"gain": (moved.gain_up, moved.gain_down),
                                                          "clip_lo": moved.lo, "clip_hi": moved.hi}
        if moved.stuck is not None:  # a stuck device's bounds are its stuck value; it does not count as saturated
            values["clip_lo"], values["clip_hi"] = (torch.where(moved.stuck, moved.stuck_value, torch.as_tensor(
                v, dtype=self.dtype, device=self.device).expand(self.shape)) for v in (moved.lo, moved.hi))
            values["free"] = (~moved.stuck).to(self.dtype)
        dw = cfg.device.dw_min
        values.update(cfg.response.constants(d.lo, d.hi, dw * d.gain_up, dw * d.gain_down, cast))
        moved.constants = Constants(values, moved.g)
        return moved

    @property
    def reference(self) -> float:
        """Where a pair's devices sit for w = 0: mid-range for differential pairs, the bottom for one-sided."""
        return 0.5 if self.differential else 0.0

    def weight(self, now: float) -> torch.Tensor:
        """The weights reads see now, in a buffer that the next call overwrites."""
        work = self._buffer("drift").view(self.shape)
        neg = self.visible(self.neg, now, self._buffer("visible").view(self.shape), work)
        return torch.sub(self.visible(self.pos, now, self._weight, work), neg, out=self._weight).mul_(self.scale)

    def visible(self, dev: Devices, now: float, out: torch.Tensor | None = None,
                work: torch.Tensor | None = None) -> torch.Tensor:
        """``dev.visible``: the conductance of one polarity as reads see it, its drift's power computed by the kernel
        where it computes the transcendentals (numerics = "native")."""
        return dev.visible(now, self.cfg.time.drift_t0, out, work, self._random)

    def program(self, w: torch.Tensor, gen: torch.Generator, now: float) -> int:
        """Write ``w`` by write-and-verify (to within ``program_noise``); returns how many weights were clipped."""
        d = w.to(self.device, self.dtype) / self.scale
        clipped = int((d.abs() > 1).sum())
        d = d.clamp(-1, 1)
        if self.differential:
            targets = (self.reference + d / 2, self.reference - d / 2)
        else:
            targets = (d.clamp_min(0), (-d).clamp_min(0))
        for dev, target in zip((self.pos, self.neg), targets):
            self._set(dev, target, gen, now)
        return clipped

    def _set(self, dev: Devices, target: torch.Tensor, gen: torch.Generator, now: float) -> None:
        if self.cfg.variation.program_noise:
            target = target + self.cfg.variation.program_noise * self._randn(gen)
        dev.g = self._clip(dev, target)
        if dev.offset is not None:
            dev.offset.zero_()
        if dev.written_at is not None:
            dev.written_at.fill_(now)

    def _randn(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(self.shape, generator=gen, device=self.device, dtype=self.dtype)

    @staticmethod
    def _clip(dev: Devices, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``g`` within each device's bounds; stuck devices at their stuck value."""
        c = dev.constants.values
        return torch.clamp(g, c["clip_lo"], c["clip_hi"], out=out)

    def write(self, delta_w: torch.Tensor, gen: torch.Generator, now: float) -> WriteStats:
        """Add ``delta_w`` (weight units) through pulses and return what the write did.

        The controller decides one pulse count per weight from the nominal step (both devices of a
        differential pair get it, up on one and down on the other; a one-sided pair sends it up the
        device of the change's sign). Only the devices that get pulses are touched when they are few.
        """
        s = self._buffer
        d = torch.mul(delta_w.to(self.device, self.dtype).reshape(-1),
                      (0.5 if self.differential else 1.0) / self.scale, out=s("d"))
        if self.cfg.device.dw_min == 0:  # continuous: the change itself, no pulses
            return self._send(Selection(None, None, d), torch.abs(d, out=s("travel")), 0.0, gen, now)
        chosen = self._pulse_counts(d, gen)
        return self._send(chosen, None, self._total(chosen), gen, now)

    def write_counts(self, counts: torch.Tensor, gen: torch.Generator, now: float) -> WriteStats:
        """Send whole pulse counts (signed, one per weight: + raises the weight) without rounding or cap.

        For the controllers that decide counts themselves (docs/crossbar.md, "Analog training algorithms"); a
        differential pair's devices both get the count, a one-sided pair's device of the count's sign gets it.
        """
        s = self._buffer
        if self.cfg.device.dw_min == 0:
            raise ValueError("pulse counts need a device with a finite step (dw_min > 0)")
        d = counts.to(self.device, self.dtype).reshape(-1)
        chosen = self._gather_pulsed(torch.abs(d, out=s("n")), d)
        return self._send(chosen, None, self._total(chosen), gen, now)

    def _total(self, chosen: Selection) -> float:
        """The pulses a write sends: the counts' float32 sum over the selected weights (in their order, so that
        the sum is the same whichever way they are held), on both devices of a differential pair."""
        n = chosen.n
        if chosen.per_weight:
            n = native.compact(self._kernel, chosen.idx, n, self._buffer("n_pulsed", chosen.idx.numel()))
        return float(n.sum()) * (2 if self.differential else 1)

    @property
    def step(self) -> float:
        """The nominal weight change of one pulse (on both devices of a differential pair)."""
        return self.cfg.device.dw_min * self.scale * (2 if self.differential else 1)

    def set_devices(self, pos: torch.Tensor, neg: torch.Tensor, gen: torch.Generator, now: float) -> None:
        """Program each device to a normalized conductance (within ``program_noise``), as ``program`` does."""
        for dev, target in ((self.pos, pos), (self.neg, neg)):
            self._set(dev, torch.as_tensor(target, dtype=self.dtype).to(self.device).expand(self.shape), gen, now)

    def _send(self, chosen: Selection, travel: torch.Tensor | None, total: float, gen: torch.Generator,
              now: float) -> WriteStats:
        """Give the pulse counts ``chosen.n`` (nominal travel ``travel``, ``n`` steps if None; direction the sign of
        ``chosen.d``; n None: a continuous device) to the devices."""
        stats = WriteStats(pulses=total, writes=1)
        if chosen.n is not None and self._kernel is not None:
            stats.saturated = self._send_fused(chosen, gen, now)
        else:
            stats.saturated = self._send_tensors(*chosen[:3], travel, gen, now)
        if not self.differential:
            stats.refreshed = self._refresh(gen, now)
        return stats

    def _send_fused(self, chosen: Selection, gen: torch.Generator, now: float) -> int:
        """``_send`` through the fused write kernel (native.py), one polarity after the other, drawing the same
        random numbers in the same order as the tensor path (numerics = "torch"), or a seed per noisy polarity from
        which the kernel draws them (numerics = "native"); returns the saturated devices."""
        s, var, dw = self._buffer, self.cfg.variation, self.cfg.device.dw_min
        idx, n, d, per_weight = chosen
        size, saturated = (n if idx is None else idx).numel(), 0
        for polarity, dev in ((1, self.pos), (-1, self.neg)):
            if self._random is not None:  # a seed only where a noise is drawn, so that noiseless writes draw nothing
                noisy = var.dw_min_std or dev.offset is not None
                noise = native.Drawn(native.seed(gen) if noisy else 0, var.dw_min_std, var.write_noise_std * dw)
            else:
                c2c, write = self._normals(size, bool(var.dw_min_std), dev.offset is not None, gen)
                noise = (c2c, var.dw_min_std, write, var.write_noise_std * dw)
            saturated += native.respond(self._kernel, self.cfg.response, dev, idx, n, d, per_weight, polarity,
                                        not self.differential, dw, noise, now, s)
        return saturated

    def _send_tensors(self, idx: torch.Tensor | None, n: torch.Tensor | None, d: torch.Tensor,
                      travel: torch.Tensor | None, gen: torch.Generator, now: float) -> int:
        """``_send`` in tensor operations; returns the saturated devices."""
        s = self._buffer
        if travel is None:
            travel = torch.mul(n, self.cfg.device.dw_min, out=s("travel", n.numel()))
        size = travel.numel()
        sign = torch.sign(d, out=s("sign", size))
        saturated = 0
        directions = ((self.pos, sign), (self.neg, torch.neg(sign, out=s("down", size))))
        if self.differential:  # one count per pair: up on one device, down on the other
            pulsed = None if idx is not None else torch.sign(travel, out=s("pulsed"))
            c2c = self._c2c(n)
            for dev, direction in directions:
                up = torch.clamp_min(direction, 0, out=s("up", size))
                saturated += self._respond(dev, idx, Pulses(travel, up, direction, n, pulsed, c2c), gen, now)
            return saturated
        for dev, direction in directions:  # the device of the change's sign goes up
            side = torch.clamp_min(direction, 0, out=s("up", size))
            n_side = None if n is None else torch.mul(n, side, out=s("n_side", size))
            amount = torch.mul(travel, side, out=s("travel_side", size))
            pulses = Pulses(amount, 1.0, 1.0, n_side, torch.sign(amount, out=s("pulsed", size)), self._c2c(n_side))
            saturated += self._respond(dev, idx, pulses, gen, now)
        return saturated

    def _pulse_counts(self, d: torch.Tensor, gen: torch.Generator) -> Selection:
        """Pulse counts for the flat requested changes ``d``."""
        s = self._buffer
        mode = self.cfg.write.pulse_mode
        x = torch.abs(d, out=s("n")).mul_(1 / self.cfg.device.dw_min)  # requests in pulses
        sparse = None
        if mode == "stochastic" and self._random is None:  # the kernel rounds every weight faster than this samples
            if self._sparse_skips:  # writes were dense lately: try the sparse path again every 16th write
                self._sparse_skips -= 1
            else:
                sparse = self._sparse_stochastic(x, gen)
                self._sparse_skips = 15 if sparse is None else 0
        if sparse is not None:
            idx, n = sparse
            return Selection(idx, n, d.index_select(0, idx))
        if mode == "exact":
            return Selection(None, x, d)
        return self._gather_pulsed(self._round(x, gen), d)

    def _gather_pulsed(self, n: torch.Tensor, d: torch.Tensor) -> Selection:
        """The weights with pulses (counts ``n`` >= 0), or every weight where more than half get pulses (gathering
        would then cost more than writing every device); the fused kernel reads the selected ones' counts in place
        where more than an eighth get pulses (a pass over every device then costs less than gathers)."""
        s = self._buffer
        lib = self._kernel if self._kernel is not None else self._random
        if lib is not None:  # the count and the indices in one pass
            idx = native.nonzero(lib, n, s("pulsed_idx", dtype=torch.int64))
            if 2 * idx.numel() > n.numel():
                return Selection(None, n, d)
        elif 2 * count(torch.sign(n, out=s("pulsed"))) > n.numel():
            return Selection(None, n, d)
        else:
            idx = self._nonzero(torch.gt(n, 0, out=s("mask", dtype=torch.bool)))
        k = idx.numel()
        if self._kernel is not None and 8 * k > n.numel():  # the kernel reads the counts in place (its MASKED pass)
            return Selection(idx, n, d, per_weight=True)
        if lib is not None:
            return Selection(idx, native.compact(lib, idx, n, s("n_pulsed", k)),
                             native.compact(lib, idx, d, s("d_pulsed", k)))
        return Selection(idx, torch.index_select(n, 0, idx, out=s("n_pulsed", k)),
                         torch.index_select(d, 0, idx, out=s("d_pulsed", k)))

    def _buffer(self, name: str, size: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Scratch buffer ``name``: ``size`` elements (as many as the array has devices by default)."""
        return self.scratch(name, self.numel if size is None else size, dtype)

    def _nonzero(self, mask: torch.Tensor) -> torch.Tensor:
        """The flat indices where ``mask`` is true (on the CPU through numpy, whose scan is ~10x faster than
        ``torch.nonzero``'s), in a buffer that the next call may overwrite."""
        if mask.device.type == "cpu":
            return torch.from_numpy(numpy.flatnonzero(mask.numpy()))
        return torch.nonzero(mask, out=self._indices.resize_(0)).squeeze(1)

    def _c2c(self, n: torch.Tensor | None) -> torch.Tensor | None:
        """Cycle-to-cycle noise per unit of change: n relative step errors add up to std |change| / sqrt(n)."""
        if not self.cfg.variation.dw_min_std:
            return None
        return torch.clamp_min(n, 1e-12, out=self._buffer("c2c", n.numel())).rsqrt_()

    def _respond(self, dev: Devices, idx: torch.Tensor | None, p: Pulses, gen: torch.Generator, now: float) -> int:
        """Give the devices (all, or the flat indices ``idx``) their pulses; returns how many of the pulsed ones
        ended clipped at a bound."""
        s, var = self._buffer, self.cfg.variation
        size = p.travel.numel()
        c = dev.constants.at(idx, p.up, self.scratch)
        flat_g = dev.g.view(-1)
        g = flat_g if idx is None else torch.index_select(flat_g, 0, idx, out=s("g", size))
        gain = c["gain"]
        amount = p.travel if not torch.is_tensor(gain) and gain == 1 else torch.mul(p.travel, gain,
                                                                                    out=s("amount", size))
        new = self.cfg.response.advance(g, Move(amount, p.up, p.sign), c, lambda name: s(f"response.{name}", size))
        normals = self._normals(size, p.c2c is not None, dev.offset is not None, gen)
        if p.c2c is not None:
            noise = normals[0].mul_(var.dw_min_std)
            new.add_(torch.sub(new, g, out=s("c2c_change", size)).abs_().mul_(p.c2c).mul_(noise))
        clipped = torch.clamp(new, c["clip_lo"], c["clip_hi"], out=flat_g if idx is None else s("clipped", size))
        outside = new.sub_(clipped)
        for mask in (p.pulsed, c.get("free")):
            if mask is not None:
                outside.mul_(mask)
        saturated = count(outside.ne_(0))
        noise = None
        if dev.offset is not None:
            noise = normals[1].mul_(var.write_noise_std * self.cfg.device.dw_min)
        if idx is None:
            if p.n is not None:
                dev.pulses.view(-1).add_(p.n)
            if noise is not None:
                dev.offset.view(-1).lerp_(noise, p.pulsed)
            if dev.written_at is not None:
                dev.written_at.view(-1).lerp_(dev.written_at.new_tensor(now), p.pulsed)
        else:
            flat_g.scatter_(0, idx, clipped)
            dev.pulses.view(-1).index_add_(0, idx, p.n)
            if noise is not None:
                dev.offset.view(-1).scatter_(0, idx, noise)
            if dev.written_at is not None:
                dev.written_at.view(-1).index_fill_(0, idx, now)
        return saturated

    def _normals(self, size: int, c2c: bool, write: bool, gen: torch.Generator) -> tuple[torch.Tensor | None, ...]:
        """Standard normals for a write's ``size`` entries: the cycle-to-cycle noise's and the write noise's (None
        where that noise is off), drawn by torch in that order or as the kernel draws them (``native.normals``)."""
        s = self._buffer
        if self._random is not None and (c2c or write):
            a, b = s("normal", size), s("normal_write", size)
            native.normals(self._random, native.seed(gen), a, b)
            return a if c2c else None, b if write else None
        return tuple(s(name, size).normal_(generator=gen) if on else None
                     for name, on in (("normal", c2c), ("normal_write", write)))

    def _sparse_stochastic(self, x: torch.Tensor, gen: torch.Generator,
                           rate: float = 1 / 32) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stochastic rounding of the flat requests ``x`` (in pulses) without a random number per device, when most
        requests are far below a pulse.

        Devices asking for more than ``rate`` pulses are rounded one by one. The others form a Bernoulli(rate)
        candidate set (geometric gaps), and a candidate asking for x pulses gets one with probability x / rate:
        each device still gets a pulse with probability x. Returns the flat indices of the pulsed devices and
        their pulse counts, or None when too many devices ask for more than ``rate`` (round densely then).
        """
        size = x.numel()
        if size < 4096:
            return None
        big = self._nonzero(torch.gt(x, rate, out=self._buffer("mask", dtype=torch.bool)))
        if 4 * big.numel() > size:
            return None
        kw = {"device": self.device, "dtype": self.dtype}
        n_big = self._round(x.index_select(0, big), gen)
        expected = size * rate
        log_miss = math.log1p(-rate)

        def gaps(count: int) -> torch.Tensor:  # Geometric(rate) >= 1 from uniforms (faster than geometric_)
            return torch.rand(count, generator=gen, **kw).log_().div_(log_miss).floor_().add_(1)

        positions = gaps(int(expected + 8 * expected ** 0.5 + 16)).cumsum(0).sub_(1)
        while positions[-1] < size - 1:  # the candidate process must cover every device (rarely needs a top-up)
            positions = torch.cat([positions, gaps(positions.numel() // 4 + 16).cumsum(0).add_(positions[-1])])
        candidates = positions[:int(torch.searchsorted(positions, float(size)))].long()  # positions are increasing
        xc = x.index_select(0, candidates)
        accept = (xc <= rate) & (torch.rand(candidates.numel(), generator=gen, **kw) * rate < xc)
        pulsed = n_big > 0
        chosen = candidates[accept]
        return torch.cat([big[pulsed], chosen]), torch.cat([n_big[pulsed], x.new_ones(chosen.numel())])

    def _round(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Requests in pulses (overwritten) to whole pulses, capped at ``max_pulses``: rounded in count mode,
        ``floor(x + u)`` with u ~ U[0, 1) in stochastic mode (floor(x) plus a Bernoulli(frac(x)) pulse; the u drawn by
        the kernel where it draws the random numbers)."""
        if self.cfg.write.pulse_mode == "count":
            n = x.round_()
        elif self._random is not None:
            return native.round_stochastic(self._random, x, native.seed(gen), self.cfg.write.max_pulses)
        else:
            n = x.add_(self._buffer("uniform", x.numel()).uniform_(generator=gen)).floor_()
        cap = self.cfg.write.max_pulses
        return n.clamp_max_(cap) if cap else n

    def _refresh(self, gen: torch.Generator, now: float) -> int:
        """Reprogram one-sided pairs in which a device has passed ``refresh_threshold`` of its range."""
        s = self._buffer
        over = torch.sub(self.pos.g, self.pos.refresh_at, out=s("over").view(self.shape))
        torch.maximum(over, torch.sub(self.neg.g, self.neg.refresh_at, out=s("over_neg").view(self.shape)), out=over)
        if float(over.max()) <= 0:
            return 0
        full = over > 0
        d = self.visible(self.pos, now) - self.visible(self.neg, now)
        keep_p, keep_n = self.pos.g.clone(), self.neg.g.clone()
        self._set(self.pos, d.clamp_min(0), gen, now)
        self._set(self.neg, (-d).clamp_min(0), gen, now)
        self.pos.g = torch.where(full, self.pos.g, keep_p)
        self.neg.g = torch.where(full, self.neg.g, keep_n)
        return int(full.sum())

    def state(self) -> dict[str, Any]:
        """The array's scale and every device's mutable state (what writes, time and wear change), as tensors."""
        out: dict[str, Any] = {"scale": self.scale, "sparse_skips": self._sparse_skips}
        for side, dev in (("pos", self.pos), ("neg", self.neg)):
            for key in MUTABLE:
                value = getattr(dev, key)
                if value is not None:
                    out[f"{side}.{key}"] = value.detach().cpu().clone()
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``state()`` into an array drawn with the same seed and the saved ``scale``."""
        self._sparse_skips = int(state["sparse_skips"])
        for side, dev in (("pos", self.pos), ("neg", self.neg)):
            for key in MUTABLE:
                if getattr(dev, key) is not None:
                    getattr(dev, key).copy_(state[f"{side}.{key}"])

    def elapse(self, seconds: float, gen: torch.Generator) -> None:
        """Decay towards the pair's reference and diffuse, for ``seconds`` of simulated time."""
        time = self.cfg.time
        for dev in (self.pos, self.neg):
            if time.lifetime:
                dev.g.sub_(self.reference).mul_(math.exp(-seconds / time.lifetime)).add_(self.reference)
            if time.diffusion:
                dev.g.add_(self._randn(gen).mul_(time.diffusion * seconds ** 0.5))
            self._clip(dev, dev.g, out=dev.g)

    def symmetry_points(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per device: the conductance alternating up/down pulses converge to (None without one)."""
        out = []
        for dev in (self.pos, self.neg):
            ratio = torch.as_tensor(dev.gain_down, dtype=torch.float64) / torch.as_tensor(dev.gain_up,
                                                                                          dtype=torch.float64)
            lo, hi = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (dev.lo, dev.hi))
            out.append(self.cfg.response.symmetry_point(ratio.cpu(), lo, hi))
        return out[0], out[1]
