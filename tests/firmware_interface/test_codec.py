"""The board protocol's codec (COBS, frames, the stream receiver, tensors, records) and the fault-injecting port.

Property tests run derandomized (a fixed example sequence) with no example database, so every run is the same.
"""

import math
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_interface import cobs
from firmware_interface import tensor as T
from firmware_interface.faults import FaultConfig, FaultCounts, FaultyPort
from firmware_interface.frame import (HEADER, HOST_MAX_PAYLOAD, OVERHEAD, PROTOCOL_MAJOR, Frame, FrameError,
                                      FrameReceiver, Kind, parse_body)
from firmware_interface.protocol import (BoardStatus, Capability, HelloInfo, LayerRecord, NetworkRecord,
                                         tensor_id)

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

nonzero = st.binary(min_size=1, max_size=1).filter(lambda b: b != b"\x00")


def nonzero_bytes(n: int, seed: int = 0) -> bytes:
    return bytes(np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- COBS

@PROPERTY
@given(st.binary(max_size=3000))
def test_cobs_round_trip_without_zero_bytes(data):
    encoded = cobs.encode(data)
    assert 0 not in encoded
    assert len(encoded) <= cobs.max_encoded_size(len(data))
    assert cobs.decode(encoded) == data


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 507, 508, 509, 762, 2048])
@pytest.mark.parametrize("surround", ["bare", "zero-before", "zero-after", "zeros-around"])
def test_cobs_runs_of_nonzero_bytes(n, surround):
    run = nonzero_bytes(n, n)
    data = {"bare": run, "zero-before": b"\x00" + run, "zero-after": run + b"\x00",
            "zeros-around": b"\x00" + run + b"\x00"}[surround]
    encoded = cobs.encode(data)
    assert 0 not in encoded
    assert cobs.decode(encoded) == data
    if surround == "bare":  # the bound is attained by runs without zeros: it is tight
        assert len(encoded) == cobs.max_encoded_size(n) == n + n // 254 + 1


@pytest.mark.parametrize("n", [0, 1, 2, 254, 255, 1000])
def test_cobs_all_zeros(n):
    encoded = cobs.encode(bytes(n))
    assert encoded == b"\x01" * (n + 1)
    assert cobs.decode(encoded) == bytes(n)


@pytest.mark.parametrize("data, encoded", [
    # the reference vectors of Cheshire & Baker's COBS (as listed on Wikipedia's COBS page)
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
])
def test_cobs_reference_vectors(data, encoded):
    assert cobs.encode(data) == encoded
    assert cobs.decode(encoded) == data


def test_cobs_decodes_the_minimal_form_of_a_254_byte_block():
    """Other encoders end a trailing full block without the final ``0x01``; both forms decode alike."""
    run = bytes(range(1, 255))
    assert cobs.encode(run) == b"\xff" + run + b"\x01"
    assert cobs.decode(b"\xff" + run) == run


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x02\x00", b"\x03\x11", b"\x05\x11\x22\x33", b"\x02\x11\x00\x01",
                                 b"\xff" + bytes(range(1, 100))])
def test_cobs_rejects_invalid_encodings(bad):
    with pytest.raises(cobs.CobsError):
        cobs.decode(bad)


@PROPERTY
@given(st.binary(max_size=600))
def test_cobs_decode_of_arbitrary_bytes_raises_only_cobs_error(data):
    try:
        out = cobs.decode(data)
    except cobs.CobsError:
        return
    assert cobs.decode(cobs.encode(out)) == out


# ---------------------------------------------------------------------------------------------------- frames

def test_crc_check_value():
    assert zlib.crc32(b"123456789") == 0xCBF43926
    body = Frame(Kind.REQUEST, 0x1234, 0x02, 0, b"123456789").body()
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])


frames = st.builds(Frame, kind=st.sampled_from(list(Kind)), seq=st.integers(0, 0xFFFF),
                   command=st.integers(0, 255), status=st.integers(0, 255), payload=st.binary(max_size=700))


