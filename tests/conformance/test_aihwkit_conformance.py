"""The crossbar's device models against IBM aihwkit 1.2.0, live (aihwkit is built by `make install`).

Every case imports an aihwkit device into crossbar parameters (``targets.crossbar.importers.from_aihwkit``) and
runs the same pulse sequences through both (``targets.aihwkit.conformance``): aihwkit's own pulse-response
protocol (n up, n down, repeated), random +-1 trains, and long one-directional runs into the bounds.

* Without variation: the weight trajectories agree within the case's stated tolerance (a fraction of the range).
* With device-to-device and cycle-to-cycle variation: two-sample Kolmogorov-Smirnov tests of the devices' weights
  and single-pulse increments at 6 checkpoints over 4000 devices, rejecting at a family-wise 99.9% confidence
  (Bonferroni: each of the 12 comparisons at 0.001 / 12). The same test rejects a crossbar device whose step is 5%
  off, whose step spread is 20% off or whose cycle-to-cycle spread is 30% off.
* aihwkit seeds its pulse noise from the clock (no Python binding for its seed), so its side is a fresh draw at
  every run: each statistical test keeps the false-alarm rate it states, the crossbar's side is seeded.
* Deliberate differences (drift's time origin, how asymmetry combines with the step spread) are checked as the
  documented difference. Under bound variation the soft-bounds slopes are measured from w = 0 to each device's own
  bound (aihwkit's soft bounds) or to the nominal bound (its linear step with ``mean_bound_reference``); the test
  also shows that the other reference is rejected.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from targets.aihwkit.conformance import (KS_ALPHA, NO_VARIATION, SEQUENCES, cases, checkpoints, crossbar_trace,
                                         directions, ks_pvalues, states, trajectory_error, variation_cases)
from targets.aihwkit.traces import aihwkit_tile, aihwkit_trace
from targets.crossbar.config import device_config
from targets.crossbar.importers import DEFAULTS, from_aihwkit
from targets.crossbar.traces import PulseDevices, pulse_directions

N_DEVICES = 4000
WRONG = {"step 5% off": ("dw_min", 1.05), "step spread 20% off": ("dw_min_dtod", 1.2),
         "cycle-to-cycle 30% off": ("dw_min_std", 1.3)}


def test_importer_knows_aihwkits_fields_and_defaults():
    """The importer's table of aihwkit defaults is aihwkit's own (so a new aihwkit version shows up here)."""
    from aihwkit.simulator.configs import devices

    for name, defaults in DEFAULTS.items():
        device = getattr(devices, name)()
        fields = {f.name: getattr(device, f.name) for f in dataclasses.fields(device)}
        assert set(fields) == set(defaults), name
        for key, value in defaults.items():
            if key != "drift":
                assert fields[key] == value, (name, key)


@pytest.mark.parametrize("kind", SEQUENCES)
@pytest.mark.parametrize("model", ["constant", "linear_step", "soft_bounds", "table"])
def test_noise_free_trajectories_match(model, kind):
    case = cases()[model]
    device = case.device()
    error = trajectory_error(device, kind)
    assert error <= case.tolerance(device), (model, kind, error)


def test_a_wrong_model_fails_the_trajectory_check():
    """The noise-free check can fail: the soft-bounds device imported as a constant step is far outside it."""
    case = cases()["soft_bounds"]
    device = case.device()
    dirs = directions("updown", device)
    ours = crossbar_trace(device, dirs, 1, tweak={"response": "constant", "slope_up": 1.0, "slope_down": 1.0})
    ref = aihwkit_trace(device, dirs, 1)
    assert np.abs(ours - ref).max() / (device.w_max - device.w_min) > 100 * case.tolerance(device)


@pytest.mark.parametrize("model", list(variation_cases()))
def test_distributions_with_variation_match_and_wrong_parameters_fail(model):
    """KS at 99.9% (family-wise over 12 comparisons) over 4000 devices: the imported device passes; the same
    device with one parameter slightly wrong fails."""
    device = variation_cases()[model]
    dirs = directions("updown", device)
    at = checkpoints(dirs)
    ref = aihwkit_trace(device, dirs, N_DEVICES, seed=0)
    right = ks_pvalues(ref, crossbar_trace(device, dirs, N_DEVICES, seed=1), at)
    threshold = KS_ALPHA / len(right)
    assert min(right.values()) > threshold, right
    imported = from_aihwkit(device)
    for label, (key, factor) in WRONG.items():
        wrong = ks_pvalues(ref, crossbar_trace(device, dirs, N_DEVICES, seed=1,
                                               tweak={key: imported[key] * factor}), at)
        assert min(wrong.values()) < threshold, (label, wrong)


@pytest.mark.parametrize("model", ["soft_bounds", "linear_step"])
def test_symmetry_point(model):
    """Alternating up and down pulses converge to the symmetry point: aihwkit's trajectory ends within one step
    of the crossbar's analytic point and of the closed form of aihwkit's parameters; with cycle-to-cycle noise the
    mean over 4000 devices does too (within 4 standard errors)."""
    base = cases()[model].device()
    device = dataclasses.replace(base, up_down=0.2)
    span, step = device.w_max - device.w_min, device.dw_min
    dirs = pulse_directions("updown", 6 * states(device), 1)
    ref = aihwkit_trace(device, dirs, 1)[-2:, 0].mean()
    params = from_aihwkit(device)
    params.pop("source")
    ours = PulseDevices(device_config("ideal", **params), 1)
    point = device.w_min + span * ours.symmetry_points()[0]
    gu = getattr(device, "gamma_up", 1.0)
    gd = getattr(device, "gamma_down", 1.0)
    su, sd = step, (1 - device.up_down) * step  # aihwkit: up (1 - gu w / w_max), down (1 + gd w / |w_min|)
    closed = (su - sd) / (su * gu / device.w_max + sd * gd / -device.w_min)
    assert abs(ref - point) <= step, (ref, point)
    assert abs(closed - point) <= 1e-9 * span, (closed, point)
    noisy = dataclasses.replace(device, dw_min_std=0.5)
    ref_mean = aihwkit_trace(noisy, dirs, N_DEVICES)[-2:].mean(0)
    ours_mean = crossbar_trace(noisy, dirs, N_DEVICES, seed=1)[-2:].mean(0)
    for values in (ref_mean, ours_mean):
        assert abs(values.mean() - point) <= step + 4 * values.std() / np.sqrt(N_DEVICES), (values.mean(), point)


@pytest.mark.parametrize("model", ["soft_bounds", "linear_step"])
def test_soft_bounds_with_bound_variation(model):
    # with step spreads too: without them every device starting at a clipped bound takes the same steps, and KS
    # would compare float32 round-offs of that point mass rather than the physics
    device = dataclasses.replace(cases()[model].device(), up_down=0.0, w_min=-1.0, w_max=1.0, w_min_dtod=0.3,
                                 w_max_dtod=0.3, dw_min_dtod=0.3, dw_min_std=0.5)
    if model == "linear_step":  # steep enough slopes that the wrong bound reference is told apart
        device = dataclasses.replace(device, gamma_up=0.9, gamma_down=0.9)
    dirs = directions("updown", device)
    ref = aihwkit_trace(device, dirs, N_DEVICES)
    imported = from_aihwkit(device).get("bound_reference", "device")
    assert imported == ("nominal" if model == "linear_step" else "device")
    p = ks_pvalues(ref, crossbar_trace(device, dirs, N_DEVICES, seed=1), checkpoints(dirs))
    assert min(p.values()) > KS_ALPHA / len(p), p
    wrong = {"bound_reference": "device" if imported == "nominal" else "nominal"}
    p = ks_pvalues(ref, crossbar_trace(device, dirs, N_DEVICES, seed=1, tweak=wrong), checkpoints(dirs))
    assert min(p.values()) <= KS_ALPHA / len(p), p


def test_asymmetry_with_step_spread_is_the_documented_difference():
    """aihwkit adds its step gain to both directions (down = up - up_down dw_min per device); the crossbar
    multiplies (down = (1 - up_down) up per device). Both hold exactly, and the mean steps agree."""
    device = cases()["constant"].device(up_down=0.1, dw_min_dtod=0.3)
    dirs = np.array([1, -1])
    ref = aihwkit_trace(device, dirs, N_DEVICES, w_init=0.0)
    ours = crossbar_trace(device, dirs, N_DEVICES, seed=1, start=0.5)
    for trace in (ref, ours):
        assert np.abs(trace[1]).max() > 0  # the down step did not bring every device back
    up_r, down_r = ref[0] - 0.0, ref[0] - ref[1]
    up_o, down_o = ours[0] - 0.0, ours[0] - ours[1]
    keep = up_r > 0.2 * device.dw_min  # devices with a non-negative down step (gain above up_down)
    assert np.allclose(up_r[keep] - down_r[keep], device.up_down * device.dw_min, atol=1e-7)
    assert np.allclose(down_o, (1 - from_aihwkit(device)["up_down"]) * up_o, atol=1e-7)
    se = device.dw_min * 0.3 / np.sqrt(N_DEVICES)
    assert abs(up_r.mean() - up_o.mean()) < 4 * np.sqrt(2) * se
    assert abs(down_r.mean() - down_o.mean()) < 4 * np.sqrt(2) * se


def _drift_device(nu_dtod: float):
    from aihwkit.simulator.parameters.inference import DriftParameter

    return cases()["constant"].device(w_min=0.0, w_max=1.0, up_down=0.0,
                                      drift=DriftParameter(nu=0.05, nu_dtod=nu_dtod, t_0=1.0))


def _drifted(device, n: int, times: list[float], tweak: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights after 50 up pulses and each elapsed time: aihwkit's (its drift clock starts at the first drift
    call after a write) and the crossbar's (pulses written at time 0), each [len(times), n]."""
    dirs = np.ones(50, dtype=np.int64)
    tile = aihwkit_tile(device, n, seed=0, w_init=0.0)
    from aihwkit.utils.visualization import compute_pulse_response

    compute_pulse_response(tile, dirs.astype(np.float64))
    tile.tile.drift_weights(1e-9)
    ref, elapsed = [], 0.0
    for t in times:
        tile.tile.drift_weights(t - elapsed)
        elapsed = t
        ref.append(tile.get_weights()[0][:, 0].numpy().astype(np.float64))
    params = from_aihwkit(device)
    params.pop("source")
    params.update(tweak or {})
    ours = PulseDevices(device_config("ideal", **params), n, seed=1, start=0.0)
    ours.trace(dirs)
    return np.array(ref), np.array([ours.conductance(t) for t in times])


