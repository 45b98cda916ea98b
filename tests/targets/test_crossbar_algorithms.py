"""The crossbar's analog training algorithms (targets/crossbar/algorithms.py; docs/crossbar.md, "Analog training
algorithms").

Reductions: each algorithm equals ``in_situ`` where the papers say it does (mixed precision on a continuous device,
Tiki-Taka with gamma = 1 and no transfer, c-TTv2 and AGAD without chopper flips equal TTv2). Mixed precision fires no
pulse below its threshold and loses no accumulated value. On soft-bounds devices (symmetry point known: weight 0
for a pair of identical devices), a weight pushed away from it by a small mean update under large zero-mean noise
drifts back to it under ``in_situ`` while TTv2 and its successors follow the mean update; each such check is a
z-bound at 5 sigma (two-sided confidence 1 - 5.7e-7) on the mean over thousands of weights, and the same bound
rejects a wrong algorithm (``in_situ`` itself, a transfer with the wrong sign, TTv2 on an A without reference
subtraction or chopper). Seeds are fixed.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import targets
from targets import Update
from targets.base import TargetError
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import NetworkSpec
from targets.crossbar.config import device_config
from targets.crossbar.errors import CrossbarConfigError

F64 = torch.float64
SPEC = NetworkSpec(input_shape=(1, 4, 4), hidden=(8, 6), classes=3)
WIDE = NetworkSpec(input_shape=(1, 16, 16), hidden=(64,), classes=4)  # w1: 64 x 256 = 16,384 weights
Z5 = 5.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _target(spec=SPEC, **options):
    return targets.open("crossbar", spec, dtype="float64", **options)


def _updates(spec, n: int, scale: float, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.parameter_shapes()
    return [{k: scale * torch.randn(tuple(s), generator=gen, dtype=F64) for k, s in shapes.items()} for _ in range(n)]


def _run(t, updates, trains: bool = False) -> dict[str, torch.Tensor]:
    for d in updates:
        if trains:
            a = {k: v.clamp_min(0) for k, v in d.items()}
            b = {k: (-v).clamp_min(0) for k, v in d.items()}
            t.apply_update(Update(d, (a, b)))
        else:
            t.apply_update(Update(d))
    return t.read_weights()


def _close(a: dict, b: dict, tol: float = 1e-12) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), k


W0 = init_parameters(SPEC, 0, F64)


# ---- configuration -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keys, message", [
    ({"algorithm": "sgd"}, "crossbar.algorithm = 'sgd' is invalid: expected one of"),
    ({"algorithm": "ttv2", "gamma": 0.5}, "crossbar.gamma = 0.5 is a parameter of algorithm = tiki_taka"),
    ({"algorithm": "in_situ", "transfer_every": 2}, "is a parameter of algorithm = mixed_precision"),
    ({"algorithm": "ttv2", "in_chop_prob": 0.2}, "algorithm = c_ttv2 | agad, not 'ttv2'"),
    ({"algorithm": "mixed_precision", "threshold": 0.5}, "crossbar.threshold = 0.5 is invalid: expected a number >= 1"),
    ({"algorithm": "c_ttv2", "in_chop_prob": 1.5}, "crossbar.in_chop_prob = 1.5 is invalid"),
    ({"algorithm": "ttv2", "transfer_every": 0}, "crossbar.transfer_every = 0 is invalid"),
    ({"algorithm": "ttv2", "transfer_every": 1.5}, "crossbar.transfer_every = 1.5 is invalid: expected an integer"),
    ({"algorithm": "ttv2", "fast_lr": 0.0}, "crossbar.fast_lr = 0.0 is invalid"),
    ({"algorithm": "ttv2", "momentum": 1.0}, "crossbar.momentum = 1.0 is invalid"),
    ({"algorithm": "ttv2", "fast_reference": "mean"}, "crossbar.fast_reference = 'mean' is invalid"),
    ({"algorithm": "tiki_taka", "gamma": 0.1, "ir_drop": 0.01}, "crossbar.gamma = 0.1 is invalid: expected 0 while"),
])
def test_bad_algorithm_keys_are_named(keys: dict, message: str) -> None:
    with pytest.raises(CrossbarConfigError, match=None) as e:
        device_config(preset="reram-sb", **keys)
    assert message in str(e.value)
    with pytest.raises(TargetError):  # and through the target's options ([crossbar] table or keywords)
        _target(preset="reram-sb", **keys)


def test_algorithm_keys_reach_the_config() -> None:
    cfg = device_config(preset="ecram-mo", algorithm="c_ttv2", transfer_every=2, in_chop_prob=0.05, transfer_lr=0.2)
    assert (cfg.algorithm.name, cfg.algorithm.transfer_every, cfg.algorithm.in_chop_prob) == ("c_ttv2", 2, 0.05)
    assert device_config().algorithm.name == "in_situ"


# ---- reductions to in_situ ---------------------------------------------------------------------------------------

def test_in_situ_named_is_the_default_bit_for_bit() -> None:
    ups = _updates(SPEC, 6, 0.01)
    ref, named = _target(preset="reram-sb"), _target(preset="reram-sb", algorithm="in_situ")
    ref.program(W0), named.program(W0)
    _close(_run(ref, ups), _run(named, ups), 0.0)


@pytest.mark.parametrize("every", [1, 3])
def test_mixed_precision_on_a_continuous_device_is_in_situ(every: int) -> None:
    ups = _updates(SPEC, 6, 0.01)
    ref, mp = _target(), _target(algorithm="mixed_precision", transfer_every=every)
    ref.program(W0), mp.program(W0)
    _close(_run(ref, ups), _run(mp, ups))  # after 6 updates: a multiple of every, chi flushed
    assert all(float(c.abs().max()) == 0 for c in mp.algorithm.chi.values())


@pytest.mark.parametrize("trains", [False, True])
def test_tiki_taka_without_transfer_and_gamma_1_is_in_situ(trains: bool) -> None:
    """W = A + C with no transfer: A receives every update as in_situ's array does (ideal device: exactly)."""
    ups = _updates(SPEC, 5, 0.01)
    ref = _target(update="two_trains" if trains else "combined")
    tt = _target(algorithm="tiki_taka", gamma=1.0, transfer_lr=0.0, update="two_trains" if trains else "combined")
    ref.program(W0), tt.program(W0)
    _close(_run(ref, ups, trains), _run(tt, ups, trains))


