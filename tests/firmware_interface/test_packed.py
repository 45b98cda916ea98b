"""Packed tensors (protocol 1.1, docs/board_protocol.md section 4.1): the codec, and the firmware's
APPLY_DELTA_PACKED and SET_INPUT_PACKED against their dense twins, through hand-made frames.

The firmware's decoder is held to the Python reference decoder (``firmware_interface.packed.decode``) and to
the dense commands: the same increments packed or dense leave the same weights, the same version, the same
saturation count; the same inputs packed or dense relax to the same states. A board built without them
(``make host-v10``, protocol 1.0) answers them with UNKNOWN_COMMAND and still trains.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_interface import packed as P
from firmware_interface.launch import HostBoard, toolchain_available
from firmware_interface.tensor import DTYPES, TensorError

from tests.firmware_interface.test_firmware import (BAD_ARG, BAD_LENGTH, DELTA, I8, I32, OK, OUT_OF_RANGE, READ,
                                                    READ_STATES, RELAX, SATURATED, SET_INPUT, STALE, TENSOR_CRC, U8,
                                                    UNKNOWN, Link, frame, program_small, tensor, uncobs, untensor)

DELTA_PACKED, INPUT_PACKED = 0x11, 0x12
HOST_OK, HOST_WHY = toolchain_available("host")
needs_host = pytest.mark.skipif(not HOST_OK, reason=HOST_WHY)


# -- the codec ----------------------------------------------------------------------------------------------

@st.composite
def arrays(draw):
    code = draw(st.sampled_from(sorted(DTYPES)))
    info = np.iinfo(DTYPES[code])
    n = draw(st.integers(0, 400))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]))
    big = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(int(info.min), int(info.max) + 1, n) if big else rng.integers(-4, 5, n)
    values = np.where(rng.random(n) < density, np.clip(values, info.min, info.max), 0).astype(DTYPES[code])
    width = draw(st.integers(1, 40))
    return values, code, width


@settings(max_examples=300, deadline=None)
@given(case=arrays(), predictor=st.sampled_from([P.PRED_NONE, P.PRED_PREV, P.PRED_MED]))
def test_encode_decode_round_trip(case, predictor):
    values, code, width = case
    try:
        enc = P.encode(values, code, predictor, width if predictor == P.PRED_MED else 0)
    except TensorError:  # a difference beyond 32 bits (i32 values with a predictor)
        assert code == 2 and predictor != P.PRED_NONE
        return
    got, got_code = P.decode(enc)
    assert got_code == code and got.dtype == DTYPES[code] and np.array_equal(got, values)
    best = P.encode_best(values, code, width)
    assert len(best) <= len(enc) and np.array_equal(P.decode(best)[0], values)


def test_sparse_increments_and_images_shrink():
    rng = np.random.default_rng(0)
    inc = np.where(rng.random(12544) < 0.15, rng.choice([-1, 1], 12544), 0)
    assert len(P.encode(inc, 0)) < 12544 / 5
    image = np.zeros((14, 14), int)
    image[3:12, 4:10] = rng.integers(100, 256, (9, 6))
    assert len(P.encode_best(np.tile(image.reshape(1, -1), (16, 1)), 3, 14)) < 0.8 * 16 * 196


def test_encoding_is_exact_to_the_byte():
    """The spec's worked example (docs/board_protocol.md, section 4.1)."""
    enc = P.encode(np.array([0, 0, 3, -1, 0, 0, 0, 0, 2], np.int8), 0)
    assert enc.hex() == EXAMPLE_HEX
    assert np.array_equal(P.decode(enc)[0], [0, 0, 3, -1, 0, 0, 0, 0, 2])