@PROPERTY
@given(frames)
def test_frame_layout_and_round_trip(frame):
    wire = frame.encode()
    assert wire.endswith(b"\x00") and wire.count(0) == 1
    body = cobs.decode(wire[:-1])
    assert body == frame.body()
    assert len(wire) <= len(body) + len(body) // 254 + 2  # the spec's bound, delimiter included
    # section 1's table, byte by byte
    assert body[0] == PROTOCOL_MAJOR and body[1] == frame.kind
    assert struct.unpack_from("<H", body, 2)[0] == frame.seq
    assert body[4] == frame.command and body[5] == frame.status
    assert struct.unpack_from("<H", body, 6)[0] == len(frame.payload) == len(body) - 12
    assert body[8:-4] == frame.payload
    assert struct.unpack_from("<I", body, len(body) - 4)[0] == zlib.crc32(body[:-4])
    assert parse_body(body) == frame
    receiver = FrameReceiver()
    assert receiver.feed(wire) == [frame]
    assert receiver.stats.frames == 1


@pytest.mark.parametrize("kwargs", [{"seq": -1}, {"seq": 0x10000}, {"payload": bytes(HOST_MAX_PAYLOAD + 1)}])
def test_frame_refuses_fields_that_do_not_fit(kwargs):
    frame = Frame(**{"kind": Kind.REQUEST, "seq": 1, "command": 2, **kwargs})
    with pytest.raises(FrameError):
        frame.encode()


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_receiver_split_feeding_gives_the_same_frames(frame_list, data):
    stream = b"".join(f.encode() for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    receiver = FrameReceiver()
    out = []
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        out += receiver.feed(stream[start:end])
    assert out == frame_list
    assert receiver.stats.frames == len(frame_list)
    assert (receiver.stats.bad_cobs, receiver.stats.bad_frames, receiver.stats.bad_crc,
            receiver.stats.overflows) == (0, 0, 0, 0)


def test_receiver_keeps_a_partial_frame_until_its_delimiter():
    frame = Frame(Kind.RESPONSE, 7, 2, 0, b"abc")
    wire = frame.encode()
    receiver = FrameReceiver()
    assert receiver.feed(wire[:-1]) == []
    assert receiver.feed(b"\x00") == [frame]
    assert receiver.feed(b"\x00\x00\x00") == []  # empty frames between delimiters are no frames and no errors
    assert receiver.stats.frames == 1 and receiver.stats.bad_frames == 0


def counters(receiver: FrameReceiver) -> tuple[int, int, int, int]:
    s = receiver.stats
    return s.bad_cobs, s.bad_frames, s.bad_crc, s.overflows


GOOD = [Frame(Kind.RESPONSE, 100 + i, 2, 0, bytes([i + 1]) * (i * 7)) for i in range(3)]


def feed_around(bad: bytes, max_payload: int = HOST_MAX_PAYLOAD, pieces: int = 1):
    """Feed a good frame, ``bad``, and two good frames; returns the receiver and what it produced."""
    stream = GOOD[0].encode() + bad + GOOD[1].encode() + GOOD[2].encode()
    receiver = FrameReceiver(max_payload)
    step = max(1, len(stream) // pieces)
    out = []
    for i in range(0, len(stream), step):
        out += receiver.feed(stream[i:i + step])
    return receiver, [x for x in out if isinstance(x, Frame)], [x for x in out if isinstance(x, FrameError)]


def with_crc(body_without_crc: bytes) -> bytes:
    return body_without_crc + struct.pack("<I", zlib.crc32(body_without_crc))


@pytest.mark.parametrize("pieces", [1, 7])
@pytest.mark.parametrize("case, counter", [
    ("code-past-end", 0), ("zero-free-garbage", 0),
    ("short-body", 1), ("empty-body", 1), ("length-too-large", 1), ("length-too-small", 1),
    ("unknown-kind", 1), ("payload-above-max", 1),
    ("payload-bit-flip", 2), ("crc-bit-flip", 2), ("header-bit-flip", 2),
    ("overflow", 3),
])
def test_receiver_rejects_bad_frames_with_the_right_counter_and_recovers(case, counter, pieces):
    max_payload = 64
    frame = Frame(Kind.REQUEST, 9, 2, 0, b"hello, board")
    body = bytearray(frame.body())
    if case == "code-past-end":
        encoded = bytearray(cobs.encode(bytes(body)))
        encoded[0] = 0xFE
        bad = bytes(encoded) + b"\x00"
    elif case == "zero-free-garbage":
        bad = b"\x40" + b"\x41" * 20 + b"\x00"
    elif case == "short-body":
        bad = cobs.encode(bytes(body[:11])) + b"\x00"
    elif case == "empty-body":
        bad = cobs.encode(b"") + b"\x00"
    elif case in ("length-too-large", "length-too-small"):
        struct.pack_into("<H", body, 6, len(frame.payload) + (1 if case == "length-too-large" else -1))
        bad = cobs.encode(with_crc(bytes(body[:-4]))) + b"\x00"
    elif case == "unknown-kind":
        body[1] = 9
        bad = cobs.encode(with_crc(bytes(body[:-4]))) + b"\x00"
    elif case == "payload-above-max":
        # COBS adds one byte per 254: with a large maximum, a payload of zeros one byte too long still fits
        # the receiver's buffer, so it is parsed and refused for its length (a small maximum overflows instead)
        max_payload = 2048
        bad = Frame(Kind.RESPONSE, 3, 2, 0, bytes(max_payload + 1)).encode()
    elif case == "payload-bit-flip":
        body[9] ^= 0x10
        bad = cobs.encode(bytes(body)) + b"\x00"
    elif case == "crc-bit-flip":
        body[-1] ^= 0x80
        bad = cobs.encode(bytes(body)) + b"\x00"
    elif case == "header-bit-flip":
        body[4] ^= 0x01  # the command: the CRC catches it, and the length still matches
        bad = cobs.encode(bytes(body)) + b"\x00"
    else:  # overflow: more nonzero bytes than the longest frame without a delimiter
        limit = cobs.max_encoded_size(max_payload + OVERHEAD)
        bad = nonzero_bytes(limit + 1 + 37) + b"\x00"
    receiver, good, errors = feed_around(bad, max_payload, pieces)
    assert good == GOOD  # every good frame, the one right after the bad one included
    assert len(errors) == 1
    expected = [0, 0, 0, 0]
    expected[counter] = 1
    assert list(counters(receiver)) == expected
    assert receiver.stats.frames == 3
    if counter == 2:  # a bad CRC keeps the header readable (what the board needs for a NAK)
        assert errors[0].header is not None and errors[0].header[2] == 9


def test_receiver_overflow_never_buffers_more_than_the_longest_frame():
    receiver = FrameReceiver(64)
    junk = nonzero_bytes(10_000)
    for i in range(0, len(junk), 100):
        receiver.feed(junk[i:i + 100])
        assert len(receiver._buffer) <= receiver.limit
    assert receiver.stats.overflows == 1  # one overflow per run without a delimiter, not one per chunk
    assert receiver.feed(b"\x00" + GOOD[1].encode()) == [GOOD[1]]


def test_receiver_accepts_the_longest_frame_and_overflows_one_byte_later():
    max_payload = 300
    longest = Frame(Kind.RESPONSE, 1, 2, 0, nonzero_bytes(max_payload, 3))
    wire = longest.encode()
    assert len(wire) - 1 == cobs.max_encoded_size(max_payload + OVERHEAD)  # all nonzero: the bound is attained
    receiver = FrameReceiver(max_payload)
    assert receiver.feed(wire) == [longest]
    too_long = Frame(Kind.RESPONSE, 2, 2, 0, nonzero_bytes(max_payload + 1, 4)).encode()
    out = receiver.feed(too_long + GOOD[0].encode())
    assert receiver.stats.overflows == 1 and out[-1] == GOOD[0]


@PROPERTY
@given(st.lists(frames, min_size=2, max_size=5), st.data())
def test_receiver_truncated_frame_is_dropped_and_the_next_one_survives(frame_list, data):
    index = data.draw(st.integers(0, len(frame_list) - 1))
    wires = [f.encode() for f in frame_list]
    cut = data.draw(st.integers(1, len(wires[index]) - 2))  # keep at least one byte, lose at least one
    wires[index] = wires[index][:cut] + b"\x00"
    receiver = FrameReceiver()
    out = receiver.feed(b"".join(wires))
    assert [x for x in out if isinstance(x, Frame)] == frame_list[:index] + frame_list[index + 1:]
    bad_cobs, bad_frames, bad_crc, overflows = counters(receiver)
    assert bad_cobs + bad_frames == 1 and bad_crc == 0 and overflows == 0


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_receiver_corrupted_byte_never_yields_a_wrong_frame(frame_list, data):
    index = data.draw(st.integers(0, len(frame_list) - 1))
    wire = bytearray(frame_list[index].encode())
    pos = data.draw(st.integers(0, len(wire) - 2))
    wire[pos] ^= data.draw(st.integers(1, 255))
    wires = [f.encode() for f in frame_list]
    wires[index] = bytes(wire)
    receiver = FrameReceiver()
    out = receiver.feed(b"".join(wires))
    good = [x for x in out if isinstance(x, Frame)]
    errors = [x for x in out if isinstance(x, FrameError)]
    assert good == frame_list[:index] + frame_list[index + 1:]
    # a new zero byte cuts the frame in two: at most two errors, each counted exactly once
    assert 1 <= len(errors) <= 2 and sum(counters(receiver)) == len(errors)


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=4), st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_receiver_skips_garbage_between_frames(frame_list, garbage):
    stream = b""
    for i, frame in enumerate(frame_list):
        stream += garbage[i % len(garbage)] + b"\x00" + frame.encode()
    receiver = FrameReceiver()
    out = receiver.feed(stream)
    assert [x for x in out if isinstance(x, Frame)] == frame_list
    segments = sum(1 for g in (garbage[i % len(garbage)] for i in range(len(frame_list)))
                   for piece in g.split(b"\x00") if piece)
    errors = [x for x in out if isinstance(x, FrameError)]
    assert len(errors) <= segments and sum(counters(receiver)) == len(errors)


# ---------------------------------------------------------------------------------------------------- tensors

@st.composite
def tensors(draw):
    code = draw(st.sampled_from(sorted(T.DTYPES)))
    info = np.iinfo(T.DTYPES[code])
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=T.MAX_NDIM)))
    n = math.prod(shape)
    values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
    frac = draw(st.integers(-128, 127))
    return code, frac, np.array(values, np.int64).reshape(shape)


