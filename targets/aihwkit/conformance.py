"""The conformance cases of the crossbar's device models against aihwkit: devices, pulse sequences, metrics.

One case is an aihwkit device; the crossbar's counterpart is imported from it (``targets.crossbar.importers``).
Both get the same pulse sequences (``targets.crossbar.traces.pulse_directions``) through aihwkit's own protocol
(``targets.aihwkit.traces``) and the crossbar's (``targets.crossbar.traces``). Without variation the metric is the
largest trajectory difference as a fraction of the weight range; with it, two-sample Kolmogorov-Smirnov tests of the
devices' weights and of their single-pulse increments at checkpoints. Used by tests/conformance and by
benchmarks/aihwkit_conformance.py, which prints the table of docs/crossbar.md, "Conformance".

Transfers (Tiki-Taka, TTv2, c-TTv2): aihwkit's compound tile and the crossbar's algorithm get A set to the same
values and run the same transfer events without noise; ``*_parameters`` map an aihwkit compound onto the crossbar's
``[crossbar]`` keys, ``aihwkit_transfers`` and ``crossbar_transfers`` return C's change and H after each event.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from targets.crossbar.config import device_config
from targets.crossbar.importers import from_aihwkit
from targets.crossbar.traces import PulseDevices, pulse_directions

from .traces import aihwkit_trace

NO_VARIATION = {"dw_min_dtod": 0.0, "dw_min_std": 0.0, "up_down_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0}
SEQUENCES = ("updown", "random", "bounds")
"""aihwkit's protocol (n up, n down, four times), independent random +-1 pulses, and long one-directional runs
(three times the states up, then three times down) into the bounds."""

KS_ALPHA = 1e-3
"""Each KS comparison of a case rejects at this family-wise level (Bonferroni over its checkpoints): 99.9%."""


@dataclass(frozen=True)
class Case:
    """An aihwkit device as a conformance case."""

    name: str  # the response model it checks
    make: Callable[..., Any]  # keyword overrides -> the aihwkit device
    tolerance: Callable[[Any], float]  # noise-free trajectory tolerance, fraction of the weight range
    tolerance_text: str

    def device(self, **overrides: Any) -> Any:
        return self.make(**overrides)


def _float32_tol(device: Any) -> float:
    return 1e-5


def _half_step(device: Any) -> float:
    return 0.5 * device.dw_min / (device.w_max - device.w_min)


def cases() -> dict[str, Case]:
    """The shared response models, each as an aihwkit device with asymmetry and (where it has one) curvature."""
    from aihwkit.simulator.configs import (ConstantStepDevice, LinearStepDevice, PiecewiseStepDevice,
                                           SoftBoundsDevice)

    def with_defaults(cls: type, **fixed: Any) -> Callable[..., Any]:
        return lambda **kw: cls(**{**NO_VARIATION, **fixed, **kw})

    f32 = "1e-5 (aihwkit computes in float32)"
    return {c.name: c for c in (
        Case("constant", with_defaults(ConstantStepDevice, dw_min=0.01, up_down=0.1), _float32_tol, f32),
        Case("linear_step", with_defaults(LinearStepDevice, dw_min=0.01, gamma_up=0.3, gamma_down=0.6, w_min=-0.8,
                                          w_max=1.2, up_down=-0.05, gamma_up_dtod=0.0, gamma_down_dtod=0.0),
             _float32_tol, f32),
        Case("soft_bounds", with_defaults(SoftBoundsDevice, dw_min=0.01, up_down=0.1, w_min=-0.75, w_max=1.25),
             _float32_tol, f32),
        Case("table", with_defaults(PiecewiseStepDevice, dw_min=0.005, piecewise_up=[1.6, 1.3, 1.0, 0.7, 0.4],
                                    piecewise_down=[0.4, 0.8, 1.0, 1.2, 1.5]), _half_step,
             "half a step (the crossbar integrates the table, aihwkit steps through it)"),
    )}


def states(device: Any) -> int:
    return int(round((device.w_max - device.w_min) / device.dw_min))


def directions(kind: str, device: Any, seed: int = 0) -> np.ndarray:
    """The pulse sequence ``kind`` (one of ``SEQUENCES``) sized to the device's number of states."""
    n = states(device)
    if kind == "bounds":
        return np.concatenate([pulse_directions("up", 3 * n), pulse_directions("down", 3 * n)])
    return pulse_directions(kind, 8 * n if kind == "updown" else 4 * n, n, seed)