EXAMPLE_HEX = "0000010900010001000000010001009880e380"


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=80), flip=st.integers(0, 10_000))
def test_random_and_mutated_packed_tensors_raise_only_tensor_errors(data, flip):
    """Fuzzing the new fields: random bytes, and a valid packed tensor with one bit flipped or cut short."""
    good = bytearray(P.encode(np.array([0, 0, 3, -1, 0, 0, 0, 0, 2, 7, 0, 0, 0, -9], np.int8), 0, P.PRED_PREV))
    good[flip % len(good)] ^= 1 << (flip % 8)
    for payload in (data, bytes(good), bytes(good[:flip % len(good)])):
        try:
            values, code = P.decode(payload, max_bytes=1 << 14)
        except TensorError:
            continue
        assert values.dtype == DTYPES[code] and values.size * values.itemsize <= 1 << 14
        assert np.array_equal(P.decode(P.encode(values, code))[0], values)


@pytest.mark.parametrize("mutate", [
    lambda b: b[:2],  # header cut short
    lambda b: b[:14],
    lambda b: bytes([9]) + b[1:],  # dtype
    lambda b: b[:1] + bytes([4]) + b[2:],  # flags
    lambda b: b[:1] + bytes([2]) + b[2:],  # MED without a width
    lambda b: b[:5] + bytes([32]) + b[6:],  # k > 31
    lambda b: b[:8] + bytes([1]) + b[9:],  # reserved
    lambda b: b + b"\x00",  # an unused byte
    lambda b: b[:-1],  # a value cut off
    lambda b: b[:-1] + bytes([b[-1] | 1]),  # nonzero padding
    lambda b: b[:3] + struct.pack("<H", 5) + b[5:],  # shape shorter than the runs
])
def test_malformed_packed_tensors_are_refused(mutate):
    good = P.encode(np.array([0, 0, 3, -1, 0, 0, 0, 0, 2], np.int8), 0)
    with pytest.raises(TensorError):
        P.decode(mutate(good))


# -- the firmware -------------------------------------------------------------------------------------------

@pytest.fixture
def board():
    if not HOST_OK:
        pytest.skip(HOST_WHY)
    with HostBoard(device_id=0xC0FFEE, max_batch=32) as b:
        yield b


@pytest.fixture
def link(board):
    import serial

    with serial.Serial(board.url, timeout=0.05) as port:
        yield Link(port)


@pytest.fixture
def twins():
    """Two boards (links), for the same requests dense on one and packed on the other."""
    if not HOST_OK:
        pytest.skip(HOST_WHY)
    import serial

    with HostBoard(max_batch=32) as a, HostBoard(max_batch=32) as b, \
            serial.Serial(a.url, timeout=0.05) as pa, serial.Serial(b.url, timeout=0.05) as pb:
        yield Link(pa), Link(pb)


def delta(tid, version, offset, payload, dense=True):
    return DELTA if dense else DELTA_PACKED, struct.pack("<BBII", tid, 0, version, offset) + payload


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 6))
def test_packed_and_dense_deltas_leave_the_same_weights(twins, seed, steps):
    """Random sparse increments (some clipping at the 6-bit range) to every weight tensor of SMALL."""
    rng = np.random.default_rng(seed)
    dense, packed = twins
    for link in twins:
        link.hello()
        program_small(link, np.random.default_rng(seed))
    sizes = {0: (I8, 30), 1: (I32, 6), 4: (I8, 18), 5: (I32, 3)}
    version = 7
    for _ in range(steps):
        tid = int(rng.choice(list(sizes)))
        code, size = sizes[tid]
        offset = int(rng.integers(0, size))
        n = int(rng.integers(1, size - offset + 1))
        limit = 40 if code == I8 else 2**20
        inc = np.where(rng.random(n) < rng.random(), rng.integers(-limit, limit + 1, n), 0)
        inc[rng.integers(0, n)] = int(rng.integers(1, limit))  # not all zero
        predictor = int(rng.integers(0, 3)) if code == I8 else 0
        a = dense.call(*delta(tid, version, offset, tensor(code, inc)), expect=None)
        b = packed.call(*delta(tid, version, offset, P.encode(inc, code, predictor, 4 if predictor == 2 else 0),
                               dense=False), expect=None)
        assert a == b and a[0] in (OK, SATURATED)
        version += 1
    for tid in (0, 1, 3, 4, 5, 7):
        assert dense.call(TENSOR_CRC, bytes([tid]))[1] == packed.call(TENSOR_CRC, bytes([tid]))[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["sparse", "escape", "wide"]),
       damage=st.sampled_from(["none", "flip", "cut"]), at=st.integers(0, 10_000))