@PROPERTY
@given(tensors())
def test_tensor_round_trip_every_dtype(case):
    code, frac, values = case
    blob = T.encode(values, code, frac)
    assert blob[:3] == struct.pack("<BbB", code, frac, values.ndim)
    assert len(blob) == 3 + 2 * values.ndim + values.size * T.DTYPES[code].itemsize
    t, end = T.decode(blob, expect_code=code)
    assert end == len(blob)
    assert t.code == code and t.frac == frac and t.data.dtype == T.DTYPES[code]
    assert t.data.shape == values.shape and np.array_equal(t.data, values)
    # at an offset, followed by more bytes
    t2, end2 = T.decode(b"xy" + blob + b"tail", 2, exact=False)
    assert end2 == 2 + len(blob) and np.array_equal(t2.data, values)


def test_tensor_little_endian_row_major():
    blob = T.encode(np.array([[1, -2], [0x1234, 5]]), 1, 3)
    assert blob == bytes([1, 3, 2, 2, 0, 2, 0]) + struct.pack("<4h", 1, -2, 0x1234, 5)


@pytest.mark.parametrize("code", sorted(T.DTYPES))
def test_tensor_rejects_values_outside_the_dtype(code):
    info = np.iinfo(T.DTYPES[code])
    T.encode(np.array([info.min, info.max]), code)
    for value in (int(info.min) - 1, int(info.max) + 1):
        with pytest.raises(T.TensorError, match="do not fit"):
            T.encode(np.array([0, value]), code)


