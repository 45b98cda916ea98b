"""The serial target against the reference firmware: bit-exact states, training with the board in the loop,
recovery from board resets and killed hosts, and the errors a user meets."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_interface import tensor as T
from firmware_interface.client import BoardClient
from firmware_interface.protocol import Capability, Command, tensor_id
from hwtoolkit import config
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from hwtoolkit.training import checkpoint
from hwtoolkit.training.loop import train
from quantize.fixed_point import FixedPointNetwork
from targets import TargetError
from targets.reference import ReferenceTarget
from targets.serial.target import SerialTarget
from tests.conftest import tiny_config_text

REPO = Path(__file__).resolve().parents[2]


def _states_ints(relaxation, frac):
    return [torch.round(s.flatten(1).double() * 2.0 ** frac).long() for s in relaxation.states]


networks = st.fixed_dictionaries({
    "hidden": st.lists(st.integers(1, 24), min_size=1, max_size=3),
    "classes": st.integers(2, 6),
    "output": st.sampled_from(["ce", "mse"]),
    "tied": st.booleans(),
    "update": st.sampled_from(["synchronous", "alternating"]),
    "activation": st.sampled_from(["hard_sigmoid", "hard_sigmoid_half"]),
    "side": st.integers(2, 7),
    "normalised": st.booleans(),
})
quants = st.fixed_dictionaries({
    "weight_bits": st.integers(3, 12),
    "state_bits": st.integers(3, 12),
    "input_bits": st.integers(4, 10),
    "granularity": st.sampled_from(["per_tensor", "per_channel"]),
})


def _random_case(net, quant, seed):
    spec = NetworkSpec(input_shape=(1, net["side"], net["side"]), hidden=tuple(net["hidden"]), classes=net["classes"],
                       output=net["output"], tied=net["tied"], update=net["update"], activation=net["activation"],
                       input_mean=(0.4,) if net["normalised"] else (), input_std=(0.3,) if net["normalised"] else ())
    gain = 1.0 + (seed % 3)  # larger weights drive more units away from 0 and 1
    weights = {n: gain * p for n, p in init_parameters(spec, seed).items()}
    return spec, weights


def check_bit_exact(client, net, quant, seed, steps, beta):
    """Free and nudged phases on the board equal the Python fixed-point model bit for bit (a CE nudge where the
    board has the integer softmax; a board without it refuses the phase by name)."""
    spec, weights = _random_case(net, quant, seed)
    return check_spec_bit_exact(client, spec, weights, quant, seed, steps, beta)


def check_spec_bit_exact(client, spec, weights, quant, seed, steps, beta):
    """``check_bit_exact`` for a given network and weights."""
    target = SerialTarget(spec, client=client, quant=quant)
    target.program(weights)
    fp = FixedPointNetwork.from_quant(target.quant)
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 40, (), generator=gen))
    x = torch.rand(batch, *spec.input_shape, generator=gen)
    y = torch.randint(0, spec.classes, (batch,), generator=gen)
    free = target.relax(x, steps)
    golden = fp.relax(fp.encode_input(x), steps)
    assert [torch.equal(a, b) for a, b in zip(_states_ints(free, fp.state_frac), golden.states)] == \
        [True] * spec.num_state_layers
    # the board's scores are exact; the target returns them as float32, which rounds scores past 2^24
    assert torch.equal(free.logits, (golden.scores.double() * 2.0 ** -fp.score_frac).float())
    if spec.output == "ce" and not target.info.capabilities & Capability.CE_NUDGE:
        with pytest.raises(TargetError, match="capability 8"):
            target.relax(x, steps, beta, y, init=free)
    else:
        nudged = target.relax(x, steps, beta, y, init=free)
        golden_nudged = fp.relax(fp.encode_input(x), steps, beta, y, init=golden.states)
        assert all(torch.equal(a, b) for a, b in zip(_states_ints(nudged, fp.state_frac), golden_nudged.states))
    return fp, golden.states


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 30),
       beta=st.sampled_from([0.5, -0.5, 0.25, 1.0, -0.0625, 0.1]))
def test_host_board_states_equal_the_fixed_point_model(host_client, net, quant, seed, steps, beta):
    check_bit_exact(host_client, net, quant, seed, steps, beta)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 12),
       beta=st.sampled_from([0.5, -0.25]))
def test_every_board_states_equal_the_fixed_point_model(board_client, net, quant, seed, steps, beta):
    check_bit_exact(board_client, net, quant, seed, steps, beta)


def test_every_board_runs_the_ce_nudge_bit_exactly_or_refuses_it(board_client):
    """A fixed CE case on every board: QEMU and the host build nudge bit-exactly, fpga-sim refuses by name."""
    net = {"hidden": [10, 6], "classes": 4, "output": "ce", "tied": False, "update": "alternating",
           "activation": "hard_sigmoid_half", "side": 5, "normalised": True}
    check_bit_exact(board_client, net, {"weight_bits": 8, "state_bits": 8}, 11, 8, -0.5)


def check_packed_equals_dense(client, net, quant, seed, steps):
    """Random sparse integer updates (some clipping) and inputs with a blank background, sent packed and then
    dense to the same board: the same weights (read back and by CRC), versions, saturation counts and states,
    and the weights the host expects."""
    spec, weights = _random_case(net, quant, seed)
    target = SerialTarget(spec, client=client, quant=quant)
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 40, (), generator=gen))
    x = torch.rand(batch, *spec.input_shape, generator=gen)
    x = x * (torch.rand(batch, *spec.input_shape, generator=gen) < 0.5)
    outcomes, sent = [], []
    original = client._send  # every request's first write
    client._send = lambda command, *a, **k: sent.append(command) or original(command, *a, **k)
    try:
        for packed in (True, False):
            client.packed = packed
            target.program(weights)
            image, rng = target.image, np.random.default_rng(seed)
            _, version = client.tensor_crc(image.weight_ids[0])
            saturated, expected = [], {}
            for tid in image.weight_ids:
                values, code = image.tensors[tid]
                info = np.iinfo(T.DTYPES[code])
                bound = (1 << (image.record.weight_bits - 1)) - 1 if code != 2 else int(info.max)
                lo = -bound if code != 2 else int(info.min)
                spread = int(rng.choice([1, 3, bound // 2 + 1]))
                inc = np.where(rng.random(values.size) < rng.random() * 0.4,
                               rng.integers(-spread, spread + 1, values.size), 0)
                sat, version = client.apply_delta(tid, inc, code, version)
                saturated.append(sat)
                expected[tid] = np.clip(values.reshape(-1).astype(np.int64) + inc, lo, bound)
            held = {tid: client.read_tensor(tid, values.size, code).astype(np.int64)
                    for tid, (values, code) in image.tensors.items()}
            crcs = [client.tensor_crc(tid)[0] for tid in sorted(image.tensors)]
            for tid, want in expected.items():
                assert np.array_equal(held[tid], want), tid
            target._forget_board_state()  # inputs sent afresh, packed or dense
            states = _states_ints(target.relax(x, steps), target.fixed_point.state_frac)
            outcomes.append((saturated, held, crcs, states))
    finally:
        client._send, client.packed = original, True
    (sat_p, held_p, crc_p, st_p), (sat_d, held_d, crc_d, st_d) = outcomes
    assert sat_p == sat_d and crc_p == crc_d
    assert all(np.array_equal(held_p[t], held_d[t]) for t in held_p)
    assert all(torch.equal(a, b) for a, b in zip(st_p, st_d))
    return sent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 12))
def test_host_board_packed_transfers_equal_dense_ones(host_client, net, quant, seed, steps):
    check_packed_equals_dense(host_client, net, quant, seed, steps)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=networks, quant=quants, seed=st.integers(0, 10_000), steps=st.integers(1, 8))
def test_every_board_packed_transfers_equal_dense_ones(board_client, net, quant, seed, steps):
    check_packed_equals_dense(board_client, net, quant, seed, steps)


def test_packed_commands_are_used_when_smaller(host_client):
    net = {"hidden": [20], "classes": 4, "output": "mse", "tied": True, "update": "synchronous",
           "activation": "hard_sigmoid", "side": 7, "normalised": False}
    sent = check_packed_equals_dense(host_client, net, W8, 3, 5)
    assert Command.APPLY_DELTA_PACKED in sent and Command.SET_INPUT_PACKED in sent
    assert Command.APPLY_DELTA in sent and Command.SET_INPUT in sent  # the dense half


def test_training_on_a_protocol_1_0_board_equals_the_reference(idx_dataset, tmp_path):
    """A board without the packed commands (``make host-v10``) trains with dense transfers, to the same weights."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("host-v10")
    if not ok:
        pytest.skip(why)
    with launch.HostBoard(legacy=True) as old:
        a = train(config.loads(_board_config(idx_dataset, old.url, epochs=1)), tmp_path / "board", log=lambda s: None)
    b = train(config.loads(_board_config(idx_dataset, None, epochs=1)), tmp_path / "reference", log=lambda s: None)
    assert a["test_accuracy"] == b["test_accuracy"]
    wa, wb = _weights(tmp_path / "board"), _weights(tmp_path / "reference")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_every_board_passes_its_self_tests_trains_like_the_reference_and_survives_a_reset(board_client):
    passed, failed = board_client.self_test()
    assert failed == 0 and passed != 0
    board, ref = _trained_pair(board_client, SMALL, W8, batches=3)
    held, expected = board.board_weights(), ref.effective_params()
    assert all(torch.equal(held[n], expected[n].float()) for n in expected)
    boot_id = board_client.info.boot_id
    assert board_client.reset() != boot_id  # a new boot announces itself with a new boot_id
    x = torch.rand(4, *SMALL.input_shape, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(a, b) for a, b in zip(board.relax(x, 10).states, ref.relax(x, 10).states))
    assert board.report.resets_recovered == 1 and board_client.info.boot_id != boot_id