def test_the_firmware_decodes_exactly_what_the_python_decoder_does(twins, seed, mode, damage, at):
    """Valid, bit-flipped and cut-short packed increments (sparse ones; small values with an outlier, whose
    Rice code escapes; values over the whole range, whose k bits cross bytes): the board accepts one iff
    ``packed.decode`` does, and then applies what the dense twin applies of the decoded values."""
    rng = np.random.default_rng(seed)
    dense, packed = twins
    for link in twins:
        link.hello()
        program_small(link, np.random.default_rng(seed))
    n = int(rng.integers(16 if mode == "escape" else 1, 31))
    scale, density = {"sparse": (40, rng.random()), "escape": (1, 0.9), "wide": (127, 1.0)}[mode]
    inc = np.where(rng.random(n) < density, rng.integers(-scale, scale + 1, n), 0)
    if mode == "escape":
        inc[rng.integers(0, n)] = int(rng.choice([-128, 127]))
    predictor = int(rng.integers(0, 3))
    data = bytearray(P.encode(inc.astype(np.int8), I8, predictor, int(rng.integers(1, 8)) if predictor == 2 else 0))
    if damage == "flip":
        data[at % len(data)] ^= 1 << (at % 8)
    elif damage == "cut":
        data = data[:at % len(data)]
    try:
        values, code = P.decode(bytes(data), max_bytes=1 << 14)
    except TensorError:
        values = None
    before = packed.call(TENSOR_CRC, b"\x00")[1]
    status, _ = packed.call(*delta(0, 7, 0, bytes(data), dense=False), expect=None)
    if values is None:
        assert status in (BAD_ARG, BAD_LENGTH, OUT_OF_RANGE)
        assert packed.call(TENSOR_CRC, b"\x00")[1] == before
    else:
        twin, _ = dense.call(*delta(0, 7, 0, tensor(code, values)), expect=None)
        assert status == twin
        for tid in (0, 1, 3, 4, 5, 7):
            assert dense.call(TENSOR_CRC, bytes([tid]))[1] == packed.call(TENSOR_CRC, bytes([tid]))[1]


def test_packed_inputs_relax_to_the_same_states(twins):
    rng = np.random.default_rng(5)
    x = np.where(rng.random((4, 5)) < 0.5, rng.integers(0, 16, (4, 5)), 0)
    for link, payload in zip(twins, (tensor(U8, x), P.encode(x, U8, P.PRED_MED, 5))):
        link.hello()
        program_small(link, np.random.default_rng(5))
        link.call(SET_INPUT if link is twins[0] else INPUT_PACKED, struct.pack("<HH", 4, 0) + payload)
        link.call(RELAX, struct.pack("<BBHiI", 0, 0, 6, 0, 0xFFFFFFFF))
    states = [untensor(link.call(READ_STATES, struct.pack("<BBHH", 0, 1, 0, 4))[1]) for link in twins]
    assert np.array_equal(*states) and states[0].any()


def test_packed_delta_replay_applies_once_and_stale_applies_nothing(link):
    link.hello()
    tensors = program_small(link, np.random.default_rng(0))
    inc = np.zeros(30, int)
    inc[[2, 9, 10]] = [1, -2, 3]
    req = frame(900, DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + P.encode(inc, I8))
    link.send_raw(req)
    first = link.recv()
    link.send_raw(req)
    assert link.recv() == first and uncobs(first)[5] == OK
    link.seq = 900
    crc, version = struct.unpack("<II", link.call(TENSOR_CRC, b"\x00")[1])
    expected = tensors[0][1] + inc
    assert version == 8 and crc == zlib.crc32(expected.astype("<i1").tobytes())
    assert link.status()["replays"] == 1
    status, payload = link.call(*delta(0, 7, 0, P.encode(inc, I8), dense=False), expect=STALE)
    assert struct.unpack("<I", payload) == (8,)
    got = untensor(link.call(READ, struct.pack("<BBIH", 0, 0, 0, 30))[1])
    assert np.array_equal(got, expected)


