"""The crossbar's TTv2 transfer against aihwkit 1.2.0's BufferedTransferCompound, live (deterministic).

Both sides: noise-free constant-step devices (the crossbar's imported with ``from_aihwkit``), A set to known
values in device steps, C and H zero, exact column reads (aihwkit ``transfer_forward.is_perfect``; the crossbar's
ideal read periphery), then updates with a zero gradient, each counting towards a transfer event of
``n_reads_per_transfer`` columns. aihwkit fires its transfer pulses with ``desired_bl = 1`` and no update management
(its default for this compound), so a pulse is certain: both sides are deterministic. After every event C's change
(whole pulses) and H (in thresholds) must agree to 1e-4 steps (aihwkit computes in float32). Parameters map by
``targets.aihwkit.conformance.ttv2_parameters``. A slightly wrong transfer (transfer_lr 20% off, the wrong sign,
columns in the wrong order, H that forgets its remainder) fails the same comparison by far. Where |H| reaches two
thresholds aihwkit fires one pulse and keeps the rest, the crossbar fires trunc(H): the documented difference.
Tiki-Taka (TransferCompound with deterministic-implicit transfer pulses against pulse_mode = "count") and c-TTv2
without chopper flips (ChoppedTransferCompound, in_chop_prob = 0) are checked the same way; c-TTv2's chopper flips
by a two-proportion z-test at |z| <= 4 (two-sided false alarm 6.3e-5) over 1000 columns.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("aihwkit", reason="aihwkit is not installed (make install builds it)")

from targets.aihwkit.conformance import (TRANSFER_CASES, TRANSFER_DEVICE, TRANSFER_FAST, TRANSFER_LR,  # noqa: E402
                                         aihwkit_transfers, c_ttv2_compound, c_ttv2_parameters,
                                         crossbar_transfers, tiki_taka_compound,
                                         tiki_taka_parameters, transfer_case, ttv2_compound, ttv2_parameters)

TOL = 1e-4  # steps


def _mismatch(ref, ours) -> float:
    """Largest |difference| of C's change or H, in steps, over every event."""
    return max(float(np.abs(r[k] - o[k]).max()) for r, o in zip(ref, ours) for k in r)


def _pulses_per_event(trace) -> float:
    """The most pulses any weight of C got in one event (aihwkit's TTv2 family fires at most one)."""
    steps = [trace[0]["c"]] + [b["c"] - a["c"] for a, b in zip(trace, trace[1:])]
    return max(float(np.abs(s).max()) for s in steps)


@pytest.mark.parametrize("case", list(TRANSFER_CASES))
def test_ttv2_transfer_matches_aihwkit(case):
    fields, events = transfer_case(case)
    compound = ttv2_compound(TRANSFER_DEVICE, **fields)
    ref = aihwkit_transfers(compound, TRANSFER_FAST, events, TRANSFER_LR)
    ours = crossbar_transfers(TRANSFER_DEVICE, ttv2_parameters(compound, TRANSFER_LR), TRANSFER_FAST, events)
    assert any(np.abs(r["c"]).max() >= 1 for r in ref)  # the scenario fires pulses
    assert _pulses_per_event(ours) <= 1 + TOL  # aihwkit's one-pulse cap never binds
    assert _mismatch(ref, ours) <= TOL


def _start_at_column_1(alg):
    alg.pointer["w1"] = 1


