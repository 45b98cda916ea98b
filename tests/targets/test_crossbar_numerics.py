"""The crossbar's native numerics (``crossbar.numerics = "native"``; targets/crossbar/native.py, write_kernel.c).

The kernel's own functions are checked against float64 references; its generators against the distributions they
stand for, with stated confidence (each test's seed is fixed, so a test either always passes or always fails, and the
same test rejects a slightly wrong model); its writes against the torch numerics: the same physics to float32
rounding where nothing is random, the noise's statistics where something is.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import targets
from hwtoolkit import config as config_mod
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.training.estimators import make_estimator
from hwtoolkit.training.optimizer import SGD
from targets.crossbar import native, response
from targets.crossbar.config import device_config
from targets.crossbar.devices import PairArray
from targets.crossbar.errors import CrossbarConfigError

LIB = native.library()
pytestmark = [pytest.mark.skipif(LIB is None, reason="no C compiler to build the crossbar's kernel"),
              pytest.mark.usefixtures("one_torch_thread")]
ALPHA = 1e-3  # every statistical test below: a correct model passes at 99.9% confidence


def kernel_math(function: int, x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    LIB.xb_math(x.numel(), function, x.data_ptr(), out.data_ptr())
    return out


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((got.double() - exact) / exact.abs()).abs().max())


def test_the_kernel_functions_are_within_three_float32_ulps() -> None:
    """log, exp and expm1 against float64 over the ranges the kernel uses them in (expm1 near 0 included, where
    exp(x) - 1 would lose every digit); measured on the development VM: 1.9, 0.8 and 1.9 ulps at most (torch's
    own: 0.8, 0.5 and 0.7)."""
    ulp = 2.0 ** -23
    x = torch.cat([torch.logspace(-37, 30, 200_001, dtype=torch.float64), torch.linspace(0.5, 2, 100_001,
                                                                                            dtype=torch.float64)])
    x32 = x.float()
    exact = x32.double().log()
    nonzero = exact != 0
    assert relative_error(kernel_math(0, x32)[nonzero], exact[nonzero]) < 3 * ulp
    exp_x = torch.linspace(-80, 80, 400_001).float()
    assert relative_error(kernel_math(1, exp_x), exp_x.double().exp()) < 3 * ulp
    small = torch.cat([torch.logspace(-30, 0.7, 100_001), -torch.logspace(-30, 1.5, 100_001)]).float()
    assert relative_error(kernel_math(2, small), torch.expm1(small.double())) < 3 * ulp


def test_log_is_exact_at_one_and_exp_at_zero() -> None:
    """So that a device written no time ago sees no drift at all: ((now - t + t0) / t0)^-nu = 1 exactly."""
    assert float(kernel_math(0, torch.tensor([1.0]))) == 0.0
    assert float(kernel_math(1, torch.tensor([0.0]))) == 1.0


def normals(pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.empty(pairs), torch.empty(pairs)
    native.normals(LIB, seed, a, b)
    return a, b


def test_the_kernel_normals_are_standard_normal_and_independent() -> None:
    a, b = normals(1_000_000, seed=12345)
    both = torch.cat([a, b]).double().numpy()
    for sample in (a.double().numpy(), b.double().numpy(), both):
        assert stats.kstest(sample, "norm").pvalue > ALPHA
    # the same test rejects a model 1% too wide or shifted by 0.005 standard deviations
    assert stats.kstest(both, stats.norm(scale=1.01).cdf).pvalue < ALPHA
    assert stats.kstest(both, stats.norm(loc=0.005).cdf).pvalue < ALPHA
    bound = 4 / math.sqrt(a.numel())  # |r| of independent samples is below 4 standard errors with 99.99%
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound
    assert abs(float(torch.corrcoef(torch.stack([a[1:], a[:-1]]))[0, 1])) < bound
    assert abs(float(torch.corrcoef(torch.stack([a.square(), b.square()]))[0, 1])) < bound


def test_a_seed_gives_one_stream_and_another_seed_another() -> None:
    a1, b1 = normals(10_000, seed=7)
    a2, b2 = normals(10_000, seed=7)
    a3, _ = normals(10_000, seed=8)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert abs(float(torch.corrcoef(torch.stack([a1, a3]))[0, 1])) < 4 / math.sqrt(10_000)
    head, _ = normals(700, seed=7)  # a shorter draw is the start of the longer one (blocks of the same stream)
    assert torch.equal(head, a1[:700])


def uniforms(n: int, seed: int) -> torch.Tensor:
    out = torch.empty(n)
    LIB.xb_uniforms(n, seed, out.data_ptr())
    return out


def test_the_kernel_uniforms_are_uniform_on_the_unit_interval() -> None:
    u = uniforms(1_000_000, seed=99)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert stats.kstest(u.double().numpy(), "uniform").pvalue > ALPHA
    assert stats.kstest(u.double().numpy(), stats.uniform(scale=1.005).cdf).pvalue < ALPHA


def test_stochastic_rounding_is_floor_of_request_plus_the_kernel_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(100_003, generator=gen) * 40
    x[:5] = torch.tensor([0.0, 2.0 ** 23, 2.0 ** 23 + 2, 3e9, 31.0])
    u = uniforms(x.numel(), seed=5)
    for cap in (31, 0):
        n = native.round_stochastic(LIB, x.clone(), 5, cap)
        expected = torch.floor(x + u)
        expected = expected.clamp_max(cap) if cap else expected
        assert torch.equal(n, expected), cap


def test_stochastic_rounding_is_unbiased() -> None:
    x = torch.full((400_000,), 0.3)
    n = native.round_stochastic(LIB, x, 11, 31)
    z = (float(n.mean()) - 0.3) / math.sqrt(0.3 * 0.7 / n.numel())
    assert abs(z) < stats.norm.isf(ALPHA / 2)
    assert set(n.unique().tolist()) == {0.0, 1.0}


def test_nonzero_gives_torchs_indices() -> None:
    gen = torch.Generator().manual_seed(1)
    for density in (0.0, 0.01, 0.5, 1.0):
        x = (torch.rand(50_001, generator=gen) < density).float() * torch.rand(50_001, generator=gen).add(0.1)
        got = native.nonzero(LIB, x, torch.empty(x.numel(), dtype=torch.int64))
        assert torch.equal(got, torch.nonzero(x).flatten()), density
    with pytest.raises(ValueError, match="int64 buffer of at least 10"):
        native.nonzero(LIB, torch.ones(10), torch.empty(9, dtype=torch.int64))


def pair_array(preset: str, numerics: str, shape=(300, 400), **params) -> PairArray:
    """A programmed array (weights 0: a differential pair's devices mid-range)."""
    cfg = device_config(preset, numerics=numerics, **params)
    array = PairArray(cfg, shape, torch.Generator().manual_seed(3), torch.device("cpu"), torch.float32, 1.0)
    array.program(torch.zeros(shape), torch.Generator().manual_seed(4), 0.0)
    return array


def test_drift_with_the_kernel_pow_matches_torch() -> None:
    """What reads see under drift, (g + offset) ((now - t + t0) / t0)^-nu, with the kernel's power and torch's,
    for one exponent or one per device, with and without write noise: equal to float32 rounding."""
    for params in ({"drift_nu": 0.05}, {"drift_nu": 0.05, "drift_nu_dtod": 0.02},
                   {"drift_nu": 0.1, "write_noise_std": 3.0}):
        array = pair_array("ecram-li", "native", **params)
        gen = torch.Generator().manual_seed(4)
        array.write(torch.randn(300, 400, generator=gen) * 0.01, gen, now=10.0)
        for dev in (array.pos, array.neg):
            exact = dev.visible(1e4, array.cfg.time.drift_t0)
            assert dev.written_at is not None and not torch.equal(exact, dev.g)  # drift (and noise) act
            got = dev.visible(1e4, array.cfg.time.drift_t0, kernel=LIB)
            assert float(((got - exact) / exact).abs().max()) < 1e-6, params
        assert torch.equal(array.weight(1e4), array.visible(array.pos, 1e4) * 1.0 - array.visible(array.neg, 1e4))


WRITE_CASES = {
    "soft-bounds": ("ecram-mo", {}),
    "soft-bounds-stuck": ("ecram-mo", {"stuck_prob": 0.1}),
    "exponential": ("reram-exp", {}),
    "exponential-one-gamma": ("reram-exp", {"gamma_up": 0.0}),
    "constant": ("capacitor", {"response": "constant"}),
    "one-sided-drift": ("pcm", {}),
}


@pytest.mark.parametrize("preset, params", WRITE_CASES.values(), ids=WRITE_CASES.keys())
def test_native_writes_match_torch_numerics_where_nothing_is_random(preset: str, params: dict) -> None:
    """Count-mode pulses, no cycle-to-cycle or write noise: the kernel's expm1, exp and log give the torch numerics'
    conductances to float32 rounding, in every layout (all devices, the pulsed ones in place, gathered by index)."""
    quiet = {"pulse_mode": "count", "dw_min_std": 0.0, "write_noise_std": 0.0, "program_noise": 0.0, **params}
    arrays = [pair_array(preset, numerics, **quiet) for numerics in ("native", "torch")]
    gen = torch.Generator().manual_seed(6)
    step = arrays[0].step
    saturated = [0, 0]
    for density in (1.0, 0.3, 0.05, 1.0):
        mask = torch.rand(300, 400, generator=gen) < density
        delta = torch.randn(300, 400, generator=gen).mul(6 * step).mul(mask)
        for i, array in enumerate(arrays):
            saturated[i] += array.write(delta, torch.Generator().manual_seed(7), now=1.0).saturated
        for dev in ("pos", "neg"):
            native_g, torch_g = (getattr(a, dev).g for a in arrays)
            assert float((native_g - torch_g).abs().max()) < 1e-6, (dev, density)  # a thousandth of a step
    assert abs(saturated[0] - saturated[1]) <= 2


@pytest.mark.parametrize("numerics", ["native", "torch"])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.05], ids=["dense", "in-place", "by-index"])
def test_write_noise_has_the_model_distribution(density: float, numerics: str) -> None:
    """Constant steps far from the bounds: each pulsed device's cycle-to-cycle error, divided by its model standard
    deviation |change| c2c / sqrt(n), and its write-noise offset, divided by its, are standard normal; the same
    test rejects a c2c 5% too large (torch's numerics, checked the same way, show that the test is right)."""
    c2c, write_noise = 0.5, 2.0
    array = pair_array("capacitor", numerics, shape=(1000, 1000), response="constant", pulse_mode="count",
                       dw_min_std=c2c, write_noise_std=write_noise, dw_min_dtod=0.0, bound_dtod=0.0,
                       program_noise=0.0, max_pulses=0)
    gen = torch.Generator().manual_seed(8)
    counts = torch.randint(1, 6, (1000, 1000), generator=gen).float()
    counts *= (torch.rand(1000, 1000, generator=gen) < density)
    before = array.pos.g.clone()
    direction = torch.where(torch.rand(1000, 1000, generator=gen) < 0.5, 1.0, -1.0)  # the positive device's
    array.write(counts * array.step * direction, torch.Generator().manual_seed(9), now=1.0)
    pulsed = counts > 0
    n = counts[pulsed]
    change = (array.pos.g - before)[pulsed].double()
    travel = n.double() * array.cfg.device.dw_min
    error = change - direction[pulsed].double() * travel
    z = (error / (travel * c2c / n.double().sqrt())).numpy()
    assert stats.kstest(z, "norm").pvalue > ALPHA
    assert stats.kstest(z, stats.norm(scale=1.05).cdf).pvalue < ALPHA
    offset = array.pos.offset[pulsed].double() / (write_noise * array.cfg.device.dw_min)
    assert stats.kstest(offset.numpy(), "norm").pvalue > ALPHA
    assert torch.all(array.pos.offset[~pulsed] == 0)  # unpulsed devices keep their (zero) offset
    assert torch.equal(array.pos.g[~pulsed], before[~pulsed])


