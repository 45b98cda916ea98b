"""The crossbar's TTv2 transfer against aihwkit 1.2.0's BufferedTransferCompound, live (deterministic).

Both sides: noise-free constant-step devices (the crossbar's imported with ``from_aihwkit``), A set to known
values in device steps, C and H zero, exact column reads (aihwkit ``transfer_forward.is_perfect``; the crossbar's
ideal read periphery), then updates with a zero gradient, each one a transfer event of ``n_reads_per_transfer``
columns. aihwkit fires its transfer pulses with ``desired_bl = 1`` and no update management (its default for this
compound), so a pulse is certain: both sides are deterministic. After every event C's change (whole pulses) and H
(in steps) must agree to 1e-4 steps (aihwkit computes in float32). Parameters map by
``targets.aihwkit.conformance.ttv2_parameters``. A slightly wrong transfer (transfer_lr 20% off, the wrong sign,
columns in the wrong order, H that forgets its remainder) fails the same comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("aihwkit", reason="aihwkit is not installed (make install builds it)")

from targets.aihwkit.conformance import (NO_VARIATION, aihwkit_transfers, crossbar_transfers,  # noqa: E402
                                         ttv2_compound, ttv2_parameters)

LR = 0.4
EVENTS = 6
TOL = 1e-4  # steps
# A in steps of the device: |transfer_lr LR A| below 2 steps per event, so aihwkit's one-pulse cap never binds
FAST = np.array([[3.0, -2.6, 1.2, 0.4, -4.9], [-1.0, 5.5, 0.7, -3.3, 2.2], [4.1, 0.2, -0.9, 1.6, -2.4]])


def _device():
    from aihwkit.simulator.configs import ConstantStepDevice

    return ConstantStepDevice(dw_min=0.01, **NO_VARIATION)


def _compound(**fields):
    base = {"transfer_every": 1, "n_reads_per_transfer": 2, "transfer_lr": 0.5, "momentum": 0.0,
            "forget_buffer": False, "thres_scale": 1.0}
    return ttv2_compound(_device(), **{**base, **fields})


def _mismatch(ref, ours) -> float:
    """Largest |difference| of C's change or H, in steps, over every event."""
    return max(float(np.abs(r[k] - o[k]).max()) for r, o in zip(ref, ours) for k in ("c", "h"))


@pytest.mark.parametrize("fields", [{}, {"forget_buffer": True}, {"momentum": 0.25},
                                    {"forget_buffer": True, "momentum": 0.25}, {"n_reads_per_transfer": 1},
                                    {"transfer_every": 2}, {"thres_scale": 1.5}],
                         ids=["remainder", "forget", "momentum", "forget-momentum", "one-column", "every-2",
                              "threshold-1.5"])
def test_ttv2_transfer_matches_aihwkit(fields):
    compound = _compound(**fields)
    events = EVENTS * 2 * int(compound.transfer_every) // compound.n_reads_per_transfer  # 12 column reads
    ref = aihwkit_transfers(compound, FAST, events, LR)
    ours = crossbar_transfers(_device(), ttv2_parameters(compound, LR), FAST, events)
    assert any(np.abs(r["c"]).max() >= 1 for r in ref)  # the scenario fires pulses
    steps = [ours[0]["c"]] + [b["c"] - a["c"] for a, b in zip(ours, ours[1:])]
    assert max(float(np.abs(s).max()) for s in steps) <= 1 + TOL  # aihwkit's one-pulse cap never binds
    assert _mismatch(ref, ours) <= TOL


def _start_at_column_1(alg):
    alg.pointer["w1"] = 1


WRONG = {
    "transfer_lr 20% off": ({"transfer_lr": 0.5 * LR * 1.2}, None, 1),
    "wrong sign": ({}, None, -1),
    "wrong column order": ({}, _start_at_column_1, 1),
    "H forgets its remainder": ({"forget_buffer": True}, None, 1),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_transfer_fails(wrong):
    keys, tweak, sign = WRONG[wrong]
    compound = _compound()
    ref = aihwkit_transfers(compound, FAST, EVENTS, LR)
    ours = crossbar_transfers(_device(), {**ttv2_parameters(compound, LR), **keys}, sign * FAST, EVENTS, tweak)
    assert _mismatch(ref, ours) > 100 * TOL, wrong


def test_unsupported_compounds_are_refused():
    with pytest.raises(ValueError, match="step"):
        ttv2_parameters(_compound(step=2.0), LR)
    with pytest.raises(ValueError, match="column transfers"):
        ttv2_parameters(_compound(random_selection=True), LR)