def crossbar_trace(device: Any, dirs: np.ndarray, n: int, seed: int = 0, tweak: dict | None = None,
                   approximate: bool = False, start: float | str = 0.0) -> np.ndarray:
    """The crossbar's weights (in aihwkit's units) for the device imported from ``device``, after each pulse;
    ``tweak`` overrides imported crossbar parameters (to show that a wrong one fails). Devices start at the nominal
    w_min clipped to their own bounds, as aihwkit's protocol sets them."""
    params = from_aihwkit(device, approximate=approximate)
    params.pop("source")
    params.update(tweak or {})
    devices = PulseDevices(device_config("ideal", **params), n, seed=seed, start=start)
    g = devices.trace(dirs)
    return (device.w_min + g * (device.w_max - device.w_min)).astype(np.float32).astype(np.float64)


def trajectory_error(device: Any, kind: str, seed: int = 0) -> float:
    """Largest |crossbar - aihwkit| weight over a noise-free sequence, as a fraction of the weight range."""
    dirs = directions(kind, device, seed)
    ref = aihwkit_trace(device, dirs, 2, seed)
    ours = crossbar_trace(device, dirs, 2, seed)
    return float(np.abs(ours - ref).max() / (device.w_max - device.w_min))


def checkpoints(dirs: np.ndarray, count: int = 6) -> np.ndarray:
    """Evenly spaced pulse indices (never the first) at which distributions are compared."""
    return np.unique(np.linspace(1, len(dirs) - 1, count).astype(int))


def ks_pvalues(ref: np.ndarray, ours: np.ndarray, at: np.ndarray) -> dict[str, float]:
    """Two-sample KS p-values at the checkpoints ``at``: the weights, and the single-pulse increments there."""
    from scipy.stats import ks_2samp

    out = {}
    for i in at:
        out[f"w[{i}]"] = float(ks_2samp(ref[i], ours[i]).pvalue)
        out[f"dw[{i}]"] = float(ks_2samp(ref[i] - ref[i - 1], ours[i] - ours[i - 1]).pvalue)
    return out


def ks_test(device: Any, kind: str, n: int = 2000, seed: int = 0, tweak: dict | None = None
            ) -> tuple[float, float]:
    """(smallest KS p-value, the Bonferroni threshold KS_ALPHA / comparisons) over the checkpoints of ``kind``."""
    dirs = directions(kind, device, seed)
    ref = aihwkit_trace(device, dirs, n, seed)
    ours = crossbar_trace(device, dirs, n, seed + 1, tweak)
    p = ks_pvalues(ref, ours, checkpoints(dirs))
    return min(p.values()), KS_ALPHA / len(p)


def variation_cases() -> dict[str, Any]:
    """The shared models with device-to-device and cycle-to-cycle variation on (aihwkit's names and values)."""
    all_cases = cases()
    spread = {"dw_min_dtod": 0.3, "dw_min_std": 0.5}
    return {
        "constant": all_cases["constant"].device(up_down=0.0, w_max_dtod=0.2, w_min_dtod=0.2, **spread),
        "constant_lognormal": all_cases["constant"].device(up_down=0.0, dw_min_dtod_log_normal=True, **spread),
        "linear_step": all_cases["linear_step"].device(up_down=0.0, w_min=-1.0, w_max=1.0, **spread),
        "soft_bounds": all_cases["soft_bounds"].device(up_down=0.0, **spread),
        "table": all_cases["table"].device(dw_min=0.01, **spread),
    }


# ---- transfers (Tiki-Taka family) ---------------------------------------------------------------------------------

TTV2_FIELDS = ("transfer_columns", "random_selection", "with_reset_prob", "step", "transfer_every",
               "n_reads_per_transfer", "transfer_lr", "scale_transfer_lr", "thres_scale", "momentum", "forget_buffer")
"""The BufferedTransferCompound fields the crossbar's TTv2 keys depend on."""