def train(numerics: str, batches: int = 2, preset: str = "reram-sb") -> dict:
    cfg = config_mod.load("configs/fmnist_mlp.toml")
    spec = cfg.network
    target = targets.open("crossbar", spec, seed=1, preset=preset, numerics=numerics)
    target.program(init_parameters(spec, cfg.seed))
    estimator = make_estimator(cfg.estimator, cfg.ep)
    lrs = cfg.layer_lrs()
    optimizer = SGD({n: lrs[i] for n, i in spec.parameter_layers().items()}, cfg.optim.momentum)
    gen = torch.Generator().manual_seed(0)
    for _ in range(batches):
        x = torch.rand(32, *spec.input_shape, generator=gen)
        y = torch.randint(0, spec.classes, (32,), generator=gen)
        target.apply_update(optimizer.update(estimator(target, x, y, gen), None))
    return {name: a.pos.g.clone() for name, a in target.arrays.items()}


def test_native_runs_repeat_from_their_seed_and_differ_from_torch_numerics() -> None:
    first, again, torch_run = train("native"), train("native"), train("torch")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["w1"], torch_run["w1"])


def test_the_ideal_device_trains_the_same_under_both_numerics() -> None:
    """It draws no random numbers and computes no transcendentals, so the numerics cannot change it."""
    native_run, torch_run = train("native", preset="ideal"), train("torch", preset="ideal")
    assert all(torch.equal(native_run[k], torch_run[k]) for k in native_run)


