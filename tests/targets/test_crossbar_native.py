"""The crossbar's fused write kernel (targets/crossbar/native.py, write_kernel.c; docs/crossbar.md, "Speed").

The kernel must give the tensor path's numbers bit for bit: every preset, stuck devices, two pulse trains, each
response model, each pulse mode and each training algorithm train a few batches of the benchmark's network both
ways from the same seeds, and every device's state, the random generators' states and the update reports must be
equal. The cases cover the three layouts (every device, the pulsed ones by index, the pulsed ones in place), which
one test checks. Where the kernel cannot run (switched off, no compiler, a failed build, float64, a response it
does not compute) the target takes the tensor path, with one warning where a build was expected.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import Counter

import pytest
import torch

import targets
from hwtoolkit import config as config_mod
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.training.estimators import make_estimator
from hwtoolkit.training.optimizer import SGD
from targets.crossbar import PRESETS, native

CFG = config_mod.load("configs/fmnist_mlp.toml")  # the benchmark's network: w1 has 401,408 weights

MIXED = {
    "two-trains": {"preset": "reram-sb", "update": "two_trains"},
    "stuck-soft-bounds": {"preset": "ecram-mo", "stuck_prob": 0.1},
    "stuck-one-sided": {"preset": "pcm", "stuck_prob": 0.1},
    "count-mode": {"preset": "reram-exp", "pulse_mode": "count"},
    "exact-mode": {"preset": "ecram-li", "pulse_mode": "exact"},
    "constant-step": {"preset": "capacitor", "response": "constant", "dw_min_std": 0.3, "write_noise_std": 2.0},
    "exponential-one-gamma": {"preset": "reram-exp", "gamma_up": 0.0},
    "nominal-soft-bounds": {"preset": "reram-sb", "bound_reference": "nominal"},
    "drift-differential": {"preset": "ecram-li", "drift_nu": 0.05, "drift_nu_dtod": 0.02},
    **{algorithm: {"preset": "reram-sb", "algorithm": algorithm}
       for algorithm in ("mixed_precision", "tiki_taka", "ttv2", "c_ttv2", "agad")},
}
TENSOR_ONLY = {"fefet": {"preset": "fefet"},  # the table response stays with torch
               "one-slope": {"preset": "ecram-li", "slope_down": 0.0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(options: dict, fused: bool, monkeypatch: pytest.MonkeyPatch, batches: int = 3, batch: int = 32,
          numerics: str = "torch"):
    """Train ``batches`` batches as the speed benchmark does; returns the target, its device state and reports."""
    monkeypatch.setenv(native.SWITCH, "1" if fused else "0")
    spec = CFG.network
    target = targets.open("crossbar", spec, seed=1, **{"numerics": numerics, **options})
    target.program(init_parameters(spec, CFG.seed))
    estimator = make_estimator(CFG.estimator, CFG.ep)
    lrs = CFG.layer_lrs()
    optimizer = SGD({n: lrs[i] for n, i in spec.parameter_layers().items()}, CFG.optim.momentum)
    gen = torch.Generator().manual_seed(0)
    reports = []
    for _ in range(batches):
        x = torch.rand(batch, *spec.input_shape, generator=gen)
        y = torch.randint(0, spec.classes, (batch,), generator=gen)
        report = target.apply_update(optimizer.update(estimator(target, x, y, gen), None))
        reports.append((report.saturated, report.details))
    return target, target.device_state(), reports


def assert_identical(a, b, path: str = "state") -> None:
    if torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{path}: {int((a != b).sum())} of {a.numel()} differ"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def kernels(target) -> list:
    arrays = list(target.arrays.values())
    if target.algorithm is not None and hasattr(target.algorithm, "fast"):
        arrays += list(target.algorithm.fast.values())
    return [a._kernel for a in arrays]


CASES = {**{p: {"preset": p} for p in PRESETS if p not in TENSOR_ONLY}, **MIXED}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_fused_write_equals_the_tensor_path_bit_for_bit(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    fused, state, reports = train(options, True, monkeypatch)
    plain, plain_state, plain_reports = train(options, False, monkeypatch)
    assert all(k is not None for k in kernels(fused)) and all(k is None for k in kernels(plain))
    assert any(s["pulses"] for _, s in reports) or options.get("preset") == "ideal"
    assert_identical(state, plain_state)
    assert_identical(reports, plain_reports, "reports")


@pytest.mark.parametrize("options", TENSOR_ONLY.values(), ids=TENSOR_ONLY.keys())
def test_responses_the_kernel_does_not_compute_take_the_tensor_path(options: dict,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fused, state, reports = train(options, True, monkeypatch, batches=2)
    assert all(k is None for k in kernels(fused))
    assert_identical(state, train(options, False, monkeypatch, batches=2)[1])


def test_the_cases_cover_every_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing every device, the pulsed ones gathered by index, and the pulsed ones in place all occur (and so are
    compared by the test above)."""
    seen: Counter = Counter()
    respond = native.respond

    def counting(lib, model, dev, idx, n, d, per_weight, *args):
        if dev.g.numel() > 100_000:
            seen["dense" if idx is None else "in place" if per_weight else "by index"] += 1
        return respond(lib, model, dev, idx, n, d, per_weight, *args)

    monkeypatch.setattr(native, "respond", counting)
    for preset in ("ecram-mo", "reram-sb", "reram-hfo2"):
        train({"preset": preset}, True, monkeypatch, batches=2)
    assert set(seen) == {"dense", "by index", "in place"}, seen


def test_switch_and_float64_take_the_tensor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CFG.network
    for env, dtype, expected in (("0", "float32", False), ("1", "float64", False), ("1", "float32", True)):
        monkeypatch.setenv(native.SWITCH, env)
        target = targets.open("crossbar", spec, seed=1, preset="reram-sb", dtype=dtype)
        target.program(init_parameters(spec, CFG.seed))
        assert all((k is not None) == expected for k in kernels(target)), (env, dtype)


def test_a_bad_switch_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.SWITCH, "yes")
    with pytest.raises(ValueError, match="HWTOOLKIT_CROSSBAR_NATIVE must be 0 .* not 'yes'"):
        targets.open("crossbar", CFG.network, seed=1, preset="reram-sb").program(init_parameters(CFG.network, 1))


@pytest.fixture
def fresh_build(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """An empty kernel cache, and ``native.library`` forgetting what it loaded (before and after the test)."""
    monkeypatch.setenv("HWTOOLKIT_CACHE", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path / "native"
    native.library.cache_clear()


def test_the_kernel_is_built_once_into_the_cache(fresh_build) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is not None
    built = list(fresh_build.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built
    stamp = built[0].stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None
    assert list(fresh_build.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_a_damaged_cached_kernel_is_built_again(fresh_build) -> None:
    path = native.kernel_path(shutil.which(os.environ.get("CC", "cc")))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("compiler, message", [("/nonexistent/cc", "no C compiler"),
                                               ("false", "did not build")], ids=["missing", "failing"])
def test_without_a_working_compiler_writes_warn_once_and_take_the_tensor_path(
        compiler: str, message: str, fresh_build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", compiler)
    with pytest.warns(UserWarning, match=message) as caught:
        target, state, _ = train({"preset": "reram-sb"}, True, monkeypatch, batches=1)
    assert len([w for w in caught if message in str(w.message)]) == 1
    assert all(k is None for k in kernels(target))
    assert not list(fresh_build.glob("*.so"))
    assert_identical(state, train({"preset": "reram-sb"}, False, monkeypatch, batches=1)[1])