def test_drift_is_the_documented_power_law():
    """Drift (no spread): aihwkit scales a weight by max(t / t0, 1)^-nu, the crossbar by ((t + t0) / t0)^-nu, t the
    time since the write; their ratio is ((t + t0) / t)^-nu, within 1e-3 of 1 from t = 50 t0."""
    device = _drift_device(0.0)
    times = [0.5, 2.0, 10.0, 100.0, 1e4]
    ref, ours = _drifted(device, 4, times)
    w0 = 50 * device.dw_min
    for i, t in enumerate(times):
        assert np.allclose(ref[i], w0 * max(t, 1.0) ** -0.05, rtol=2e-6), (t, ref[i])
        assert np.allclose(ours[i], w0 * (t + 1.0) ** -0.05, rtol=1e-12), (t, ours[i])
        if t >= 50:
            assert np.allclose(ours[i], ref[i], rtol=1e-3)


def test_drift_exponent_spread():
    """With nu_dtod, the exponents each side's devices drift with have the same distribution (KS at 99.9% over
    4000 devices); a crossbar spread 20% too wide fails."""
    from scipy.stats import ks_2samp

    device = _drift_device(0.3)
    times = [1000.0]

    def exponents(tweak=None):
        ref, ours = _drifted(device, N_DEVICES, times, tweak)
        w0 = 50 * device.dw_min
        return -np.log(ref[0] / w0) / np.log(1000.0), -np.log(ours[0] / w0) / np.log(1001.0)

    ref_nu, ours_nu = exponents()
    assert ks_2samp(ref_nu, ours_nu).pvalue > KS_ALPHA
    imported = from_aihwkit(device)["drift_nu_dtod"]
    _, wrong_nu = exponents({"drift_nu_dtod": 1.2 * imported})
    assert ks_2samp(ref_nu, wrong_nu).pvalue < KS_ALPHA


def test_variation_cases_have_variation():
    """The variation cases really switch device-to-device and cycle-to-cycle variation on."""
    for name, device in variation_cases().items():
        assert device.dw_min_dtod > 0 and device.dw_min_std > 0, name
    assert all(cases()[m].device().dw_min_std == 0 for m in cases())
    assert NO_VARIATION["dw_min_std"] == 0
