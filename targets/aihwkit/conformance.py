"""The conformance cases of the crossbar's device models against aihwkit: devices, pulse sequences, metrics.

One case is an aihwkit device; the crossbar's counterpart is imported from it (``targets.crossbar.importers``).
Both get the same pulse sequences (``targets.crossbar.traces.pulse_directions``) through aihwkit's own protocol
(``targets.aihwkit.traces``) and the crossbar's (``targets.crossbar.traces``). Without variation the metric is the
largest trajectory difference as a fraction of the weight range; with it, two-sample Kolmogorov-Smirnov tests of the
devices' weights and of their single-pulse increments at checkpoints. Used by tests/conformance and by
benchmarks/aihwkit_conformance.py, which prints the table of docs/crossbar.md, "Conformance".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

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

