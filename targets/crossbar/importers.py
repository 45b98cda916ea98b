"""Bring your own device: aihwkit device descriptions and measured pulse-response tables as crossbar presets.

``from_aihwkit`` maps an aihwkit pulsed device (an aihwkit device object, or its dataclass fields by their aihwkit
names in a dict, a TOML or a JSON file) onto flat ``crossbar.<key>`` parameters; ``from_pulse_table`` turns a
measured table (CSV: conductance, mean step up, mean step down, their standard deviations) into the measured-table
response. ``write_preset`` saves either as a TOML preset (``crossbar.preset = "my_device.toml"``).
docs/bring_your_device.md walks through both; the mapping's equations are in docs/crossbar.md, "Conformance".
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from .errors import CrossbarConfigError


class DeviceImportError(CrossbarConfigError):
    """A device description or table that cannot be imported; the message names the field or row."""

# aihwkit 1.2's defaults of the fields each supported device class has (checked against aihwkit itself by
# tests/targets/test_aihwkit_conformance.py, so a new aihwkit version that changes one shows up there).
_PULSED = {
    "construction_seed": 0, "corrupt_devices_prob": 0.0, "corrupt_devices_range": 0.1, "diffusion": 0.0,
    "diffusion_dtod": 0.0, "dw_min": 0.001, "dw_min_dtod": 0.3, "dw_min_dtod_log_normal": False, "dw_min_std": 0.3,
    "enforce_consistency": True, "lifetime": 0.0, "lifetime_dtod": 0.0, "perfect_bias": False, "reset": 0.0,
    "reset_dtod": 0.0, "reset_std": 0.01, "up_down": 0.0, "up_down_dtod": 0.01, "w_max": 0.6, "w_max_dtod": 0.3,
    "w_min": -0.6, "w_min_dtod": 0.3, "count_pulses": False, "drift": None,
}
_WRITE = {"write_noise_std": 0.0, "apply_write_noise_on_set": True}
_REVERSE = {"reverse_up": False, "reverse_down": False, "reverse_offset": 0.01}
DEFAULTS: dict[str, dict[str, Any]] = {
    "ConstantStepDevice": dict(_PULSED),
    "LinearStepDevice": {**_PULSED, "gamma_up": 0.0, "gamma_down": 0.0, "gamma_up_dtod": 0.05,
                         "gamma_down_dtod": 0.05, "allow_increasing": False, "mean_bound_reference": True,
                         "mult_noise": True, **_WRITE, **_REVERSE},
    "SoftBoundsDevice": {**_PULSED, "mult_noise": True, **_WRITE, **_REVERSE},
    "PiecewiseStepDevice": {**_PULSED, "piecewise_up": [1.0], "piecewise_down": [1.0], **_WRITE},
    "SoftBoundsReferenceDevice": {**_PULSED, "mult_noise": False, **_WRITE, "slope_up_dtod": 0.0,
                                  "slope_down_dtod": 0.0, "reference_mean": 0.0, "reference_std": 0.0,
                                  "subtract_symmetry_point": False},
}
"""The aihwkit device classes with a crossbar counterpart, and their fields' defaults."""

_DRIFT_DEFAULTS = {"nu": 0.0, "t_0": 1.0, "reset_tol": 1e-7, "nu_dtod": 0.0, "nu_std": 0.0, "wg_ratio": 1.0,
                   "g_offset": 0.0, "w_offset": 0.0, "nu_k": 0.0, "log_g0": 0.0, "w_noise_std": 0.0}
_NO_COUNTERPART = {
    "ExpStepDevice": "its step 1 - A exp(gamma z) is not the crossbar's exponential response exp(-gamma z)",
    "PowStepDevice": "the crossbar has no power-step response",
}


def from_aihwkit(device: Any, *, approximate: bool = False, time_per_update: float = 1.0) -> dict[str, Any]:
    """Flat ``crossbar.<key>`` parameters of an aihwkit pulsed device (object, mapping, or .toml/.json path).

    A mapping names its class under ``"device"`` (``"SoftBoundsDevice"``, or an aihwkit preset class such as
    ``"EcRamPresetDevice"``, which needs aihwkit installed) and any fields by their aihwkit names; the others keep
    aihwkit's defaults. A field whose value the crossbar cannot represent is an error naming it, unless
    ``approximate``: then it is mapped to first order or dropped, and said so in the result's ``"source"``.
    ``time_per_update`` is the simulated seconds per update of the target (aihwkit decays and diffuses per update).
    """
    cls, fields = _description(device)
    return _map(cls, fields, approximate, time_per_update)