def ttv2_parameters(compound: Any, lr: float) -> dict[str, Any]:
    """The crossbar ``algorithm = "ttv2"`` keys of an aihwkit ``BufferedTransferCompound`` (object, or a mapping of
    its ``TTV2_FIELDS``) trained at SGD rate ``lr``.

    aihwkit's buffer H is in weight units (H += transfer_lr lr A), and each pulse on C takes thres_scale dw_min
    off it (one pulse where |H| >= thres_scale dw_min); the crossbar's H is in steps of C (H += transfer_lr / step
    x read), a pulse takes one step off it. So the crossbar's H is aihwkit's in units of thres_scale dw_min, its
    transfer_lr is transfer_lr x lr (with scale_transfer_lr) / thres_scale, and its threshold 1. aihwkit's default
    transfer update (desired_bl = 1) fires at most one pulse per weight and event, the crossbar trunc(H) pulses:
    the two agree while |H| stays below 2 thresholds (a documented difference)."""
    f = dict(compound) if isinstance(compound, Mapping) else {k: getattr(compound, k) for k in TTV2_FIELDS}
    if f["step"] != 1.0:
        raise ValueError(f"BufferedTransferCompound.step = {f['step']}: the crossbar fires whole pulses (1)")
    return {**_transfer_keys(f, "ttv2", lr, f["thres_scale"]), "threshold": 1.0, "momentum": f["momentum"],
            "forget_buffer": bool(f["forget_buffer"])}


def _transfer_keys(f: Mapping[str, Any], algorithm: str, lr: float, granularity: float) -> dict[str, Any]:
    """The keys every transfer algorithm shares, from the compound's fields ``f``: the event schedule, the
    transfer rate (x ``lr`` with scale_transfer_lr, / ``granularity``) and A read without a reference."""
    if not f["transfer_columns"] or f["random_selection"] or f["with_reset_prob"]:
        raise ValueError("only column transfers in order, without reset, have a crossbar counterpart")
    every = f["transfer_every"]
    if every != int(every) or every < 1:
        raise ValueError(f"transfer_every = {every}: the crossbar transfers every whole number of updates")
    return {"algorithm": algorithm, "transfer_every": int(every), "transfer_columns": int(f["n_reads_per_transfer"]),
            "transfer_lr": f["transfer_lr"] * (lr if f["scale_transfer_lr"] else 1.0) / granularity,
            "fast_reference": "zero"}


def _fields(compound: Any) -> dict[str, Any]:
    """A compound's dataclass fields by name."""
    import dataclasses

    return {f.name: getattr(compound, f.name) for f in dataclasses.fields(compound)}


TRANSFER_DEVICE = {"device": "ConstantStepDevice", "dw_min": 0.01, **NO_VARIATION}
"""The transfer cases' device (aihwkit's names): noise-free constant steps, for C and A alike."""
TRANSFER_LR = 0.4  # aihwkit's SGD learning rate (scales transfer_lr)
TRANSFER_FAST = ((3.0, -2.6, 1.2, 0.4, -4.9), (-1.0, 5.5, 0.7, -3.3, 2.2), (4.1, 0.2, -0.9, 1.6, -2.4))
"""A, in device steps: over 12 column reads |H| stays below 2 thresholds, so aihwkit's one-pulse cap never binds."""
TRANSFER_BASE = {"transfer_every": 1, "n_reads_per_transfer": 2, "transfer_lr": 0.5, "momentum": 0.0,
                 "forget_buffer": False, "thres_scale": 1.0}
TRANSFER_CASES = {"remainder": {}, "forget": {"forget_buffer": True}, "momentum": {"momentum": 0.25},
                  "forget-momentum": {"forget_buffer": True, "momentum": 0.25},
                  "one-column": {"n_reads_per_transfer": 1},
                  "every-2": {"transfer_every": 2}, "threshold-1.5": {"thres_scale": 1.5}}
"""BufferedTransferCompound fields (over TRANSFER_BASE) of each transfer case."""


def transfer_case(name: str) -> tuple[dict[str, Any], int]:
    """The compound fields of transfer case ``name`` and its number of transfer events (12 column reads)."""
    fields = {**TRANSFER_BASE, **TRANSFER_CASES[name]}
    return fields, 12 * int(fields["transfer_every"]) // int(fields["n_reads_per_transfer"])


