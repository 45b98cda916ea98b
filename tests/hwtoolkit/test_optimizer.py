"""Tests for hwtoolkit.training.optimizer: SGD increments against torch.optim.SGD, state, lr schedules."""

from __future__ import annotations

import math

import pytest
import torch

from hwtoolkit.training.optimizer import SGD, lr_factor

SHAPES = {"w1": (4, 3), "b1": (4,), "w_out": (2, 4), "b_out": (2,)}
LRS = {"w1": 0.1, "b1": 0.05, "w_out": 0.02, "b_out": 0.3}


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}


def grads_for(weights: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """A gradient that depends on the weights (a quadratic pull) plus step-dependent noise."""
    gen = torch.Generator().manual_seed(1000 + step)
    return {n: 0.5 * w + torch.randn(w.shape, generator=gen, dtype=torch.float64) for n, w in weights.items()}


def run_ours(weights: dict[str, torch.Tensor], opt: SGD, steps: range, factors: list[float]) -> dict[str, torch.Tensor]:
    w = {n: t.clone() for n, t in weights.items()}
    for k in steps:
        g = grads_for(w, k)
        delta = opt.step({n: -t for n, t in g.items()}, w, lr_factor=factors[k])
        assert set(delta) == set(w)
        w = {n: w[n] + delta[n] for n in w}
    return w


def run_torch(weights: dict[str, torch.Tensor], lrs: dict[str, float], momentum: float, wd: float,
              factors: list[float]) -> dict[str, torch.Tensor]:
    params = {n: torch.nn.Parameter(t.clone()) for n, t in weights.items()}
    groups = [{"params": [p], "lr": lrs[n], "name": n} for n, p in params.items()]
    opt = torch.optim.SGD(groups, lr=1.0, momentum=momentum, weight_decay=wd)
    for k, f in enumerate(factors):
        for group in opt.param_groups:
            group["lr"] = lrs[group["name"]] * f
        g = grads_for({n: p.detach() for n, p in params.items()}, k)
        for n, p in params.items():
            p.grad = g[n].clone()
        opt.step()
    return {n: p.detach() for n, p in params.items()}


@pytest.mark.parametrize(
    ("momentum", "wd"),
    [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.9, 5e-2), (0.5, 1e-3)],
)
def test_matches_torch_sgd_with_per_layer_lrs(momentum: float, wd: float) -> None:
    weights = make_weights()
    factors = [1.0] * 6
    ours = run_ours(weights, SGD(LRS, momentum=momentum, weight_decay=wd), range(6), factors)
    ref = run_torch(weights, LRS, momentum, wd, factors)
    for n in weights:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(ours[n], weights[n])  # it actually moved


def test_lr_factor_argument_matches_torch_lr_change() -> None:
    weights = make_weights(1)
    factors = [1.0, 0.8, 0.5, 0.25, 0.1]
    ours = run_ours(weights, SGD(LRS, momentum=0.9, weight_decay=1e-2), range(5), factors)
    ref = run_torch(weights, LRS, 0.9, 1e-2, factors)
    for n in weights:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-12, atol=1e-12)


def test_single_step_by_hand() -> None:
    opt = SGD({"w": 0.5}, momentum=0.9, weight_decay=0.1)
    w = torch.tensor([2.0, -1.0], dtype=torch.float64)
    d = torch.tensor([1.0, 3.0], dtype=torch.float64)
    # buf = -d + wd * w = [-1 + 0.2, -3 - 0.1] ; increment = -lr * factor * buf
    delta = opt.step({"w": d}, {"w": w}, lr_factor=0.5)
    torch.testing.assert_close(delta["w"], torch.tensor([0.2, 0.775], dtype=torch.float64))
    # second step: buf = 0.9 * buf + (-d + wd * w)
    delta = opt.step({"w": d}, {"w": w}, lr_factor=1.0)
    first = torch.tensor([-0.8, -3.1], dtype=torch.float64)
    torch.testing.assert_close(delta["w"], -0.5 * (0.9 * first + first))


