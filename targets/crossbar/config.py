"""The crossbar's tile configuration: small frozen dataclasses composed into one ``TileConfig``.

Conductances are normalized: a device's nominal range ``[g_min, g_max]`` maps to ``[0, 1]``, steps are fractions
of that range. Every parameter has a default that switches its effect off. Configs, presets and TOML files name
parameters by flat keys (``crossbar.up_down``, ``crossbar.adc_bits``); ``device_config`` routes each key to the
dataclass that holds it (docs/crossbar.md, "Configuration").
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import CrossbarConfigError, check
from .presets import PRESETS
from .response import RESPONSES, ConstantStep, ResponseModel

PULSE_MODES = ("exact", "count", "stochastic")
PAIRS = ("differential", "one_sided")
UPDATES = ("combined", "two_trains")
NUMERICS = ("native", "torch")  # who draws the random numbers and computes exp, expm1, log and pow on the CPU
READ_NOISE_MODES = ("step", "equilibrium")
OUTER_PRODUCTS = ("pulsed", "digital")  # how the cost accounting forms an update's outer products (costs.py)


def _nonnegative(obj: object, *keys: str) -> None:
    for key in keys:
        v = getattr(obj, key)
        check(math.isfinite(v) and v >= 0, key, v, "a finite number >= 0")


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
            check(isinstance(v, int) and (v == 0 or 2 <= v <= 24), prefix + key, v,
                  "0 (ideal) or an integer in [2, 24]")
        check(self.in_bound > 0, prefix + "in_bound", self.in_bound, "a positive number")
        check(self.out_bound > 0, prefix + "out_bound", self.out_bound, "a positive number")
        check(self.out_noise >= 0, prefix + "out_noise", self.out_noise, "a number >= 0")


@dataclass(frozen=True)
class Device:
    """The nominal device: conductance range, step, asymmetry, how weights map onto pairs, wear and energy."""

    g_min: float = 0.0  # uS, for reports
    g_max: float = 25.0  # uS
    weight_omega: float = 0.15  # the largest |w| first programmed into a tensor takes this fraction of a pair's range
    dw_min: float = 0.0  # nominal step of one pulse, fraction of the range (0 = continuous: infinite states)
    up_down: float = 0.0  # down step = (1 - up_down) x up step
    endurance: float = 1e6  # pulses a device takes before it is counted as worn
    pulse_energy_pj: float = 1.0

    def validate(self) -> None:
        _nonnegative(self, "g_min", "dw_min", "pulse_energy_pj")
        check(self.g_max > self.g_min, "g_max", self.g_max, f"a number above g_min = {self.g_min}")
        check(0 < self.weight_omega <= 1, "weight_omega", self.weight_omega, "a number in (0, 1]")
        check(self.dw_min < 1, "dw_min", self.dw_min, "a step below the whole range (< 1)")
        check(-1 < self.up_down < 1, "up_down", self.up_down, "a number in (-1, 1)")
        check(self.endurance > 0, "endurance", self.endurance, "a positive number of pulses")


@dataclass(frozen=True)
class Variation:
    """Device-to-device spread (drawn once), cycle-to-cycle and write noise, programming noise, stuck devices."""

    bound_dtod: float = 0.0  # spread of each bound, relative to half the range
    dw_min_dtod: float = 0.0  # spread of the step (relative std)
    dw_min_dtod_lognormal: bool = False
    up_down_dtod: float = 0.0
    dw_min_std: float = 0.0  # cycle-to-cycle: std of each pulse's step, x its mean
    write_noise_std: float = 0.0  # per write, x dw_min; seen by reads, does not accumulate
    program_noise: float = 0.0  # std of a programmed conductance, fraction of the range
    stuck_prob: float = 0.0
    stuck_split: tuple[float, ...] = (0.5, 0.5, 0.0)  # stuck at g_min, at g_max, at a random conductance

    def validate(self) -> None:
        _nonnegative(self, "bound_dtod", "dw_min_dtod", "up_down_dtod", "dw_min_std", "write_noise_std",
                     "program_noise")
        check(0 <= self.stuck_prob <= 1, "stuck_prob", self.stuck_prob, "a probability in [0, 1]")
        check(len(self.stuck_split) == 3 and all(p >= 0 for p in self.stuck_split) and sum(self.stuck_split) > 0,
              "stuck_split", list(self.stuck_split), "3 non-negative weights (at g_min, at g_max, random)")


@dataclass(frozen=True)
class WriteSettings:
    """How the controller writes an increment: pulse rounding and cap, pair layout, one or two pulse trains."""

    pulse_mode: str = "exact"
    max_pulses: int = 31  # per device and write in count/stochastic mode (0 = no cap)
    pair: str = "differential"
    refresh_threshold: float = 0.9  # one_sided pairs are refreshed once a device passes this fraction of its range
    update: str = "combined"

    def validate(self) -> None:
        check(self.pulse_mode in PULSE_MODES, "pulse_mode", self.pulse_mode, f"one of {PULSE_MODES}")
        check(self.max_pulses >= 0, "max_pulses", self.max_pulses, "an integer >= 0 (0 = no cap)")
        check(self.pair in PAIRS, "pair", self.pair, f"one of {PAIRS}")
        check(0 < self.refresh_threshold <= 1, "refresh_threshold", self.refresh_threshold, "a number in (0, 1]")
        check(self.update in UPDATES, "update", self.update, f"one of {UPDATES}")


@dataclass(frozen=True)
class ReadSettings:
    """The read path: converters on each side, per-read device noise and its timing, averaging, IR drop."""

    forward: Periphery = field(default_factory=Periphery)
    backward: Periphery | None = None  # the transposed reads' converters (None = the forward ones)
    w_read_noise: float = 0.0  # std of a device's conductance per read, fraction of the range
    read_noise: str = "step"  # per relaxation step, or only on the read of the equilibrium
    read_averages: int = 1  # reads averaged per read operation
    ir_drop: float = 0.0  # wire segment resistance x g_max

    @property
    def transposed(self) -> Periphery:
        return self.backward or self.forward

    @property
    def has_noise(self) -> bool:
        return self.w_read_noise > 0 or self.forward.out_noise > 0 or self.transposed.out_noise > 0

    def validate(self) -> None:
        _nonnegative(self, "w_read_noise", "ir_drop")
        check(self.read_noise in READ_NOISE_MODES, "read_noise", self.read_noise, f"one of {READ_NOISE_MODES}")
        check(self.read_averages >= 1, "read_averages", self.read_averages, "an integer >= 1")
        self.forward.validate("")
        if self.backward is not None:
            self.backward.validate("backward.")


@dataclass(frozen=True)
class TimeEffects:
    """Simulated time per update, and what time does to the devices: drift, decay, diffusion."""

    time_per_update: float = 1.0  # simulated seconds that pass per weight update
    drift_nu: float = 0.0  # power-law drift exponent, g(t) = g (t / t0)^-nu after each write
    drift_nu_dtod: float = 0.0
    drift_t0: float = 1.0
    lifetime: float = 0.0  # s, decay towards the pair's zero-weight point (0 = none)
    diffusion: float = 0.0  # random walk, fraction of the range per sqrt(s)

    @property
    def active(self) -> bool:
        return self.drift_nu > 0 or self.lifetime > 0 or self.diffusion > 0

    def validate(self) -> None:
        _nonnegative(self, "time_per_update", "drift_nu", "drift_nu_dtod", "lifetime", "diffusion")
        check(self.drift_t0 > 0, "drift_t0", self.drift_t0, "a positive number of seconds")
        check(self.drift_nu > 0 or self.drift_nu_dtod == 0, "drift_nu_dtod", self.drift_nu_dtod,
              "0 while drift_nu = 0 (the spread is around drift_nu)")


ALGORITHMS = ("in_situ", "mixed_precision", "tiki_taka", "ttv2", "c_ttv2", "agad")
REFERENCES = ("symmetry_point", "zero")
TRANSFERS = ("tiki_taka", "ttv2", "c_ttv2", "agad")
ALGORITHM_KEYS: dict[str, tuple[str, ...]] = {
    "in_situ": (),
    "mixed_precision": ("transfer_every", "threshold"),
    "tiki_taka": ("transfer_every", "transfer_columns", "fast_lr", "transfer_lr", "gamma", "fast_reference"),
    "ttv2": ("transfer_every", "transfer_columns", "fast_lr", "transfer_lr", "threshold", "momentum",
             "forget_buffer", "fast_reference"),
}
ALGORITHM_KEYS["c_ttv2"] = ALGORITHM_KEYS["ttv2"] + ("in_chop_prob",)
ALGORITHM_KEYS["agad"] = ALGORITHM_KEYS["c_ttv2"]


@dataclass(frozen=True)
class TrainingAlgorithm:
    """How the EP update reaches the devices (docs/crossbar.md, "Analog training algorithms").

    ``in_situ`` writes it straight to the weight arrays; the others keep digital state (mixed precision's chi,
    TTv2's buffer H) and/or a second, fast array A per parameter (algorithms.py). Each parameter is used by the
    algorithms listed in ``ALGORITHM_KEYS``; setting one that the chosen algorithm does not use is an error.
    """

    algorithm: str = "in_situ"
    transfer_every: int = 1  # updates between transfer events (mixed precision: between flushes of chi)
    transfer_columns: int = 1  # columns of A read and transferred per transfer event (aihwkit n_reads_per_transfer)
    fast_lr: float = 1.0  # A receives fast_lr x the EP update (the EP learning rate is already in the update)
    transfer_lr: float = 1.0  # a transfer adds transfer_lr x the read of A's column to C (TTv2: to H)
    gamma: float = 0.0  # tiki_taka: the network reads gamma A + C
    threshold: float = 1.0  # pulses fire where |chi| or |H| reaches threshold device steps (>= 1)
    momentum: float = 0.0  # TTv2 family: after a transfer, this fraction of H stays (forget_buffer) or of n is kept
    forget_buffer: bool = True  # TTv2 family: H = momentum H where pulses fired (else H -= (1 - momentum) n)
    in_chop_prob: float = 0.1  # c_ttv2: chance a column's chopper flips after its read; agad: 1 / chopper period
    fast_reference: str = "symmetry_point"  # A's reads subtract its devices' symmetry point, or nothing ("zero")

    @property
    def name(self) -> str:
        return self.algorithm

    def validate(self) -> None:
        check(self.algorithm in ALGORITHMS, "algorithm", self.algorithm, f"one of {ALGORITHMS}")
        for key in ("transfer_every", "transfer_columns"):
            v = getattr(self, key)
            check(v >= 1, key, v, "an integer >= 1")
        check(math.isfinite(self.fast_lr) and self.fast_lr > 0, "fast_lr", self.fast_lr, "a positive number")
        _nonnegative(self, "transfer_lr", "gamma")
        check(math.isfinite(self.threshold) and self.threshold >= 1, "threshold", self.threshold,
              "a number >= 1 (device steps)")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        check(0 <= self.in_chop_prob <= 1, "in_chop_prob", self.in_chop_prob, "a probability in [0, 1]")
        check(self.fast_reference in REFERENCES, "fast_reference", self.fast_reference, f"one of {REFERENCES}")
        used = ALGORITHM_KEYS[self.algorithm]
        for f in dataclasses.fields(self):
            if f.name != "algorithm" and f.name not in used and getattr(self, f.name) != f.default:
                users = [a for a, ks in ALGORITHM_KEYS.items() if f.name in ks]
                raise CrossbarConfigError(f"crossbar.{f.name} = {getattr(self, f.name)!r} is a parameter of "
                                          f"algorithm = {' | '.join(users)}, not {self.algorithm!r}")


@dataclass(frozen=True)
class CostTable:
    """Per-operation energy and latency that price the cost accounting (costs.py); docs/crossbar.md, "Cost
    accounting", gives every value's source. Nothing here changes what the crossbar computes."""

    cost_read_voltage: float = 0.2  # V across a cell during a read
    cost_read_ns: float = 10.0  # integration time of one array read
    cost_adc_fom_fj: float = 10.0  # Walden figure of merit (fJ per conversion step); a conversion: fom x 2^bits
    cost_adc_bits: int = 8  # bits priced for an ideal ADC (adc_bits = 0)
    cost_dac_pj: float = 0.1  # one input conversion (an assumption, see the docs)
    cost_add_pj: float = 0.9  # float32 add, 45 nm (Horowitz, ISSCC 2014)
    cost_mul_pj: float = 3.7  # float32 multiply, 45 nm (Horowitz, ISSCC 2014)
    cost_activation_pj: float = 1.8  # a piecewise-linear activation: two comparisons
    cost_mvm_ns: float = 80.0  # one input vector through an array, conversions included
    cost_pulse_ns: float = 1.0  # one pulse slot of a write
    cost_pulse_slot_pj: float = 0.05  # one stochastic pulse slot of a line: an 8-bit comparison and random bits
    cost_digital_op_ns: float = 0.01  # digital throughput: 100 operations per ns
    cost_outer_product: str = "pulsed"  # how an update's outer products are formed: "pulsed" or "digital"

    def validate(self) -> None:
        _nonnegative(self, *(f.name for f in dataclasses.fields(self)
                             if f.name not in ("cost_adc_bits", "cost_outer_product")))
        check(1 <= self.cost_adc_bits <= 16, "cost_adc_bits", self.cost_adc_bits, "an integer in [1, 16]")
        check(self.cost_outer_product in OUTER_PRODUCTS, "cost_outer_product", self.cost_outer_product,
              f"one of {OUTER_PRODUCTS}")


@dataclass(frozen=True)
class TileConfig:
    """One crossbar tile: the device and its response model, variation, write and read settings, time effects,
    the training algorithm and the table that prices its operations.

    ``numerics`` applies on the CPU in float32 where the native kernel is built (native.py): "native" lets the kernel
    draw the writes' and reads' random numbers (its own generators, seeded from the target's torch generator) and
    compute exp, expm1, log and the drift's pow with its own vectorised functions; "torch" leaves both to torch, which
    gives the numbers of the tensor path and of releases before this option, bit for bit."""

    preset: str = "ideal"
    numerics: str = "native"
    device: Device = field(default_factory=Device)
    response: ResponseModel = field(default_factory=ConstantStep)
    variation: Variation = field(default_factory=Variation)
    write: WriteSettings = field(default_factory=WriteSettings)
    read: ReadSettings = field(default_factory=ReadSettings)
    time: TimeEffects = field(default_factory=TimeEffects)
    algorithm: TrainingAlgorithm = field(default_factory=TrainingAlgorithm)
    costs: CostTable = field(default_factory=CostTable)

    @property
    def update(self) -> str:
        """``combined`` or ``two_trains``: how the learning loop hands updates to the target."""
        return self.write.update

    def validate(self) -> None:
        check(self.numerics in NUMERICS, "numerics", self.numerics, f"one of {NUMERICS}")
        for part in (self.device, self.response, self.variation, self.write, self.read, self.time, self.algorithm,
                     self.costs):
            part.validate()
        if self.algorithm.gamma:
            check(not self.read.ir_drop, "gamma", self.algorithm.gamma,
                  "0 while ir_drop > 0 (IR drop is modelled on the weight array C alone)")
        if self.device.dw_min == 0:
            for key in ("dw_min_std", "write_noise_std"):
                check(getattr(self.variation, key) == 0, key, getattr(self.variation, key),
                      "0 while dw_min = 0 (it is measured in steps; set dw_min for a device with finite states)")
            check(self.write.pulse_mode == "exact", "pulse_mode", self.write.pulse_mode,
                  "'exact' while dw_min = 0 (pulses need a finite step)")


GROUPS: dict[str, type] = {"device": Device, "variation": Variation, "write": WriteSettings, "read": ReadSettings,
                           "time": TimeEffects, "algorithm": TrainingAlgorithm, "costs": CostTable}
"""The ``TileConfig`` field of each group of flat keys (the response model's keys are routed by model)."""

GROUP_OF: dict[str, str] = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)
                            if f.name not in ("forward", "backward")}