def ttv2_compound(device: Any, **fields: Any) -> Any:
    """An aihwkit ``BufferedTransferCompound`` of two ``device`` arrays with exact (perfect) transfer reads;
    ``device`` is an aihwkit device or its description (a mapping naming its class under ``"device"``)."""
    from aihwkit.simulator.configs import BufferedTransferCompound

    return _compound(BufferedTransferCompound, device, fields)


def tiki_taka_compound(device: Any, **fields: Any) -> Any:
    """An aihwkit ``TransferCompound`` (Tiki-Taka) as ``ttv2_compound``, its transfer pulses deterministic:
    ``PulseType.DETERMINISTIC_IMPLICIT`` at bit length 31 without update management, which fires round(change /
    dw_min) pulses (checked for changes up to 6 pulses)."""
    from aihwkit.simulator.configs import TransferCompound
    from aihwkit.simulator.parameters.enums import PulseType

    compound = _compound(TransferCompound, device, fields)
    update = compound.transfer_update
    update.pulse_type, update.desired_bl = PulseType.DETERMINISTIC_IMPLICIT, 31
    update.update_bl_management = update.update_management = False
    return compound


def c_ttv2_compound(device: Any, **fields: Any) -> Any:
    """An aihwkit ``ChoppedTransferCompound`` (c-TTv2) as ``ttv2_compound`` (aihwkit reads one column per event)."""
    from aihwkit.simulator.configs import ChoppedTransferCompound

    return _compound(ChoppedTransferCompound, device, fields)


def c_ttv2_parameters(compound: Any, lr: float) -> dict[str, Any]:
    """The crossbar ``algorithm = "c_ttv2"`` keys of a ``c_ttv2_compound`` trained at SGD rate ``lr``.

    aihwkit's c-TTv2 keeps H in pulses (H += transfer_lr lr A / (buffer_granularity dw_min), a pulse where
    |H| >= 1), so the crossbar's transfer_lr is transfer_lr x lr (with scale_transfer_lr) / buffer_granularity and
    its threshold 1; the input choppers flip with the same probability (random, ``in_chop_random``)."""
    checks = {"in_chop_random": True, "out_chop_prob": 0.0, "auto_granularity": 0.0, "auto_scale": False,
              "correct_gradient_magnitudes": False, "step": 1.0}
    bad = {k: getattr(compound, k) for k, v in checks.items() if getattr(compound, k) != v}
    if bad:
        raise ValueError(f"ChoppedTransferCompound fields {bad} have no crossbar counterpart (need {checks})")
    return {**_transfer_keys(_fields(compound), "c_ttv2", lr, compound.buffer_granularity), "threshold": 1.0,
            "momentum": compound.momentum, "forget_buffer": bool(compound.forget_buffer),
            "in_chop_prob": compound.in_chop_prob}


def _buffer_unit(compound: Any) -> float:
    """aihwkit's H per crossbar H: the TTv2 buffer is in weights (thres_scale dw_min each), c-TTv2's in pulses."""
    if type(compound).__name__ == "BufferedTransferCompound":
        return compound.unit_cell_devices[1].dw_min * compound.thres_scale
    return 1.0


def _compound(cls: type, device: Any, fields: Mapping[str, Any]) -> Any:
    from aihwkit.simulator.configs import devices

    if isinstance(device, Mapping):
        device = getattr(devices, device["device"])(**{k: v for k, v in device.items() if k != "device"})
    compound = cls(unit_cell_devices=[copy.deepcopy(device), copy.deepcopy(device)], **fields)
    compound.transfer_forward.is_perfect = True
    return compound


def tiki_taka_parameters(compound: Any, lr: float) -> dict[str, Any]:
    """The crossbar ``algorithm = "tiki_taka"`` keys of a ``tiki_taka_compound`` trained at SGD rate ``lr``: a
    transfer adds transfer_lr x lr (with scale_transfer_lr) x A's column to C, written in pulses rounded to the
    nearest (pulse_mode = "count"), capped at aihwkit's desired_bl; gamma as aihwkit's."""
    from aihwkit.simulator.parameters.enums import PulseType

    update = compound.transfer_update
    if update.pulse_type != PulseType.DETERMINISTIC_IMPLICIT or update.update_management or \
            update.update_bl_management:
        raise ValueError("only a deterministic transfer update (tiki_taka_compound) has an exact crossbar "
                         "counterpart")
    return {**_transfer_keys(_fields(compound), "tiki_taka", lr, 1.0), "gamma": compound.gamma,
            "pulse_mode": "count", "max_pulses": update.desired_bl}


