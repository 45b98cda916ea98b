"""The analytic FLOP counts against torch's FlopCounterMode run on the real step, drive, phases and update."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwtoolkit import config
from hwtoolkit.network import ConvLayer, NetworkSpec, dynamics, energy, init_parameters
from hwtoolkit.network.flops import batch_flops, layer_macs, step_flops, update_flops

BATCH = 3

SPECS = {
    "dense_mse": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="mse"),
    "dense_ce": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="ce"),
    "dense_ce_one_layer": NetworkSpec(input_shape=(2, 5, 5), hidden=(7,), classes=3, output="ce"),
    "conv_max": NetworkSpec(input_shape=(2, 10, 10), conv=(ConvLayer(3, 3, padding=1, pool="max"),
                                                            ConvLayer(4, 3, padding=1, pool="max")), classes=3),
    "conv_avg_dense": NetworkSpec(input_shape=(2, 11, 11), conv=(ConvLayer(3, 3, padding=1, pool="avg"),
                                                                  ConvLayer(4, 2, pool="avg")), hidden=(5,),
                                  classes=3),
    "conv_none_mse": NetworkSpec(input_shape=(1, 7, 7), conv=(ConvLayer(3, 3, pool="none"),
                                                               ConvLayer(2, 3, padding=1, pool="none")),
                                 classes=3, output="mse"),
    "conv_stride2": NetworkSpec(input_shape=(1, 9, 9), conv=(ConvLayer(3, 3, stride=2, pool="none"),
                                                              ConvLayer(2, 3, stride=2, padding=1, pool="max")),
                                classes=3, output="mse", input_mean=(0.5,), input_std=(0.25,)),
    "untied": NetworkSpec(input_shape=(2, 8, 8), conv=(ConvLayer(3, 3, padding=1, pool="max"),),
                          hidden=(6,), classes=3, tied=False),
    "alternating_max": NetworkSpec(input_shape=(2, 10, 10), conv=(ConvLayer(3, 3, padding=1, pool="max"),
                                                                   ConvLayer(4, 3, padding=1, pool="max")),
                                   hidden=(5, 6), classes=3, update="alternating"),
    "alternating_untied_avg": NetworkSpec(input_shape=(1, 8, 8), conv=(ConvLayer(2, 3, pool="avg"),),
                                          hidden=(5, 4), classes=3, output="mse", update="alternating",
                                          tied=False),
}


def counted(fn) -> int:
    """Total FLOPs torch's counter sees while ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(params=sorted(SPECS))
def case(request):
    spec = SPECS[request.param]
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(BATCH, *spec.input_shape, generator=gen)
    y = torch.randint(0, spec.classes, (BATCH,), generator=gen)
    params = init_parameters(spec, 11)
    return spec, params, x, y, dynamics.input_drive(spec, params, x)


def test_drive_matches_counter(case):
    spec, params, x, _, _ = case
    assert counted(lambda: dynamics.input_drive(spec, params, x)) == BATCH * step_flops(spec, False).drive


@pytest.mark.parametrize("nudged", [False, True])
def test_step_matches_counter(case, nudged):
    spec, params, x, y, drive = case
    states = dynamics.relax(spec, params, x, 2, drive=drive).states  # non-zero states, as in a phase
    beta = 0.5 if nudged else 0.0
    measured = counted(lambda: dynamics.step(spec, params, drive, states, beta, y if nudged else None))
    assert measured == BATCH * step_flops(spec, nudged).step


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
def test_update_matches_counter(case, estimator):
    spec, params, x, y, drive = case
    free = dynamics.relax(spec, params, x, 2, drive=drive)
    plus = dynamics.relax(spec, params, x, 2, 0.5, y, init=free.states, drive=drive)
    if estimator == "symmetric":
        other = (dynamics.relax(spec, params, x, 2, -0.5, y, init=free.states, drive=drive), -0.5)
    else:
        other = (free, 0.0)
    measured = counted(lambda: energy.ep_update(spec, params, x, y, (plus, 0.5), other))
    assert measured == BATCH * step_flops(spec, True).update == BATCH * update_flops(spec)


@pytest.mark.parametrize("estimator, free_steps, nudged_steps", [("symmetric", 3, 2), ("one_sided", 4, 1),
                                                                  ("random_sign", 2, 3)])