@PROPERTY
@given(tensors(), st.integers(-3, 3).filter(lambda d: d != 0))
def test_tensor_rejects_a_wrong_data_length(case, delta):
    code, frac, values = case
    blob = T.encode(values, code, frac)
    changed = blob + bytes(delta) if delta > 0 else blob[:delta]
    if delta < 0 and len(changed) < 3 + 2 * values.ndim:
        pass  # header cut: still an error
    with pytest.raises(T.TensorError):
        T.decode(changed)


def test_tensor_rejects_too_many_dims_bad_codes_and_frac():
    five = np.zeros((1, 1, 1, 1, 1), np.int64)
    with pytest.raises(T.TensorError, match="dimensions"):
        T.decode(T.encode(five, 0))
    with pytest.raises(T.TensorError):
        T.encode(five, 0, max_ndim=T.MAX_NDIM)
    with pytest.raises(T.TensorError, match="dtype"):
        T.decode(bytes([5, 0, 1, 1, 0, 0]))
    with pytest.raises(T.TensorError, match="expected"):
        T.decode(T.encode(np.array([1]), 0), expect_code=1)
    with pytest.raises(T.TensorError):
        T.encode(np.array([1]), 7)
    with pytest.raises(T.TensorError, match="frac"):
        T.encode(np.array([1]), 0, 128)
    with pytest.raises(T.TensorError, match="65535"):
        T.encode(np.zeros(0x10000, np.int64), 0)