@pytest.mark.parametrize("alg", ["c_ttv2", "agad"])
def test_chopped_algorithms_without_flips_are_ttv2(alg: str) -> None:
    """c-TTv2 with in_chop_prob = 0 is TTv2 (aihwkit ChoppedTransferCompound's note); AGAD without chopper periods
    keeps a zero reference, so it is TTv2 too. Same seed, same devices, same random draws: bit for bit."""
    ups = _updates(SPEC, 8, 0.01)
    ref = _target(preset="reram-sb", algorithm="ttv2", transfer_columns=2, transfer_lr=0.3)
    ch = _target(preset="reram-sb", algorithm=alg, in_chop_prob=0.0, transfer_columns=2, transfer_lr=0.3)
    ref.program(W0), ch.program(W0)
    _close(_run(ref, ups), _run(ch, ups), 0.0)


def test_tiki_taka_exposes_gamma_a_plus_c() -> None:
    t = _target(preset="ecram-mo", algorithm="tiki_taka", gamma=0.5, w_read_noise=0.0)
    t.program(W0)
    _run(t, _updates(SPEC, 4, 0.01))
    alg = t.algorithm
    for n, c in t.arrays.items():
        expected = c.weight(t.now) + 0.5 * (alg.fast[n].weight(t.now) - alg.offset[n])
        assert torch.allclose(t.read_weights()[n], expected, atol=1e-12)


# ---- mixed precision: threshold and conservation -------------------------------------------------------------------

def _record_counts(t) -> list[dict[str, torch.Tensor]]:
    """Wrap each weight array's write_counts to record the signed pulse counts sent."""
    sent: list[dict[str, torch.Tensor]] = []
    for name, a in t.arrays.items():
        original = a.write_counts

        def record(counts, gen, now, name=name, original=original):
            sent.append({name: counts.detach().clone()})
            return original(counts, gen, now)
        a.write_counts = record
    return sent


