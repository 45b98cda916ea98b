"""Response models: how a device's conductance answers pulses, one frozen dataclass per model.

A conductance ``g`` lives in its device's bounds ``[lo, hi]``; ``z = (g - mid) / half`` lies in ``[-1, 1]``. A write
gives each device pulses of one direction, described by a ``Move``. A model applies ``n`` pulses at once in closed
form (``advance``), never one by one, and knows where an up and a down pulse are equally large (``symmetry_z``, or
``symmetry_point`` for a model that is not a function of ``z`` alone).
The equations are in docs/crossbar.md, "Response models".

A new model is one subclass of ``ResponseModel``: its parameters as fields, ``name`` (the value of
``crossbar.response`` that selects it), ``advance`` and, if it has one, ``symmetry_z``. Subclassing registers it in
``RESPONSES``; its field names become ``crossbar.<key>`` parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, NamedTuple, Union

import torch

from .errors import check

Value = Union[torch.Tensor, float]
"""A per-device tensor, or one value shared by every device."""

RESPONSES: dict[str, type["ResponseModel"]] = {}
"""Every response model by its ``name``."""

STEP_ORIGIN = 0.5
"""Where a soft-bounds step has its drawn size: the middle of the nominal range ``[0, 1]`` (a differential pair's
devices at weight 0; aihwkit's ``w = 0`` for a range centred on it)."""
BOUND_REFERENCES = ("device", "nominal")
"""What a soft-bounds slope is relative to: each device's own bounds, or the nominal ones."""

Buffers = Callable[[str], torch.Tensor]
"""``buf(name)``: a reusable scratch tensor shaped like the conductances of a write, one per name."""

_TABLE_POINTS = 1025


class Move(NamedTuple):
    """The pulses each device of a write gets.

    ``amount``: nominal travel, ``n`` times the device's own step in its direction (>= 0). ``up``: 1 for a device
    pulsed up, 0 for one pulsed down (a float 1.0 when every device goes up). ``sign``: +1 or -1 likewise.
    """

    amount: torch.Tensor
    up: Value
    sign: Value


def select(up: Value, up_value: Value, down_value: Value, out: torch.Tensor | None = None) -> Value:
    """Per device, ``up_value`` where ``up`` is 1 and ``down_value`` where it is 0 (a lerp: exact at 0 and 1).

    Computed into ``out`` when it differs per device; otherwise one of the values itself (never to be written to).
    """
    if not torch.is_tensor(up):
        return up_value if up else down_value
    if not (torch.is_tensor(up_value) or torch.is_tensor(down_value)) and up_value == down_value:
        return up_value
    kw = {"dtype": up.dtype, "device": up.device}
    return torch.lerp(torch.as_tensor(down_value, **kw), torch.as_tensor(up_value, **kw), up, out=out)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing), clamped at the ends."""
    from . import native  # which builds on this module

    fast = native.interp(x, xp, fp)
    if fast is not None:
        return fast
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + t * (f1 - f0)


def _mid_half(lo: Value, hi: Value) -> tuple[Value, Value]:
    return (lo + hi) / 2, (hi - lo) / 2


@dataclass(frozen=True)
class ResponseModel:
    """Base of the response models; a subclass registers itself in ``RESPONSES`` under its ``name``."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        RESPONSES[cls.name] = cls

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The model's parameters, which are the ``crossbar.<key>`` names that belong to it."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def validate(self) -> None:
        """Raise ``CrossbarConfigError`` naming a bad parameter."""

    def constants(self, lo: Value, hi: Value, step_up: Value, step_down: Value,
                  cast: Callable[[Value], Value]) -> dict[str, Value | tuple[Value, Value]]:
        """Per-device constants ``advance`` needs, from the float64 draws; ``cast`` moves one to the simulation.

        A value may be an ``(up, down)`` pair: ``advance`` then gets the one of each device's direction.
        """
        return {}

    def advance(self, g: torch.Tensor, move: Move, c: Mapping[str, Value], buf: Buffers) -> torch.Tensor:
        """The conductance after ``move``, not clipped, in one of ``buf``'s tensors (or a new one).

        ``c`` holds ``constants()`` for these devices; ``g`` and ``c`` are read only.
        """
        raise NotImplementedError

    def symmetry_z(self, down_ratio: torch.Tensor) -> torch.Tensor | None:
        """Where (in z, float64) an up step equals ``down_ratio`` down steps; None without such a point."""
        return None

    def symmetry_point(self, down_ratio: Value, lo: Value, hi: Value) -> torch.Tensor | None:
        """The conductance alternating up and down pulses converge to (float64), or None."""
        z = self.symmetry_z(torch.as_tensor(down_ratio, dtype=torch.float64))
        if z is None:
            return None
        mid, half = _mid_half(lo, hi)
        return mid + half * z.clamp(-1, 1).to(mid.dtype if torch.is_tensor(mid) else torch.float64)