def aihwkit_transfers(compound: Any, fast_steps: np.ndarray, events: int, lr: float) -> list[dict[str, np.ndarray]]:
    """aihwkit's side: A set to ``fast_steps`` (in steps dw_min of the device), C and H zero, then ``events``
    updates with a zero gradient (each counts towards transfer_every, moves nothing). After each: C's change in
    steps and, for the TTv2 family, H in the crossbar's units (``_buffer_unit``)."""
    from aihwkit.simulator.configs import UnitCellRPUConfig
    from aihwkit.simulator.tiles import AnalogTile

    fast_steps = np.asarray(fast_steps, dtype=np.float64)
    out_size, in_size = fast_steps.shape
    dw = compound.unit_cell_devices[1].dw_min
    config = UnitCellRPUConfig(device=compound)
    config.forward.is_perfect = True
    tile = AnalogTile(out_size, in_size, config)
    tile.set_learning_rate(lr)
    hidden = tile.get_hidden_parameters()
    hidden["hidden_weights_0"] = torch.tensor(fast_steps * compound.unit_cell_devices[0].dw_min, dtype=torch.float32)
    hidden["hidden_weights_1"] = torch.zeros(out_size, in_size)
    if "buffered_FP_weight_0" in hidden:
        hidden["buffered_FP_weight_0"] = torch.zeros(out_size, in_size)
    tile.set_hidden_parameters(hidden)
    trace = []
    for _ in range(events):
        tile.update(torch.zeros(1, in_size), torch.zeros(1, out_size))
        h = tile.get_hidden_parameters()
        event = {"c": h["hidden_weights_1"].double().numpy() / dw}
        if "buffered_FP_weight_0" in h:  # the TTv2 family's H
            event["h"] = h["buffered_FP_weight_0"].double().numpy() / _buffer_unit(compound)
        trace.append(event)
    return trace


def crossbar_transfers(device: Any, keys: dict[str, Any], fast_steps: np.ndarray, events: int,
                       tweak: Callable[[Any], None] | None = None) -> list[dict[str, np.ndarray]]:
    """The crossbar's side of ``aihwkit_transfers``: the device imported from ``device``, ideal reads, its
    algorithm's A (``w1`` of a one-layer network) set to ``fast_steps`` steps, then ``events`` zero updates.
    ``device`` is an aihwkit device or its description (``from_aihwkit``: no aihwkit needed). ``tweak`` may alter
    the algorithm object first (to show that a wrong transfer fails)."""
    import targets
    from hwtoolkit.network.parameters import init_parameters
    from hwtoolkit.network.spec import NetworkSpec
    from targets import Update

    fast_steps = np.asarray(fast_steps, dtype=np.float64)
    out_size, in_size = fast_steps.shape
    spec = NetworkSpec(input_shape=(1, 1, in_size), hidden=(out_size,), classes=2)
    params = from_aihwkit(device)
    params.pop("source")
    t = targets.open("crossbar", spec, dtype="float64", **params, **keys)
    t.program(init_parameters(spec, 0, torch.float64))
    alg, a = t.algorithm, t.algorithm.fast["w1"]
    if tweak is not None:
        tweak(alg)
    w = torch.tensor(fast_steps, dtype=torch.float64) * a.step
    a.set_devices(a.reference + w / (2 * a.scale), a.reference - w / (2 * a.scale), t._gen, t.now)
    if not torch.allclose(alg.read_fast("w1", t.now), w, rtol=0, atol=1e-9 * a.step):
        raise ValueError(f"A cannot hold fast_steps (largest {np.abs(fast_steps).max()} steps) within its range")
    c, step = t.arrays["w1"], t.arrays["w1"].step
    before = c.weight(t.now).clone()
    zero = {n: torch.zeros(tuple(s), dtype=torch.float64) for n, s in spec.parameter_shapes().items()}
    trace = []
    for _ in range(events):
        t.apply_update(Update(zero))
        event = {"c": ((c.weight(t.now) - before) / step).numpy()}
        if alg.buffered:
            event["h"] = alg.h["w1"].clone().numpy()
        trace.append(event)
    return trace
