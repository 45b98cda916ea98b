"""Conv networks on the board (protocol 1.2, capability 9): bit-exact against the fixed-point model on random
conv networks (host build and QEMU), refused by name where a board has no conv layers, and a ConvNet trained
with the QEMU board in the loop equal to the reference run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from firmware_interface.client import BoardClient, BoardError
from firmware_interface.protocol import Capability, Status
from hwtoolkit import config
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec, SpecError
from hwtoolkit.training import checkpoint
from hwtoolkit.training.loop import train
from quantize.fixed_point import FixedPointNetwork
from targets import TargetError
from targets.reference import ReferenceTarget
from targets.serial.image import board_image
from targets.serial.target import SerialTarget

from test_serial import check_spec_bit_exact, quants
from tests.conftest import tiny_config_text

convs = st.lists(st.fixed_dictionaries({
    "channels": st.integers(1, 4),
    "kernel": st.integers(1, 3),
    "stride": st.integers(1, 2),
    "padding": st.integers(0, 1),
    "pool": st.sampled_from(["max", "avg", "none"]),
    "pool_size": st.sampled_from([1, 2]),
}), min_size=1, max_size=2)
conv_networks = st.fixed_dictionaries({
    "conv": convs,
    "hidden": st.lists(st.integers(1, 12), max_size=1),
    "classes": st.integers(2, 5),
    "output": st.sampled_from(["ce", "mse"]),
    "tied": st.booleans(),
    "update": st.sampled_from(["synchronous", "alternating"]),
    "activation": st.sampled_from(["hard_sigmoid", "hard_sigmoid_half"]),
    "channels": st.integers(1, 2),
    "side": st.integers(4, 9),
})


def conv_case(net, seed):
    """A random conv network (``assume`` drops geometries that shrink the image to nothing) and its weights."""
    try:
        spec = NetworkSpec(input_shape=(net["channels"], net["side"], net["side"]),
                           conv=tuple(ConvLayer(**c) for c in net["conv"]), hidden=tuple(net["hidden"]),
                           classes=net["classes"], output=net["output"], tied=net["tied"], update=net["update"],
                           activation=net["activation"])
    except SpecError:
        assume(False)
    gain = 1.0 + (seed % 3)  # larger weights drive more units away from 0 and 1
    return spec, {n: gain * p for n, p in init_parameters(spec, seed).items()}


def check_conv(client, net, quant, seed, steps, beta):
    """Bit-exact phases on a board with conv layers; on one without, the target's refusal naming them."""
    spec, weights = conv_case(net, seed)
    if not client.info.capabilities & Capability.CONV:
        with pytest.raises(TargetError, match="conv layers"):
            SerialTarget(spec, client=client, quant=quant)
        return None
    return check_spec_bit_exact(client, spec, weights, quant, seed, steps, beta)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=conv_networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 20),
       beta=st.sampled_from([0.5, -0.5, 0.25, 1.0]))
def test_host_board_conv_states_equal_the_fixed_point_model(host_client, net, quant, seed, steps, beta):
    assert host_client.info.capabilities & Capability.CONV  # else check_conv would only check a refusal
    check_conv(host_client, net, quant, seed, steps, beta)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=conv_networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 8),
       beta=st.sampled_from([0.5, -0.25]))
def test_every_board_runs_conv_networks_bit_exactly_or_refuses_them(board_client, net, quant, seed, steps, beta):
    check_conv(board_client, net, quant, seed, steps, beta)


def test_conv_states_on_the_board_vary_and_every_pool_is_exercised(host_client):
    """Fixed cases with max and average pools feeding back into a conv layer: states well inside the format."""
    for pool in ("max", "avg"):
        net = {"conv": [{"channels": 3, "kernel": 3, "stride": 1, "padding": 1, "pool": pool, "pool_size": 2},
                        {"channels": 4, "kernel": 2, "stride": 1, "padding": 0, "pool": pool, "pool_size": 2}],
               "hidden": [], "classes": 4, "output": "mse", "tied": True, "update": "synchronous",
               "activation": "hard_sigmoid", "channels": 1, "side": 8}
        fp, states = check_conv(host_client, net, {"weight_bits": 6, "state_bits": 6}, 5, 15, 0.5)
        for s in states[:2]:
            inside = ((s > 0) & (s < (1 << fp.state_bits) - 1)).double().mean()
            assert inside > 0.1 and len(s.unique()) > 8


def test_a_board_before_protocol_1_2_refuses_conv_networks_by_name():
    """A protocol 1.0 board (``make host-v10``) lacks capability 9: the target says so before sending anything,
    and a conv record sent anyway is refused (its conv block makes the record too long) and changes nothing."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("host-v10")
    if not ok:
        pytest.skip(why)
    net = {"conv": [{"channels": 2, "kernel": 3, "stride": 1, "padding": 1, "pool": "max", "pool_size": 2}],
           "hidden": [], "classes": 3, "output": "mse", "tied": True, "update": "synchronous",
           "activation": "hard_sigmoid", "channels": 1, "side": 4}
    quant = {"weight_bits": 8, "state_bits": 8}
    spec, weights = conv_case(net, 0)
    with launch.HostBoard(legacy=True) as old, BoardClient.open(old.url, timeout=2.0) as client:
        assert not client.info.capabilities & Capability.CONV
        with pytest.raises(TargetError, match=r"does not support conv layers \(capability 9, protocol 1\.2\)"):
            SerialTarget(spec, client=client, quant=quant)
        with pytest.raises(BoardError) as refused:
            client.configure(board_image(FixedPointNetwork.from_quant(ReferenceTarget(spec, quant=quant).quant),
                                         4).record.pack())
        assert refused.value.status == Status.BAD_LENGTH
        assert not client.get_status().configured


def _conv_config(root, url, epochs=2):
    """The tiny IDX data set (8x8, 4 classes; 300 images, 240 for training) with a padded 3x3 conv layer of 4
    channels and 2x2 max pooling, then a 4-unit MSE output: w8 s8 pow2, symmetric EP."""
    text = tiny_config_text(root, "symmetric", epochs=epochs).replace("hidden = [16]\n", "").replace(
        'output = "ce"', 'output = "mse"').replace("val_size = 100", "val_size = 60\nlimit = 300")
    text += ('\n[[network.conv]]\nchannels = 4\nkernel = 3\npadding = 1\npool = "max"\npool_size = 2\n'
             "\n[quant]\nweight_bits = 8\nstate_bits = 8\n")
    if url:
        text += f'\n[target]\nname = "serial"\nurl = "{url}"\ntimeout = 2.0\n'
    return text


def test_a_conv_network_trained_with_the_qemu_board_equals_the_reference_run(qemu_board, idx_dataset, tmp_path):
    """Same config and seed on the QEMU Cortex-M3 board and on the reference target: identical weights and
    accuracy after every update of two epochs, and the network learned something."""
    board = config.loads(_conv_config(idx_dataset, qemu_board.url))
    reference = config.loads(_conv_config(idx_dataset, None))
    a = train(board, tmp_path / "board", log=lambda s: None)
    b = train(reference, tmp_path / "reference", log=lambda s: None)
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_accuracy"] > 0.5
    wa, wb = (checkpoint.load(tmp_path / run / "checkpoints" / "best.pt")["weights"] for run in ("board", "reference"))
    assert set(wa) == {"w1", "b1", "w2", "b2"} and all(torch.equal(wa[n], wb[n]) for n in wa)