def test_a_bad_numerics_value_is_named() -> None:
    with pytest.raises(CrossbarConfigError, match="numerics"):
        device_config("ideal", numerics="fast")


def torch_interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """response.interp's torch arithmetic, which the kernel's interpolation must give bit for bit."""
    i = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    t = ((x - xp[i - 1]) / (xp[i] - xp[i - 1])).clamp(0, 1)
    return fp[i - 1] + t * (fp[i] - fp[i - 1])


def test_the_kernel_interpolation_is_torchs_bit_for_bit() -> None:
    """Uniform and uneven grids, two points, repeated points, values outside and on the grid points."""
    gen = torch.Generator().manual_seed(2)
    grids = [torch.linspace(-1, 1, 1025), torch.rand(1025, generator=gen).cumsum(0), torch.tensor([0.0, 1.0]),
             torch.tensor([0.0, 0.5, 0.5, 0.5, 1.0])]
    for xp in grids:
        fp = torch.randn(xp.numel(), generator=gen)
        x = torch.cat([torch.rand(10_007, generator=gen) * 1.4 * float(xp.max()) - 0.2, xp,
                       torch.tensor([-1e30, 1e30])])
        got = response.interp(x, xp, fp)
        assert torch.equal(got.isnan(), torch_interp(x, xp, fp).isnan())
        assert torch.equal(got.nan_to_num(), torch_interp(x, xp, fp).nan_to_num()), xp.numel()


def test_the_switch_turns_every_native_part_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.SWITCH, "0")
    cpu = torch.device("cpu")
    assert native.generator("native", cpu, torch.float32) is None
    assert native.interp(torch.zeros(3), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) is None
    monkeypatch.setenv(native.SWITCH, "1")
    assert native.generator("native", cpu, torch.float32) is native.library() is not None
    assert native.generator("torch", cpu, torch.float32) is None
    assert native.generator("native", cpu, torch.float64) is None