def test_step_does_not_modify_inputs() -> None:
    weights = make_weights()
    direction = {n: torch.ones_like(t) for n, t in weights.items()}
    w_before = {n: t.clone() for n, t in weights.items()}
    d_before = {n: t.clone() for n, t in direction.items()}
    opt = SGD(LRS, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        delta = opt.step(direction, weights)
    for n in weights:
        assert torch.equal(weights[n], w_before[n])
        assert torch.equal(direction[n], d_before[n])
        # the increment must not alias the momentum buffer (a later step would change it)
        assert delta[n].data_ptr() != opt.buffers[n].data_ptr()


def test_only_parameters_in_direction_are_updated() -> None:
    opt = SGD(LRS, momentum=0.9)
    delta = opt.step({"b1": torch.ones(4, dtype=torch.float64)}, None)
    assert set(delta) == {"b1"}
    assert set(opt.buffers) == {"b1"}


def test_no_momentum_keeps_no_state() -> None:
    opt = SGD(LRS, momentum=0.0)
    opt.step({"w1": torch.ones(4, 3)}, None)
    assert opt.state_dict() == {}


def test_weight_decay_without_weights_raises() -> None:
    opt = SGD(LRS, weight_decay=1e-3)
    with pytest.raises(ValueError, match="weight decay needs the current weights"):
        opt.step({"w1": torch.ones(4, 3)}, None)


def test_weights_are_optional_without_weight_decay() -> None:
    opt = SGD({"w1": 0.1})
    delta = opt.step({"w1": torch.full((4, 3), 2.0)}, None)
    torch.testing.assert_close(delta["w1"], torch.full((4, 3), 0.2))


def test_state_dict_round_trip_gives_same_continuation() -> None:
    weights = make_weights(2)
    factors = [1.0, 0.9, 0.7, 0.5, 0.3, 0.2]
    straight = run_ours(weights, SGD(LRS, momentum=0.9, weight_decay=1e-2), range(6), factors)

    first = SGD(LRS, momentum=0.9, weight_decay=1e-2)
    mid = run_ours(weights, first, range(3), factors)
    state = first.state_dict()
    assert set(state) == set(SHAPES)
    assert all(t.device.type == "cpu" for t in state.values())
    # the state dict is a copy: further steps of `first` do not change it
    saved = {n: t.clone() for n, t in state.items()}
    first.step({n: torch.ones(s, dtype=torch.float64) for n, s in SHAPES.items()}, mid)
    for n in state:
        assert torch.equal(state[n], saved[n])

    second = SGD(LRS, momentum=0.9, weight_decay=1e-2)
    second.load_state_dict(state)
    resumed = run_ours(mid, second, range(3, 6), factors)
    for n in weights:
        torch.testing.assert_close(resumed[n], straight[n], rtol=0, atol=0)
    # loading copies: the optimizer's in-place buffer updates leave `state` untouched
    for n in state:
        assert torch.equal(state[n], saved[n])


def test_load_state_dict_converts_like() -> None:
    opt = SGD({"w": 0.1}, momentum=0.9)
    opt.load_state_dict({"w": torch.ones(3, dtype=torch.float64)}, like=torch.zeros(1, dtype=torch.float32))
    assert opt.buffers["w"].dtype == torch.float32
    delta = opt.step({"w": torch.zeros(3)}, None)
    torch.testing.assert_close(delta["w"], torch.full((3,), -0.1 * 0.9))


# --------------------------------------------------------------------------- lr_factor


@pytest.mark.parametrize("epoch", [0, 1, 5, 9])
def test_constant_schedule_is_one(epoch: int) -> None:
    assert lr_factor("constant", epoch, 10) == 1.0
    assert lr_factor("constant", epoch, 10, final=0.3) == 1.0


@pytest.mark.parametrize("final", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("epochs", [2, 10, 31])
def test_cosine_schedule_shape(final: float, epochs: int) -> None:
    values = [lr_factor("cosine", e, epochs, final) for e in range(epochs + 1)]
    assert values[0] == pytest.approx(1.0)
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] == pytest.approx(final)  # the end of the last epoch
    assert all(final - 1e-12 <= v <= 1.0 + 1e-12 for v in values)
    if epochs % 2 == 0:
        assert lr_factor("cosine", epochs // 2, epochs, final) == pytest.approx(final + (1 - final) / 2)


def test_cosine_value_by_hand() -> None:
    # epoch 1 of 4: 0.5 * (1 + cos(pi/4))
    assert lr_factor("cosine", 1, 4) == pytest.approx(0.5 * (1 + math.sqrt(2) / 2))


def test_unknown_schedule_raises_naming_it() -> None:
    with pytest.raises(ValueError, match=r"optim\.schedule = 'linear' is invalid.*cosine"):
        lr_factor("linear", 0, 10)
