"""The analytic relaxation step against the autograd-of-Phi formulation, and the layer algebra."""

import pytest
import torch

from hwtoolkit.network import ConvLayer, NetworkSpec, SpecError, init_parameters, phi, phi_grads, relax
from hwtoolkit.network import dynamics
from hwtoolkit.network.autograd_phi import relax_autograd

SPECS = {
    "mlp_mse": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="mse"),
    "mlp_ce": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="ce"),
    "mlp_half_leaky": NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4, output="mse",
                                  activation="hard_sigmoid_half", dynamics="leaky", eps=0.3),
    "mlp_sigmoid": NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4, output="ce", activation="sigmoid_2019"),
    "conv_max_avg": NetworkSpec(input_shape=(2, 11, 11), conv=(ConvLayer(3, 3, padding=1, pool="max"),
                                                                 ConvLayer(4, 2, pool="avg")), hidden=(5,), classes=3),
    "conv_stride_nopool": NetworkSpec(input_shape=(1, 9, 9), conv=(ConvLayer(3, 3, stride=2, pool="none"),
                                                                     ConvLayer(2, 3, padding=1, pool="max")),
                                      classes=3, output="mse", input_mean=(0.5,), input_std=(0.25,)),
}


@pytest.fixture(params=sorted(SPECS))
def case(request):
    spec = SPECS[request.param]
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, *spec.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, spec.classes, (5,), generator=gen)
    return spec, init_parameters(spec, 7, torch.float64), x, y


def test_analytic_step_equals_autograd_of_phi(case):
    spec, p, x, y = case
    free_a, free_b = relax(spec, p, x, 12), relax_autograd(spec, p, x, 12)
    nudged_a = relax(spec, p, x, 6, beta=0.7, y=y, init=free_a.states)
    nudged_b = relax_autograd(spec, p, x, 6, beta=0.7, y=y, init=free_b.states)
    for a, b in zip(free_a.states + nudged_a.states, free_b.states + nudged_b.states):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert torch.allclose(nudged_a.logits, nudged_b.logits, atol=1e-12)
    # the nudge really moved the states (the comparison above is not vacuous)
    assert max((a - b).abs().max() for a, b in zip(free_a.states, nudged_a.states)) > 1e-4


def test_phi_grads_equal_autograd_of_phi(case):
    spec, p, x, _ = case
    states = list(relax(spec, p, x, 12).states)
    leaves = {n: t.clone().requires_grad_(True) for n, t in p.items()}
    auto = torch.autograd.grad(phi(spec, leaves, x, states) / x.shape[0], list(leaves.values()), allow_unused=True)
    mine = phi_grads(spec, p, x, states)
    for (name, _), g in zip(leaves.items(), auto):
        if name in mine:
            assert torch.allclose(mine[name], g, atol=1e-12), name
    assert set(mine) == {n for n in p if not n.endswith("_out")}


def test_states_stay_in_activation_range(case):
    spec, p, x, y = case
    r = relax(spec, p, x, 8, beta=5.0, y=y)
    for s in r.states:
        assert s.min() >= 0.0 and s.max() <= 1.0


def test_untied_network_uses_its_feedback_weights():
    spec = NetworkSpec(input_shape=(1, 4, 4), hidden=(6, 5), classes=3, output="mse", tied=False)
    p = init_parameters(spec, 0, torch.float64)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    before = relax(spec, p, x, 10)
    changed = dict(p, fb2=p["fb2"] + 0.5)
    after = relax(spec, changed, x, 10)
    assert (after.states[0] - before.states[0]).abs().max() > 1e-3  # fb2 carries s_2 back to s_1
    with pytest.raises(ValueError, match="tied networks only"):
        phi(spec, p, x, list(before.states))


def test_input_drive_is_computed_once_per_phase(monkeypatch):
    spec = SPECS["conv_max_avg"]
    p = init_parameters(spec, 0)
    x = torch.rand(2, *spec.input_shape)
    calls = []
    real = dynamics.input_drive
    monkeypatch.setattr(dynamics, "input_drive", lambda *a: calls.append(1) or real(*a))
    dynamics.relax(spec, p, x, 25)
    assert len(calls) == 1


def test_residual_reports_the_last_step():
    spec = SPECS["mlp_mse"]
    p = init_parameters(spec, 0, torch.float64)
    x = torch.rand(4, *spec.input_shape, dtype=torch.float64)
    a, b = relax(spec, p, x, 3), relax(spec, p, x, 4)
    expected = torch.stack([(s - t).abs().flatten(1).amax(1) for s, t in zip(b.states, a.states)]).amax(0)
    assert torch.equal(b.residual, expected)
    assert b.converged(float(expected.max())).all() and not b.converged(float(expected.min()) / 2).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"input_shape": (28, 28)}, "input_shape"),
    ({"hidden": (0,)}, "hidden"),
    ({"output": "hinge"}, "output"),
    ({"activation": "relu"}, "activation"),
    ({"dynamics": "leaky", "eps": 0.0}, "eps"),
    ({"eps": 0.5}, "eps"),
    ({"conv": (ConvLayer(4, 9),), "input_shape": (1, 5, 5)}, "conv\\[0\\].kernel"),
    ({"conv": (ConvLayer(4, 3, pool="median"),)}, "conv\\[0\\].pool"),
    ({"input_mean": (0.1, 0.2)}, "input_mean"),
    ({"hidden": (), "output": "ce"}, "hidden"),
])
def test_spec_errors_name_the_field(kwargs, field):
    with pytest.raises(SpecError, match=f"network.{field}"):
        NetworkSpec(**kwargs)