def _valid():
    return P.encode(np.array([0, 0, 3, -1, 0, 0, 0, 0, 2], np.int8), 0)


BAD_PACKED = [
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:2], BAD_LENGTH, None),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:12], BAD_LENGTH, None),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0), BAD_LENGTH, None),
    (DELTA_PACKED, struct.pack("<BBII", 0, 1, 7, 0) + _valid(), BAD_ARG, 1),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + bytes([9]) + _valid()[1:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:1] + b"\x03" + _valid()[2:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:1] + b"\x02" + _valid()[2:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:5] + b"\x20" + _valid()[6:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:8] + b"\x01" + _valid()[9:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid() + b"\x00", BAD_ARG, 4),  # an unused byte
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:-1], BAD_ARG, 4),  # a value cut off
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:-1] + b"\x81", BAD_ARG, 4),  # padding
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:3] + b"\x05\x00" + _valid()[5:], BAD_ARG, 4),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + _valid()[:11] + b"\x09\x00" + _valid()[13:], BAD_LENGTH,
     None),  # stream lengths beyond the payload
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 0) + P.encode(np.zeros(16385, np.int8), 0), OUT_OF_RANGE, None),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 7, 25) + _valid(), OUT_OF_RANGE, None),  # past W_1's 30
    (DELTA_PACKED, struct.pack("<BBII", 1, 0, 7, 0) + P.encode(np.array([1], np.int8), 0), BAD_ARG, 4),  # i32
    (DELTA_PACKED, struct.pack("<BBII", 3, 0, 7, 0) + P.encode(np.array([1], np.uint8), 3), BAD_ARG, 0),
    (DELTA_PACKED, struct.pack("<BBII", 0, 0, 6, 0) + _valid(), STALE, None),
    (INPUT_PACKED, struct.pack("<HH", 2, 0) + P.encode(np.array([[1, 0, 0, 2, 3]], np.uint8), 3), OK, None),
    (INPUT_PACKED, struct.pack("<HH", 2, 0) + P.encode(np.array([[1, 0, 0, 2, 16]], np.uint8), 3), OUT_OF_RANGE,
     None),  # 4-bit inputs
    (INPUT_PACKED, struct.pack("<HH", 2, 0) + P.encode(np.array([1, 0, 0, 2, 3], np.uint8), 3), BAD_ARG, 2),
    (INPUT_PACKED, struct.pack("<HH", 5, 0) + P.encode(np.array([[1, 0, 0, 2, 3]], np.uint8), 3), OUT_OF_RANGE,
     None),  # max_batch 4
    (INPUT_PACKED, struct.pack("<HH", 2, 0) + P.encode(np.array([[1, 0, 0, 2, 3]], np.int8), 0), BAD_ARG, 2),
    (INPUT_PACKED, struct.pack("<HH", 2, 0) + P.encode(np.array([[1, 200, 0, 2, 3]], np.uint8), 3, P.PRED_PREV)[:-1],
     BAD_ARG, 2),
    (INPUT_PACKED, b"\x02\x00", BAD_LENGTH, None),
]