@PROPERTY
@given(st.binary(max_size=80))
def test_tensor_decode_of_arbitrary_bytes_raises_only_tensor_error(blob):
    try:
        t, end = T.decode(blob)
    except T.TensorError:
        return
    assert end == len(blob) and t.data.ndim <= T.MAX_NDIM


# ---------------------------------------------------------------------------------------------------- records

hello_infos = st.builds(
    HelloInfo, protocol_major=st.integers(0, 255), protocol_minor=st.integers(0, 255),
    firmware=st.tuples(*[st.integers(0, 255)] * 3), max_payload=st.integers(0, 0xFFFF),
    device_id=st.integers(0, 2**32 - 1), boot_id=st.integers(0, 2**32 - 1),
    capabilities=st.integers(0, 127).map(Capability), arena_size=st.integers(0, 2**32 - 1),
    max_layers=st.integers(0, 0xFFFF), max_units=st.integers(0, 0xFFFF), max_batch=st.integers(0, 0xFFFF),
    max_steps=st.integers(0, 0xFFFF), max_weight_bits=st.integers(0, 255), max_state_bits=st.integers(0, 255),
    max_input_bits=st.integers(0, 255), accumulator_bits=st.integers(0, 255),
    ns_per_mac=st.integers(0, 2**32 - 1), base_latency_us=st.integers(0, 2**32 - 1))


@PROPERTY
@given(hello_infos)
def test_hello_record_layout_and_round_trip(info):
    blob = info.pack()
    assert len(blob) == 44
    assert HelloInfo.unpack(blob) == info
    # section 5's HELLO record, field by field at its offsets
    assert blob[0:5] == bytes([info.protocol_major, info.protocol_minor, *info.firmware]) and blob[5] == 0
    assert struct.unpack_from("<HIIII", blob, 6) == (info.max_payload, info.device_id, info.boot_id,
                                                     int(info.capabilities), info.arena_size)
    assert struct.unpack_from("<HHHHBBBBII", blob, 24) == (
        info.max_layers, info.max_units, info.max_batch, info.max_steps, info.max_weight_bits,
        info.max_state_bits, info.max_input_bits, info.accumulator_bits, info.ns_per_mac, info.base_latency_us)


@pytest.mark.parametrize("size", [0, 43, 45])
def test_records_reject_a_wrong_length(size):
    with pytest.raises(ValueError, match="HELLO"):
        HelloInfo.unpack(bytes(size))
    with pytest.raises(ValueError, match="GET_STATUS"):
        BoardStatus.unpack(bytes(size))


def test_status_record():
    values = list(range(1, 11)) + [6, 1, 0]
    status = BoardStatus.unpack(struct.pack("<10IBBH", *values))
    assert (status.uptime_ms, status.boot_id, status.version, status.last_error, status.configured) == (1, 2, 10, 6,
                                                                                                         True)
    assert BoardStatus.FORMAT.size == 44