def test_layer_shapes_follow_conv_and_pool_arithmetic():
    spec = NetworkSpec(input_shape=(3, 32, 32), conv=tuple(ConvLayer(c, 3, padding=1) for c in (128, 256, 512, 512)))
    assert spec.state_shapes == ((128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2))
    assert spec.readout_shape == (10, 2048)
    assert spec.num_weight_layers == 5


def test_phase_needs_steps_and_targets():
    spec = SPECS["mlp_ce"]
    p = init_parameters(spec, 0)
    x = torch.rand(2, *spec.input_shape)
    with pytest.raises(ValueError, match="at least one step"):
        relax(spec, p, x, 0)
    with pytest.raises(ValueError, match="needs targets"):
        relax(spec, p, x, 3, beta=0.1)
    with pytest.raises(ValueError, match="network expects"):
        relax(spec, p, torch.rand(2, 1, 5, 5), 3)


@pytest.mark.parametrize("kind", ["one_sided", "symmetric"])
def test_ep_update_equals_autograd_of_phi_difference(case, kind):
    from hwtoolkit.network.autograd_phi import ep_update_autograd
    from hwtoolkit.network.energy import ep_update

    spec, p, x, y = case
    free = relax(spec, p, x, 12)
    plus = relax(spec, p, x, 5, 0.3, y, free.states)
    other = (relax(spec, p, x, 5, -0.3, y, free.states), -0.3) if kind == "symmetric" else (free, 0.0)
    mine = ep_update(spec, p, x, y, (plus, 0.3), other)
    auto = ep_update_autograd(spec, p, x, y, (plus, 0.3), other)
    assert set(mine) == set(auto)
    for name in mine:
        assert torch.allclose(mine[name], auto[name], atol=1e-12), name
    assert max(t.abs().max() for t in mine.values()) > 1e-3  # a real update, not two zeros compared


def test_stop_tolerance_ends_a_phase_at_the_same_fixed_point():
    spec = SPECS["mlp_mse"]
    p = init_parameters(spec, 0, torch.float64)
    x = torch.rand(4, *spec.input_shape, dtype=torch.float64)
    full = relax(spec, p, x, 300)
    early = relax(spec, p, x, 300, stop_tolerance=1e-9)
    assert early.steps < 300 and full.steps == 300
    assert early.residual.max() <= 1e-9
    # a contraction stopped when it moves by <= 1e-9 per step is within a small multiple of that of its fixed point
    for a, b in zip(early.states, full.states):
        assert (a - b).abs().max() < 1e-7
    shorter = relax(spec, p, x, early.steps - 1)
    assert shorter.residual.max() > 1e-9  # it stopped at the first step that met the tolerance
    with pytest.raises(ValueError, match="stop_tolerance"):
        relax(spec, p, x, 5, stop_tolerance=-1.0)


@pytest.mark.parametrize("name", ["mlp_mse", "mlp_ce", "conv_max_avg", "conv_stride_nopool"])
def test_layer_pre_activation_matches_the_synchronous_one(name):
    from hwtoolkit.network.dynamics import input_drive, layer_pre_activation, pre_activations

    spec = SPECS[name]
    p = init_parameters(spec, 4, torch.float64)
    x = torch.rand(3, *spec.input_shape, dtype=torch.float64)
    states = list(relax(spec, p, x, 3).states)
    drive = input_drive(spec, p, x)
    for i, u in enumerate(pre_activations(spec, p, drive, states)):
        assert torch.allclose(layer_pre_activation(spec, p, drive, states, i), u, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp_mse", "conv_max_avg"])
def test_alternating_updates_reach_the_same_fixed_point_in_fewer_steps(name):
    import dataclasses

    sync = SPECS[name]
    alt = dataclasses.replace(sync, update="alternating")
    p = init_parameters(sync, 4, torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, *sync.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, sync.classes, (6,), generator=gen)
    for beta in (0.0, 0.4):
        a = relax(sync, p, x, 400, beta, y if beta else None, stop_tolerance=1e-12)
        b = relax(alt, p, x, 400, beta, y if beta else None, stop_tolerance=1e-12)
        assert b.steps < a.steps < 400
        for s, t in zip(a.states, b.states):
            assert (s - t).abs().max() < 1e-9
    with pytest.raises(SpecError, match="network.update"):
        dataclasses.replace(sync, update="random")


def test_ep_update_reads_weights_only_for_max_pooling():
    """Avg-pooled and dense networks form their update from states alone; max pooling needs W for its indices."""
    from hwtoolkit.network.energy import ep_update

    for name, needs in (("conv_max_avg", True), ("mlp_ce", False)):
        spec = SPECS[name]
        assert spec.has_max_pool is needs
        p = init_parameters(spec, 1, torch.float64)
        x = torch.rand(3, *spec.input_shape, dtype=torch.float64)
        y = torch.randint(0, spec.classes, (3,))
        free = relax(spec, p, x, 6)
        plus = relax(spec, p, x, 4, 0.2, y, free.states)
        full = ep_update(spec, p, x, y, (plus, 0.2), (free, 0.0))
        only_max = {n: p[n] for n in ("w1",)} if needs else {}  # conv_max_avg max-pools in layer 1 only
        partial = ep_update(spec, only_max, x, y, (plus, 0.2), (free, 0.0))
        assert all(torch.equal(full[n], partial[n]) for n in full)