def test_batch_matches_counter(case, estimator, free_steps, nudged_steps):
    # One training batch as hwtoolkit.training.estimators runs it on the reference target: the drive once
    # (the target memoises it), a free phase, nudged phases from the free states, the EP update.
    spec, params, x, y, _ = case

    def train_batch() -> None:
        drive = dynamics.input_drive(spec, params, x)
        free = dynamics.relax(spec, params, x, free_steps, drive=drive)
        plus = dynamics.relax(spec, params, x, nudged_steps, 0.5, y, init=free.states, drive=drive)
        if estimator == "symmetric":
            other = (dynamics.relax(spec, params, x, nudged_steps, -0.5, y, init=free.states, drive=drive), -0.5)
        else:
            other = (free, 0.0)
        energy.ep_update(spec, params, x, y, (plus, 0.5), other)

    expected = batch_flops(spec, free_steps, nudged_steps, estimator, batch=BATCH)
    assert counted(train_batch) == expected


def test_parts_add_up_and_nudging_costs_only_the_readout():
    spec = SPECS["alternating_max"]
    free, nudged = step_flops(spec, False), step_flops(spec, True)
    assert free.readout == 0 and free.pool_context > 0
    assert nudged.step - free.step == nudged.readout == 2 * 2 * spec.classes * spec.layers[-1].out_shape[0]
    synchronous = step_flops(NetworkSpec(**{**_fields(spec), "update": "synchronous"}), False)
    assert synchronous.pool_context == 0 and synchronous.step == free.step - free.pool_context
    one = batch_flops(spec, 10, 3, "one_sided", batch=1)
    assert batch_flops(spec, 10, 3, "symmetric", batch=4) == 4 * (one + 3 * nudged.step + nudged.phase_end)


def test_untied_costs_the_same_as_tied():
    untied = SPECS["untied"]
    tied = NetworkSpec(**{**_fields(untied), "tied": True})
    for nudged in (False, True):
        assert step_flops(untied, nudged) == step_flops(tied, nudged)


def _fields(spec: NetworkSpec) -> dict:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def test_cifar10_convnet_step_count():
    spec = config.load("configs/cifar10_conv.toml", []).network
    # The published architecture by hand: conv3x3 pad 1 (grid side unchanged), 2x2 max-pool after each, so
    # layer l convolves a side x side grid with side = 32 / 2^(l-1). A step runs the forward conv and its
    # transpose for layers 2..4, each 2 FLOPs per multiply-add.
    widths, sides = [3, 128, 256, 512, 512], [32, 16, 8, 4]
    macs = [side * side * c_out * c_in * 9 for side, c_in, c_out in zip(sides, widths, widths[1:])]
    assert [layer_macs(g) for g in spec.layers] == macs
    free, nudged = step_flops(spec, False), step_flops(spec, True)
    assert free.drive == 2 * macs[0]
    assert free.step == 2 * 2 * sum(macs[1:])
    assert nudged.step == free.step + 2 * 2 * 10 * 512 * 2 * 2  # logits and nudge through W_out (10 x 2048)
    assert free.update == 2 * 2 * 2 * sum(macs) + 2 * 2 * 10 * 2048  # 2 phases: grad + pool-index conv each
    # About 0.755 GFLOP per image per step. The "about 0.64 GFLOP" is NOT reproduced (it is 15% low):
    # the hand count above and FlopCounterMode on the real step (below) both give the larger figure.
    x = torch.rand(1, *spec.input_shape)
    params = init_parameters(spec, 0)
    drive = dynamics.input_drive(spec, params, x)
    states = dynamics.zero_states(spec, 1, x)
    assert counted(lambda: dynamics.step(spec, params, drive, states)) == free.step


@pytest.mark.parametrize("kwargs, message", [
    ({"estimator": "bptt"}, "estimator = 'bptt' is invalid"),
    ({"estimator": "Symmetric"}, "estimator = 'Symmetric' is invalid"),
    ({"free_steps": -1}, "free_steps = -1 is invalid"),
    ({"nudged_steps": -2}, "nudged_steps = -2 is invalid"),
    ({"batch": 0}, "batch = 0 is invalid"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"free_steps": 5, "nudged_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        batch_flops(SPECS["dense_ce"], **args)