@pytest.mark.parametrize("threshold", [1.0, 2.5])
def test_mixed_precision_fires_no_pulse_below_threshold_and_loses_nothing(threshold: float) -> None:
    t = _target(preset="reram-sb", algorithm="mixed_precision", threshold=threshold)
    t.program(W0)
    sent = _record_counts(t)
    step = {n: a.step for n, a in t.arrays.items()}
    # below one step in total: nothing is fired, everything is kept
    small = {n: torch.full(tuple(s), 0.3 * step[n], dtype=F64) for n, s in SPEC.parameter_shapes().items()}
    before = t.read_weights()
    for _ in range(3):  # 0.9 steps
        report = t.apply_update(Update(small))
        assert report.details["pulses"] == 0
    assert not sent and all(torch.equal(before[n], w) for n, w in t.read_weights().items())
    for n, chi in t.algorithm.chi.items():
        assert torch.allclose(chi, 3 * small[n], rtol=1e-12, atol=0)
    # random updates of a few steps: chi + pulses x step is the sum of the updates, and |chi| stays below threshold
    ups = _updates(SPEC, 20, 1.0)
    ups = [{n: d * 2 * step[n] for n, d in u.items()} for u in ups]
    _run(t, ups)
    for n in step:
        total = 3 * small[n] + sum(u[n] for u in ups)
        fired = sum((s[n] for s in sent if n in s), torch.zeros_like(total))
        for s in sent:  # each flush fires nothing below the threshold
            if n in s:
                assert bool((s[n].abs() == 0).logical_or(s[n].abs() >= math.floor(threshold)).all())
        assert torch.allclose(t.algorithm.chi[n] + fired * step[n], total, atol=1e-9 * step[n])
        assert float(t.algorithm.chi[n].abs().max()) < max(threshold, 1.0) * step[n] * (1 + 1e-9)
    assert t.device_report()["digital_words"] == sum(math.prod(s) for s in SPEC.parameter_shapes().values())


# ---- drift towards the symmetry point ------------------------------------------------------------------------------

SOFT = {"response": "soft_bounds", "dw_min": 1 / 400, "pulse_mode": "stochastic", "weight_omega": 0.5,
        "max_pulses": 0}


def _drift(alg: str, steps: int = 240, seed: int = 3, **keys) -> torch.Tensor:
    """Per weight of w1, the change over ``steps`` updates of mean +0.25 steps and std 4 steps, from w = +0.6 of
    the pair's range (the symmetry point, for identical devices: w = 0). Returned in units of the summed mean."""
    t = _target(WIDE, seed=seed, algorithm=alg, **{**SOFT, **keys})
    w = {n: torch.zeros(tuple(s), dtype=F64) for n, s in WIDE.parameter_shapes().items()}
    w["w1"].fill_(1.0)
    t.program(w)  # w1 at its largest: 0.5 x 1 / weight_omega ... = half the range
    start = t.read_weights()["w1"]
    step = t.arrays["w1"].step
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t.apply_update(Update({"w1": step * (0.25 + 4.0 * torch.randn(64, 256, generator=gen, dtype=F64))}))
    return (t.read_weights()["w1"] - start).flatten() / (steps * 0.25 * step)


def _z(x: torch.Tensor) -> float:
    return float(x.mean() / (x.std() / math.sqrt(x.numel())))


TRANSFER = {"transfer_columns": 32, "transfer_lr": 0.5}


def test_in_situ_drifts_towards_the_symmetry_point() -> None:
    z = _z(_drift("in_situ"))
    print("in_situ z", z)
    assert z < -Z5


@pytest.mark.parametrize("alg, keys", [("tiki_taka", {}), ("ttv2", {}), ("c_ttv2", {"in_chop_prob": 0.01}),
                                       ("agad", {"in_chop_prob": 0.01})])
def test_transfer_algorithms_follow_the_mean_update(alg: str, keys: dict) -> None:
    """The chopped variants transfer the mean update only once A has settled within a chopper period: here a
    column is read every 8 updates, so in_chop_prob = 0.01 is a period of ~800 updates (with 0.05, c-TTv2 still
    lost to the drift over 480 updates: docs/crossbar.md)."""
    x = _drift(alg, steps=480 if keys else 240, **TRANSFER, **keys)
    print(alg, "z", _z(x), "mean", float(x.mean()))
    assert _z(x) > Z5


