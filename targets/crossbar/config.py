"""Device and periphery parameters of the simulated crossbar, validated, with presets and TOML files.

Conductances are normalized: a device's nominal range ``[g_min, g_max]`` maps to ``[0, 1]``, steps are
fractions of that range (DEVICE_MODELS.md). Every parameter has a default that switches its effect off,
so the ``ideal`` preset is the empty table.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .presets import PRESETS

RESPONSES = ("constant", "soft_bounds", "exponential", "table")
PULSE_MODES = ("exact", "count", "stochastic")
PAIRS = ("differential", "one_sided")
UPDATES = ("combined", "two_trains")
READ_NOISE_MODES = ("step", "equilibrium")


class CrossbarConfigError(ValueError):
    """A crossbar parameter is invalid; the message names it as ``crossbar.<key>``."""


def _check(ok: bool, key: str, value: object, valid: str) -> None:
    if not ok:
        raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected {valid}")


@dataclass(frozen=True)
class Periphery:
    """Converters on one side of the array, with a fixed scale shared by every phase (never auto-ranged).

    Outputs are in units of one full-range weight times ``in_bound`` (aihwkit's convention), so the same
    ``out_bound`` suits every array whatever its weight scale.
    """

    dac_bits: int = 0  # input converter resolution (0 = ideal, continuous)
    in_bound: float = 1.0  # inputs are clipped to [-in_bound, in_bound]
    adc_bits: int = 0  # output converter resolution (0 = ideal)
    out_bound: float = 12.0  # outputs are clipped to [-out_bound, out_bound] (output units) when adc_bits > 0
    out_noise: float = 0.0  # Gaussian noise per read, std in output units

    def validate(self, prefix: str) -> None:
        for key in ("dac_bits", "adc_bits"):
            v = getattr(self, key)
            _check(isinstance(v, int) and (v == 0 or 2 <= v <= 24), prefix + key, v,
                   "0 (ideal) or an integer in [2, 24]")
        _check(self.in_bound > 0, prefix + "in_bound", self.in_bound, "a positive number")
        _check(self.out_bound > 0, prefix + "out_bound", self.out_bound, "a positive number")
        _check(self.out_noise >= 0, prefix + "out_noise", self.out_noise, "a number >= 0")


PERIPHERY_KEYS = tuple(f.name for f in dataclasses.fields(Periphery))


@dataclass(frozen=True)
class DeviceConfig:
    """Everything DEVICE_MODELS.md lists, with its effect off by default."""

    preset: str = "ideal"
    # range and weight mapping
    g_min: float = 0.0  # uS, for reports
    g_max: float = 25.0  # uS
    bound_dtod: float = 0.0  # device-to-device spread of each bound, relative to half the range
    weight_omega: float = 0.15  # the largest |w| first programmed into a tensor takes this fraction of a pair's range
    # states and response
    dw_min: float = 0.0  # nominal step of one pulse, fraction of the range (0 = continuous: infinite states)
    dw_min_dtod: float = 0.0  # device-to-device spread of the step (relative std)
    dw_min_dtod_lognormal: bool = False
    response: str = "constant"
    slope_up: float = 1.0  # soft bounds: the up step shrinks by this fraction at the upper bound
    slope_down: float = 1.0
    gamma_up: float = 0.0  # exponential: up step ~ exp(-gamma_up * z), z in [-1, 1] across the range
    gamma_down: float = 0.0
    table_g: tuple[float, ...] = ()  # measured response: positions in [0, 1] ...
    table_up: tuple[float, ...] = ()  # ... and the relative up and down step there
    table_down: tuple[float, ...] = ()
    up_down: float = 0.0  # down step = (1 - up_down) x up step
    up_down_dtod: float = 0.0
    # noise and faults
    dw_min_std: float = 0.0  # cycle-to-cycle: std of each pulse's step, x its mean
    write_noise_std: float = 0.0  # per write, x dw_min; seen by reads, does not accumulate
    program_noise: float = 0.0  # std of a programmed conductance, fraction of the range
    stuck_prob: float = 0.0
    stuck_split: tuple[float, ...] = (0.5, 0.5, 0.0)  # stuck at g_min, at g_max, at a random conductance
    # update
    pulse_mode: str = "exact"
    max_pulses: int = 31  # per device and write in count/stochastic mode (0 = no cap)
    pair: str = "differential"
    refresh_threshold: float = 0.9  # one_sided pairs are refreshed once a device passes this fraction of its range
    update: str = "combined"
    # reads
    w_read_noise: float = 0.0  # std of a device's conductance per read, fraction of the range
    read_noise: str = "step"  # per relaxation step, or only on the read of the equilibrium
    read_averages: int = 1  # reads averaged per read operation
    ir_drop: float = 0.0  # wire segment resistance x g_max
    forward: Periphery = field(default_factory=Periphery)
    backward: Periphery | None = None  # the transposed reads' converters (None = the forward ones)
    # time
    time_per_update: float = 1.0  # simulated seconds that pass per weight update
    drift_nu: float = 0.0  # power-law drift exponent, g(t) = g (t / t0)^-nu after each write
    drift_nu_dtod: float = 0.0
    drift_t0: float = 1.0
    lifetime: float = 0.0  # s, decay towards the pair's zero-weight point (0 = none)
    diffusion: float = 0.0  # random walk, fraction of the range per sqrt(s)
    # wear and energy
    endurance: float = 1e6  # pulses a device takes before it is counted as worn
    pulse_energy_pj: float = 1.0

    @property
    def transposed(self) -> Periphery:
        return self.backward or self.forward

    @property
    def linear_response(self) -> bool:
        """Whether a step does not depend on the conductance (constant, or soft bounds without slopes)."""
        return self.response == "constant" or (self.response == "soft_bounds" and not (self.slope_up or self.slope_down))

    @property
    def has_time_effects(self) -> bool:
        return self.drift_nu > 0 or self.lifetime > 0 or self.diffusion > 0

    def validate(self) -> None:
        nonneg = ("g_min", "bound_dtod", "dw_min", "dw_min_dtod", "up_down_dtod", "dw_min_std", "write_noise_std",
                  "program_noise", "w_read_noise", "ir_drop", "drift_nu", "drift_nu_dtod", "lifetime", "diffusion",
                  "time_per_update", "pulse_energy_pj", "gamma_up", "gamma_down")
        for key in nonneg:
            v = getattr(self, key)
            _check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, key, v, "a finite number >= 0")
        _check(self.g_max > self.g_min, "g_max", self.g_max, f"a number above g_min = {self.g_min}")
        _check(0 < self.weight_omega <= 1, "weight_omega", self.weight_omega, "a number in (0, 1]")
        _check(self.dw_min < 1, "dw_min", self.dw_min, "a step below the whole range (< 1)")
        _check(self.response in RESPONSES, "response", self.response, f"one of {RESPONSES}")
        for key in ("slope_up", "slope_down"):
            _check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "a number in [0, 1]")
        _check(-1 < self.up_down < 1, "up_down", self.up_down, "a number in (-1, 1)")
        _check(0 <= self.stuck_prob <= 1, "stuck_prob", self.stuck_prob, "a probability in [0, 1]")
        _check(len(self.stuck_split) == 3 and all(p >= 0 for p in self.stuck_split) and sum(self.stuck_split) > 0,
               "stuck_split", list(self.stuck_split), "3 non-negative weights (at g_min, at g_max, random)")
        _check(self.pulse_mode in PULSE_MODES, "pulse_mode", self.pulse_mode, f"one of {PULSE_MODES}")
        _check(isinstance(self.max_pulses, int) and self.max_pulses >= 0, "max_pulses", self.max_pulses,
               "an integer >= 0 (0 = no cap)")
        _check(self.pair in PAIRS, "pair", self.pair, f"one of {PAIRS}")
        _check(0 < self.refresh_threshold <= 1, "refresh_threshold", self.refresh_threshold, "a number in (0, 1]")
        _check(self.update in UPDATES, "update", self.update, f"one of {UPDATES}")
        _check(self.read_noise in READ_NOISE_MODES, "read_noise", self.read_noise, f"one of {READ_NOISE_MODES}")
        _check(isinstance(self.read_averages, int) and self.read_averages >= 1, "read_averages",
               self.read_averages, "an integer >= 1")
        _check(self.drift_t0 > 0, "drift_t0", self.drift_t0, "a positive number of seconds")
        _check(self.drift_nu > 0 or self.drift_nu_dtod == 0, "drift_nu_dtod", self.drift_nu_dtod,
               "0 while drift_nu = 0 (the spread is around drift_nu)")
        _check(self.endurance > 0, "endurance", self.endurance, "a positive number of pulses")
        if self.dw_min == 0:
            for key in ("dw_min_std", "write_noise_std"):
                _check(getattr(self, key) == 0, key, getattr(self, key),
                       "0 while dw_min = 0 (it is measured in steps; set dw_min for a device with finite states)")
            _check(self.pulse_mode == "exact", "pulse_mode", self.pulse_mode,
                   "'exact' while dw_min = 0 (pulses need a finite step)")
        if self.response == "table":
            n = len(self.table_g)
            _check(n >= 2 and len(self.table_up) == n and len(self.table_down) == n, "table_g", list(self.table_g),
                   "at least 2 positions, with as many table_up and table_down values")
            _check(all(0 <= a < b <= 1 for a, b in zip(self.table_g, self.table_g[1:])), "table_g",
                   list(self.table_g), "strictly increasing positions in [0, 1]")
            for key in ("table_up", "table_down"):
                _check(all(v > 0 for v in getattr(self, key)), key, list(getattr(self, key)),
                       "positive relative steps (a zero step would make the device stop)")
        self.forward.validate("")
        if self.backward is not None:
            self.backward.validate("backward.")


DEVICE_KEYS = tuple(f.name for f in dataclasses.fields(DeviceConfig))


def load_preset(name: str) -> dict[str, Any]:
    """A preset's parameter table: a built-in name, or the path of a TOML file (which may name a ``preset`` base)."""
    if name in PRESETS:
        return {k: v for k, v in PRESETS[name].items() if k != "source"}
    if name.endswith(".toml"):
        path = Path(name)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise CrossbarConfigError(f"crossbar.preset = {name!r}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise CrossbarConfigError(f"crossbar.preset = {name!r} cannot be read as TOML: {e}") from None
        table = dict(table.get("crossbar", table))
        base = table.pop("preset", "ideal")
        if base == name:
            raise CrossbarConfigError(f"crossbar.preset = {name!r} names itself as its base")
        return {**load_preset(base), **table}
    raise CrossbarConfigError(f"crossbar.preset = {name!r} is invalid: expected one of {sorted(PRESETS)} "
                              f"or the path of a .toml file")


def device_config(preset: str = "ideal", **overrides: Any) -> DeviceConfig:
    """A validated ``DeviceConfig``: the preset's parameters, then ``overrides`` (flat keys, periphery included)."""
    if not isinstance(preset, str):
        raise CrossbarConfigError(f"crossbar.preset = {preset!r} is invalid: expected a preset name or a .toml path")
    table = {**load_preset(preset), **overrides}
    unknown = sorted(set(table) - set(DEVICE_KEYS) - set(PERIPHERY_KEYS) - {"forward"})
    if unknown:
        raise CrossbarConfigError(f"unknown crossbar key(s) {unknown}; valid keys: "
                                  f"{sorted(set(DEVICE_KEYS) | set(PERIPHERY_KEYS) - {'forward'})}")
    forward = {k: table.pop(k) for k in PERIPHERY_KEYS if k in table}
    forward = _periphery({**table.pop("forward", {}), **forward}, "")
    backward = table.pop("backward", None)
    if backward is not None:
        if not isinstance(backward, Mapping):
            raise CrossbarConfigError(f"crossbar.backward = {backward!r} is invalid: expected a table of "
                                      f"converter settings {list(PERIPHERY_KEYS)}")
        backward = _periphery({**dataclasses.asdict(forward), **backward}, "backward.")
    kwargs = {k: _typed(k, v, DeviceConfig) for k, v in table.items()}
    cfg = DeviceConfig(preset=preset, forward=forward, backward=backward, **kwargs)
    cfg.validate()
    return cfg


def _periphery(table: Mapping[str, Any], prefix: str) -> Periphery:
    unknown = sorted(set(table) - set(PERIPHERY_KEYS))
    if unknown:
        raise CrossbarConfigError(f"unknown crossbar.{prefix or 'forward.'} key(s) {unknown}; "
                                  f"valid keys: {list(PERIPHERY_KEYS)}")
    return Periphery(**{k: _typed(prefix + k, v, Periphery) for k, v in table.items()})


def _typed(key: str, value: Any, cls: type) -> Any:
    """Check a TOML value against the field's default type; lists become tuples."""
    default = {f.name: f for f in dataclasses.fields(cls)}[key.rsplit(".", 1)[-1]]
    kind = type(default.default) if default.default is not dataclasses.MISSING else tuple
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
            raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected a list of numbers")
        return tuple(float(v) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected an integer")
        return value
    if kind is float:
        if not _is_number(value):
            raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected a finite number")
        return float(value)
    if not isinstance(value, str):
        raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected a string")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
