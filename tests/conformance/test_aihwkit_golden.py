"""Golden aihwkit pulse responses (tests/conformance/golden/make_golden.py wrote them with aihwkit 1.2.0).

The installed aihwkit must reproduce them to float32 precision: a change of aihwkit's behaviour shows up here as a
diff. The crossbar must reproduce them within each case's conformance tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from targets.aihwkit.conformance import cases, crossbar_trace
from targets.aihwkit.traces import aihwkit_trace

GOLDEN = json.loads((Path(__file__).parent / "golden" / "aihwkit_traces.json").read_text())
IDS = [f"{t['model']}-{t['sequence']}" for t in GOLDEN["traces"]]


def test_golden_file_covers_every_case():
    assert {t["model"] for t in GOLDEN["traces"]} == set(cases())
    assert GOLDEN["aihwkit"] == "1.2.0"


@pytest.mark.parametrize("trace", GOLDEN["traces"], ids=IDS)
def test_aihwkit_and_crossbar_reproduce_the_golden_trace(trace):
    from aihwkit.simulator.configs import devices

    device = getattr(devices, trace["device"])(**trace["fields"])
    dirs = np.array(trace["directions"], dtype=np.int64)
    golden = np.array(trace["weights"])
    live = aihwkit_trace(device, dirs, 1)[:, 0]
    np.testing.assert_allclose(live, golden, rtol=0, atol=1e-6 * (device.w_max - device.w_min))
    case = cases()[trace["model"]]
    ours = crossbar_trace(device, dirs, 1)[:, 0]
    assert np.abs(ours - golden).max() / (device.w_max - device.w_min) <= case.tolerance(device)
