"""Statistical checks of the crossbar's device physics (docs/crossbar.md, "Checks").

Each test draws many devices (or reads) from a fixed seed and compares a measured statistic with the configured
model through an interval whose confidence its docstring states: a chi-square interval for a variance, a z-bound
for a mean, a Wilson interval for a fraction, a chi-square goodness-of-fit for a split. Where a statistic is
deterministic (closed forms, drift) the tolerance is float round-off or a stated truncation bound instead.
Every statistical check also asserts its power: the same interval rejects a plausibly wrong model (a step off by a
few percent, a missing sqrt(2), a biased rounding, ...), so a test that cannot fail would fail.

The seeds are fixed, so a run is reproducible; the confidence levels say how surprising a failure would be for a
correct simulator. The measured statistics are printed (``pytest -rP`` shows them).
"""

from __future__ import annotations

import math

import pytest
import torch

import targets
from targets import Update
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import NetworkSpec
from targets.crossbar.config import device_config
from targets.crossbar.devices import PairArray
from targets.crossbar.periphery import quantize

CPU = torch.device("cpu")
F64 = torch.float64
SHAPE = (200, 500)  # 100,000 devices per polarity, 200,000 per array
CONF = 0.999  # two-sided confidence of the chi-square and Wilson intervals
Z5 = 5.0  # z-bound for means: two-sided confidence 1 - 5.7e-7
SPEC = NetworkSpec(input_shape=(1, 4, 4), hidden=(8, 6), classes=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- intervals ---------------------------------------------------------------------------------------------------

def normal_quantile(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=F64)))