WRONG = {
    "transfer_lr 20% off": ({"transfer_lr": 0.5 * TRANSFER_LR * 1.2}, None, 1),
    "wrong sign": ({}, None, -1),
    "wrong column order": ({}, _start_at_column_1, 1),
    "H forgets its remainder": ({"forget_buffer": True}, None, 1),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_transfer_fails(wrong):
    keys, tweak, sign = WRONG[wrong]
    fields, events = transfer_case("remainder")
    compound = ttv2_compound(TRANSFER_DEVICE, **fields)
    ref = aihwkit_transfers(compound, TRANSFER_FAST, events, TRANSFER_LR)
    fast = sign * np.asarray(TRANSFER_FAST)
    ours = crossbar_transfers(TRANSFER_DEVICE, {**ttv2_parameters(compound, TRANSFER_LR), **keys}, fast, events,
                              tweak)
    assert _mismatch(ref, ours) >= 1 - TOL, wrong  # a whole pulse of C at least


def test_documented_difference_one_pulse_per_event():
    """|H| of 2.5 thresholds after one event: aihwkit fires one pulse and H keeps 1.5, the crossbar fires two and
    H keeps 0.5 (forget_buffer off, momentum 0)."""
    fields, _ = transfer_case("remainder")
    compound = ttv2_compound(TRANSFER_DEVICE, **fields)
    fast = np.zeros((2, 2))
    fast[:, 0] = [2.5, -2.5]
    fast /= fields["transfer_lr"] * TRANSFER_LR  # H = transfer_lr lr A
    ref = aihwkit_transfers(compound, fast, 1, TRANSFER_LR)[0]
    ours = crossbar_transfers(TRANSFER_DEVICE, ttv2_parameters(compound, TRANSFER_LR), fast, 1)[0]
    np.testing.assert_allclose(ref["c"][:, 0], [1, -1], atol=TOL)
    np.testing.assert_allclose(ref["h"][:, 0], [1.5, -1.5], atol=TOL)
    np.testing.assert_allclose(ours["c"][:, 0], [2, -2], atol=TOL)
    np.testing.assert_allclose(ours["h"][:, 0], [0.5, -0.5], atol=TOL)


def _tiki_taka_fast() -> np.ndarray:
    """A of 40 x 5 weights, up to 30 steps: transfers of 0.2 A of up to 6 pulses, none within 0.1 pulse of a
    rounding boundary (so float32 and the bit-length quantization of aihwkit cannot tip a rounding)."""
    fast = np.random.default_rng(7).uniform(-30, 30, size=(40, 5))
    frac = np.abs(0.2 * fast) % 1
    return np.where(np.abs(frac - 0.5) < 0.1, fast + 1.0, fast)


TIKI_TAKA = {"transfer_every": 1, "n_reads_per_transfer": 2, "transfer_lr": 0.5}
TIKI_TAKA_WRONG = {"transfer_lr 20% off": ({"transfer_lr": 0.5 * TRANSFER_LR * 1.2}, None, 1),
                   "wrong sign": ({}, None, -1), "wrong column order": ({}, _start_at_column_1, 1)}


@pytest.mark.parametrize("wrong", [None, *TIKI_TAKA_WRONG])
def test_tiki_taka_transfer_matches_aihwkit_and_a_wrong_one_fails(wrong):
    """Deterministic pulses on both sides (aihwkit DETERMINISTIC_IMPLICIT, the crossbar's pulse_mode = "count"):
    C's change after each of 5 events, 2 columns each, agrees to 1e-4 steps; a wrong transfer misses a pulse."""
    compound = tiki_taka_compound(TRANSFER_DEVICE, **TIKI_TAKA)
    fast = _tiki_taka_fast()
    ref = aihwkit_transfers(compound, fast, 5, TRANSFER_LR)
    assert max(float(np.abs(r["c"]).max()) for r in ref) >= 4  # several pulses per weight and event
    keys, tweak, sign = TIKI_TAKA_WRONG.get(wrong, ({}, None, 1))
    ours = crossbar_transfers(TRANSFER_DEVICE, {**tiki_taka_parameters(compound, TRANSFER_LR), **keys}, sign * fast,
                              5, tweak)
    if wrong is None:
        assert _mismatch(ref, ours) <= TOL
    else:
        assert _mismatch(ref, ours) >= 1 - TOL, wrong


@pytest.mark.parametrize("fields, events", [({}, 12), ({"forget_buffer": False}, 12),
                                            ({"forget_buffer": False, "momentum": 0.25}, 12),
                                            ({"buffer_granularity": 1.5}, 20)],
                         ids=["forget", "remainder", "remainder-momentum", "granularity-1.5"])
def test_c_ttv2_without_chopper_flips_matches_aihwkit(fields, events):
    """aihwkit's ChoppedTransferCompound with in_chop_prob = 0 (its TTv2 with H in pulses) against the crossbar's
    c_ttv2 with in_chop_prob = 0: C's pulses and H after each one-column event, to 1e-4 steps."""
    compound = c_ttv2_compound(TRANSFER_DEVICE, transfer_every=1, n_reads_per_transfer=1, transfer_lr=0.5,
                               in_chop_prob=0.0, **fields)
    ref = aihwkit_transfers(compound, TRANSFER_FAST, events, TRANSFER_LR)
    ours = crossbar_transfers(TRANSFER_DEVICE, c_ttv2_parameters(compound, TRANSFER_LR), TRANSFER_FAST, events)
    assert any(np.abs(r["c"]).max() >= 1 for r in ref)
    assert _pulses_per_event(ours) <= 1 + TOL  # aihwkit's one-pulse cap never binds
    assert _mismatch(ref, ours) <= TOL


CHOP_COLUMNS = 1000
Z_MAX = 4.0  # two-sided false-alarm rate 6.3e-5 per test


def _kept_fraction(trace) -> float:
    """After every column was read twice (A = 2 steps, no pulses): the fraction of columns whose H is not zero,
    that is whose chopper did not flip after the first read."""
    return float((np.abs(trace[-1]["h"]) > 0.5 * np.abs(trace[-1]["h"]).max()).mean())


@pytest.mark.parametrize("ours_prob", [0.3, 0.5])
def test_c_ttv2_chopper_flips_match_aihwkit_statistically(ours_prob):
    """1000 columns, each read twice with in_chop_prob 0.3: H is 2 reads where the chopper kept its sign, 0 where
    it flipped. aihwkit's and the crossbar's kept fractions agree by a two-proportion z-test at |z| <= 4 (aihwkit
    seeds its choppers from the clock: a fresh draw each run); a crossbar flipping with probability 0.5 is
    rejected (expected |z| about 9)."""
    compound = c_ttv2_compound(TRANSFER_DEVICE, transfer_every=1, n_reads_per_transfer=1, transfer_lr=0.5,
                               in_chop_prob=0.3)
    fast = np.full((1, CHOP_COLUMNS), 2.0)  # 0.4 of a pulse per read
    ref = _kept_fraction(aihwkit_transfers(compound, fast, 2 * CHOP_COLUMNS, TRANSFER_LR))
    keys = {**c_ttv2_parameters(compound, TRANSFER_LR), "in_chop_prob": ours_prob}
    ours = _kept_fraction(crossbar_transfers(TRANSFER_DEVICE, keys, fast, 2 * CHOP_COLUMNS))
    pooled = (ref + ours) / 2
    z = (ours - ref) / np.sqrt(2 * pooled * (1 - pooled) / CHOP_COLUMNS)
    if ours_prob == compound.in_chop_prob:
        assert abs(z) <= Z_MAX, (ref, ours, z)
    else:
        assert abs(z) > Z_MAX, (ref, ours, z)


def test_unsupported_compounds_are_refused():
    fields, _ = transfer_case("remainder")
    with pytest.raises(ValueError, match="step"):
        ttv2_parameters(ttv2_compound(TRANSFER_DEVICE, **fields, step=2.0), TRANSFER_LR)
    with pytest.raises(ValueError, match="column transfers"):
        ttv2_parameters(ttv2_compound(TRANSFER_DEVICE, **fields, random_selection=True), TRANSFER_LR)
    stochastic = tiki_taka_compound(TRANSFER_DEVICE, **TIKI_TAKA)
    stochastic.transfer_update.update_management = True
    with pytest.raises(ValueError, match="deterministic"):
        tiki_taka_parameters(stochastic, TRANSFER_LR)
    with pytest.raises(ValueError, match="out_chop_prob"):
        c_ttv2_parameters(c_ttv2_compound(TRANSFER_DEVICE, out_chop_prob=0.1), TRANSFER_LR)