def _description(device: Any) -> tuple[str, dict[str, Any]]:
    """The supported aihwkit base class and every field's value (aihwkit's defaults filled in)."""
    if isinstance(device, (str, Path)):
        device = _read_description(Path(device))
    if isinstance(device, Mapping):
        table = dict(device)
        name = table.pop("device", None)
        if not isinstance(name, str):
            raise DeviceImportError('an aihwkit device description needs "device" = the aihwkit class name, '
                                    f"one of {sorted(DEFAULTS)} or an aihwkit preset class; got {name!r}")
        if name in DEFAULTS:
            unknown = sorted(set(table) - set(DEFAULTS[name]))
            if unknown:
                raise DeviceImportError(f"unknown {name} field(s) {unknown}; aihwkit's fields are "
                                        f"{sorted(DEFAULTS[name])}")
            drift = table.get("drift") or {}
            if not isinstance(drift, Mapping):
                raise DeviceImportError(f"{name}.drift must be a table of DriftParameter fields, got {drift!r}")
            bad = sorted(set(drift) - set(_DRIFT_DEFAULTS))
            if bad:
                raise DeviceImportError(f"unknown {name}.drift field(s) {bad}; valid: {sorted(_DRIFT_DEFAULTS)}")
            fields = {**DEFAULTS[name], **table, "drift": {**_DRIFT_DEFAULTS, **drift}}
            return name, fields
        device = _aihwkit_class(name, table)
    return _from_object(device)


