"""Every crossbar preset that cites an aihwkit preset, checked against that preset live (aihwkit 1.2.0).

* ``reram-sb`` <- ``ReRamSBPresetDevice``: its device parameters are the importer's mapping of the aihwkit preset
  (to 1e-6), and noise-free pulse responses agree to 1e-5 of the range (float32). Documented approximations: the
  aihwkit preset's additive cycle-to-cycle noise is multiplicative here; its bound spread is around w = 0, here
  around mid-range; its up_down_dtod is mapped to first order.
* ``reram-exp`` <- ``ReRamESPresetDevice``: aihwkit's exponential step ``1 - A exp(gamma z)`` is not the crossbar's
  ``exp(-gamma z)``; the preset is a least-squares fit of it, and noise-free pulse responses agree within 5% of the
  range (measured 4.3%); its noise parameters are aihwkit's in crossbar units.
* The read path of every non-ideal preset is aihwkit's default forward IO (bounds, resolutions, output noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from targets.aihwkit.traces import aihwkit_trace
from targets.crossbar.config import device_config, load_preset
from targets.crossbar.importers import from_aihwkit
from targets.crossbar.presets import PRESETS
from targets.crossbar.traces import PulseDevices, pulse_directions

NOISE_OFF_AIHWKIT = {"dw_min_dtod": 0.0, "dw_min_std": 0.0, "up_down_dtod": 0.0, "w_max_dtod": 0.0,
                     "w_min_dtod": 0.0, "write_noise_std": 0.0}
NOISE_OFF = {"dw_min_dtod": 0.0, "dw_min_std": 0.0, "up_down_dtod": 0.0, "bound_dtod": 0.0, "write_noise_std": 0.0}
CITED = {"reram-sb": "ReRamSBPresetDevice", "reram-exp": "ReRamESPresetDevice"}
TRAJECTORY_TOL = {"reram-sb": 1e-5, "reram-exp": 0.05}


def aihwkit_preset(name: str, **changes):
    from aihwkit.simulator import presets

    return getattr(presets, name)(**changes)


def test_every_preset_citing_aihwkit_is_checked():
    citing = {name for name, p in PRESETS.items() if "aihwkit" in p["source"]}
    assert citing == set(CITED)
    for name, cited in CITED.items():
        assert cited in PRESETS[name]["source"]


def trajectories(name: str, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    device = aihwkit_preset(CITED[name], **NOISE_OFF_AIHWKIT)
    n = int(round((device.w_max - device.w_min) / device.dw_min))
    dirs = (np.r_[np.ones(3 * n), -np.ones(3 * n)].astype(np.int64) if kind == "bounds"
            else pulse_directions(kind, 4 * n, n, seed=0))
    ref = aihwkit_trace(device, dirs, 1)[:, 0]
    span = device.w_max - device.w_min
    ours = PulseDevices(device_config(name, **NOISE_OFF), 1, start=0.0).trace(dirs)[:, 0]
    return ref, device.w_min + span * ours, span


@pytest.mark.parametrize("kind", ["updown", "random", "bounds"])
@pytest.mark.parametrize("name", list(CITED))
def test_noise_free_pulse_response_matches_the_cited_preset(name, kind):
    ref, ours, span = trajectories(name, kind)
    assert np.abs(ours - ref).max() / span <= TRAJECTORY_TOL[name]


def test_reram_sb_parameters_are_the_imported_aihwkit_preset():
    mapped = from_aihwkit(aihwkit_preset("ReRamSBPresetDevice"), approximate=True)
    source = mapped.pop("source")
    for note in ("mult_noise", "up_down_dtod", "w_max_dtod"):
        assert note in source  # the documented approximations
    cfg = device_config("reram-sb")
    assert cfg.response.name == mapped.pop("response")
    for key, value in mapped.items():
        part = next(p for p in (cfg.response, cfg.device, cfg.variation, cfg.time) if hasattr(p, key))
        assert getattr(part, key) == pytest.approx(value, rel=1e-6), key


def test_reram_exp_noise_is_the_cited_presets():
    """Cycle-to-cycle, device-to-device and write noise of reram-exp are aihwkit's (write noise in our steps)."""
    device = aihwkit_preset("ReRamESPresetDevice")
    preset = load_preset("reram-exp")
    span = device.w_max - device.w_min
    assert preset["dw_min_std"] == device.dw_min_std
    assert preset["dw_min_dtod"] == device.dw_min_dtod
    assert preset["bound_dtod"] == pytest.approx(device.w_max_dtod * device.w_max / (span / 2))
    assert preset["write_noise_std"] * preset["dw_min"] == pytest.approx(
        device.write_noise_std * device.dw_min / span, rel=0.01)
    a, b = 1.0, 1 - device.up_down  # first-order spread of the down/up ratio, as the importer maps it
    assert preset["up_down_dtod"] == pytest.approx(device.up_down_dtod * (1 / a + b / a ** 2), rel=0.01)


def test_a_wrong_fit_fails():
    """The reram-exp check can fail: the preset's earlier gamma = 1 model was 34% of the range away."""
    device = aihwkit_preset("ReRamESPresetDevice", **NOISE_OFF_AIHWKIT)
    n = int(round((device.w_max - device.w_min) / device.dw_min))
    dirs = pulse_directions("updown", 4 * n, n)
    ref = aihwkit_trace(device, dirs, 1)[:, 0]
    old = device_config("reram-exp", **NOISE_OFF, gamma_up=1.0, gamma_down=1.0, dw_min=1 / 1500, up_down=0.26)
    ours = device.w_min + 2 * PulseDevices(old, 1, start=0.0).trace(dirs)[:, 0]
    assert np.abs(ours - ref).max() / 2 > 5 * TRAJECTORY_TOL["reram-exp"]


def test_presets_read_path_is_aihwkits_default_forward_io():
    """7-bit DAC on [-1, 1], 9-bit ADC on [-12, 12], output noise 0.06: aihwkit's IOParameters defaults."""
    from aihwkit.simulator.parameters.io import IOParameters

    io = IOParameters()
    for name in PRESETS:
        if name == "ideal":
            continue
        cfg = device_config(name).read.forward
        assert cfg.in_bound == io.inp_bound and cfg.out_bound == io.out_bound and cfg.out_noise == io.out_noise
        assert io.inp_res == pytest.approx(1 / (2 ** cfg.dac_bits - 2))
        assert io.out_res == pytest.approx(1 / (2 ** cfg.adc_bits - 2))
    assert dataclasses.is_dataclass(io)
