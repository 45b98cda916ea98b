"""Conductance pairs that hold one parameter tensor: fixed device draws, the write path, time and wear.

A weight is ``w = scale (g+ - g-)`` with normalized conductances. Device-to-device values (bounds,
step sizes, asymmetry, stuck devices, drift exponents) are drawn once from the seed on the CPU, so a
seed gives the same devices on every torch device. Pulses, noise and time are vectorised over all
devices at once (see ``response`` for the n-pulse closed forms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import response
from .config import DeviceConfig


_CONSTANTS = ("lo", "hi", "gain_up", "gain_down", "stuck", "stuck_value")


@dataclass
class Devices:
    """One polarity of an array: conductances and the per-device constants drawn for them."""

    g: torch.Tensor  # hidden conductance, what pulses act on
    lo: torch.Tensor | float
    hi: torch.Tensor | float
    gain_up: torch.Tensor | float  # this device's up step / the nominal dw_min
    gain_down: torch.Tensor | float  # this device's down step / the nominal dw_min
    stuck: torch.Tensor | None  # mask of stuck devices ...
    stuck_value: torch.Tensor | None  # ... and the conductance they are stuck at
    nu: torch.Tensor | float  # drift exponent
    offset: torch.Tensor | None = None  # write noise seen by reads, redrawn at each write
    written_at: torch.Tensor | None = None  # simulated time of each device's last write (drift)
    pulses: torch.Tensor | None = None  # pulses received, per device
    soft: response.SoftBounds | None = None  # soft-bounds constants, fixed with the device
    packed: torch.Tensor | None = None  # the per-device constants above stacked [devices, fields], for one gather
    packed_rows: dict[str, int] | None = None

    def constants_at(self, idx: torch.Tensor | None) -> dict[str, object]:
        """The fixed per-device values (bounds, gains, stuck, soft-bounds constants) of the flat indices ``idx``."""
        values: dict[str, object] = {name: getattr(self, name) for name in _CONSTANTS}
        if self.soft is not None:
            values.update({f"soft.{k}": v for k, v in vars(self.soft).items()})
        if idx is None or not self.packed_rows:
            return values
        rows = self.packed.index_select(0, idx)
        values.update({name: rows[:, i] for name, i in self.packed_rows.items()})
        if self.stuck is not None:
            values["stuck"] = values["stuck"] > 0.5
        return values

    def pack(self) -> None:
        """Stack the tensor-valued constants so that a sparse write gathers them in one call."""
        values = self.constants_at(None)
        names = [k for k, v in values.items() if torch.is_tensor(v) and v.dim()]
        if names:
            self.packed_rows = {k: i for i, k in enumerate(names)}
            self.packed = torch.stack([values[k].reshape(-1).to(self.g.dtype) for k in names], dim=1)


    def visible(self, now: float, t0: float) -> torch.Tensor:
        """The conductance a read sees: hidden value, write noise and drift since the last write."""
        g = self.g if self.offset is None else self.g + self.offset
        if self.written_at is not None:
            g = g * ((now - self.written_at + t0) / t0).pow(-self.nu)
        return g


def _spread(gen: torch.Generator, shape: tuple[int, ...], std: float, lognormal: bool = False) -> torch.Tensor | float:
    """A per-device multiplier with mean 1 and relative spread ``std`` (1.0 when there is none)."""
    if std == 0:
        return 1.0
    xi = torch.randn(shape, generator=gen, dtype=torch.float64)
    if lognormal:
        return torch.exp(std * xi - std * std / 2)
    return (1 + std * xi).clamp_min(0.0)


def draw_devices(cfg: DeviceConfig, shape: tuple[int, ...], gen: torch.Generator) -> Devices:
    """Draw the fixed (device-to-device) properties of ``prod(shape)`` devices, float64 on the CPU."""
    lo: torch.Tensor | float = 0.0
    hi: torch.Tensor | float = 1.0
    if cfg.bound_dtod:  # each bound's distance from mid-range varies by bound_dtod, relative
        lo = 0.5 - 0.5 * (1 + cfg.bound_dtod * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp_min(0.05)
        hi = 0.5 + 0.5 * (1 + cfg.bound_dtod * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp_min(0.05)
    gain = _spread(gen, shape, cfg.dw_min_dtod, cfg.dw_min_dtod_lognormal)
    up_down = cfg.up_down
    if cfg.up_down_dtod:
        up_down = (cfg.up_down + cfg.up_down_dtod * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(-0.99, 0.99)
    stuck = stuck_value = None
    if cfg.stuck_prob:
        stuck = torch.rand(shape, generator=gen, dtype=torch.float64) < cfg.stuck_prob
        split = torch.tensor(cfg.stuck_split, dtype=torch.float64)
        kind = torch.multinomial(split / split.sum(), stuck.numel(), replacement=True, generator=gen).view(shape)
        lo_t, hi_t = (torch.as_tensor(v, dtype=torch.float64).expand(shape) for v in (lo, hi))
        random = lo_t + (hi_t - lo_t) * torch.rand(shape, generator=gen, dtype=torch.float64)
        stuck_value = torch.where(kind == 0, lo_t, torch.where(kind == 1, hi_t, random))
    nu: torch.Tensor | float = cfg.drift_nu
    if cfg.drift_nu_dtod:
        nu = (cfg.drift_nu + cfg.drift_nu_dtod * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp_min(0)
    return Devices(g=torch.zeros(shape, dtype=torch.float64), lo=lo, hi=hi, gain_up=gain,
                   gain_down=gain * (1 - up_down), stuck=stuck, stuck_value=stuck_value, nu=nu)


def _move(value, device: torch.device, dtype: torch.dtype):
    if torch.is_tensor(value):
        return value.to(device, torch.bool if value.dtype == torch.bool else dtype)
    return value


def _bounded(g: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """``g`` clipped to per-device (tensor) or common (float) bounds."""
    if torch.is_tensor(lo) or torch.is_tensor(hi):
        return torch.minimum(torch.maximum(g, lo if torch.is_tensor(lo) else g.new_tensor(lo)),
                             hi if torch.is_tensor(hi) else g.new_tensor(hi))
    return g.clamp(lo, hi)


@dataclass
class WriteStats:
    """What one write did to an array."""

    pulses: float = 0.0
    saturated: int = 0  # devices that ended at a bound after being pulsed
    refreshed: int = 0  # one-sided pairs reprogrammed


class PairArray:
    """The differential (or one-sided) pairs holding one parameter tensor, and its write path."""

    def __init__(self, cfg: DeviceConfig, shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
                 dtype: torch.dtype, table: response.Table | None, scale: float) -> None:
        self.cfg = cfg
        self.scale = scale
        self.table = table
        self.shape = shape
        self.device, self.dtype = device, dtype
        self.pos, self.neg = (self._place(draw_devices(cfg, shape, gen)) for _ in range(2))
        self._sparse_skips = 0

    def _place(self, d: Devices) -> Devices:
        moved = Devices(**{k: _move(v, self.device, self.dtype) for k, v in vars(d).items()})
        if self.cfg.write_noise_std:
            moved.offset = torch.zeros_like(moved.g)
        if self.cfg.drift_nu:
            moved.written_at = torch.zeros_like(moved.g)
        moved.pulses = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        if self.cfg.response == "soft_bounds" and self.cfg.dw_min > 0:
            soft = response.SoftBounds.build(self.cfg, d.lo, d.hi, self.cfg.dw_min * d.gain_up,
                                             self.cfg.dw_min * d.gain_down)
            moved.soft = response.SoftBounds(*(_move(v, self.device, self.dtype) for v in vars(soft).values()))
        moved.pack()
        return moved

    @property
    def reference(self) -> float:
        """Where a pair's devices sit for w = 0: mid-range for differential pairs, the bottom for one-sided."""
        return 0.5 if self.cfg.pair == "differential" else 0.0

    def weight(self, now: float) -> torch.Tensor:
        t0 = self.cfg.drift_t0
        return self.scale * (self.pos.visible(now, t0) - self.neg.visible(now, t0))

    def program(self, w: torch.Tensor, gen: torch.Generator, now: float) -> int:
        """Write ``w`` by write-and-verify (to within ``program_noise``); returns how many weights were clipped."""
        d = w.to(self.device, self.dtype) / self.scale
        clipped = int((d.abs() > 1).sum())
        d = d.clamp(-1, 1)
        if self.cfg.pair == "differential":
            targets = (self.reference + d / 2, self.reference - d / 2)
        else:
            targets = (d.clamp_min(0), (-d).clamp_min(0))
        for dev, target in zip((self.pos, self.neg), targets):
            self._set(dev, target, gen, now)
        return clipped

    def _set(self, dev: Devices, target: torch.Tensor, gen: torch.Generator, now: float) -> None:
        if self.cfg.program_noise:
            target = target + self.cfg.program_noise * self._randn(gen)
        dev.g = self._clip(dev, target)
        if dev.offset is not None:
            dev.offset.zero_()
        if dev.written_at is not None:
            dev.written_at.fill_(now)

    def _randn(self, gen: torch.Generator, shape: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
        return torch.randn(shape or self.shape, generator=gen, device=self.device, dtype=self.dtype)

    def _clip(self, dev: Devices, g: torch.Tensor) -> torch.Tensor:
        g = _bounded(g, dev.lo, dev.hi)
        return g if dev.stuck is None else torch.where(dev.stuck, dev.stuck_value, g)

    def write(self, delta_w: torch.Tensor, gen: torch.Generator, now: float) -> WriteStats:
        """Add ``delta_w`` (weight units) through pulses and return what the write did.

        The controller decides one pulse count per weight from the nominal step (both devices of a
        differential pair get it, up on one and down on the other; a one-sided pair sends it up the
        device of the change's sign). Only the devices that get pulses are touched when they are few.
        """
        differential = self.cfg.pair == "differential"
        d = delta_w.to(self.device, self.dtype) * ((0.5 if differential else 1.0) / self.scale)
        dw = self.cfg.dw_min
        if dw == 0:
            idx, n, signed, total = None, None, d, 0.0
        else:
            sparse = None
            if self.cfg.pulse_mode == "stochastic":
                if self._sparse_skips:  # writes were dense lately: try the sparse path again every 16th write
                    self._sparse_skips -= 1
                else:
                    sparse = self._sparse_stochastic(d, gen)
                    self._sparse_skips = 15 if sparse is None else 0
            if sparse is not None:
                idx, n = sparse
                d = d.view(-1).index_select(0, idx)
            else:
                n = self._pulses(d, gen)
                flat = n.view(-1)
                idx = flat.nonzero().squeeze(1)
                if self.cfg.pulse_mode == "exact" or 2 * idx.numel() > flat.numel():  # dense: gathering costs more
                    idx = None
                else:
                    n = flat[idx]
                    d = d.view(-1)[idx]
            signed = n.copysign(d).mul_(dw)
            total = float(n.sum()) * (2 if differential else 1)
        if differential:
            stats = self._respond(self.pos, idx, signed, n, gen, now)
            stats.saturated += self._respond(self.neg, idx, -signed, n, gen, now).saturated
        else:
            up, down = signed > 0, signed < 0
            stats = self._respond(self.pos, idx, signed.clamp_min(0), None if n is None else n * up, gen, now)
            stats.saturated += self._respond(self.neg, idx, (-signed).clamp_min_(0),
                                             None if n is None else n * down, gen, now).saturated
            stats.refreshed = self._refresh(gen, now)
        stats.pulses = total
        return stats

    def _sparse_stochastic(self, request: torch.Tensor, gen: torch.Generator,
                           rate: float = 1 / 32) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stochastic rounding without a random number per device, when most requests are far below a pulse.

        Devices asking for more than ``rate`` pulses are rounded one by one. The others form a Bernoulli(rate)
        candidate set (geometric gaps), and a candidate asking for x pulses gets one with probability x / rate:
        each device still gets a pulse with probability x. Returns the flat indices of the pulsed devices and
        their pulse counts, or None when too many devices ask for more than ``rate`` (round densely then).
        """
        x = request.abs().view(-1).mul_(1 / self.cfg.dw_min)
        size = x.numel()
        big = (x > rate).nonzero().squeeze(1)
        if 4 * big.numel() > size or size < 4096:
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

    def _pulses(self, request: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """How many pulses (a real number in exact mode) the controller sends for each requested change."""
        n = request.abs().mul_(1 / self.cfg.dw_min)
        return n if self.cfg.pulse_mode == "exact" else self._round(n, gen)

    def _round(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Requests in pulses (overwritten) to whole pulses, capped at ``max_pulses``: rounded in count mode,
        ``floor(x + u)`` with u ~ U[0, 1) in stochastic mode (floor(x) plus a Bernoulli(frac(x)) pulse)."""
        if self.cfg.pulse_mode == "count":
            n = x.round_()
        else:
            n = x.add_(torch.rand(x.shape, generator=gen, device=self.device, dtype=self.dtype)).floor_()
        return n.clamp_max_(self.cfg.max_pulses) if self.cfg.max_pulses else n

    def _respond(self, dev: Devices, idx: torch.Tensor | None, signed: torch.Tensor, n: torch.Tensor | None,
                 gen: torch.Generator, now: float) -> WriteStats:
        """The devices' answer to a nominal change ``signed`` (all devices, or the flat indices ``idx``)."""
        cfg = self.cfg

        c = dev.constants_at(idx)
        g = dev.g if idx is None else dev.g.view(-1).index_select(0, idx)
        lo, hi, gain_up, gain_down = c["lo"], c["hi"], c["gain_up"], c["gain_down"]
        linear = cfg.linear_response
        if linear and not torch.is_tensor(gain_up) and gain_up == gain_down:
            new = g + signed * gain_up if gain_up != 1 else g + signed
        else:
            up_amount = (signed * gain_up).clamp_min_(0)
            down_amount = (signed * gain_down).neg_().clamp_min_(0)
            if linear:
                new = g + up_amount - down_amount
            else:
                soft = None if dev.soft is None else response.SoftBounds(
                    *(c[f"soft.{k}"] for k in vars(dev.soft)))
                new = response.advance(cfg, g, up_amount, down_amount, lo, hi, cfg.dw_min * gain_up,
                                       cfg.dw_min * gain_down, self.table, soft)
        if cfg.dw_min_std:  # c2c: n independent relative step errors add up to std * |change| / sqrt(n)
            new = new + (new - g).abs_().mul_(torch.rsqrt(n.clamp_min(1e-12))).mul_(
                cfg.dw_min_std * self._randn(gen, new.shape))
        unclipped = new
        new = _bounded(new, lo, hi)
        pulsed = signed != 0
        clipped = (unclipped != new) & pulsed
        if dev.stuck is not None:
            stuck = c["stuck"]
            new = torch.where(stuck, c["stuck_value"], new)
            clipped &= ~stuck
        saturated = int(torch.count_nonzero(clipped))
        noise = None
        if dev.offset is not None:
            noise = cfg.write_noise_std * cfg.dw_min * self._randn(gen, new.shape)
        if n is not None:
            if idx is None:
                dev.pulses += n
            else:
                dev.pulses.view(-1).index_add_(0, idx, n)
        if idx is None:
            dev.g = new
            if noise is not None:
                dev.offset = torch.where(pulsed, noise, dev.offset)
            if dev.written_at is not None:
                dev.written_at.masked_fill_(pulsed, now)
        else:
            dev.g.view(-1)[idx] = new
            if noise is not None:
                dev.offset.view(-1)[idx] = noise
            if dev.written_at is not None:
                dev.written_at.view(-1)[idx] = now
        return WriteStats(saturated=saturated)

    def _refresh(self, gen: torch.Generator, now: float) -> int:
        """Reprogram one-sided pairs in which a device has passed ``refresh_threshold`` of its range."""
        limit = [dev.lo + self.cfg.refresh_threshold * (dev.hi - dev.lo) for dev in (self.pos, self.neg)]
        full = (self.pos.g > limit[0]) | (self.neg.g > limit[1])
        count = int(full.sum())
        if count:
            d = (self.pos.visible(now, self.cfg.drift_t0) - self.neg.visible(now, self.cfg.drift_t0))
            keep_p, keep_n = self.pos.g.clone(), self.neg.g.clone()
            self._set(self.pos, d.clamp_min(0), gen, now)
            self._set(self.neg, (-d).clamp_min(0), gen, now)
            self.pos.g = torch.where(full, self.pos.g, keep_p)
            self.neg.g = torch.where(full, self.neg.g, keep_n)
        return count

    def elapse(self, seconds: float, gen: torch.Generator) -> None:
        """Decay towards the pair's reference and diffuse, for ``seconds`` of simulated time."""
        for dev in (self.pos, self.neg):
            g = dev.g
            if self.cfg.lifetime:
                g = self.reference + (g - self.reference) * math.exp(-seconds / self.cfg.lifetime)
            if self.cfg.diffusion:
                g = g + self.cfg.diffusion * seconds ** 0.5 * self._randn(gen)
            dev.g = self._clip(dev, g)

    def symmetry_points(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per device: the conductance alternating up/down pulses converge to (None without one)."""
        out = []
        for dev in (self.pos, self.neg):
            ratio = torch.as_tensor(dev.gain_down, dtype=torch.float64) / torch.as_tensor(dev.gain_up,
                                                                                          dtype=torch.float64)
            lo, hi = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (dev.lo, dev.hi))
            out.append(response.symmetry_point(self.cfg, ratio.cpu(), lo, hi, self.table))
        return out[0], out[1]