def _read_description(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise DeviceImportError(f"cannot read the aihwkit device description {str(path)!r}: {e}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            return tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise DeviceImportError(f"{str(path)!r} is not valid {path.suffix[1:].upper()}: {e}") from None
    raise DeviceImportError(f"{str(path)!r}: an aihwkit device description is a .toml or a .json file")


def _aihwkit_class(name: str, fields: Mapping[str, Any]) -> Any:
    """An aihwkit device object of class ``name`` (a device or preset class) with ``fields`` set."""
    try:
        from aihwkit.simulator import presets
        from aihwkit.simulator.configs import devices
    except ImportError:
        raise DeviceImportError(f"device = {name!r} is not one of {sorted(DEFAULTS)}; an aihwkit preset class "
                                f"needs aihwkit installed") from None
    cls = getattr(presets, name, None) or getattr(devices, name, None)
    if not isinstance(cls, type):
        raise DeviceImportError(f"device = {name!r} is neither one of {sorted(DEFAULTS)} nor an aihwkit device "
                                f"or preset class")
    try:
        return cls(**fields)
    except TypeError as e:
        raise DeviceImportError(f"{name}: {e}") from None


def _from_object(device: Any) -> tuple[str, dict[str, Any]]:
    import dataclasses

    for klass in type(device).__mro__:
        if klass.__name__ in _NO_COUNTERPART:
            raise DeviceImportError(f"aihwkit {type(device).__name__} cannot be imported: "
                                    f"{_NO_COUNTERPART[klass.__name__]}")
        if klass.__name__ in DEFAULTS:
            if not dataclasses.is_dataclass(device):
                break
            fields = {f.name: getattr(device, f.name) for f in dataclasses.fields(device)}
            drift = fields.get("drift")
            fields["drift"] = ({k: getattr(drift, k, v) for k, v in _DRIFT_DEFAULTS.items()} if drift is not None
                               else dict(_DRIFT_DEFAULTS))
            return klass.__name__, fields
    raise DeviceImportError(f"aihwkit {type(device).__name__} cannot be imported: the crossbar has counterparts "
                            f"for {sorted(DEFAULTS)} and the aihwkit presets derived from them")


def _map(cls: str, f: dict[str, Any], approximate: bool, time_per_update: float) -> dict[str, Any]:
    """The crossbar parameters of the aihwkit fields ``f`` of class ``cls`` (docs/crossbar.md, "Conformance")."""
    notes: list[str] = []

    def unsupported(key: str, why: str, value: Any = None) -> None:
        value = f[key] if value is None else value
        if not approximate:
            raise DeviceImportError(f"{cls}.{key} = {value!r}: {why} (pass approximate=True to map it to first "
                                    f"order or drop it)")
        notes.append(f"{key}={value!r} {why}")

    w_min, w_max, dw = float(f["w_min"]), float(f["w_max"]), float(f["dw_min"])
    if not (w_min <= 0 <= w_max and w_min < w_max):
        raise DeviceImportError(f"{cls}: w_min = {w_min} and w_max = {w_max} must enclose 0 (aihwkit's rule)")
    if dw <= 0:
        raise DeviceImportError(f"{cls}.dw_min = {dw}: a pulsed device needs a positive step")
    span, mid, half = w_max - w_min, (w_max + w_min) / 2, (w_max - w_min) / 2
    ud = float(f["up_down"])
    scale_up, scale_down = (1 + min(ud, 0.0)) * dw, (1 - max(ud, 0.0)) * dw  # aihwkit's mean steps at w = 0
    out: dict[str, Any] = {}
    # The relative step at the range's middle (w = mid) and the slope of each direction's response there.
    base_up = base_down = 1.0
    if cls in ("LinearStepDevice", "SoftBoundsDevice", "SoftBoundsReferenceDevice"):
        gamma_up = float(f["gamma_up"]) if cls == "LinearStepDevice" else 1.0
        gamma_down = float(f["gamma_down"]) if cls == "LinearStepDevice" else 1.0
        if cls == "SoftBoundsReferenceDevice":  # soft bounds read against a reference device: none, or unsupported
            for key in ("slope_up_dtod", "slope_down_dtod", "reference_mean", "reference_std",
                        "subtract_symmetry_point"):
                if f[key]:
                    unsupported(key, "has no counterpart: the crossbar has no reference devices and its soft-bounds "
                                     "slopes are the same for every device")
        if cls == "LinearStepDevice":
            for key in ("gamma_up_dtod", "gamma_down_dtod"):
                if f[key]:
                    unsupported(key, "has no counterpart: the crossbar's slopes are the same for every device")
            if f["allow_increasing"] and (gamma_up < 0 or gamma_down < 0):
                unsupported("allow_increasing", "negative gammas (steps growing towards a bound) have no counterpart")
        for key in ("reverse_up", "reverse_down"):
            if f.get(key):
                unsupported(key, "has no counterpart in the crossbar's soft bounds")
        # aihwkit: up step (1 - gamma_up w / w_max), down step (1 + gamma_down w / |w_min|); at w = mid + half z.
        # A bound at w = 0 gives that direction no slope (aihwkit's rule).
        gamma_up, gamma_down = (gamma_up if w_max else 0.0), (gamma_down if w_min else 0.0)
        base_up = 1 - gamma_up * mid / w_max if w_max else 1.0
        base_down = 1 + gamma_down * mid / -w_min if w_min else 1.0
        if base_up <= 0 or base_down <= 0:
            raise DeviceImportError(f"{cls}: gamma_up = {gamma_up}, gamma_down = {gamma_down} with bounds "
                                    f"[{w_min}, {w_max}] give no step at the range's middle")
        slope_up = gamma_up * half / w_max / base_up if w_max else 0.0
        slope_down = gamma_down * half / -w_min / base_down if w_min else 0.0
        for key, value in (("slope_up", slope_up), ("slope_down", slope_down)):
            if not 0 <= value <= 1 + 1e-12:
                raise DeviceImportError(f"{cls}: gammas {gamma_up}, {gamma_down} with bounds [{w_min}, {w_max}] "
                                        f"give crossbar.{key} = {value:.4g}, outside [0, 1]")
        out.update(response="soft_bounds", slope_up=min(slope_up, 1.0), slope_down=min(slope_down, 1.0))
        if cls == "LinearStepDevice" and f["mean_bound_reference"]:  # slopes against the nominal bounds
            out["bound_reference"] = "nominal"
        if f["dw_min_std"] and not f["mult_noise"]:
            unsupported("mult_noise", "(additive cycle-to-cycle noise) has no counterpart: the crossbar's is "
                                      "relative to each pulse's step; mapped as multiplicative")
    elif cls == "PiecewiseStepDevice":
        up, down = [float(v) for v in f["piecewise_up"]], [float(v) for v in f["piecewise_down"]]
        if len(up) != len(down) or len(up) < 2:
            raise DeviceImportError(f"{cls}: piecewise_up and piecewise_down need the same number (>= 2) of nodes, "
                                    f"got {len(up)} and {len(down)}")
        if min(up + down) <= 0:
            raise DeviceImportError(f"{cls}: piecewise_up/piecewise_down must be positive (the crossbar's measured "
                                    f"table has no zero step), got {up} / {down}")
        n = len(up) - 1
        out.update(response="table", table_g=[i / n for i in range(n + 1)], table_up=up, table_down=down)
    else:
        out["response"] = "constant"
    step_up, step_down = scale_up * base_up, scale_down * base_down
    out["dw_min"] = step_up / span
    out["up_down"] = 1 - step_down / step_up
    # Device-to-device: aihwkit's gain is added to the step (1 + sigma xi), the crossbar's multiplies it.
    sigma = float(f["dw_min_dtod"])
    if sigma:
        if f["dw_min_dtod_log_normal"]:  # aihwkit exp(sigma xi) has mean exp(sigma^2 / 2); ours has mean 1
            out["dw_min"] *= math.exp(sigma * sigma / 2)
            out["dw_min_dtod"], out["dw_min_dtod_lognormal"] = sigma, True
        else:
            out["dw_min_dtod"] = sigma / (1 + min(ud, 0.0))
        if ud and not f["dw_min_dtod_log_normal"]:
            notes.append("dw_min_dtod with up_down != 0: aihwkit adds the gain to both steps, the crossbar "
                         "multiplies them (the down/up ratio then varies per device in aihwkit only)")
    if f["up_down_dtod"]:
        a, b = 1 + min(ud, 0.0), 1 - max(ud, 0.0)  # aihwkit: up (a + r), down (b - r), r ~ N(0, up_down_dtod)
        sd = float(f["up_down_dtod"]) * (1 / a + b / (a * a))  # first order std of 1 - down / up
        out["up_down_dtod"] = sd
        notes.append(f"up_down_dtod mapped to first order ({sd:.4g} on the down/up ratio; aihwkit also varies the "
                     f"up step)")
    bmax, bmin = float(f["w_max_dtod"]), float(f["w_min_dtod"])
    if bmax or bmin:
        # aihwkit scales each bound's distance from w = 0; the crossbar each bound's distance from mid-range
        if not math.isclose(bmax * w_max, -bmin * w_min, rel_tol=1e-6) or abs(mid) > 1e-12 * span:
            unsupported("w_max_dtod", f"with w_min_dtod = {bmin} on [{w_min}, {w_max}] has no exact counterpart: "
                                      "the crossbar spreads both bounds by one bound_dtod around mid-range")
        out["bound_dtod"] = (bmax * w_max - bmin * w_min) / 2 / half
    if f["dw_min_std"]:
        out["dw_min_std"] = float(f["dw_min_std"])  # relative to each pulse's step in both
    if f.get("write_noise_std"):  # aihwkit: std write_noise_std * dw_min (weight units); ours x crossbar.dw_min
        out["write_noise_std"] = float(f["write_noise_std"]) * dw / span / out["dw_min"]
    if f["corrupt_devices_prob"]:
        if float(f["corrupt_devices_range"]) < max(w_max, -w_min) * (1 + 3 * max(bmax, bmin)):
            unsupported("corrupt_devices_range", "below the bounds has no counterpart: crossbar devices stuck at "
                                                 "random are uniform over their whole range")
        out.update(stuck_prob=float(f["corrupt_devices_prob"]), stuck_split=[0.0, 0.0, 1.0])
    if f["lifetime"]:
        if f["lifetime_dtod"]:
            unsupported("lifetime_dtod", "has no counterpart: the crossbar's lifetime is the same for every device")
        if f["reset"] or mid:
            unsupported("lifetime", "decays towards w = 0 in aihwkit, towards the pair's zero-weight point here")
        out["lifetime"] = float(f["lifetime"]) * time_per_update  # aihwkit: w *= 1 - 1 / lifetime per update
    if f["diffusion"]:
        if f["diffusion_dtod"]:
            unsupported("diffusion_dtod", "has no counterpart: the crossbar's diffusion is the same everywhere")
        out["diffusion"] = float(f["diffusion"]) / span / math.sqrt(time_per_update)
    if time_per_update != 1.0 and (f["lifetime"] or f["diffusion"]):
        out["time_per_update"] = time_per_update
    drift = f["drift"] or _DRIFT_DEFAULTS
    if drift["nu"]:
        for key in ("nu_std", "nu_k", "w_noise_std"):
            if drift[key]:
                unsupported(f"drift.{key}", "has no counterpart in the crossbar's drift", drift[key])
        out.update(drift_nu=float(drift["nu"]), drift_t0=float(drift["t_0"]))
        if drift["nu_dtod"]:  # aihwkit: nu (1 + nu_dtod xi); the crossbar: nu + drift_nu_dtod xi
            out["drift_nu_dtod"] = float(drift["nu_dtod"]) * float(drift["nu"])
        notes.append("drift: aihwkit scales by max(dt / t_0, 1)^-nu, the crossbar by ((dt + t_0) / t_0)^-nu")
    if f["perfect_bias"]:
        unsupported("perfect_bias", "has no counterpart (the crossbar's biases are devices like any other)")
    source = f"imported from aihwkit {cls} (range [{w_min}, {w_max}] -> [0, 1])"
    out["source"] = source + ("; " + "; ".join(notes) if notes else "")
    return out


PULSE_TABLE_COLUMNS = ("conductance", "step_up", "step_down", "step_up_std", "step_down_std")


def from_pulse_table(path: str | Path) -> dict[str, Any]:
    """The measured-table response of a pulse-response CSV, as flat ``crossbar.<key>`` parameters.

    Columns (a header row naming them, any order): ``conductance`` (strictly increasing, any unit; its first and
    last rows are the device's bounds), ``step_up`` and ``step_down`` (the mean change of one up / down pulse at
    that conductance, positive magnitudes in the same unit), ``step_up_std`` and ``step_down_std`` (their
    pulse-to-pulse standard deviations). The crossbar has one relative cycle-to-cycle spread: the mean of
    ``std / step`` over every row and both directions.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DeviceImportError(f"cannot read the pulse-response table {str(path)!r}: {e}") from None
    rows = list(csv.reader(line for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not rows:
        raise DeviceImportError(f"{str(path)!r} is empty; expected a header {list(PULSE_TABLE_COLUMNS)} and rows")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in PULSE_TABLE_COLUMNS if c not in header]
    unknown = [c for c in header if c not in PULSE_TABLE_COLUMNS]
    if missing or unknown:
        raise DeviceImportError(f"{str(path)!r}: header {header} has missing column(s) {missing} and unknown "
                                f"column(s) {unknown}; expected {list(PULSE_TABLE_COLUMNS)}")
    values: dict[str, list[float]] = {c: [] for c in PULSE_TABLE_COLUMNS}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DeviceImportError(f"{str(path)!r} row {number}: {len(row)} values, expected {len(header)} "
                                    f"({', '.join(header)})")
        for column, text in zip(header, row):
            try:
                v = float(text)
            except ValueError:
                raise DeviceImportError(f"{str(path)!r} row {number}: {column} = {text.strip()!r} is not a "
                                        f"number") from None
            if not math.isfinite(v) or (column != "conductance" and v < 0) or (column.startswith("step_")
                                                                                and "std" not in column and v == 0):
                raise DeviceImportError(f"{str(path)!r} row {number}: {column} = {v} is invalid: steps are "
                                        f"positive magnitudes, standard deviations >= 0")
            values[column].append(v)
    g = values["conductance"]
    if len(g) < 2:
        raise DeviceImportError(f"{str(path)!r}: at least 2 rows are needed, got {len(g)}")
    for i in range(1, len(g)):
        if not g[i] > g[i - 1]:
            raise DeviceImportError(f"{str(path)!r} row {i + 2}: conductance {g[i]} does not increase (after "
                                    f"{g[i - 1]})")
    span = g[-1] - g[0]
    unit = sum(values["step_up"]) / len(g)  # the table's relative steps are steps / their mean up step
    rel_std = [s / m for d in ("up", "down") for s, m in zip(values[f"step_{d}_std"], values[f"step_{d}"])]
    out: dict[str, Any] = {
        "source": f"imported pulse-response table {path.name} ({len(g)} rows, conductance {g[0]:g} to {g[-1]:g})",
        "response": "table",
        "table_g": [(x - g[0]) / span for x in g],
        "table_up": [s / unit for s in values["step_up"]],
        "table_down": [s / unit for s in values["step_down"]],
        "dw_min": unit / span,
        "up_down": 0.0,
    }
    std = sum(rel_std) / len(rel_std)
    if std:
        out["dw_min_std"] = std
    if g[0] >= 0:  # conductances in uS label reports
        out.update(g_min=g[0], g_max=g[-1])
    return out


def write_preset(table: Mapping[str, Any], path: str | Path, base: str | None = None) -> Path:
    """Save imported parameters as a TOML preset (``crossbar.preset = "<path>"``), optionally over a ``base``
    preset (for instance one that sets the read path). The result is validated by loading it."""
    from .config import device_config

    body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in table.items() if k != "source"}
    if base is not None:
        body = {"preset": base, **body}
    path = Path(path)
    text = "".join(f"# {line}\n" for line in str(table.get("source", "")).split("; ") if line)
    path.write_text(text + tomli_w.dumps({"crossbar": body}))
    device_config(str(path))
    return path