def unpack_network_record(blob: bytes) -> dict:
    """Section 6's table read independently of ``NetworkRecord.pack``."""
    layers, flags, wb, sb, ib, reserved, max_batch, input_size = struct.unpack_from("<6B2H", blob, 0)
    units = [struct.unpack_from("<HbB", blob, 10 + 4 * i) for i in range(layers)]
    classes, nudge, reserved2 = struct.unpack_from("<HBB", blob, 10 + 4 * layers)
    return {"layers": [(u, s) for u, s, _ in units], "flags": flags, "bits": (wb, sb, ib), "max_batch": max_batch,
            "input_size": input_size, "classes": classes, "nudge_shift": nudge,
            "reserved": (reserved, reserved2, *[r for *_, r in units])}


@PROPERTY
@given(st.lists(st.tuples(st.integers(1, 0xFFFF), st.integers(-128, 127)), min_size=1, max_size=8),
       st.integers(1, 0xFFFF), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 0xFFFF),
       st.integers(0, 255))
def test_network_record_layout(layers, input_size, alternating, untied, signed, classes, nudge):
    record = NetworkRecord(tuple(LayerRecord(u, s) for u, s in layers), input_size, 8, 10, 8, 32,
                           alternating=alternating, untied=untied, signed_input=signed, classes=classes,
                           nudge_shift=nudge)
    blob = record.pack()
    # header 10 bytes (layers, flags, 3 bit widths, reserved, max_batch u16, input_size u16), 4 per layer, tail 4
    assert len(blob) == 10 + 4 * len(layers) + 4
    fields = unpack_network_record(blob)
    assert fields["layers"] == layers and fields["bits"] == (8, 10, 8) and fields["max_batch"] == 32
    assert fields["input_size"] == input_size and fields["classes"] == classes and fields["nudge_shift"] == nudge
    assert fields["flags"] == alternating | untied << 1 | (classes > 0) << 2 | signed << 3
    assert set(fields["reserved"]) == {0}
    assert record.fan_in(1) == input_size
    if len(layers) > 1:
        assert record.fan_in(2) == layers[0][0]


def test_tensor_ids():
    assert [tensor_id(1, s) for s in range(4)] == [0, 1, 2, 3]
    assert tensor_id(3, 2) == 10


def test_header_struct_is_the_spec_table():
    assert HEADER.size == 8 and OVERHEAD == 12


# ---------------------------------------------------------------------------------------------------- faults

class MemoryPort:
    """A pyserial-like port in memory: ``written`` collects writes, ``incoming`` is what reads return."""

    def __init__(self, incoming: bytes = b"") -> None:
        self.written: list[bytes] = []
        self.incoming = bytearray(incoming)
        self.timeout: float | None = 0.0

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.incoming)

    def read(self, size: int = 1) -> bytes:
        if not self.incoming and self.timeout:
            time.sleep(min(self.timeout, 0.001))
        out = bytes(self.incoming[:size])
        del self.incoming[:size]
        return out

    def reset_input_buffer(self) -> None:
        self.incoming.clear()

    def close(self) -> None:
        pass


