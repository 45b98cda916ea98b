"""Bring your own device: aihwkit descriptions (object, TOML, JSON) and measured pulse tables, against aihwkit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomli_w

from targets.aihwkit.conformance import cases, directions, states
from targets.aihwkit.traces import aihwkit_tile, aihwkit_trace
from targets.crossbar.config import device_config
from targets.crossbar.importers import (PULSE_TABLE_COLUMNS, DeviceImportError, from_aihwkit, from_pulse_table,
                                        write_preset)
from targets.crossbar.traces import PulseDevices

DESCRIPTION = {"device": "LinearStepDevice", "dw_min": 0.01, "gamma_up": 0.3, "gamma_down": 0.6, "w_min": -0.8,
               "w_max": 1.2, "up_down": -0.05, "gamma_up_dtod": 0.0, "gamma_down_dtod": 0.0, "dw_min_dtod": 0.0,
               "dw_min_std": 0.0, "up_down_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0}


def aihwkit_device(description: dict):
    from aihwkit.simulator.configs import devices

    fields = dict(description)
    return getattr(devices, fields.pop("device"))(**fields)


@pytest.mark.parametrize("form", ["object", "mapping", "toml", "json"])
def test_an_imported_description_reproduces_aihwkits_traces(form, tmp_path):
    """From an aihwkit object, a mapping, a TOML or a JSON file, written as a TOML preset and loaded as one, the
    device's noise-free pulse responses are aihwkit's within 1e-5 of the range."""
    device = aihwkit_device(DESCRIPTION)
    source = {"object": device, "mapping": DESCRIPTION}.get(form)
    if source is None:
        source = tmp_path / f"device.{form}"
        source.write_text(tomli_w.dumps(DESCRIPTION) if form == "toml" else json.dumps(DESCRIPTION))
    params = from_aihwkit(source)
    assert params == from_aihwkit(device)
    preset = write_preset(params, tmp_path / "my_device.toml", base="ideal")
    span = device.w_max - device.w_min
    for kind in ("updown", "bounds"):
        dirs = directions(kind, device)
        ours = device.w_min + span * PulseDevices(device_config(str(preset)), 1, start=0.0).trace(dirs)[:, 0]
        assert np.abs(ours - aihwkit_trace(device, dirs, 1)[:, 0]).max() / span <= 1e-5


def test_a_preset_file_keeps_a_base_read_path(tmp_path):
    params = from_aihwkit(DESCRIPTION)
    cfg = device_config(str(write_preset(params, tmp_path / "dev.toml", base="ecram-mo")))
    assert cfg.read == device_config("ecram-mo").read
    assert cfg.device.dw_min == pytest.approx(params["dw_min"]) and cfg.response.name == "soft_bounds"


@pytest.mark.parametrize("description, message", [
    ({**DESCRIPTION, "gama_up": 0.3}, "unknown LinearStepDevice field(s) ['gama_up']"),
    ({"dw_min": 0.01}, '"device" = the aihwkit class name'),
    ({"device": "NoSuchDevice"}, "neither one of"),
    ({**DESCRIPTION, "gamma_up_dtod": 0.05}, "LinearStepDevice.gamma_up_dtod = 0.05"),
    ({**DESCRIPTION, "w_min": 0.1}, "must enclose 0"),
    ({"device": "ConstantStepDevice", "drift": {"nu": 0.1, "nu_k": 0.2}}, "drift.nu_k"),
    ({"device": "ConstantStepDevice", "drift": {"n": 0.1}}, "unknown ConstantStepDevice.drift field(s) ['n']"),
    ({"device": "PiecewiseStepDevice", "piecewise_up": [1, 0, 1], "piecewise_down": [1, 1, 1]}, "positive"),
])
def test_bad_descriptions_are_refused_by_name(description, message):
    with pytest.raises(DeviceImportError) as e:
        from_aihwkit(description)
    assert message in str(e.value)


def test_devices_without_a_counterpart_are_refused():
    from aihwkit.simulator.configs import ExpStepDevice, PowStepDevice

    for device, why in ((ExpStepDevice(), "1 - A exp(gamma z)"), (PowStepDevice(), "power-step")):
        with pytest.raises(DeviceImportError, match="cannot be imported"):
            from_aihwkit(device)
        with pytest.raises(DeviceImportError, match="cannot be imported") as e:
            from_aihwkit(device)
        assert why in str(e.value)


def test_approximate_import_says_what_it_approximated():
    from aihwkit.simulator.presets import EcRamPresetDevice

    params = from_aihwkit(EcRamPresetDevice(), approximate=True)
    assert "gamma_up_dtod=0.05" in params["source"] and "up_down_dtod" in params["source"]
    with pytest.raises(DeviceImportError, match="gamma_up_dtod"):
        from_aihwkit(EcRamPresetDevice())


def measure_pulse_table(device, rows: int, n: int, seed: int = 0) -> list[tuple[float, ...]]:
    """A lab's measurement on aihwkit's device: at each of ``rows`` conductances from w_min to w_max, the mean
    and standard deviation of one up and one down pulse's change over ``n`` devices (at the bounds, measured one
    step inside, where the pulse is not clipped)."""
    span = device.w_max - device.w_min
    out = []
    for k in range(rows):
        w = device.w_min + span * k / (rows - 1)
        steps = []
        for direction in (1, -1):
            start = min(max(w, device.w_min + 1.5 * device.dw_min), device.w_max - 1.5 * device.dw_min)
            trace = aihwkit_trace(device, np.array([direction]), n, seed=seed + k, w_init=start)
            change = np.abs(trace[0] - np.float32(start))
            steps += [change.mean(), change.std()]
        out.append((w, steps[0], steps[2], steps[1], steps[3]))
    return out


def write_table(path, rows) -> None:
    header = ("conductance", "step_up", "step_down", "step_up_std", "step_down_std")
    path.write_text(",".join(header) + "\n" + "".join(",".join(f"{v:.9g}" for v in r) + "\n" for r in rows))


def test_an_imported_pulse_table_reproduces_aihwkits_traces(tmp_path):
    """A pulse table measured on aihwkit's piecewise-step device (9 rows, 4000 devices, cycle-to-cycle 0.2),
    imported: its cycle-to-cycle spread is aihwkit's within 3%, and the imported device's noise-free pulse
    responses are aihwkit's noise-free ones within 1% of the range (measurement noise and the table's
    interpolation between rows)."""
    device = cases()["table"].device(dw_min_std=0.2)
    table = tmp_path / "device.csv"
    write_table(table, measure_pulse_table(device, 9, 4000))
    params = from_pulse_table(table)
    assert params["dw_min_std"] == pytest.approx(0.2, rel=0.03)
    quiet = cases()["table"].device()
    span = quiet.w_max - quiet.w_min
    cfg = device_config(str(write_preset({**params, "dw_min_std": 0.0}, tmp_path / "table.toml")))
    for kind in ("updown", "random", "bounds"):
        dirs = directions(kind, quiet)
        ours = quiet.w_min + span * PulseDevices(cfg, 1, start=0.0).trace(dirs)[:, 0]
        error = np.abs(ours - aihwkit_trace(quiet, dirs, 1)[:, 0]).max() / span
        assert error <= 0.01, (kind, error)
    assert states(quiet) == pytest.approx(1 / params["dw_min"] / 1.0, rel=0.02)


@pytest.mark.parametrize("text, message", [
    ("conductance,step_up,step_down,step_up_std\n0,1,1,0\n", "missing column(s) ['step_down_std']"),
    ("conductance,step_up,step_down,step_up_std,step_down_std,extra\n", "unknown column(s) ['extra']"),
    ("conductance,step_up,step_down,step_up_std,step_down_std\n0,1,1,0,0\n1,1,x,0,0\n", "row 3: step_down = 'x'"),
    ("conductance,step_up,step_down,step_up_std,step_down_std\n0,1,1,0,0\n1,1,1,0\n", "row 3: 4 values"),
    ("conductance,step_up,step_down,step_up_std,step_down_std\n0,1,1,0,0\n0,1,1,0,0\n", "does not increase"),
    ("conductance,step_up,step_down,step_up_std,step_down_std\n0,1,1,0,0\n1,0,1,0,0\n", "step_up = 0.0"),
    ("conductance,step_up,step_down,step_up_std,step_down_std\n0,1,1,0,0\n", "at least 2 rows"),
    ("", "is empty"),
])
def test_malformed_pulse_tables_are_refused_by_row_and_column(text, message, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DeviceImportError) as e:
        from_pulse_table(path)
    assert message in str(e.value)
    assert PULSE_TABLE_COLUMNS[0] == "conductance"


def test_the_tile_helper_starts_where_asked():
    tile = aihwkit_tile(cases()["constant"].device(), 3, w_init=0.25)
    assert np.allclose(tile.get_weights()[0].numpy(), 0.25)