def test_states_are_not_trivially_equal(host_client):
    """The property above compares states that actually vary (not all 0 or all saturated)."""
    net = {"hidden": [20, 12], "classes": 4, "output": "mse", "tied": True, "update": "synchronous",
           "activation": "hard_sigmoid", "side": 6, "normalised": False}
    fp, states = check_bit_exact(host_client, net, {"weight_bits": 6, "state_bits": 6}, 1, 20, 0.5)
    values = torch.cat([s.flatten() for s in states])
    inside = ((values > 0) & (values < (1 << fp.state_bits) - 1)).double().mean()
    assert inside > 0.2 and len(torch.unique(values)) > 10


def test_a_board_without_the_ce_nudge_runs_ce_free_phases_and_refuses_nudged_ones():
    """A protocol 1.0 board (``make host-v10``) gets a CE record without the nudge's shifts, which it accepts."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("host-v10")
    if not ok:
        pytest.skip(why)
    net = {"hidden": [12], "classes": 4, "output": "ce", "tied": True, "update": "synchronous",
           "activation": "hard_sigmoid", "side": 5, "normalised": False}
    with launch.HostBoard(legacy=True) as old, BoardClient.open(old.url, timeout=2.0) as client:
        assert not client.info.capabilities & Capability.CE_NUDGE
        check_bit_exact(client, net, {"weight_bits": 8, "state_bits": 8}, 4, 10, 0.5)


def test_ce_nudged_states_are_bit_exact_and_moved_by_the_nudge(host_client):
    """The CE nudge on the board (integer softmax) equals the model and changes states the free phase left."""
    net = {"hidden": [20, 12], "classes": 5, "output": "ce", "tied": True, "update": "synchronous",
           "activation": "hard_sigmoid", "side": 6, "normalised": False}
    for beta in (1.0, -0.5):
        fp, free = check_bit_exact(host_client, net, {"weight_bits": 8, "state_bits": 8}, 3, 20, beta)
        spec, _ = _random_case(net, {}, 3)
        gen = torch.Generator().manual_seed(3)
        batch = int(torch.randint(1, 40, (), generator=gen))
        x = torch.rand(batch, *spec.input_shape, generator=gen)
        y = torch.randint(0, spec.classes, (batch,), generator=gen)
        nudged = fp.relax(fp.encode_input(x), 20, beta, y, init=free)
        assert any(not torch.equal(a, b) for a, b in zip(nudged.states, free))


# -- training with the board in the loop ---------------------------------------------------------------------


def _board_config(root, url, epochs=2, extra="", output="mse"):
    text = tiny_config_text(root, "symmetric", epochs=epochs, extra=extra).replace('output = "ce"',
                                                                                    f'output = "{output}"')
    text = text.replace("lr = [0.1, 0.05]", "lr = [0.1, 0.05]").replace("weight_decay = 1e-4", "weight_decay = 0.0")
    text += "\n[quant]\nweight_bits = 8\nstate_bits = 8\n"
    if url:
        text += f'\n[target]\nname = "serial"\nurl = "{url}"\ntimeout = 0.5\n'
    return text


def _weights(run):
    return checkpoint.load(Path(run) / "checkpoints" / "best.pt")["weights"]


@pytest.mark.parametrize("output", ["mse", "ce"])
def test_training_on_the_board_equals_the_fixed_point_model_on_the_reference_target(host_board, idx_dataset,
                                                                                     tmp_path, output):
    """Same seed, same config: the board's states equal the quantized reference's, so the runs are identical
    (for CE both nudge through the integer softmax; the readout's update is the host's on both)."""
    board = config.loads(_board_config(idx_dataset, host_board.url, output=output))
    reference = config.loads(_board_config(idx_dataset, None, output=output))
    a = train(board, tmp_path / "board", log=lambda s: None)
    b = train(reference, tmp_path / "reference", log=lambda s: None)
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_accuracy"] > 0.5
    wa, wb = _weights(tmp_path / "board"), _weights(tmp_path / "reference")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def _trained_pair(client, spec, quant, batches=6, reset_at=None, seed=2):
    """Train ``batches`` EP steps on the board and on the reference target with the same updates."""
    from hwtoolkit.config import EPConfig
    from hwtoolkit.training.estimators import symmetric

    board = SerialTarget(spec, client=client, quant=quant)
    ref = ReferenceTarget(spec, quant=quant)
    weights = init_parameters(spec, seed)
    board.program(weights)
    ref.program(weights)
    estimate = symmetric(EPConfig(beta=0.5, free_steps=10, nudged_steps=6))
    gen = torch.Generator().manual_seed(seed)
    for step in range(batches):
        x = torch.rand(16, *spec.input_shape, generator=gen)
        y = torch.randint(0, spec.classes, (16,), generator=gen)
        for target in (board, ref):
            result = estimate(target, x, y, gen)
            if target is board and reset_at is not None and step == reset_at[0]:
                reset_at[1](board)
            target.apply_update({n: 0.2 * d for n, d in result.direction.items()})
    return board, ref


SMALL = NetworkSpec(input_shape=(1, 5, 5), hidden=(12,), classes=3, output="mse")
W8 = {"weight_bits": 8, "state_bits": 8}


def test_updates_write_only_integer_differences_and_the_board_holds_the_host_weights(host_client):
    board, ref = _trained_pair(host_client, SMALL, W8)
    assert board.report.uploads == 1 and board.report.delta_requests > 0 and board.report.saturated == 0
    assert board.verify() == []
    held = board.board_weights()
    expected = ref.effective_params()
    assert all(torch.equal(held[n], expected[n].float()) for n in expected)
    shadow, ref_shadow = board.read_weights(), ref.read_weights()
    assert all(torch.equal(shadow[n], ref_shadow[n]) for n in shadow)


def _reset_between_chunks(board):
    """A board reset in the middle of an update: once the first APPLY_DELTA of the next update is answered
    (the next request is encoded by then)."""
    _reset_after_first_chunk(board)


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("when", ["before_update", "inside_update"])
def test_a_board_reset_is_repaired_without_losing_or_repeating_updates(host_client, when, output):
    """A reset loses the CONFIGURE record (for CE: its nudge and softmax shifts); the repair sends it again."""
    reset = (lambda board: board.client.reset()) if when == "before_update" else _reset_between_chunks
    spec = dataclasses.replace(SMALL, output=output)
    board, ref = _trained_pair(host_client, spec, W8, reset_at=(2, reset))
    assert board.report.resets_recovered == 1 and board.report.uploads == 2
    held, expected = board.board_weights(), ref.effective_params()
    assert all(torch.equal(held[n], expected[n].float()) for n in expected)
    shadow, ref_shadow = board.read_weights(), ref.read_weights()  # every nudged phase after the reset was equal
    assert all(torch.equal(shadow[n], ref_shadow[n]) for n in shadow)


WIDE = NetworkSpec(input_shape=(1, 5, 5), hidden=(128,), classes=3, output="mse")  # W1 takes two payloads
# W1 takes two packed chunks (a packed tensor decodes to at most 8 x 2048 bytes)
WIDER = NetworkSpec(input_shape=(1, 5, 5), hidden=(700,), classes=3, output="mse")
DELTAS = (Command.APPLY_DELTA, Command.APPLY_DELTA_PACKED)


def _reset_after_first_chunk(board):
    """A board reset between the first two APPLY_DELTA chunks (of one tensor where it takes two)."""
    original, fired = board.client._finish, []  # where a request's answer arrives

    def finish(sent):
        out = original(sent)
        if sent.command in DELTAS and not fired:
            fired.append(True)
            board.client.reset()
        return out
    board.client._finish = finish


def _lose_first_delta_response(board):
    """The board applies an APPLY_DELTA but its response is lost: the client resends, the board replays."""
    original, fired = board.client._await, []

    def await_(seq, command, *args, **kw):
        out = original(seq, command, *args, **kw)
        if command in DELTAS and out is not None and not fired:
            fired.append(True)
            return None
        return out
    board.client._await = await_


def _versions(client, sent):
    """Log the weights versions requests name: APPLY_DELTA's expected one (+1 once applied), COMMIT's."""
    original = client._send  # every request's first write

    def send(command, payload=b"", *args, **kw):
        if command in DELTAS:
            sent.append(("delta", (struct.unpack_from("<I", payload, 2)[0] + 1) & 0xFFFFFFFF))
        elif command == Command.COMMIT_WEIGHTS:
            sent.append(("commit", struct.unpack_from("<I", payload, 6)[0]))
        return original(command, payload, *args, **kw)
    client._send = send


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("fault", [_reset_after_first_chunk, _lose_first_delta_response])
def test_a_tensor_written_in_chunks_survives_a_reset_or_a_lost_response(host_client, fault, packed):
    sent = []
    _versions(host_client, sent)
    host_client.packed = packed
    before = dict(host_client.stats.commands)
    try:
        board, ref = _trained_pair(host_client, WIDER if packed else WIDE, W8, batches=4, reset_at=(1, fault))
    finally:
        host_client.packed = True
        for name in ("_send", "_finish", "_await"):
            host_client.__dict__.pop(name, None)
    used = {c: host_client.stats.commands.get(c, 0) - before.get(c, 0) for c in DELTAS}
    assert (used[Command.APPLY_DELTA_PACKED] > 0) == packed
    commits = [v for kind, v in sent if kind == "commit"]
    deltas = [v for kind, v in sent if kind == "delta"]
    assert len(set(commits) & set(deltas)) == 0, "a weights version was used twice"
    held, expected = board.board_weights(), ref.effective_params()
    assert all(torch.equal(held[n], expected[n].float()) for n in expected)
    assert board.verify() == []
    if fault is _lose_first_delta_response:
        assert host_client.stats.timeouts >= 1 and host_client.get_status().replays >= 1


def test_a_reset_whose_response_is_lost_still_reports_the_new_boot(host_client):
    original, dropped = host_client._await, []

    def await_(seq, command, *args, **kw):
        out = original(seq, command, *args, **kw)
        if command == Command.RESET and out is not None and not dropped:
            dropped.append(True)
            return None
        return out
    host_client._await = await_
    before = host_client.hello().boot_id
    try:
        after = host_client.reset()
    finally:
        del host_client._await
    assert dropped and after != before and host_client.hello().boot_id == after


def test_a_free_phase_of_another_batch_does_not_replace_the_states_a_nudged_phase_starts_from(host_client):
    board = SerialTarget(SMALL, client=host_client, quant=W8, max_batch=4)
    ref = ReferenceTarget(SMALL, quant=W8)
    weights = init_parameters(SMALL, 3)
    board.program(weights)
    ref.program(weights)
    gen = torch.Generator().manual_seed(0)
    x, other = torch.rand(4, 1, 5, 5, generator=gen), torch.rand(10, 1, 5, 5, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    free_board, free_ref = board.relax(x, 10), ref.relax(x, 10)
    board.relax(other, 10)  # three chunks, each overwriting the board's FREE snapshot
    nudged_board = board.relax(x, 6, 0.5, y, init=free_board)
    nudged_ref = ref.relax(x, 6, 0.5, y, init=free_ref)
    assert all(torch.equal(a, b) for a, b in zip(nudged_board.states, nudged_ref.states))


def test_rows_that_nearly_fill_a_payload_are_read_back(host_client):
    # three rows of 681 states are 2043 bytes: they fit a payload, but not with the 7-byte tensor header
    spec = NetworkSpec(input_shape=(1, 4, 4), hidden=(681,), classes=2, output="mse")
    board, ref = SerialTarget(spec, client=host_client, quant=W8), ReferenceTarget(spec, quant=W8)
    weights = init_parameters(spec, 0)
    board.program(weights)
    ref.program(weights)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(board.relax(x, 4).states, ref.relax(x, 4).states))


def test_weights_changed_behind_the_hosts_back_are_found_and_repaired(host_client):
    board, ref = _trained_pair(host_client, SMALL, W8, batches=2)
    values, code = board._image.tensors[tensor_id(1, 0)]
    tampered = values.copy()
    tampered[0] = -tampered[0] if tampered[0] else 5
    host_client.write_tensor(tensor_id(1, 0), tampered, code)
    host_client.commit_tensor(tensor_id(1, 0), tampered, code, board._version)
    assert board.verify() == [tensor_id(1, 0)]
    board.verify_every = 1
    board.apply_update({})
    assert board.report.repairs == 1 and board.verify() == []


def test_a_stale_weights_version_is_repaired_by_writing_every_weight(host_client):
    board, _ = _trained_pair(host_client, SMALL, W8, batches=1)
    values, code = board._image.tensors[tensor_id(1, 1)]
    host_client.apply_delta(tensor_id(1, 1), np.ones_like(values), code, board._version)  # another writer
    uploads = board.report.uploads
    board.apply_update({"b1": torch.full((12,), 0.5)})
    assert board.report.repairs == 1 and board.report.uploads == uploads + 1 and board.verify() == []


# -- errors ----------------------------------------------------------------------------------------------------


def test_configuration_errors_name_what_is_wrong(host_board, host_client, idx_dataset):
    with pytest.raises(config.ConfigError, match="quant"):
        config.loads(_board_config(idx_dataset, host_board.url).split("[quant]")[0]
                     + f'\n[target]\nname = "serial"\nurl = "{host_board.url}"\n')
    with pytest.raises(TargetError, match="target.url is required"):
        SerialTarget(SMALL, quant=W8)
    with pytest.raises(TargetError, match="no board answered"):
        SerialTarget(SMALL, url="/dev/nonexistent-board", quant=W8)
    with pytest.raises(TargetError, match="fixed-point network"):
        SerialTarget(SMALL, client=host_client, quant={"weight_bits": 8, "state_bits": 8, "scale": "float"})
    conv = NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(4, 1, pool="avg", pool_size=3),), classes=3,
                       output="mse")
    with pytest.raises(TargetError, match=r"cannot hold .*pool_size = 3 .* power of two"):
        SerialTarget(conv, client=host_client, quant=W8)
    ce = NetworkSpec(input_shape=(1, 5, 5), hidden=(8,), classes=3, output="ce")
    target = SerialTarget(ce, client=host_client, quant=W8)
    with pytest.raises(TargetError, match="holds no weights"):
        target.relax(torch.rand(2, 1, 5, 5), 5)
    target.program(init_parameters(ce, 0))
    target.info = dataclasses.replace(target.info, capabilities=target.info.capabilities & ~Capability.CE_NUDGE)
    with pytest.raises(TargetError, match="needs a board with the CE nudge"):
        target.relax(torch.rand(2, 1, 5, 5), 5, 0.5, torch.tensor([0, 1]))
    with pytest.raises(TargetError, match="steps"):
        target.relax(torch.rand(2, 1, 5, 5), 0)
    with pytest.raises(TargetError, match="max_batch"):
        SerialTarget(ce, client=host_client, quant=W8, max_batch=-1)
    mse = SerialTarget(SMALL, client=host_client, quant=W8)
    with pytest.raises(TargetError, match="holds no weights"):
        mse.verify()
    with pytest.raises(TargetError, match="holds no weights"):
        mse.board_weights()
    mse.program(init_parameters(SMALL, 0))
    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(TargetError, match="no samples"):
        mse.relax(x[:0], 5)
    with pytest.raises(TargetError, match=r"class indices in \[0, 3\)"):
        mse.relax(x, 5, 0.5, torch.tensor([0, 3]))
    with pytest.raises(TargetError, match="class indices"):
        mse.relax(x, 5, 0.5, torch.eye(3)[:2])
    with pytest.raises(TargetError, match="must not be 0"):
        mse.relax(x, 5, 1e-6, torch.tensor([0, 1]))
    with pytest.raises(TargetError, match="i32"):
        mse.relax(x, 5, 1e5, torch.tensor([0, 1]))
    many = NetworkSpec(input_shape=(1, 5, 5), hidden=(4,), classes=300, output="mse")
    with pytest.raises(TargetError, match="at most 256 classes"):
        SerialTarget(many, client=host_client, quant=W8)


def test_batches_larger_than_the_board_holds_are_relaxed_in_chunks(host_client):
    spec, quant = SMALL, W8
    board = SerialTarget(spec, client=host_client, quant=quant, max_batch=7)
    ref = ReferenceTarget(spec, quant=quant)
    weights = init_parameters(spec, 5)
    board.program(weights)
    ref.program(weights)
    x = torch.rand(30, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))
    a, b = board.relax(x, 12), ref.relax(x, 12)
    assert all(torch.equal(s, t) for s, t in zip(a.states, b.states))
    a2, b2 = board.relax(x, 6, 0.5, y, init=a), ref.relax(x, 6, 0.5, y, init=b)
    assert all(torch.equal(s, t) for s, t in zip(a2.states, b2.states))
    assert torch.equal(a.residual, b.residual)


# -- a killed host resumes from its checkpoint ------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "hwtoolkit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_host_resumes_to_the_same_weights(host_board, idx_dataset, tmp_path):
    """SIGKILL the training process while it drives the board, resume it; the weights equal an unbroken run."""
    cfg_file = tmp_path / "board.toml"
    cfg_file.write_text(_board_config(idx_dataset, host_board.url, epochs=3).replace("hidden = [16]", "hidden = [64]"))
    full, killed = tmp_path / "full", tmp_path / "killed"
    run = _cli("train", str(cfg_file), "--out", str(full), "--no-progress")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    proc = _cli("train", str(cfg_file), "--out", str(killed), "--no-progress")
    deadline, state = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = killed / "checkpoints" / "last.pt"
        if ckpt.exists():
            state = checkpoint.load(ckpt)
            if state["epoch"] >= 1 and state["batch"] > 0:
                break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert state is not None and state["batch"] > 0, "the run finished before it could be killed mid-epoch"
    resumed = _cli("train", str(cfg_file), "--out", str(killed), "--resume", "--no-progress")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    a, b = _weights(full), _weights(killed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((killed / "summary.json").read_text())["test_accuracy"] == \
        json.loads((full / "summary.json").read_text())["test_accuracy"]


# -- the command line -----------------------------------------------------------------------------------------


def test_cli_trains_with_the_board_and_greets_it(host_board, idx_dataset, tmp_path, capsys):
    from hwtoolkit.cli import main

    cfg_file = tmp_path / "board.toml"
    cfg_file.write_text(_board_config(idx_dataset, None, epochs=1))
    assert main(["train", str(cfg_file), "--target", "serial", "--set", f"target.url={json.dumps(host_board.url)}",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["target"] == "serial" and summary["test_accuracy"] > 0.4
    capsys.readouterr()
    assert main(["board", host_board.url, "--self-test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hello"]["protocol_major"] == 1 and report["self_test"]["failed"] == "0x00000000"
    assert "UNTIED" in report["hello"]["capabilities"]
    assert main(["board", str(tmp_path / "no-such-port")]) == 2
    assert "no-such-port" in capsys.readouterr().err