def binomial_interval(n: int, p: float, z: float = 3.2905) -> tuple[float, float]:
    """Two-sided 99.9% interval (normal approximation, z = 3.29, plus one count of continuity slack)."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - z * sd - 1, mean + z * sd + 1


def payload(n: int, seed: int = 0) -> bytes:
    return bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))


def through_tx(config: FaultConfig, data: bytes, chunk: int = 997) -> tuple[bytes, FaultyPort, MemoryPort]:
    inner = MemoryPort()
    port = FaultyPort(inner, tx=config, rx=FaultConfig())
    for i in range(0, len(data), chunk):
        port.write(data[i:i + chunk])
    port.flush()
    return b"".join(inner.written), port, inner


def through_rx(config: FaultConfig, data: bytes) -> tuple[bytes, FaultyPort]:
    inner = MemoryPort(data)
    port = FaultyPort(inner, rx=config, tx=FaultConfig())
    port.timeout = 0.001
    out = bytearray()
    idle = 0
    while idle < 50:
        got = port.read(max(1, port.in_waiting))
        out += got
        idle = 0 if got else idle + 1
    return bytes(out), port


N = 200_000


@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_faults_flip_count_is_binomial_and_each_flip_is_one_bit(direction):
    p, data = 0.01, payload(N, 1)
    config = FaultConfig(flip=p, seed=5)
    out, port = through_tx(config, data)[:2] if direction == "tx" else through_rx(config, data)
    counts = port.tx_counts if direction == "tx" else port.rx_counts
    assert len(out) == N
    diff = np.frombuffer(out, np.uint8) ^ np.frombuffer(data, np.uint8)
    changed = np.flatnonzero(diff)
    assert changed.size == counts.flipped
    assert np.all(np.unpackbits(diff[changed][:, None], axis=1).sum(axis=1) == 1)
    lo, hi = binomial_interval(N, p)
    assert lo <= counts.flipped <= hi, (counts.flipped, lo, hi)
    # the flipped bit is uniform over the 8 positions: each bit within its own 99.9% interval
    bits = np.log2(diff[changed]).astype(int)
    for b in range(8):
        lo_b, hi_b = binomial_interval(changed.size, 1 / 8)
        assert lo_b <= np.sum(bits == b) <= hi_b


def is_subsequence(small: bytes, big: bytes) -> bool:
    it = iter(big)
    return all(any(b == c for c in it) for b in small)


def test_faults_drops_remove_bytes_and_keep_the_rest_in_order():
    p, data = 0.02, payload(50_000, 2)
    out, port, _ = through_tx(FaultConfig(drop=p, seed=6), data)
    dropped = port.tx_counts.dropped
    assert len(out) == len(data) - dropped
    lo, hi = binomial_interval(len(data), p)
    assert lo <= dropped <= hi
    assert is_subsequence(out, data)


def distinct_neighbours(n: int, seed: int) -> bytes:
    """Random bytes in which no byte equals the one before it (so a duplicate is recognisable)."""
    steps = np.random.default_rng(seed).integers(1, 256, n)
    return bytes((np.cumsum(steps) % 256).astype(np.uint8))


def test_faults_duplicated_bytes_follow_their_original():
    p, data = 0.02, distinct_neighbours(50_000, 3)
    out, port, _ = through_tx(FaultConfig(duplicate=p, seed=7), data)
    dup = port.tx_counts.duplicated
    assert len(out) == len(data) + dup
    lo, hi = binomial_interval(len(data), p)
    assert lo <= dup <= hi
    j = 0
    for byte in data:  # every input byte appears once or twice in a row
        assert out[j] == byte
        j += 2 if j + 1 < len(out) and out[j + 1] == byte else 1
    assert j == len(out)


def test_faults_whole_frame_duplicates_reach_the_receiver_twice():
    sent = [Frame(Kind.REQUEST, i, 2, 0, payload(i % 40, i)) for i in range(400)]
    inner = MemoryPort()
    port = FaultyPort(inner, FaultConfig(frame_duplicate=0.25, seed=8))
    for f in sent:
        port.write(f.encode())
    got = FrameReceiver().feed(b"".join(inner.written))
    assert all(isinstance(x, Frame) for x in got)
    assert len(got) == len(sent) + port.tx_counts.frames_duplicated
    lo, hi = binomial_interval(len(sent), 0.25)
    assert lo <= port.tx_counts.frames_duplicated <= hi
    # in order, each frame once or twice in a row
    i = 0
    for f in sent:
        assert got[i] == f
        i += 2 if i + 1 < len(got) and got[i + 1] == f else 1
    assert i == len(got)


def test_faults_delays_hold_bytes_back_and_keep_their_order():
    data = payload(20_000, 4)
    start = time.monotonic()
    out, port, inner = through_tx(FaultConfig(delay=0.3, max_delay=0.02, split=50, seed=9), data, chunk=300)
    assert out == data  # order kept, nothing lost
    assert port.tx_counts.delayed > 0 and port.tx_counts.pieces >= len(data) // 50
    assert max(len(w) for w in inner.written) <= 50
    assert time.monotonic() - start >= 0.9 * max(0.0, port.tx_counts.delay_seconds / port.tx_counts.delayed)
    # a held write is not on the wire until its time has come
    inner = MemoryPort()
    held = FaultyPort(inner, FaultConfig(delay=1.0, max_delay=0.4, seed=0))
    held.write(b"abc")
    assert inner.written == [] and held.tx_counts.delay_seconds > 0.05  # seed 0 holds it for > 50 ms
    held.flush()
    assert inner.written == [b"abc"]
    # incoming: order kept through delays and splits
    out_rx, port_rx = through_rx(FaultConfig(delay=0.3, max_delay=0.005, split=9, seed=10), data)
    assert out_rx == data and port_rx.rx_counts.delayed > 0


def test_faults_split_cuts_writes_into_small_pieces():
    data = payload(5000, 5)
    out, port, inner = through_tx(FaultConfig(split=3, seed=11), data)
    assert out == data and all(1 <= len(w) <= 3 for w in inner.written)
    assert port.tx_counts.pieces == len(inner.written) and len({len(w) for w in inner.written}) == 3


def test_faults_none_when_every_rate_is_zero():
    data = payload(30_000, 6)
    out, port, inner = through_tx(FaultConfig(seed=12), data)
    assert out == data and len(inner.written) == len(range(0, len(data), 997))
    out_rx, port_rx = through_rx(FaultConfig(seed=12), data)
    assert out_rx == data
    zero = FaultCounts(bytes_in=len(data), bytes_out=len(data))
    assert port.tx_counts == zero and port_rx.rx_counts == zero


def test_faults_are_seeded_and_directions_independent():
    data = payload(20_000, 7)
    config = FaultConfig(flip=0.01, drop=0.01, duplicate=0.01, seed=13)
    a = through_tx(config, data)[0]
    assert a == through_tx(config, data)[0]
    assert a != through_tx(FaultConfig(flip=0.01, drop=0.01, duplicate=0.01, seed=14), data)[0]
    # reading in between does not change what the writes suffer
    inner = MemoryPort(payload(5000, 8))
    port = FaultyPort(inner, config)
    for i in range(0, len(data), 997):
        port.write(data[i:i + 997])
        port.read(100)
    assert b"".join(inner.written) == a


def test_faults_reconfigure_to_a_clean_link():
    inner = MemoryPort()
    port = FaultyPort(inner, FaultConfig(flip=1.0, seed=1))
    port.write(b"\x10" * 10)
    port.configure()
    port.write(b"\x10" * 10)
    written = b"".join(inner.written)
    assert all(b != 0x10 for b in written[:10]) and written[10:] == b"\x10" * 10


@pytest.mark.parametrize("field, value", [
    ("flip", -0.1), ("flip", 1.5), ("drop", 2), ("duplicate", float("nan")), ("frame_duplicate", "x"),
    ("delay", True), ("max_delay", -1.0), ("max_delay", float("inf")), ("split", -1), ("split", 2.5),
    ("seed", -3), ("seed", 1.0),
])
def test_fault_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"FaultConfig\.{field} = "):
        FaultConfig(**{field: value})


def test_fault_config_delay_needs_a_max_delay():
    with pytest.raises(ValueError, match="max_delay"):
        FaultConfig(delay=0.5)


def test_faulty_port_forwards_timeout_baudrate_and_buffers():
    inner = MemoryPort(b"xyz")
    port = FaultyPort(inner, FaultConfig(delay=1.0, max_delay=5.0, seed=2))
    port.timeout = 0.02
    assert inner.timeout == 0.02 and port.timeout == 0.02
    assert getattr(port, "baudrate", None) is None  # the client falls back to its default byte rate
    inner.baudrate = 115200
    assert port.baudrate == 115200
    assert port.in_waiting == 0  # "xyz" arrived but is held back
    port.reset_input_buffer()
    start = time.monotonic()
    assert port.read(5) == b""
    assert 0.015 <= time.monotonic() - start < 1.0  # the timeout bounds a read