@dataclass(frozen=True)
class ConstantStep(ResponseModel):
    """Every pulse moves the conductance by the device's step, wherever it is (no symmetry point)."""

    name: ClassVar[str] = "constant"

    def advance(self, g, move, c, buf):
        if torch.is_tensor(move.sign):
            return torch.addcmul(g, move.sign, move.amount, out=buf("new"))
        return torch.add(g, move.amount, alpha=move.sign, out=buf("new"))


@dataclass(frozen=True)
class SoftBounds(ResponseModel):
    """Steps shrink linearly towards the bound they approach, from their drawn size at the nominal middle.

    At ``g`` an up step is ``step_up (1 - slope_up (g - r) / (hi - r))`` and a down step
    ``step_down (1 + slope_down (g - r) / (r - lo))``, with ``r = STEP_ORIGIN`` and ``hi``, ``lo`` the device's
    own bounds (``bound_reference = "device"``, aihwkit's soft bounds) or the nominal ones (``"nominal"``, aihwkit's
    linear step with ``mean_bound_reference``): a device's step at ``w = 0`` is its drawn step whatever its bounds.
    """

    name: ClassVar[str] = "soft_bounds"
    slope_up: float = 1.0
    slope_down: float = 1.0
    bound_reference: str = "device"

    def validate(self) -> None:
        for key in ("slope_up", "slope_down"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "a number in [0, 1]")
        check(self.bound_reference in BOUND_REFERENCES, "bound_reference", self.bound_reference,
              f"one of {BOUND_REFERENCES}")

    def _reaches(self, lo: Value, hi: Value) -> tuple[Value, Value]:
        """How far the slopes reach from ``STEP_ORIGIN``, up and down: to each device's bound or the nominal."""
        if self.bound_reference == "nominal":
            return STEP_ORIGIN, STEP_ORIGIN
        return hi - STEP_ORIGIN, STEP_ORIGIN - lo

    def constants(self, lo, hi, step_up, step_down, cast):
        """Per direction with a slope: the level pulses approach, and the log of the per-pulse factor per amount."""
        reach_up, reach_down = self._reaches(lo, hi)
        out = {}
        for d, slope, step, sign, reach in (("up", self.slope_up, step_up, 1, reach_up),
                                            ("down", self.slope_down, step_down, -1, reach_down)):
            if slope:
                out[f"target_{d}"] = cast(STEP_ORIGIN + sign * reach / slope)
                out[f"rate_{d}"] = cast(_soft_rate(slope, step, reach))
        if self.slope_up and self.slope_down:
            return {key: (out[f"{key}_up"], out[f"{key}_down"]) for key in ("target", "rate")}
        return out

    def advance(self, g, move, c, buf):
        """The pulse map is affine in g, so n pulses give exactly ``g* + (g - g*) (1 - step slope / reach)^n``."""
        if self.slope_up and self.slope_down:
            return _saturate(g, move.amount, c["target"], c["rate"], buf)
        ends = [_saturate(g, move.amount, c[f"target_{d}"], c[f"rate_{d}"], buf, d) if slope
                else torch.add(g, move.amount, alpha=sign, out=buf(d))
                for d, slope, sign in (("up", self.slope_up, 1), ("down", self.slope_down, -1))]
        return select(move.up, *ends, out=buf("new"))

    def symmetry_point(self, down_ratio, lo, hi):
        """Where ``step_up (1 - s_up x / reach_up) = step_down (1 + s_down x / reach_down)``, x = g - r."""
        if not (self.slope_up or self.slope_down):
            return None
        ratio = torch.as_tensor(down_ratio, dtype=torch.float64)
        reach_up, reach_down = (torch.as_tensor(v, dtype=torch.float64) for v in self._reaches(lo, hi))
        x = (1 - ratio) / (self.slope_up / reach_up + ratio * self.slope_down / reach_down)
        return (STEP_ORIGIN + x).clamp(torch.as_tensor(lo, dtype=torch.float64),
                                       torch.as_tensor(hi, dtype=torch.float64))


