"""How a device's conductance answers pulses: closed forms for n pulses at once, and the symmetry point.

A conductance ``g`` lives in the device's bounds ``[lo, hi]``; ``z = (g - mid) / half`` in ``[-1, 1]``.
``advance`` is the signed sum of the nominal step sizes of the pulses (``n * step``; down steps already
scaled by the device's down/up ratio). ``n`` pulses are applied at once, never one by one:

* constant: ``g + advance`` (exact);
* soft bounds (up step ``1 - slope_up z``, down step ``1 + slope_down z``): the pulse map is affine in
  ``g``, so the mean after ``n`` pulses is exact: ``g* + (g - g*) (1 - step slope / half)^n``;
* exponential (up step ``exp(-gamma_up z)``, down ``exp(gamma_down z)``) and measured tables: the
  solution of ``dg/dn = step f(g)`` (exact up to O(step) per pulse), through the pulse coordinate
  ``P(z) = integral dz / f(z)``, which ``n`` pulses advance by ``n step / half``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DeviceConfig

_TABLE_POINTS = 1025


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing), clamped at the ends."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + t * (f1 - f0)


@dataclass
class Table:
    """A measured response, resampled on a fine grid with its pulse coordinates for both directions."""

    z: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    p_up: torch.Tensor  # integral from -1 to z of dz / f_up: grows with z
    p_down: torch.Tensor  # integral from z to 1 of dz / f_down: grows as z falls

    @staticmethod
    def build(cfg: DeviceConfig, device: torch.device, dtype: torch.dtype) -> "Table":
        kw = {"device": device, "dtype": torch.float64}
        zp = torch.tensor(cfg.table_g, **kw) * 2 - 1
        z = torch.linspace(-1, 1, _TABLE_POINTS, **kw)
        up = interp(z, zp, torch.tensor(cfg.table_up, **kw))
        down = interp(z, zp, torch.tensor(cfg.table_down, **kw))
        dz = z[1] - z[0]

        def cumulative(f: torch.Tensor) -> torch.Tensor:
            inv = 1 / f
            return torch.cat([inv.new_zeros(1), torch.cumsum((inv[1:] + inv[:-1]) * dz / 2, 0)])

        p_up = cumulative(up)
        p_down = cumulative(down.flip(0)).flip(0)
        p_down = p_down.max() - p_down  # increasing in z for interpolation; falls as z falls
        cast = {"device": device, "dtype": dtype}
        return Table(z.to(**cast), up.to(**cast), down.to(**cast), p_up.to(**cast), p_down.to(**cast))


@dataclass
class SoftBounds:
    """Per-device constants of the soft-bounds closed form: where each direction saturates and how fast.

    ``n`` pulses adding up to ``amount`` move ``g`` to ``target + (g - target) exp(amount * rate)``.
    ``None`` for a direction with slope 0 (a constant step).
    """

    target_up: torch.Tensor | float | None
    rate_up: torch.Tensor | float | None
    target_down: torch.Tensor | float | None
    rate_down: torch.Tensor | float | None

    @staticmethod
    def build(cfg: DeviceConfig, lo, hi, step_up, step_down) -> "SoftBounds":
        mid, half = (lo + hi) / 2, (hi - lo) / 2

        def rate(slope: float, step):
            # log(1 - step slope / half) per unit of amount, i.e. per pulse / step; -slope / half as step -> 0
            x = step * slope / half
            if not torch.is_tensor(x):
                x = torch.tensor(float(x), dtype=torch.float64)
            per_unit = torch.where(x > 0, torch.log1p(-x.clamp(max=1 - 1e-7)) / x.clamp(min=1e-30), -torch.ones_like(x))
            return per_unit * slope / half

        up = (mid + half / cfg.slope_up, rate(cfg.slope_up, step_up)) if cfg.slope_up else (None, None)
        down = (mid - half / cfg.slope_down, rate(cfg.slope_down, step_down)) if cfg.slope_down else (None, None)
        return SoftBounds(up[0], up[1], down[0], down[1])


def advance(cfg: DeviceConfig, g: torch.Tensor, up_amount: torch.Tensor, down_amount: torch.Tensor,
            lo, hi, step_up, step_down, table: Table | None = None, soft: SoftBounds | None = None) -> torch.Tensor:
    """The conductance after pulses that add up to ``up_amount`` (>= 0) up or ``down_amount`` (>= 0) down.

    ``step_up``/``step_down`` are the per-device sizes of one pulse (0 for continuous writes), used by the
    exact discrete soft-bounds form (``soft``: its constants, precomputed by the caller or built here).
    Each device gets pulses of one direction only; a device without pulses keeps ``g`` exactly. Not
    clipped: the caller applies the bounds (and stuck devices).
    """
    r = cfg.response
    if cfg.linear_response:
        return g + up_amount - down_amount
    if r == "soft_bounds":
        soft = soft or SoftBounds.build(cfg, lo, hi, step_up, step_down)
        new = g
        for target, rate, amount, sign in ((soft.target_up, soft.rate_up, up_amount, 1),
                                           (soft.target_down, soft.rate_down, down_amount, -1)):
            if target is None:
                new = new + sign * amount
            else:  # g + (g - target) expm1(amount rate): exactly g where amount is 0
                new = new + (g - target) * torch.expm1(amount * rate)
        return new
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    z = (g - mid) / half
    if r == "exponential":
        new = z + (up_amount - down_amount) / half
        if cfg.gamma_up > 0:
            gu = cfg.gamma_up
            new = torch.where(up_amount > 0, torch.log(torch.exp(gu * z) + gu * up_amount / half) / gu, new)
        if cfg.gamma_down > 0:
            gd = cfg.gamma_down
            new = torch.where(down_amount > 0, -torch.log(torch.exp(-gd * z) + gd * down_amount / half) / gd, new)
        return mid + half * new
    zu = interp(interp(z, table.z, table.p_up) + up_amount / half, table.p_up, table.z)
    zd = interp(interp(z, table.z, table.p_down) - down_amount / half, table.p_down, table.z)
    return mid + half * torch.where(up_amount > 0, zu, torch.where(down_amount > 0, zd, z))


def symmetry_point(cfg: DeviceConfig, down_ratio, lo, hi, table: Table | None = None):
    """The conductance where an up and a down pulse are equally large (``f_up = down_ratio f_down``).

    Alternating up and down pulses converge there; ``None`` for a constant response (no such point:
    any asymmetry drives the device to a bound).
    """
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    ratio = torch.as_tensor(down_ratio, dtype=torch.float64)
    if cfg.response == "soft_bounds" and (cfg.slope_up or cfg.slope_down):
        z = (1 - ratio) / (cfg.slope_up + ratio * cfg.slope_down)
    elif cfg.response == "exponential" and (cfg.gamma_up or cfg.gamma_down):
        z = -torch.log(ratio) / (cfg.gamma_up + cfg.gamma_down)
    elif cfg.response == "table":
        lo_z, hi_z = -torch.ones_like(ratio), torch.ones_like(ratio)
        tz, tu, td = (t.double().cpu() for t in (table.z, table.up, table.down))
        for _ in range(60):  # bisection on f_up - ratio f_down, which falls with z
            m = (lo_z + hi_z) / 2
            above = interp(m, tz, tu) - ratio * interp(m, tz, td) > 0
            lo_z, hi_z = torch.where(above, m, lo_z), torch.where(above, hi_z, m)
        z = (lo_z + hi_z) / 2
    else:
        return None
    return mid + half * z.clamp(-1, 1).to(mid.dtype if torch.is_tensor(mid) else torch.float64)
