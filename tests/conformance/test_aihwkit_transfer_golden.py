"""Golden aihwkit transfers (tests/conformance/golden/make_transfer_golden.py wrote them with aihwkit 1.2.0).

The crossbar's TTv2 must reproduce aihwkit's BufferedTransferCompound in every recorded event (C's change in whole
pulses, H in thresholds) to 1e-4 steps: this needs no aihwkit, so the default suite checks the transfer too. Where
aihwkit is installed it must reproduce the file as well, so a change of its behaviour shows up as a diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from targets.aihwkit.conformance import TRANSFER_CASES, crossbar_transfers, ttv2_parameters

GOLDEN = json.loads((Path(__file__).parent / "golden" / "aihwkit_transfers.json").read_text())
CASES = {c["case"]: c for c in GOLDEN["cases"]}
TOL = 1e-4  # steps (aihwkit computes in float32)


def _max_diff(trace, case) -> float:
    return max(float(np.abs(np.asarray(case[k][i]) - e[k]).max()) for i, e in enumerate(trace) for k in ("c", "h"))


def test_golden_file_covers_every_case():
    assert set(CASES) == set(TRANSFER_CASES)
    assert GOLDEN["aihwkit"] == "1.2.0"
    assert any(np.abs(np.asarray(c["c"])).max() >= 1 for c in CASES.values())  # pulses were fired


@pytest.mark.parametrize("name", list(CASES))
def test_crossbar_reproduces_the_golden_transfers(name):
    case = CASES[name]
    ours = crossbar_transfers(GOLDEN["device"], ttv2_parameters(case["compound"], GOLDEN["lr"]), GOLDEN["fast"],
                              case["events"])
    assert _max_diff(ours, case) <= TOL


def test_a_wrong_transfer_lr_misses_the_golden_transfers():
    case = CASES["remainder"]
    keys = {**ttv2_parameters(case["compound"], GOLDEN["lr"])}
    keys["transfer_lr"] *= 1.2
    assert _max_diff(crossbar_transfers(GOLDEN["device"], keys, GOLDEN["fast"], case["events"]), case) >= 1 - TOL


@pytest.mark.parametrize("name", list(CASES))
def test_aihwkit_reproduces_the_golden_transfers(name):
    pytest.importorskip("aihwkit", reason="aihwkit is not installed (make install builds it)")
    from targets.aihwkit.conformance import aihwkit_transfers, ttv2_compound

    case = CASES[name]
    compound = ttv2_compound(GOLDEN["device"], **case["compound"])
    assert _max_diff(aihwkit_transfers(compound, GOLDEN["fast"], case["events"], GOLDEN["lr"]), case) <= TOL


def test_an_a_beyond_the_devices_range_is_an_error():
    with pytest.raises(ValueError, match="A cannot hold"):
        crossbar_transfers(GOLDEN["device"], ttv2_parameters(CASES["remainder"]["compound"], GOLDEN["lr"]),
                           np.full((2, 2), 500.0), 1)