PERIPHERY_KEYS = tuple(f.name for f in dataclasses.fields(Periphery))


def model_of() -> dict[str, type[ResponseModel]]:
    """The response model each model parameter belongs to (for every model registered so far)."""
    return {key: cls for cls in RESPONSES.values() for key in cls.keys()}


def keys() -> list[str]:
    """Every flat ``crossbar.<key>``, sorted."""
    return sorted({"preset", "numerics", "response", "forward", "backward", *GROUP_OF, *PERIPHERY_KEYS, *model_of()})


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
        return _overlay(load_preset(base), table)
    raise CrossbarConfigError(f"crossbar.preset = {name!r} is invalid: expected one of {sorted(PRESETS)} "
                              f"or the path of a .toml file")


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top``'s keys over ``base``'s; a ``response`` in ``top`` drops ``base``'s parameters of other models."""
    if "response" in top:
        model = RESPONSES.get(top["response"]) if isinstance(top["response"], str) else None
        owners = model_of()
        base = {k: v for k, v in base.items() if owners.get(k, model) is model}
    return {**base, **top}


def device_config(preset: str = "ideal", **params: Any) -> TileConfig:
    """A validated ``TileConfig``: the preset's parameters, then ``params`` (flat keys, periphery included)."""
    if not isinstance(preset, str):
        raise CrossbarConfigError(f"crossbar.preset = {preset!r} is invalid: expected a preset name or a .toml path")
    table = _overlay(load_preset(preset), params)
    valid = keys()
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise CrossbarConfigError(f"unknown crossbar key(s) {unknown}; valid keys: {valid}")
    numerics = table.pop("numerics", TileConfig.numerics)
    model = _response_model(table.pop("response", ConstantStep.name))
    owners = model_of()
    for key in table:
        owner = owners.get(key, model)
        if owner is not model and _typed(key, table[key], _defaults(owner)[key]) != _defaults(owner)[key]:
            raise CrossbarConfigError(f'crossbar.{key} is a parameter of response = "{owner.name}", not "{model.name}"')
    read = {"forward": _periphery({**_table(table.pop("forward", {}), "forward"),
                                   **{k: table.pop(k) for k in PERIPHERY_KEYS if k in table}}, "")}
    if "backward" in table:
        backward = _table(table.pop("backward"), "backward")
        read["backward"] = _periphery({**dataclasses.asdict(read["forward"]), **backward}, "backward.")
    parts: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    parts["read"].update(read)
    for key, value in table.items():
        if key in GROUP_OF:
            parts[GROUP_OF[key]][key] = _typed(key, value, _defaults(GROUPS[GROUP_OF[key]])[key])
    response = model(**{k: _typed(k, v, _defaults(model)[k]) for k, v in table.items() if owners.get(k) is model})
    cfg = TileConfig(preset=preset, numerics=numerics, response=response,
                     **{group: GROUPS[group](**kw) for group, kw in parts.items()})
    cfg.validate()
    return cfg


def _response_model(name: Any) -> type[ResponseModel]:
    check(isinstance(name, str) and name in RESPONSES, "response", name, f"one of {tuple(RESPONSES)}")
    return RESPONSES[name]


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected a table of converter settings "
                                  f"{list(PERIPHERY_KEYS)}")
    return value


def _periphery(table: Mapping[str, Any], prefix: str) -> Periphery:
    unknown = sorted(set(table) - set(PERIPHERY_KEYS))
    if unknown:
        raise CrossbarConfigError(f"unknown crossbar.{prefix or 'forward.'} key(s) {unknown}; "
                                  f"valid keys: {list(PERIPHERY_KEYS)}")
    defaults = _defaults(Periphery)
    return Periphery(**{k: _typed(prefix + k, v, defaults[k]) for k, v in table.items()})


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _typed(key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the field's ``default``; lists become tuples."""
    kind = type(default)
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