def chi2_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of chi-square(df), by bisection on its CDF ``P(df/2, x/2)`` (regularized lower gamma)."""
    a = torch.tensor(df / 2, dtype=F64)
    lo, hi = 0.0, df + 40 * math.sqrt(2 * df) + 100
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(a, torch.tensor(mid / 2, dtype=F64))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def chi2_interval(df: int, conf: float = CONF) -> tuple[float, float]:
    """Two-sided ``conf`` interval of a chi-square(df) statistic."""
    return chi2_quantile((1 - conf) / 2, df), chi2_quantile(1 - (1 - conf) / 2, df)


def check_variance(x: torch.Tensor, sigma: float, label: str, mean: float | None = None, conf: float = CONF,
                   wrong: tuple[float, ...] = ()) -> None:
    """Chi-square test that the (normal) samples ``x`` have std ``sigma``.

    ``sum (x - m)^2 / sigma^2`` must lie in the two-sided ``conf`` interval of chi-square(df): ``m`` is the known
    ``mean`` (df = n) or the sample mean (df = n - 1). Power: a std of ``f * sigma`` for each ``f`` in ``wrong``
    must be rejected by the same interval.
    """
    x = x.detach().flatten().to(F64)
    n = x.numel()
    centre = x.mean() if mean is None else torch.tensor(mean, dtype=F64)
    df = n - 1 if mean is None else n
    ss = float(((x - centre) ** 2).sum())
    lo, hi = chi2_interval(df, conf)
    stat = ss / sigma ** 2
    print(f"{label}: s^2/sigma^2 = {stat / df:.5f}, {conf:.1%} chi-square interval [{lo / df:.5f}, {hi / df:.5f}] "
          f"(df {df})")
    assert lo <= stat <= hi, (f"{label}: variance ratio {stat / df:.5f} outside the {conf:.1%} interval "
                              f"[{lo / df:.5f}, {hi / df:.5f}]")
    for f in wrong:
        assert not lo <= ss / (f * sigma) ** 2 <= hi, f"{label}: no power, a std of {f} x sigma also passes"


def check_mean(x: torch.Tensor, mu: float, label: str, sigma: float | None = None, z: float = Z5,
               wrong: tuple[float, ...] = ()) -> None:
    """z-bound on a mean: ``|mean(x) - mu| <= z sigma / sqrt(n)`` (``sigma`` known, else the sample std).

    Power: each mean in ``wrong`` must be rejected by the same bound.
    """
    x = x.detach().flatten().to(F64)
    n = x.numel()
    s = float(x.std()) if sigma is None else sigma
    se = s / math.sqrt(n)
    m = float(x.mean())
    print(f"{label}: mean {m:.6g}, expected {mu:.6g}, |z| = {abs(m - mu) / se if se else 0:.2f} <= {z}")
    assert abs(m - mu) <= z * se, f"{label}: mean {m:.6g} is {abs(m - mu) / se:.1f} standard errors from {mu:.6g}"
    for w in wrong:
        assert abs(m - w) > z * se, f"{label}: no power, a mean of {w:.6g} also passes"


def wilson(k: int, n: int, conf: float = CONF) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion at two-sided confidence ``conf``."""
    z = normal_quantile(1 - (1 - conf) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# ---- arrays --------------------------------------------------------------------------------------------------------

def pair_array(shape: tuple[int, ...] = SHAPE, seed: int = 0, **params) -> PairArray:
    """A PairArray at scale 1, float64 on the CPU, programmed to w = 0 (both devices at mid-range)."""
    cfg = device_config(**params)
    a = PairArray(cfg, shape, torch.Generator().manual_seed(seed), CPU, F64, 1.0)
    a.program(torch.zeros(shape, dtype=F64), gen(seed + 1), 0.0)
    return a


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pulses(n, dw: float, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """The weight change (scale 1) that asks each device of a differential pair for ``n`` pulses: pos up, neg down."""
    return torch.as_tensor(2.0 * dw, dtype=F64) * torch.as_tensor(n, dtype=F64).expand(shape)


def both(a: PairArray, attr: str = "g") -> torch.Tensor:
    return torch.cat([getattr(a.pos, attr).flatten(), getattr(a.neg, attr).flatten()])


def crossbar(**options):
    """A float64 CrossbarTarget for SPEC, programmed; the largest initial weight takes half a pair's range."""
    t = targets.open("crossbar", SPEC, dtype="float64", **{"weight_omega": 0.5, **options})
    t.program(init_parameters(SPEC, 3, F64))
    return t


# ---- 1. single pulses: mean dw_min, c2c variance -------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 4])
def test_pulse_increment_mean_and_c2c_variance(n: int) -> None:
    """n pulses (count mode, constant response) move a device by n dw_min up, n (1 - up_down) dw_min down.

    Means: 5-sigma z-bound with the model's std. Variances: 99.9% chi-square interval around
    n (dw_min_std x step)^2 (c2c adds per pulse in quadrature; the down step's c2c scales with the down step).
    Power: the up mean is told from (1 +- 2%) n dw_min, the down mean from n dw_min (asymmetry ignored), the
    std from 1.03x (and, for n = 4, from the single-pulse std).
    """
    dw, c2c, ud = 0.01, 0.5, 0.2
    a = pair_array(dw_min=dw, dw_min_std=c2c, up_down=ud, pulse_mode="count")
    a.write(pulses(n, dw), gen(5), 0.0)
    assert torch.all(a.pos.pulses == n) and torch.all(a.neg.pulses == n)
    up, down = a.pos.g - 0.5, a.neg.g - 0.5
    sd_up, sd_down = c2c * dw * math.sqrt(n), c2c * (1 - ud) * dw * math.sqrt(n)
    check_mean(up, n * dw, f"{n} up pulse(s)", sigma=sd_up, wrong=(0.98 * n * dw, 1.02 * n * dw))
    check_mean(down, -n * (1 - ud) * dw, f"{n} down pulse(s)", sigma=sd_down, wrong=(-n * dw,))
    wrong = (1.03, 0.97) + ((1 / math.sqrt(n),) if n > 1 else ())
    check_variance(up, sd_up, f"{n} up pulse(s) c2c", wrong=wrong)
    check_variance(down, sd_down, f"{n} down pulse(s) c2c", wrong=wrong)


# ---- 2. device-to-device spread of the step ---------------------------------------------------------------------

@pytest.mark.parametrize("lognormal, dtod", [(False, 0.2), (True, 0.5)], ids=["normal", "lognormal"])
def test_device_to_device_step_spread(lognormal: bool, dtod: float) -> None:
    """Per-device step / dw_min, measured by one pulse on each of 200,000 devices (no c2c).

    Normal: mean 1 (5-sigma z-bound with std dw_min_dtod), relative std dw_min_dtod (99.9% chi-square).
    Log-normal: the step's mean is preserved (5-sigma z-bound with std sqrt(exp(s^2) - 1)) and log(step) has std
    s = dw_min_dtod and mean -s^2/2 (99.9% chi-square, 5-sigma z-bound). Each device's down step is exactly
    (1 - up_down) x its up step (float tolerance). Power: a spread 3% off is rejected.
    """
    dw, ud = 0.01, 0.25
    a = pair_array(dw_min=dw, dw_min_dtod=dtod, dw_min_dtod_lognormal=lognormal, up_down=ud, pulse_mode="count")
    start = a.pos.g.clone()
    a.write(pulses(1, dw), gen(1), 0.0)
    up_pos, down_neg = (a.pos.g - start) / dw, (0.5 - a.neg.g) / dw / (1 - ud)
    gain = torch.cat([up_pos.flatten(), down_neg.flatten()])  # pos and neg devices are independent draws
    mid = a.pos.g.clone()
    a.write(pulses(-1, dw), gen(2), 0.0)  # the same pos devices, one pulse down
    torch.testing.assert_close((mid - a.pos.g) / (mid - start), torch.full(SHAPE, 1 - ud, dtype=F64),
                               rtol=1e-9, atol=0)
    if not lognormal:
        check_mean(gain, 1.0, "normal dtod: mean step / dw_min", sigma=dtod)
        check_variance(gain, dtod, "normal dtod: relative step spread", wrong=(1.03, 0.97))
    else:
        rel = math.sqrt(math.exp(dtod ** 2) - 1)
        check_mean(gain, 1.0, "log-normal dtod: mean step / dw_min", sigma=rel, wrong=(math.exp(dtod ** 2 / 2),))
        check_mean(gain.log(), -dtod ** 2 / 2, "log-normal dtod: mean log step", sigma=dtod)
        check_variance(gain.log(), dtod, "log-normal dtod: std of log step", wrong=(1.03, 0.97))


# ---- 3. n pulses: closed forms -----------------------------------------------------------------------------------

SOFT = dict(response="soft_bounds", slope_up=0.7, slope_down=0.4, up_down=0.1)


def soft_bounds_curve(n: torch.Tensor, g0: float, step: float, slope: float, up: bool) -> torch.Tensor:
    """Mean after n pulses: g* - (g* - g0)(1 - step slope / half)^n, g* = mid +- half / slope (half = 0.5)."""
    target = 0.5 + 0.5 / slope if up else 0.5 - 0.5 / slope
    return target - (target - g0) * (1 - step * slope / 0.5) ** n


def test_soft_bounds_n_pulses_follow_the_analytic_curve() -> None:
    """Soft bounds, count mode, no c2c: N = 0..200 pulses in one write give g* - (g* - g0)(1 - dw slope/half)^N,
    clipped to the bounds [0, 1] (with slope_down < 1 the down curve's target g* lies below 0 and is reached).

    Deterministic: float tolerance 1e-12. Power: a slope 1% off misses by more than the tolerance.
    """
    dw, ud = 0.004, SOFT["up_down"]
    shape = (1, 201)
    n = torch.arange(201, dtype=F64).view(shape)
    a = pair_array(shape, dw_min=dw, pulse_mode="count", max_pulses=0, **SOFT)
    a.write(pulses(n, dw, shape), gen(1), 0.0)
    want_up = soft_bounds_curve(n, 0.5, dw, SOFT["slope_up"], up=True)
    want_down = soft_bounds_curve(n, 0.5, (1 - ud) * dw, SOFT["slope_down"], up=False)
    torch.testing.assert_close(a.pos.g, want_up, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.neg.g, want_down.clamp(0, 1), atol=1e-12, rtol=0)
    assert (a.neg.g == 0).sum() > 10 and (want_up < 1).all()
    assert (a.pos.g - soft_bounds_curve(n, 0.5, dw, 1.01 * SOFT["slope_up"], up=True)).abs().max() > 1e-6


@pytest.mark.parametrize("reference", ["device", "nominal"])
def test_soft_bounds_steps_are_set_at_the_nominal_middle(reference: str) -> None:
    """With bound variation, one pulse from g = 0.5 moves each device by its own drawn step, whatever its bounds
    (aihwkit's soft bounds, docs/crossbar.md "Response models"), and the slope reaches to each device's own bound
    (``bound_reference = "device"``) or to the nominal one (``"nominal"``): a second pulse from where the first ended
    shrinks by ``slope step / reach`` of it.

    Deterministic (no c2c): float tolerance 1e-12. Power: the step measured from each device's own mid-range (the
    model before this one) misses by more than 1e-4 of a step on most devices.
    """
    dw, shape = 0.01, (50, 40)
    a = pair_array(shape, seed=3, dw_min=dw, dw_min_dtod=0.2, bound_dtod=0.3, pulse_mode="count",
                   bound_reference=reference, **SOFT)
    pos = a.pos
    step = dw * pos.gain_up
    start = pos.g.clone()
    assert torch.equal(start, torch.full(shape, 0.5, dtype=F64))
    a.write(pulses(1, dw, shape), gen(1), 0.0)
    first = pos.g - start
    torch.testing.assert_close(first[pos.g < pos.hi], step[pos.g < pos.hi], atol=1e-12, rtol=0)
    after_one = pos.g.clone()
    a.write(pulses(1, dw, shape), gen(1), 0.0)
    reach = (pos.hi - 0.5) if reference == "device" else torch.full(shape, 0.5, dtype=F64)
    want = step * (1 - SOFT["slope_up"] * (after_one - 0.5) / reach)
    free = pos.g < pos.hi  # a device whose own bound lies within two steps of the middle is clipped there
    assert float(free.double().mean()) > 0.99
    torch.testing.assert_close((pos.g - after_one)[free], want[free], atol=1e-12, rtol=0)
    mid, half = (pos.lo + pos.hi) / 2, (pos.hi - pos.lo) / 2
    old_first = step * (1 - SOFT["slope_up"] * (0.5 - mid) / half)
    assert float(((old_first - first).abs() > 1e-4 * step).double().mean()) > 0.9


@pytest.mark.parametrize("params", [
    SOFT,
    dict(response="exponential", gamma_up=2.0, gamma_down=1.0, up_down=0.2),
    dict(response="table", table_g=(0.0, 0.25, 0.5, 0.75, 1.0), table_up=(1.75, 1.4, 1.0, 0.62, 0.25),
         table_down=(0.27, 0.63, 1.0, 1.37, 1.73), up_down=0.1),
], ids=["soft_bounds", "exponential", "table"])
def test_one_write_of_n_pulses_equals_n_writes_of_one(params: dict) -> None:
    """The n-pulse closed forms compose: one write of N pulses = N writes of 1 pulse (N = 0..150), to 1e-9.

    Deterministic (no c2c, dtod on, so per-device steps enter). Float tolerance 1e-9 (the table's pulse coordinate
    is inverted by interpolation, which is exact on its grid only up to round-off).
    """
    dw, shape = 0.005, (4, 151)
    n = torch.arange(151, dtype=F64).expand(shape)
    kw = dict(dw_min=dw, dw_min_dtod=0.1, bound_dtod=0.1, pulse_mode="count", max_pulses=0, **params)
    once, many = pair_array(shape, seed=4, **kw), pair_array(shape, seed=4, **kw)
    once.write(pulses(n, dw, shape), gen(1), 0.0)
    for k in range(150):
        many.write(pulses((n > k).to(F64), dw, shape), gen(1), 0.0)
    assert torch.equal(once.pos.pulses, many.pos.pulses)
    moved = (once.pos.g - 0.5).abs().max()
    assert moved > 0.2  # the devices travel far into the nonlinear part of the response
    torch.testing.assert_close(many.pos.g, once.pos.g, atol=1e-9, rtol=0)
    torch.testing.assert_close(many.neg.g, once.neg.g, atol=1e-9, rtol=0)


def test_soft_bounds_mean_trajectory_with_c2c() -> None:
    """With c2c (dw_min_std = 1), the mean over 2000 devices after N single-pulse writes (N = 0, 10, ..., 200) is
    the analytic soft-bounds curve: the pulse map is affine in g, so c2c leaves the mean on it.

    5-sigma z-bound per N (sample std; 21 N values x 2 directions). Power: a curve with slope_up 5% off is rejected.
    """
    dw, ud, shape = 0.002, SOFT["up_down"], (2000, 21)
    n = (10 * torch.arange(21, dtype=F64)).expand(shape)
    a = pair_array(shape, dw_min=dw, dw_min_std=1.0, pulse_mode="count", **SOFT)
    g = gen(9)
    for k in range(200):
        a.write(pulses((n > k).to(F64), dw, shape), g, 0.0)
    want_up = soft_bounds_curve(n[0], 0.5, dw, SOFT["slope_up"], up=True)
    wrong_up = soft_bounds_curve(n[0], 0.5, dw, 1.05 * SOFT["slope_up"], up=True)
    want_down = soft_bounds_curve(n[0], 0.5, (1 - ud) * dw, SOFT["slope_down"], up=False)
    for j in range(1, 21):
        check_mean(a.pos.g[:, j], float(want_up[j]), f"soft bounds, {int(n[0, j])} up pulses",
                   wrong=(float(wrong_up[j]),) if j == 20 else ())
        check_mean(a.neg.g[:, j], float(want_down[j]), f"soft bounds, {int(n[0, j])} down pulses")
    assert (a.pos.g[:, 20] >= 1).sum() == 0  # the mean is not biased by clipping at the bound


def test_exponential_closed_form_matches_euler_iteration() -> None:
    """Exponential response: N = 0..400 pulses in one write vs the step-by-step Euler iteration
    z <- z + (dw/half) f(z) with f = exp(-gamma_up z) (up) or (1 - up_down) exp(gamma_down z) (down).

    Deterministic. The closed form solves dz/dn = (dw/half) f(z) exactly; Euler's global error is at most the sum of
    its local errors (the flow contracts: f falls along the motion), sum_k (1/2) gamma (dw/half)^2 f(z_k)^2, with a
    5% margin for evaluating f on the Euler points. Power: gamma 10% off is rejected by the same bound.
    """
    dw, gu, gd, ud, N = 0.002, 2.0, 1.0, 0.2, 400
    shape = (1, N + 1)
    a = pair_array(shape, response="exponential", gamma_up=gu, gamma_down=gd, up_down=ud, dw_min=dw,
                   pulse_mode="count", max_pulses=0)
    a.write(pulses(torch.arange(N + 1, dtype=F64), dw, shape), gen(1), 0.0)
    h = dw / 0.5

    def euler(gamma: float, up: bool) -> tuple[torch.Tensor, torch.Tensor]:
        z, zs, bound, bounds = 0.0, [0.0], 0.0, [0.0]
        for _ in range(N):
            f = math.exp(-gamma * z) if up else (1 - ud) * math.exp(gamma * z)
            bound += 0.5 * gamma * (h * f) ** 2 * 1.05
            z += h * f if up else -h * f
            zs.append(z)
            bounds.append(bound)
        return torch.tensor(zs, dtype=F64), torch.tensor(bounds, dtype=F64)

    for dev, gamma, up in ((a.pos, gu, True), (a.neg, gd, False)):
        z = (dev.g[0] - 0.5) / 0.5
        ez, bound = euler(gamma, up)
        err = (z - ez).abs()
        print(f"exponential {'up' if up else 'down'}: max |closed form - Euler| = {err.max():.2e} (z units), "
              f"bound {bound[-1]:.2e}; total travel {z[-1]:.3f}")
        assert torch.all(err <= bound + 1e-12)
        wz, _ = euler(1.1 * gamma, up)
        assert torch.any((z - wz).abs() > bound + 1e-12), "no power: gamma 10% off also passes"


# ---- 4. alternating pulses converge to the symmetry point -------------------------------------------------------

@pytest.mark.parametrize("params", [
    dict(response="soft_bounds", slope_up=0.6, slope_down=0.3, up_down=0.2, up_down_dtod=0.1),
    dict(response="exponential", gamma_up=1.5, gamma_down=1.0, up_down=0.3, up_down_dtod=0.1),
    dict(response="table", table_g=(0.0, 0.25, 0.5, 0.75, 1.0), table_up=(1.75, 1.4, 1.0, 0.62, 0.25),
         table_down=(0.27, 0.63, 1.0, 1.37, 1.73), up_down=0.2, up_down_dtod=0.05),
], ids=["soft_bounds", "exponential", "table"])
def test_alternating_pulses_converge_to_the_symmetry_point(params: dict) -> None:
    """1000 devices with per-device bounds, steps and asymmetry, started across the range, get 1200 alternating
    +1/-1 pulses (no c2c). The midpoint of the final up/down cycle is each device's ``symmetry_points()`` value.

    Deterministic. Tolerance: half a pulse, dw_min x gain_up / 2 (the limit cycle straddles the point; for a
    locally linear response its midpoint is off by at most half the cycle's amplitude). Power: the nominal
    symmetry point (ignoring each device's own asymmetry and bounds) misses by more than that on most devices.
    """
    dw, shape = 0.01, (20, 50)
    a = pair_array(shape, seed=2, dw_min=dw, dw_min_dtod=0.2, bound_dtod=0.1, pulse_mode="count", **params)
    a.program(torch.linspace(-0.9, 0.9, 1000, dtype=F64).view(shape), gen(3), 0.0)
    g = gen(4)
    for _ in range(1200):
        a.write(pulses(1, dw, shape), g, 0.0)
        after_up = (a.pos.g.clone(), a.neg.g.clone())
        a.write(pulses(-1, dw, shape), g, 0.0)
    nom = a.cfg.response.symmetry_point(torch.tensor(1 - params["up_down"], dtype=F64), 0.0, 1.0)
    for dev, up_state, sym, after_down in zip((a.pos, a.neg), after_up, a.symmetry_points(), (a.pos.g, a.neg.g)):
        # pos ends each cycle after a down pulse, neg after an up pulse: the cycle is (after_up, after_down)
        mid = (up_state + after_down) / 2
        tol = dw * dev.gain_up / 2
        err = (mid - sym).abs()
        print(f"{params['response']}: max |cycle midpoint - symmetry point| / tol = {float((err / tol).max()):.3f}; "
              f"symmetry points span [{float(sym.min()):.3f}, {float(sym.max()):.3f}]")
        assert torch.all(err <= tol)
        assert float(((mid - nom).abs() > tol).double().mean()) > 0.5, "no power: the nominal point also passes"


# ---- 5. pulse rounding -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_pulses", [0.3, 2.3, 7.75])
def test_stochastic_rounding_is_unbiased(request_pulses: float) -> None:
    """Stochastic rounding sends floor(r) or floor(r) + 1 pulses with mean r = request / dw_min.

    Pulse count and conductance change: 5-sigma z-bounds with the Bernoulli std sqrt(p (1 - p)) over 200,000
    devices. Power: rounding to nearest (or a bias of 1% of a pulse) is rejected.
    """
    dw = 0.01
    a = pair_array(dw_min=dw, pulse_mode="stochastic")
    a.write(pulses(request_pulses, dw), gen(6), 0.0)
    n = both(a, "pulses")
    frac = request_pulses - math.floor(request_pulses)
    assert set(n.unique().tolist()) <= {math.floor(request_pulses), math.floor(request_pulses) + 1}
    sd = math.sqrt(frac * (1 - frac))
    check_mean(n, request_pulses, f"stochastic pulses for r = {request_pulses}", sigma=sd,
               wrong=(round(request_pulses), request_pulses + 0.01))
    moved = torch.cat([(a.pos.g - 0.5).flatten(), (0.5 - a.neg.g).flatten()]) / dw
    check_mean(moved, request_pulses, f"stochastic mean change / dw_min for r = {request_pulses}", sigma=sd)


def test_sparse_stochastic_rounding_is_unbiased_per_device() -> None:
    """Requests far below one pulse take the candidate-thinning path; every device still pulses with probability r.

    Four groups of 100,000 devices ask for r = 0.002, 0.01, 0.03 (below the thinning rate 1/32) and 0.4 (rounded
    one by one); per group the pulse fraction lies in a 99.9% Wilson interval around r. Power: halving or
    doubling the thinning acceptance moves the small groups far outside their intervals.
    """
    dw, group = 0.01, 100_000
    rates = torch.tensor([0.002, 0.01, 0.03, 0.4], dtype=F64)
    shape = (4, group)
    a = pair_array(shape, dw_min=dw, pulse_mode="stochastic")
    request = (rates.view(4, 1) * dw * 2 * torch.ones(shape, dtype=F64))  # a pair splits a change in halves
    assert a._sparse_stochastic((request / 2 / dw).view(-1), gen(0)) is not None  # the sparse path is exercised
    a.write(request, gen(7), 0.0)
    for i, r in enumerate(rates.tolist()):
        k = int((a.pos.pulses[i] > 0).sum())
        assert set(a.pos.pulses[i].unique().tolist()) <= {0.0, 1.0}
        lo, hi = wilson(k, group)
        assert lo <= r <= hi, f"r = {r}: pulse fraction {k / group:.5f} outside [{lo:.5f}, {hi:.5f}]"
    torch.testing.assert_close(a.neg.pulses, a.pos.pulses)  # one pulse count per pair


@pytest.mark.parametrize("mode", ["count", "stochastic", "exact"])
def test_pulse_count_rounding_and_cap(mode: str) -> None:
    """Count mode rounds to the nearest pulse; count and stochastic modes cap at max_pulses; exact mode sends the
    real-valued request uncapped. Deterministic (exact equality)."""
    dw, shape = 0.01, (10, 10)
    a = pair_array(shape, dw_min=dw, pulse_mode=mode, max_pulses=31)
    a.write(pulses(40.6, dw, shape), gen(1), 0.0)
    want = 40.6 if mode == "exact" else 31.0
    torch.testing.assert_close(both(a, "pulses"), torch.full((200,), want, dtype=F64), rtol=1e-12, atol=0)
    sign = torch.cat([torch.ones(100, dtype=F64), -torch.ones(100, dtype=F64)])
    torch.testing.assert_close(both(a), 0.5 + sign * want * dw, rtol=0, atol=1e-12)
    if mode == "count":  # 2.4 -> 2 pulses up, then 2.6 -> 3 pulses down
        b = pair_array(shape, dw_min=dw, pulse_mode="count")
        b.write(pulses(2.4, dw, shape), gen(1), 0.0)
        b.write(pulses(-2.6, dw, shape), gen(1), 0.0)
        assert torch.all(both(b, "pulses") == 5)
        torch.testing.assert_close(both(b), 0.5 - sign * dw, rtol=0, atol=1e-12)


# ---- 6. converters ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 10])
def test_quantize_has_at_most_2_to_the_b_levels(bits: int) -> None:
    """A dense sweep over twice the range gives at most 2^b distinct levels (here 2^b - 1, zero included,
    symmetric, evenly spaced, ending at +-bound), and in range the error is at most half a level.
    Deterministic. Power: one more bit would exceed 2^b levels."""
    bound = 1.7
    x = torch.linspace(-2 * bound, 2 * bound, 400_001, dtype=F64)
    q = quantize(x, bits, bound)
    levels = q.unique()
    print(f"{bits}-bit converter: {levels.numel()} levels (<= {2 ** bits})")
    assert levels.numel() <= 2 ** bits
    assert levels.numel() == 2 ** bits - 1 and 0.0 in levels.tolist()
    torch.testing.assert_close(levels, -levels.flip(0), rtol=0, atol=1e-12)
    assert float(levels.max()) == pytest.approx(bound, abs=1e-12)
    res = 2 * bound / (2 ** bits - 2)
    torch.testing.assert_close(levels.diff(), torch.full((levels.numel() - 1,), res, dtype=F64), rtol=0, atol=1e-9)
    inside = x.abs() <= bound
    assert float((q[inside] - x[inside]).abs().max()) <= res / 2 + 1e-12
    assert quantize(x, bits + 1, bound).unique().numel() > 2 ** bits


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_crossbar_reads_have_at_most_2_to_the_b_levels(bits: int) -> None:
    """Through a CrossbarTarget with adc_bits = b, every forward and transposed read of every layer takes at most
    2^b distinct values, and with dac_bits = b the inputs reaching the array do too (read through a one-hot row).
    Deterministic. Power: the same reads without the ADC take far more than 2^b values."""
    t = crossbar(adc_bits=bits, dac_bits=bits, out_bound=2.0)
    free = crossbar(out_bound=2.0)
    g = gen(11)
    for geo in SPEC.layers:
        name = f"w{geo.index}"
        s = torch.rand(512, *geo.in_shape, generator=g, dtype=F64)
        y, ctx = t._reads.forward(geo, t.weights[name], s)
        assert y.unique().numel() <= 2 ** bits and y.unique().numel() >= min(3, 2 ** bits - 1)
        assert free._reads.forward(geo, free.weights[name], s)[0].unique().numel() > 2 ** bits
        print(f"{bits}-bit ADC, {name} forward: {y.unique().numel()} levels")
        if geo.index >= 2:
            s_above = torch.rand(512, *geo.out_shape, generator=g, dtype=F64)
            back = t._reads.transpose(geo, t.weights[name], s_above, ctx)
            assert back.unique().numel() <= 2 ** bits
            print(f"{bits}-bit ADC, {name} transposed: {back.unique().numel()} levels")
    geo = SPEC.layers[0]
    one_hot = torch.zeros(geo.weight_shape, dtype=F64)
    one_hot[0, 0] = 0.1  # y[:, 0] = 0.1 DAC(x[:, 0]): the input level itself
    dac_only = crossbar(dac_bits=bits)
    x = torch.rand(4096, *geo.in_shape, generator=g, dtype=F64)
    y0 = dac_only._reads.forward(geo, one_hot, x)[0][:, 0]
    assert y0.unique().numel() <= 2 ** bits
    assert crossbar()._reads.forward(geo, one_hot, x)[0][:, 0].unique().numel() > 2 ** bits


# ---- 7. stuck devices ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [(0.3, 0.5, 0.2), (0.5, 0.5, 0.0)], ids=["min-max-random", "default"])
def test_stuck_fraction_split_and_immobility(split: tuple[float, float, float]) -> None:
    """Stuck fraction: 99.9% Wilson interval around stuck_prob (200,000 devices). Split between stuck at g_min /
    g_max / a random conductance: chi-square goodness of fit at 99.9% (df = non-empty categories - 1); random values
    have mean 1/2 (5-sigma z-bound, uniform std 1/sqrt(12)). Stuck devices keep their value exactly through
    programming and pulsed writes (with c2c), which move nearly every other device.
    Power: stuck_prob 0.105 (5% off) and a split 10% off are rejected."""
    p = 0.1
    a = pair_array(dw_min=0.01, dw_min_std=0.5, stuck_prob=p, stuck_split=split, pulse_mode="stochastic")
    stuck, value = both(a, "stuck"), both(a, "stuck_value")
    k, n = int(stuck.sum()), stuck.numel()
    lo, hi = wilson(k, n)
    print(f"stuck fraction {k / n:.5f}, 99.9% Wilson interval [{lo:.5f}, {hi:.5f}] (stuck_prob {p})")
    assert lo <= p <= hi and not lo <= 1.05 * p <= hi
    kinds = torch.where(value[stuck] == 0.0, 0, torch.where(value[stuck] == 1.0, 1, 2))
    counts = torch.bincount(kinds, minlength=3).double()
    probs = torch.tensor(split, dtype=F64) / sum(split)
    used = probs > 0
    assert torch.all(counts[~used] == 0)

    def gof(pr: torch.Tensor) -> float:
        e = pr[used] / pr[used].sum() * k
        return float(((counts[used] - e) ** 2 / e).sum())

    limit = chi2_quantile(CONF, int(used.sum()) - 1)
    print(f"stuck split {counts.tolist()}: chi-square {gof(probs):.2f} <= {limit:.2f} (99.9%)")
    assert gof(probs) <= limit
    assert gof(probs * torch.tensor([1.1, 1.0, 1.0], dtype=F64)) > limit
    if split[2]:
        check_mean(value[stuck][kinds == 2], 0.5, "random stuck values", sigma=1 / math.sqrt(12))
    assert torch.equal(both(a)[stuck], value[stuck])
    g = gen(8)
    a.program(0.8 * (2 * torch.rand(SHAPE, generator=g, dtype=F64) - 1), g, 0.0)
    before = both(a)
    for _ in range(3):
        a.write(0.1 * torch.randn(SHAPE, generator=g, dtype=F64), g, 0.0)
    after = both(a)
    assert torch.equal(after[stuck], value[stuck])
    assert float((after[~stuck] != before[~stuck]).double().mean()) > 0.99


def test_saturation_is_counted_with_stuck_devices() -> None:
    """A write that drives every free device into its bound reports them as saturated, stuck devices or not.
    Deterministic. (Fails while ``_pulse`` reports 0 saturated devices whenever the array has any stuck device.)"""
    shape = (10, 100)
    counts = []
    for stuck_prob in (0.0, 0.01):
        a = pair_array(shape, stuck_prob=stuck_prob)
        stats = a.write(torch.full(shape, 4.0, dtype=F64), gen(1), 0.0)  # asks for +2 on pos, -2 on neg
        free = 2 * shape[0] * shape[1] - (0 if a.pos.stuck is None else int(both(a, "stuck").sum()))
        counts.append((stats.saturated, free))
    assert counts[0][0] == counts[0][1]
    assert counts[1][0] == counts[1][1], f"saturated devices reported {counts[1][0]}, expected {counts[1][1]}"


# ---- 8. read noise ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("averages, in_bound", [(1, 1.0), (4, 1.0), (1, 2.0)])
def test_read_noise_std_of_a_dense_read(averages: int, in_bound: float) -> None:
    """With w_read_noise and out_noise (no converters), a dense read deviates from the exact W s by Gaussian noise of
    std sqrt(2 w_read_noise^2 scale^2 ||s||^2 + (out_noise scale in_bound)^2) / sqrt(read_averages), per output.

    99.9% chi-square interval (known mean 0) per input vector: 4 vectors of different norms, 40,000 reads each
    (5000 samples x 8 outputs). Power: a std 3% off, or without the averaging, or (where device noise is more
    than a few percent of the total) without the sqrt(2) of the pair, is rejected.
    """
    wn, on = 0.02, 0.05
    t = crossbar(w_read_noise=wn, out_noise=on, read_averages=averages, in_bound=in_bound)
    geo = SPEC.layers[0]
    w, scale = t.weights["w1"], t.arrays["w1"].scale
    g = gen(12)
    base = torch.rand(4, *geo.in_shape, generator=g, dtype=F64) * torch.tensor([0.1, 0.5, 1.0, 2.0],
                                                                              dtype=F64).view(4, 1, 1, 1)
    s = base.repeat_interleave(5000, 0)
    y, _ = t._reads.forward(geo, w, s)
    resid = (y - s.flatten(1) @ w.t()).view(4, 5000, -1)
    for i in range(4):
        norm2 = float(base[i].square().sum())
        dev2, out2 = 2 * wn ** 2 * scale ** 2 * norm2, (on * scale * in_bound) ** 2
        sd = math.sqrt((dev2 + out2) / averages)
        wrong = (1.03, 0.97) + ((math.sqrt(averages),) if averages > 1 else ())
        no_sqrt2 = math.sqrt((dev2 / 2 + out2) / averages) / sd
        if no_sqrt2 < 0.97:  # where device noise matters against the output noise
            wrong += (no_sqrt2,)
        check_variance(resid[i], sd, f"read noise, ||s||^2 = {norm2:.3f}, k = {averages}, in_bound {in_bound}",
                       mean=0.0, wrong=wrong)


# ---- 9. time: drift, decay, diffusion ----------------------------------------------------------------------------

def test_drift_follows_the_power_law() -> None:
    """drift_nu (no dtod): after wait(t) every visible conductance (and so every weight) is g ((t + t0)/t0)^-nu,
    with t counted from the device's last write; a written device starts over. Deterministic: rtol 1e-12.
    Power: nu 1% off misses."""
    nu, t0 = 0.08, 2.0
    t = crossbar(drift_nu=nu, drift_t0=t0)
    w0 = t.read_weights()
    g0 = {n: (a.pos.g.clone(), a.neg.g.clone()) for n, a in t.arrays.items()}
    for dt in (0.5, 9.5, 990.0):
        t.wait(dt)
        factor = ((t.now + t0) / t0) ** -nu
        for name, w in t.read_weights().items():
            torch.testing.assert_close(w, w0[name] * factor, rtol=1e-12, atol=1e-15)
            a = t.arrays[name]
            torch.testing.assert_close(a.pos.visible(t.now, t0), g0[name][0] * factor, rtol=1e-12, atol=0)
            torch.testing.assert_close(a.neg.visible(t.now, t0), g0[name][1] * factor, rtol=1e-12, atol=0)
            assert torch.equal(a.pos.g, g0[name][0])  # drift is seen by reads; the hidden state keeps
    wrong = ((t.now + t0) / t0) ** -(1.01 * nu)
    assert not torch.allclose(t.read_weights()["w1"], w0["w1"] * wrong, rtol=1e-6, atol=0)
    written_at, delta = t.now, torch.zeros_like(t.weights["w1"])
    delta[0, 0] = 0.01
    t.apply_update({"w1": delta})  # writes at `written_at`, then time_per_update = 1 s passes
    a = t.arrays["w1"]
    fresh, old = ((t.now - written_at + t0) / t0) ** -nu, ((t.now + t0) / t0) ** -nu
    assert float(a.pos.visible(t.now, t0)[0, 0]) == pytest.approx(float(a.pos.g[0, 0]) * fresh, rel=1e-12)
    assert float(a.pos.visible(t.now, t0)[1, 1]) == pytest.approx(float(a.pos.g[1, 1]) * old, rel=1e-12)


def test_drift_exponent_spread() -> None:
    """drift_nu_dtod: per-device exponents (recovered exactly from one read) have mean drift_nu (5-sigma z-bound)
    and std drift_nu_dtod (99.9% chi-square; the clamp at 0 is 5 sigma away). Power: a spread 3% off is rejected."""
    nu, sd = 0.1, 0.02
    a = pair_array(drift_nu=nu, drift_nu_dtod=sd)
    a.program(torch.full(SHAPE, 0.5, dtype=F64), gen(1), 0.0)
    t0, now = a.cfg.time.drift_t0, 100.0
    est = torch.cat([-(a.pos.visible(now, t0) / a.pos.g).log().flatten(),
                     -(a.neg.visible(now, t0) / a.neg.g).log().flatten()]) / math.log((now + t0) / t0)
    check_mean(est, nu, "drift exponent mean", sigma=sd)
    check_variance(est, sd, "drift exponent spread", wrong=(1.03, 0.97))


@pytest.mark.parametrize("pair", ["differential", "one_sided"])
def test_lifetime_decay_towards_the_pair_reference(pair: str) -> None:
    """lifetime: after wait(t) each conductance is ref + (g0 - ref) exp(-t/lifetime) (ref = 0.5 differential,
    0 one-sided), so every weight is w0 exp(-t/lifetime). Deterministic, rtol 1e-6 (see the float64 test below
    for full precision). Power: a lifetime 1% off misses."""
    life = 50.0
    t = crossbar(lifetime=life, pair=pair, time_per_update=0.0)
    w0 = t.read_weights()
    ref = 0.5 if pair == "differential" else 0.0
    g0 = t.arrays["w1"].pos.g.clone()
    for dt in (5.0, 20.0, 100.0):
        t.wait(dt)
        decay = math.exp(-t.now / life)
        for name, w in t.read_weights().items():
            torch.testing.assert_close(w, w0[name] * decay, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(t.arrays["w1"].pos.g, ref + (g0 - ref) * decay, rtol=1e-6, atol=1e-12)
    wrong = math.exp(-t.now / (1.01 * life))
    assert not torch.allclose(t.read_weights()["w1"], w0["w1"] * wrong, rtol=1e-6, atol=1e-12)


def test_lifetime_decay_keeps_float64_precision() -> None:
    """In a float64 simulation the decay factor exp(-t/lifetime) is applied to float64 precision (rtol 1e-12).
    (Fails while ``PairArray.elapse`` builds the factor as a float32 tensor: relative error ~1e-8.)"""
    a = pair_array((4, 5), lifetime=50.0)
    a.program(torch.full((4, 5), 0.6, dtype=F64), gen(1), 0.0)
    a.elapse(15.0, gen(2))
    torch.testing.assert_close(a.pos.g, torch.full((4, 5), 0.5 + 0.3 * math.exp(-15.0 / 50.0), dtype=F64),
                               rtol=1e-12, atol=0)


def test_diffusion_variance_grows_linearly_in_time() -> None:
    """diffusion: after t seconds each conductance has moved by N(0, diffusion^2 t); the increments over disjoint
    intervals are independent, so their variances add. 99.9% chi-square (known mean 0, 200,000 devices) at
    t = 1, 4, 16 and for the increment over [4, 16]. Power: variance ~ t^2 or ~ sqrt(t), or a std 3% off, is
    rejected."""
    d = 0.01
    a = pair_array(diffusion=d)
    g = gen(13)
    start, elapsed, snaps = both(a), 0.0, {}
    for dt in (1.0, 3.0, 12.0):
        a.elapse(dt, g)
        elapsed += dt
        snaps[elapsed] = both(a)
        wrong = (1.03, 0.97) + ((math.sqrt(elapsed), elapsed ** -0.25) if elapsed > 1 else ())
        check_variance(snaps[elapsed] - start, d * math.sqrt(elapsed), f"diffusion after {elapsed:g} s", mean=0.0,
                       wrong=wrong)
    check_variance(snaps[16.0] - snaps[4.0], d * math.sqrt(12.0), "diffusion increment over [4, 16] s", mean=0.0,
                   wrong=(math.sqrt(16 / 12),))


# ---- 10. seeds -----------------------------------------------------------------------------------------------------

def test_same_seed_same_devices_and_results() -> None:
    """Two constructions with the same seed give identical devices, reads, relaxations and written weights
    (exact equality, on a preset with every random effect: dtod, stuck, c2c, stochastic pulses, read noise,
    converters); another seed gives different ones."""
    spec = NetworkSpec(input_shape=(1, 4, 4), hidden=(8,), classes=3)
    w = init_parameters(spec, 1, F64)
    x = torch.rand(16, 1, 4, 4, generator=gen(0), dtype=F64)
    delta = {n: 0.05 * torch.randn(v.shape, generator=gen(1), dtype=F64) for n, v in w.items()}

    def run(seed: int):
        # an asymmetry spread: a symmetric soft-bounds device's symmetry point is w = 0 whatever its draws
        t = targets.open("crossbar", spec, preset="reram-hfo2", dtype="float64", seed=seed, drift_nu=0.05,
                         write_noise_std=1.0, up_down_dtod=0.05)
        t.program(w)
        states = t.relax(x, 12).states
        t.apply_update(delta)
        devices = {n: (a.pos.stuck, a.pos.gain_up, a.neg.lo, a.neg.hi) for n, a in t.arrays.items()}
        return devices, states, t.read_weights(), t.symmetry_points(), t.device_report()

    def equal(u, v) -> bool:
        if isinstance(u, dict):
            return u.keys() == v.keys() and all(equal(u[k], v[k]) for k in u)
        if isinstance(u, (tuple, list)):
            return len(u) == len(v) and all(equal(p, q) for p, q in zip(u, v))
        if torch.is_tensor(u):
            return torch.equal(u, v)
        return u == v

    a, b, c = run(7), run(7), run(8)
    for i, part in enumerate(("devices", "states", "weights", "symmetry points", "report")):
        assert equal(a[i], b[i]), f"same seed, different {part}"
    for i, part in enumerate(("devices", "states", "weights", "symmetry points")):
        assert not equal(a[i], c[i]), f"different seeds, same {part}"


# ---- 11. write noise -----------------------------------------------------------------------------------------------

def test_write_noise_is_seen_by_reads_and_does_not_accumulate() -> None:
    """write_noise_std: a written device's visible conductance is off its hidden one by N(0, (write_noise_std
    dw_min)^2), redrawn at each write; unwritten devices read exactly; the hidden conductance follows the
    noiseless device exactly. 99.9% chi-square (known mean 0) after 1 and 5 writes (an accumulating offset would
    have 5x the variance); offsets of consecutive writes uncorrelated (5-sigma z-bound, std 1/sqrt(n) for the
    correlation). Power: a std 3% off, or sqrt(5) x (accumulation), is rejected."""
    dw, ws = 0.01, 3.0
    noisy, clean = (pair_array(dw_min=dw, pulse_mode="count", write_noise_std=s) for s in (ws, 0.0))
    mask = torch.zeros(SHAPE, dtype=F64)
    mask[:, ::2] = 1.0  # only even columns are written
    written = mask.bool()
    g = gen(14)
    offsets = []
    for k in range(5):
        step = pulses(mask * (1 if k % 2 == 0 else -2), dw)
        noisy.write(step, g, 0.0)
        clean.write(step, gen(99), 0.0)
        torch.testing.assert_close(both(noisy), both(clean), rtol=0, atol=1e-15)
        off = torch.cat([(noisy.pos.visible(0.0, 1.0) - noisy.pos.g)[written],
                         (noisy.neg.visible(0.0, 1.0) - noisy.neg.g)[written]])
        offsets.append(off)
        assert torch.equal(noisy.pos.visible(0.0, 1.0)[~written], noisy.pos.g[~written])
        if k in (0, 4):
            check_variance(off, ws * dw, f"write-noise offset after {k + 1} write(s)", mean=0.0,
                           wrong=(1.03, 0.97, math.sqrt(5)))
    r = torch.corrcoef(torch.stack([offsets[3], offsets[4]]))[0, 1]
    check_mean(torch.tensor([float(r)]), 0.0, "correlation of consecutive write offsets",
               sigma=1 / math.sqrt(offsets[4].numel()))


# ---- 12. pulse counters and energy -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, update", [("count", "combined"), ("stochastic", "combined"), ("count", "two_trains")])
def test_pulse_counters_and_write_energy(mode: str, update: str) -> None:
    """device_report's pulses_total equals the pulses the writes reported and the per-device counters' sum; in
    count mode each device's counter is exactly sum_k min(round(|dw_k| / (2 scale dw_min)), max_pulses);
    write_energy_uj = pulses x pulse_energy_pj x 1e-6. Deterministic; in stochastic mode the total is also within
    a 5-sigma z-bound of the requested pulses (Bernoulli variance p (1 - p) per device and write)."""
    dw, cap, pj = 0.002, 31, 2.5
    t = crossbar(dw_min=dw, pulse_mode=mode, max_pulses=cap, pulse_energy_pj=pj, update=update)
    shapes = SPEC.parameter_shapes()
    g = gen(15)
    reported, expected, requested, variance = 0.0, {n: torch.zeros(s, dtype=F64) for n, s in shapes.items()}, 0.0, 0.0
    for _ in range(3):
        delta = {n: 0.02 * torch.randn(s, generator=g, dtype=F64) for n, s in shapes.items()}
        trains = None
        writes = [delta]
        if update == "two_trains":
            trains = ({n: d.clamp_min(0) + 0.01 for n, d in delta.items()},
                      {n: (-d).clamp_min(0) + 0.01 for n, d in delta.items()})
            writes = [trains[0], {n: -v for n, v in trains[1].items()}]
        reported += t.apply_update(Update(delta, trains)).details["pulses"]
        for write in writes:
            for n, d in write.items():
                r = (d * (1 / t.arrays[n].scale) * 0.5).abs() / dw
                expected[n] += r.round().clamp_max(cap)
                requested += 2 * float(r.clamp_max(cap).sum())
                frac = r.clamp_max(cap) - r.clamp_max(cap).floor()
                variance += 2 * float((frac * (1 - frac)).sum())
    report = t.device_report()
    counts = torch.cat([torch.cat([a.pos.pulses.flatten(), a.neg.pulses.flatten()]) for a in t.arrays.values()])
    assert report["pulses_total"] == pytest.approx(reported, rel=1e-12) == pytest.approx(float(counts.sum()), rel=1e-12)
    assert report["write_energy_uj"] == pytest.approx(report["pulses_total"] * pj * 1e-6, rel=1e-12)
    assert report["writes"] == 3 and report["pulses_per_device_max"] == float(counts.max())
    if mode == "count":
        for n, a in t.arrays.items():
            assert torch.equal(a.pos.pulses, expected[n]) and torch.equal(a.neg.pulses, expected[n])
    else:
        check_mean(torch.tensor([report["pulses_total"]]), requested, "stochastic total pulses",
                   sigma=math.sqrt(variance))
    print(f"{mode}/{update}: {report['pulses_total']:.0f} pulses, {report['write_energy_uj']:.3e} uJ")