def test_packed_commands_check_their_arguments_and_change_nothing(link):
    link.hello()
    program_small(link, np.random.default_rng(2))
    reference = [link.call(TENSOR_CRC, bytes([t]))[1] for t in (0, 1, 3, 4, 5, 7)]
    for cmd, payload, status, field in BAD_PACKED:
        st, out = link.call(cmd, payload, expect=None)
        assert st == status, (cmd, payload.hex(), st, status)
        if status == BAD_ARG:
            assert out == bytes([field]), (cmd, payload.hex(), out)
        elif status == STALE:
            assert out == struct.pack("<I", 7)
        elif status != OK:
            assert out == b"", (cmd, out)
    assert [link.call(TENSOR_CRC, bytes([t]))[1] for t in (0, 1, 3, 4, 5, 7)] == reference


@needs_host
def test_a_protocol_1_0_board_has_no_packed_commands():
    import serial

    with HostBoard(legacy=True) as board, serial.Serial(board.url, timeout=0.05) as port:
        link = Link(port)
        h = link.hello()
        assert (h["major"], h["minor"], h["caps"]) == (1, 0, 0x7F)
        program_small(link, np.random.default_rng(0))
        link.call(*delta(0, 7, 0, _valid(), dense=False), expect=UNKNOWN)
        link.call(INPUT_PACKED, struct.pack("<HH", 1, 0) + P.encode(np.ones((1, 5), np.uint8), 3), expect=UNKNOWN)
        assert struct.unpack("<II", link.call(TENSOR_CRC, b"\x00")[1])[1] == 7  # nothing applied
        link.call(*delta(0, 7, 0, tensor(I8, [1, 2])))


# -- the client: packed where the board offers it, dense otherwise --------------------------------------------

@needs_host
@pytest.mark.parametrize("legacy,packed", [(False, True), (False, False), (True, True)])
def test_client_falls_back_to_dense_commands(legacy, packed):
    """A new host and a 1.0 board, an old (packed=False) host and a 1.1 board: the same weights as packed."""
    from firmware_interface.client import BoardClient, tensor_crc
    from firmware_interface.protocol import Capability, Command
    from benchmarks.board_faults import NETWORK

    with HostBoard(legacy=legacy) as board, BoardClient.open(board.url, timeout=0.5) as client:
        client.packed = packed
        assert bool(client.info.capabilities & Capability.PACKED) != legacy
        assert client.uses_packed == (packed and not legacy)
        client.configure(NETWORK.pack())
        weights = np.zeros(30, np.int64)
        client.write_tensor(0, weights, 0)
        client.commit_tensor(0, weights, 0, 1)
        rng = np.random.default_rng(1)
        version = 1
        for _ in range(5):
            inc = np.where(rng.random(30) < 0.2, rng.integers(-3, 4, 30), 0)
            inc[0] = 1
            _, version = client.apply_delta(0, inc, 0, version)
            weights += inc
        x = np.zeros((4, 5), np.int64)
        x[1, 2], x[2, 2] = 200, 190  # mostly background: packed is smaller
        client.set_input(x, 3, width=5)
        assert client.tensor_crc(0) == (tensor_crc(weights, 0), 6)
        assert np.array_equal(client.read_tensor(0, 30, 0), weights)
        sent = client.stats.commands
        used_packed = Command.APPLY_DELTA_PACKED in sent and Command.SET_INPUT_PACKED in sent
        assert used_packed == (packed and not legacy)
        assert (Command.APPLY_DELTA in sent) == (not used_packed)


@needs_host
def test_a_request_that_fails_to_encode_lets_the_one_in_flight_finish_first():
    """The client draws (encodes) each next request while the board reads the current one: an error in the
    drawing goes up only once the request in flight is answered, so nothing is left unanswered on the link."""
    from firmware_interface.client import BoardClient
    from firmware_interface.protocol import Command

    answered = []

    def requests():
        yield Command.PING, b"first", answered.append
        raise TensorError("the next request cannot be encoded")

    with HostBoard() as board, BoardClient.open(board.url, timeout=0.5) as client:
        with pytest.raises(TensorError, match="cannot be encoded"):
            client._in_turn(requests())
        assert [r.payload for r in answered] == [b"first"]
        assert client.ping(b"next") == b"next" and client.stats.retries == 0 and client.stats.discarded == 0