def _saturate(g: torch.Tensor, amount: torch.Tensor, target: Value, rate: Value, buf: Buffers,
              name: str = "new") -> torch.Tensor:
    """``g + (g - target) expm1(amount rate)`` into ``buf(name)`` (exactly ``g`` where ``amount`` is 0)."""
    factor = torch.mul(amount, rate, out=buf(name)).expm1_()
    return factor.mul_(torch.sub(g, target, out=buf("target"))).add_(g)


def _soft_rate(slope: float, step: Value, half: Value) -> torch.Tensor:
    """``log(1 - step slope / half)`` per unit of amount (per pulse / step); ``-slope / half`` as step -> 0."""
    x = step * slope / half
    if not torch.is_tensor(x):
        x = torch.tensor(float(x), dtype=torch.float64)
    per_unit = torch.where(x > 0, torch.log1p(-x.clamp(max=1 - 1e-7)) / x.clamp(min=1e-30), -torch.ones_like(x))
    return per_unit * slope / half


@dataclass(frozen=True)
class ExponentialStep(ResponseModel):
    """Steps fall exponentially towards the bound they approach: up ``exp(-gamma_up z)``, down ``exp(gamma_down z)``."""

    name: ClassVar[str] = "exponential"
    gamma_up: float = 0.0
    gamma_down: float = 0.0

    def validate(self) -> None:
        for key in ("gamma_up", "gamma_down"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "a finite number >= 0")

    def constants(self, lo, hi, step_up, step_down, cast):
        return dict(zip(("mid", "half"), _mid_half(cast(lo), cast(hi))))

    def advance(self, g, move, c, buf):
        """Solves ``dz/dn = (step / half) exp(-sign gamma z)`` exactly; a direction with gamma 0 steps linearly."""
        mid, half = c["mid"], c["half"]
        amount, sign = move.amount, move.sign
        z = torch.sub(g, mid, out=buf("z")).div_(half)
        linear = torch.mul(amount, sign, out=buf("new")).div_(half).add_(z)
        gamma = select(move.up, self.gamma_up, self.gamma_down, out=buf("gamma"))
        signed_gamma = torch.mul(sign, gamma, out=buf("curve")) if torch.is_tensor(sign) else sign * gamma
        curve = torch.mul(z, signed_gamma, out=buf("curve")).exp_()  # z is free from here on
        curve.add_(torch.mul(amount, gamma, out=buf("z")).div_(half)).log_().div_(gamma).mul_(sign)
        if self.gamma_up > 0 and self.gamma_down > 0:
            linear.lerp_(curve, torch.sign(amount, out=buf("z")))
        else:
            linear.copy_(torch.where((amount > 0) & (torch.as_tensor(gamma, device=g.device) > 0), curve, linear))
        return linear.mul_(half).add_(mid)

    def symmetry_z(self, down_ratio):
        if not (self.gamma_up or self.gamma_down):
            return None
        return -torch.log(down_ratio) / (self.gamma_up + self.gamma_down)


