"""Anderson-accelerated relaxation: the plain iteration's fixed point, in fewer steps."""

import dataclasses

import pytest
import torch

from hwtoolkit.network import ConvLayer, NetworkSpec, init_parameters, relax
from hwtoolkit.network.anderson import mix, relax_anderson

SPECS = {
    "mlp_mse_deep": NetworkSpec(input_shape=(1, 6, 6), hidden=(16, 12, 10), classes=4, output="mse", init_gain=1.6),
    "mlp_ce": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="ce", init_gain=1.4),
    "mlp_leaky_half": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 8), classes=4, output="mse",
                                  activation="hard_sigmoid_half", dynamics="leaky", eps=0.5, init_gain=1.5),
    "mlp_sigmoid_alternating": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 10), classes=4, output="ce",
                                           activation="sigmoid_2019", update="alternating"),
    "conv_max_avg": NetworkSpec(input_shape=(2, 11, 11), conv=(ConvLayer(3, 3, padding=1, pool="max"),
                                                                 ConvLayer(4, 2, pool="avg")), hidden=(5,), classes=3,
                                init_gain=1.4),
}
PLAIN_STEPS = 3000
TOL = 1e-11


def _problem(name: str, batch: int = 6):
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(batch, *spec.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, spec.classes, (batch,), generator=gen)
    return spec, init_parameters(spec, 5, torch.float64), x, y


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("beta", [0.0, 0.5, -0.5])
def test_reaches_the_plain_fixed_point_in_fewer_steps(name, beta):
    spec, p, x, y = _problem(name)
    y = y if beta else None
    free = relax(spec, p, x, PLAIN_STEPS, stop_tolerance=TOL)
    init = free.states if beta else None
    plain = relax(spec, p, x, PLAIN_STEPS, beta, y, init, stop_tolerance=TOL)
    fast = relax_anderson(spec, p, x, PLAIN_STEPS, beta, y, init, stop_tolerance=TOL)
    assert plain.steps < PLAIN_STEPS, "the reference did not converge: the test network is badly chosen"
    assert fast.steps <= plain.steps
    assert fast.residual.max() <= TOL
    for a, b in zip(plain.states, fast.states):
        assert (a - b).abs().max() < 1e-9  # both within ~TOL/(1-q) of the same fixed point
    assert torch.allclose(plain.logits, fast.logits, atol=1e-9)


def test_cuts_steps_where_the_plain_iteration_is_slow():
    spec, p, x, y = _problem("mlp_mse_deep")
    for beta in (0.0, 0.5):
        plain = relax(spec, p, x, PLAIN_STEPS, beta, y, stop_tolerance=TOL)
        fast = relax_anderson(spec, p, x, PLAIN_STEPS, beta, y, stop_tolerance=TOL)
        assert plain.steps > 40  # slow contraction: the case acceleration is for
        assert fast.steps * 2 < plain.steps


def test_memory_one_is_the_plain_iteration():
    spec, p, x, y = _problem("mlp_ce")
    for beta, steps in ((0.0, 7), (0.3, 5)):
        a = relax(spec, p, x, steps, beta, y if beta else None)
        b = relax_anderson(spec, p, x, steps, beta, y if beta else None, memory=1)
        assert a.steps == b.steps == steps
        # the same arithmetic, up to the rounding of BLAS on the strided views of one flat state vector
        assert all(torch.allclose(s, t, atol=1e-15, rtol=0) for s, t in zip(a.states, b.states))
        assert torch.allclose(a.residual, b.residual, atol=1e-15, rtol=0)


def test_stop_tolerance_ends_at_the_first_step_that_meets_it():
    spec, p, x, y = _problem("mlp_mse_deep")
    early = relax_anderson(spec, p, x, 500, stop_tolerance=1e-6)
    assert early.steps < 500 and early.residual.max() <= 1e-6
    shorter = relax_anderson(spec, p, x, early.steps - 1)
    assert shorter.residual.max() > 1e-6
    full = relax_anderson(spec, p, x, 40)
    assert full.steps == 40  # without a tolerance every step runs


def test_states_stay_in_the_activation_range_and_finite():
    spec, p, x, y = _problem("mlp_ce", batch=16)
    x[3] = 0.0  # a sample whose residuals vanish early must not make its least squares singular
    for beta in (0.0, 2.0, -2.0):
        r = relax_anderson(spec, p, x, 60, beta, y if beta else None)
        for s in r.states:
            assert torch.isfinite(s).all() and s.min() >= 0.0 and s.max() <= 1.0


def test_converged_samples_do_not_break_the_mix():
    f = torch.rand(4, 7, dtype=torch.float64)
    zero = torch.zeros_like(f)
    out = mix(f, zero, [zero, zero], [zero, zero])  # every residual difference is zero
    assert torch.equal(out, f)


def test_mix_solves_a_linear_fixed_point_exactly():
    """On an affine map s <- A s + c in n dimensions, n + 1 Anderson steps give the exact fixed point."""
    gen = torch.Generator().manual_seed(2)
    n = 3
    a = 0.3 * torch.randn(2, n, n, generator=gen, dtype=torch.float64)
    c = torch.randn(2, n, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a, c)
    s, images, residuals = torch.zeros(2, n, dtype=torch.float64), [], []
    for _ in range(n + 1):
        image = (a @ s.unsqueeze(2)).squeeze(2) + c
        images, residuals = images + [image], residuals + [image - s]
        s = mix(image, image - s, [b - a for a, b in zip(images, images[1:])],
                [b - a for a, b in zip(residuals, residuals[1:])])
    assert torch.allclose(s, exact, atol=1e-9)
    assert not torch.allclose(images[1], exact, atol=1e-3)  # the plain iteration is far from it


def test_bad_arguments_name_the_value():
    spec, p, x, y = _problem("mlp_ce")
    with pytest.raises(ValueError, match="memory = 0"):
        relax_anderson(spec, p, x, 5, memory=0)
    with pytest.raises(ValueError, match="stop_tolerance"):
        relax_anderson(spec, p, x, 5, stop_tolerance=-1.0)
    with pytest.raises(ValueError, match="steps = 0"):
        relax_anderson(spec, p, x, 0)
    with pytest.raises(ValueError, match="needs targets y"):
        relax_anderson(spec, p, x, 5, beta=0.5)


def test_alternating_and_synchronous_share_the_accelerated_fixed_point():
    spec, p, x, y = _problem("mlp_mse_deep")
    alt = dataclasses.replace(spec, update="alternating")
    a = relax_anderson(spec, p, x, PLAIN_STEPS, 0.4, y, stop_tolerance=TOL)
    b = relax_anderson(alt, p, x, PLAIN_STEPS, 0.4, y, stop_tolerance=TOL)
    for s, t in zip(a.states, b.states):
        assert (s - t).abs().max() < 1e-9