def test_a_transfer_with_the_wrong_sign_is_rejected(monkeypatch) -> None:
    from targets.crossbar.periphery import ArrayReads
    columns = ArrayReads.columns
    monkeypatch.setattr(ArrayReads, "columns", lambda self, name, exact: -columns(self, name, exact))
    assert _z(_drift("ttv2", **TRANSFER)) < -Z5


def test_the_chopper_cancels_an_offset_fast_array() -> None:
    """With device-to-device asymmetry each A device has its own symmetry point. Without a reference that subtracts
    it (``fast_reference = 'zero'``), TTv2 transfers A's offset into C: C's change correlates with the offset. The
    chopper (c-TTv2) removes the correlation. Null: correlation ~ N(0, 1 / n) (n = 16,384: 5 sigma = 0.039)."""
    def corr(alg: str, **keys) -> float:
        t = _target(WIDE, seed=5, algorithm=alg, fast_reference="zero", up_down_dtod=0.3, transfer_columns=32,
                    transfer_lr=0.5, **{**SOFT, "weight_omega": 0.5}, **keys)
        t.program({n: torch.zeros(tuple(s), dtype=F64) for n, s in WIDE.parameter_shapes().items()})
        a = t.algorithm.fast["w1"]
        pos, neg = a.symmetry_points()
        offset = (pos - neg).flatten()
        step = t.arrays["w1"].step
        gen = torch.Generator().manual_seed(5)
        for _ in range(160):
            t.apply_update(Update({"w1": step * 4.0 * torch.randn(64, 256, generator=gen, dtype=F64)}))
        change = t.read_weights()["w1"].flatten()
        return float(torch.corrcoef(torch.stack([change, offset]))[0, 1])

    plain, chopped = corr("ttv2"), corr("c_ttv2", in_chop_prob=0.5)
    bound = Z5 / math.sqrt(64 * 256)
    print("correlation with A's offset: ttv2", plain, "c_ttv2", chopped)
    assert plain > bound
    assert abs(chopped) < plain / 3


# ---- checkpoints and reports ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["mixed_precision", "tiki_taka", "ttv2", "c_ttv2", "agad"])
def test_checkpoint_resumes_exactly(alg: str) -> None:
    keys = {"algorithm": alg, "preset": "reram-sb"}
    if alg == "tiki_taka":
        keys["gamma"] = 0.3
    if alg in ("c_ttv2", "agad"):
        keys["in_chop_prob"] = 0.5
    ups = _updates(SPEC, 8, 0.02)
    t = _target(**keys)
    t.program(W0)
    _run(t, ups[:4])
    state = t.device_state()
    end = _run(t, ups[4:])
    buffer = io.BytesIO()  # through a checkpoint file, as training saves and loads it
    torch.save(state, buffer)
    buffer.seek(0)
    u = _target(**keys)
    u.load_device_state(torch.load(buffer, map_location="cpu", weights_only=True))
    _close(end, _run(u, ups[4:]), 0.0)
    assert t.device_report() == u.device_report()
    other = _target(**{**keys, "algorithm": "in_situ", "gamma": 0.0, "in_chop_prob": 0.1})
    with pytest.raises(TargetError, match="algorithm"):
        other.load_device_state(state)


def test_digital_words_are_counted() -> None:
    numel = sum(math.prod(s) for s in SPEC.parameter_shapes().values())
    lines = sum(1 if len(s) == 1 else math.prod(s[1:]) for s in SPEC.parameter_shapes().values())
    expected = {"in_situ": 0, "mixed_precision": numel, "tiki_taka": 0, "ttv2": numel, "c_ttv2": numel + lines,
                "agad": 3 * numel + 2 * lines}
    for alg, words in expected.items():
        t = _target(preset="reram-sb", algorithm=alg)
        t.program(W0)
        assert t.device_report()["digital_words"] == words, alg


def test_a_device_without_a_step_has_a_finite_reference() -> None:
    """Drawn step gains clamp at 0 (a dead device: 0/0 down/up ratio, no symmetry point); A's reference there is
    the pair's zero-weight point, not NaN."""
    t = _target(preset="reram-sb", algorithm="ttv2", dw_min_dtod=2.0)
    t.program(W0)
    assert all(bool(torch.isfinite(torch.as_tensor(o)).all()) for o in t.algorithm.offset.values())
    _run(t, _updates(SPEC, 3, 0.01))
    assert all(bool(torch.isfinite(w).all()) for w in t.read_weights().values())