@dataclass(frozen=True)
class TableResponse(ResponseModel):
    """A measured response: relative steps ``table_up`` and ``table_down`` at positions ``table_g`` in [0, 1]."""

    name: ClassVar[str] = "table"
    table_g: tuple[float, ...] = ()
    table_up: tuple[float, ...] = ()
    table_down: tuple[float, ...] = ()

    def validate(self) -> None:
        n = len(self.table_g)
        check(n >= 2 and len(self.table_up) == n and len(self.table_down) == n, "table_g", list(self.table_g),
              "at least 2 positions, with as many table_up and table_down values")
        check(all(0 <= a < b <= 1 for a, b in zip(self.table_g, self.table_g[1:])), "table_g", list(self.table_g),
              "strictly increasing positions in [0, 1]")
        for key in ("table_up", "table_down"):
            check(all(v > 0 for v in getattr(self, key)), key, list(getattr(self, key)),
                  "positive relative steps (a zero step would make the device stop)")

    def constants(self, lo, hi, step_up, step_down, cast):
        return dict(zip(("mid", "half"), _mid_half(cast(lo), cast(hi))))

    def advance(self, g, move, c, buf):
        """n pulses advance the pulse coordinate ``P(z) = integral dz / f(z)`` by ``amount / half``."""
        grid = _grid(self, g.device, g.dtype)
        mid, half = c["mid"], c["half"]
        z = (g - mid) / half
        travel = move.amount / half
        new = interp(interp(z, grid.z, grid.p_up) + travel, grid.p_up, grid.z)
        if torch.is_tensor(move.up):
            down = interp(interp(z, grid.z, grid.p_down) - travel, grid.p_down, grid.z)
            new = torch.lerp(down, new, move.up)
        return mid + half * torch.lerp(z, new, move.amount.sign())

    def symmetry_z(self, down_ratio):
        grid = _grid(self, torch.device("cpu"), torch.float64)
        lo_z, hi_z = -torch.ones_like(down_ratio), torch.ones_like(down_ratio)
        for _ in range(60):  # bisection on f_up - ratio f_down, which falls with z
            m = (lo_z + hi_z) / 2
            above = interp(m, grid.z, grid.up) - down_ratio * interp(m, grid.z, grid.down) > 0
            lo_z, hi_z = torch.where(above, m, lo_z), torch.where(above, hi_z, m)
        return (lo_z + hi_z) / 2


class Grid(NamedTuple):
    """A measured response on a fine grid of z, with its pulse coordinates for both directions."""

    z: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    p_up: torch.Tensor  # integral from -1 to z of dz / f_up: grows with z
    p_down: torch.Tensor  # integral from z to 1 of dz / f_down, flipped to grow with z


@functools.lru_cache(maxsize=32)
def _grid(table: TableResponse, device: torch.device, dtype: torch.dtype) -> Grid:
    kw = {"device": device, "dtype": torch.float64}
    zp = torch.tensor(table.table_g, **kw) * 2 - 1
    z = torch.linspace(-1, 1, _TABLE_POINTS, **kw)
    up = interp(z, zp, torch.tensor(table.table_up, **kw))
    down = interp(z, zp, torch.tensor(table.table_down, **kw))
    dz = z[1] - z[0]

    def cumulative(f: torch.Tensor) -> torch.Tensor:
        inv = 1 / f
        return torch.cat([inv.new_zeros(1), torch.cumsum((inv[1:] + inv[:-1]) * dz / 2, 0)])

    p_up = cumulative(up)
    p_down = cumulative(down.flip(0)).flip(0)
    p_down = p_down.max() - p_down
    return Grid(*(t.to(device, dtype) for t in (z, up, down, p_up, p_down)))
