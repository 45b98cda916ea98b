"""The reference firmware (firmware_interface/firmware/) over a real pty, loopback TCP and QEMU.

Frames are made by hand here (COBS + zlib.crc32), independent of the Python client, so that a bug shared by
the client and the firmware cannot hide.
"""

from __future__ import annotations

import random
import struct
import time
import zlib

import numpy as np
import pytest
import serial

from firmware_interface.launch import HostBoard, build, toolchain_available

HOST_OK, HOST_WHY = toolchain_available("host")
pytestmark = pytest.mark.skipif(not HOST_OK, reason=HOST_WHY)

# -- a tiny codec -------------------------------------------------------------------------------------------

OK, BAD_CRC, BAD_LENGTH, BAD_VERSION, UNKNOWN, BAD_ARG, OUT_OF_RANGE = 0, 1, 2, 3, 4, 5, 6
NOT_CONFIGURED, CHECKSUM_MISMATCH, NOT_CONVERGED, SATURATED, STALE, NO_MEMORY = 8, 10, 11, 12, 16, 17
HELLO, PING, RESET, SELF_TEST, CONFIGURE, WRITE, READ, COMMIT, DELTA = range(1, 10)
SET_INPUT, SET_TARGET, RELAX, READ_STATES, GET_STATUS, TENSOR_CRC, SET_STATES = range(10, 17)
I8, I16, I32, U8, U16 = range(5)


def cobs(data: bytes) -> bytes:
    out, block = bytearray(), bytearray()
    for b in data:
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
    return bytes(out + bytes([len(block) + 1]) + block)


def uncobs(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        code = data[i]
        out += data[i + 1:i + code]
        i += code
        if code < 255 and i < len(data):
            out.append(0)
    return bytes(out)


def body(seq: int, cmd: int, payload: bytes = b"", kind: int = 0, major: int = 1, status: int = 0) -> bytes:
    head = struct.pack("<BBHBBH", major, kind, seq, cmd, status, len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


def frame(*args, **kw) -> bytes:
    return cobs(body(*args, **kw)) + b"\0"


def tensor(dtype: int, values, shape=None) -> bytes:
    arr = np.asarray(values, dtype={I8: "<i1", I16: "<i2", I32: "<i4", U8: "u1", U16: "<u2"}[dtype])
    shape = arr.shape if shape is None else shape
    return struct.pack(f"<BbB{len(shape)}H", dtype, 0, len(shape), *shape) + arr.tobytes()


def untensor(payload: bytes) -> np.ndarray:
    dtype, _, ndim = struct.unpack_from("<BbB", payload)
    shape = struct.unpack_from(f"<{ndim}H", payload, 3)
    code = {I8: "<i1", I16: "<i2", I32: "<i4", U8: "u1", U16: "<u2"}[dtype]
    return np.frombuffer(payload[3 + 2 * ndim:], dtype=code).reshape(shape).astype(np.int64)


def network(units, input_size, shifts=None, wb=8, sb=8, ib=8, flags=0, max_batch=8, classes=0, nudge=0,
            softmax=0, kinds=None, blocks=b"") -> bytes:
    shifts = shifts or [0] * len(units)
    kinds = kinds or [0] * len(units)
    rec = struct.pack("<BBBBBBHH", len(units), flags, wb, sb, ib, 0, max_batch, input_size)
    rec += b"".join(struct.pack("<HbB", u, s, k) for u, s, k in zip(units, shifts, kinds))
    return rec + struct.pack("<HBB", classes, nudge, softmax) + blocks


def conv_block(in_c=1, in_h=4, in_w=4, channels=2, kernel=3, stride=1, padding=1, pool=1, pool_size=2,
               reserved=0) -> bytes:
    """A conv layer's geometry (protocol 1.2, section 6): by default 1x4x4 -> 2 channels, 3x3 padded, 2x2 max."""
    return struct.pack("<HHHHBBBBBB", in_c, in_h, in_w, channels, kernel, stride, padding, pool, pool_size, reserved)


def conv_network(block=None, **kw) -> bytes:
    """A conv layer of 8 units (2 x 2 x 2) on a 1x4x4 input, then a dense layer of 3."""
    return network([8, 3], 16, kinds=[1, 0], blocks=conv_block(**kw) if block is None else block)


class Link:
    """Requests and responses over a pyserial port; sequence numbers count up from 1."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port, self.seq, self.events, self.skip_stale = port, 0, [], False

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def recv(self, timeout: float = 2.0) -> bytes | None:
        buf, deadline = bytearray(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.port.read(1)
            if c == b"\0":
                if buf:
                    return bytes(buf)
            elif c:
                buf += c
        return None

    def response(self, timeout: float = 2.0, seq: int | None = None):
        """The next frame that is not an event (nor, given seq, a late answer to another): (kind, seq, cmd,
        status, payload)."""
        while True:
            raw = self.recv(timeout)
            assert raw is not None, "no response"
            b = uncobs(raw)
            assert zlib.crc32(b[:-4]) == struct.unpack("<I", b[-4:])[0]
            major, kind, rseq, cmd, status, n = struct.unpack_from("<BBHBBH", b)
            assert major == 1 and n == len(b) - 12
            if kind == 2:
                self.events.append((cmd, b[8:-4]))
                continue
            if seq is not None and rseq != seq:
                continue
            return kind, rseq, cmd, status, b[8:-4]

    def call(self, cmd: int, payload: bytes = b"", expect: int | None = OK) -> tuple[int, bytes]:
        self.seq = (self.seq + 1) & 0xFFFF
        self.send_raw(frame(self.seq, cmd, payload))
        kind, seq, rcmd, status, out = self.response(seq=self.seq if self.skip_stale else None)
        assert (kind, seq, rcmd) == (1, self.seq, cmd)
        if expect is not None:
            assert status == expect, f"command {cmd}: status {status}, expected {expect}, payload {out.hex()}"
        return status, out

    def hello(self) -> dict:
        _, p = self.call(HELLO, b"\x01\x01")
        names = ("major minor fw0 fw1 fw2 res max_payload device_id boot_id caps arena max_layers max_units "
                 "max_batch max_steps wbits sbits ibits accbits ns_per_mac base_us").split()
        return dict(zip(names, struct.unpack("<BBBBBBHIIIIHHHHBBBBII", p)))

    def status(self) -> dict:
        _, p = self.call(GET_STATUS)
        names = ("uptime boot_id rx_frames rx_dropped rx_bad_crc rx_overflow naks replays requests version "
                 "last_error configured res").split()
        return dict(zip(names, struct.unpack("<IIIIIIIIIIBBH", p)))


@pytest.fixture(scope="module")
def host_binary():
    return build("host")


@pytest.fixture
def board(host_binary):
    with HostBoard(device_id=0xC0FFEE, max_batch=32) as b:
        yield b


@pytest.fixture
def link(board):
    with serial.Serial(board.url, timeout=0.05) as port:
        yield Link(port)


# -- a small network the tests program by hand ------------------------------------------------------------

SMALL = dict(units=[6, 3], input_size=5, shifts=[7, 6], wb=6, sb=4, ib=4, max_batch=4)


def program_small(link: Link, rng: np.random.Generator, flags=0) -> dict:
    """CONFIGUREs SMALL and writes and commits random tensors; returns them by id."""
    link.call(CONFIGURE, network(**SMALL, flags=flags))
    units, fan_in = SMALL["units"], [SMALL["input_size"]] + SMALL["units"][:-1]
    tensors = {}
    for l, (u, f) in enumerate(zip(units, fan_in)):
        tensors[4 * l] = (I8, rng.integers(-31, 32, u * f))
        tensors[4 * l + 1] = (I32, rng.integers(-300, 300, u))
        tensors[4 * l + 3] = (U8, np.concatenate([rng.integers(0, 3, 2 * u), np.zeros(u, int)]))
        if flags & 2 and l >= 1:
            tensors[4 * l + 2] = (I8, rng.integers(-31, 32, u * f))
    for tid, (dt, v) in tensors.items():
        link.call(WRITE, struct.pack("<BBI", tid, 0, 0) + tensor(dt, v))
        crc = zlib.crc32(tensor(dt, v)[5:])
        link.call(COMMIT, struct.pack("<BBII", tid, 0, crc, 7))
    return tensors


def round_shift(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return a << -k
    q = a >> k
    r = a - (q << k)
    half = 1 << (k - 1)
    return q + ((r > half) | ((r == half) & (q & 1 == 1)))


def relax_model(tensors, x, steps, flags=0, units=SMALL["units"], shifts=SMALL["shifts"], sb=SMALL["sb"]):
    """Section 6 of the spec in numpy int64 (synchronous or alternating; tied or untied; no nudge)."""
    fan_in = [x.shape[1]] + units[:-1]
    W = [tensors[4 * l][1].reshape(u, f) for l, (u, f) in enumerate(zip(units, fan_in))]
    b = [tensors[4 * l + 1][1] for l in range(len(units))]
    sh = [tensors[4 * l + 3][1].reshape(3, u) for l, u in enumerate(units)]
    F = [tensors[4 * l + 2 if flags & 2 else 4 * l][1].reshape(u, f) if l else None
         for l, (u, f) in enumerate(zip(units, fan_in))]
    s = [np.zeros((x.shape[0], u), np.int64) for u in units]
    drive = (x @ W[0].T + b[0]) << sh[0][0]

    def settle(i, s):
        acc = drive.copy() if i == 0 else (s[i - 1] @ W[i].T + b[i]) << sh[i][0]
        if i + 1 < len(units):
            acc = acc + ((s[i + 1][:, :, None] * F[i + 1][None]) << sh[i + 1][1][None, :, None]).sum(1)
        return np.clip(round_shift(acc, shifts[i]), 0, (1 << sb) - 1)

    for _ in range(steps):
        if flags & 1:
            for parity in (0, 1):
                for i in range(parity, len(units), 2):
                    s[i] = settle(i, s)
        else:
            s = [settle(i, s) for i in range(len(units))]
    return s


# -- HELLO, versions, framing -----------------------------------------------------------------------------

def test_hello_record_fields(link):
    h = link.hello()
    assert (h["major"], h["minor"], h["max_payload"], h["device_id"]) == (1, 2, 2048, 0xC0FFEE)
    assert h["caps"] == 0x3FF and h["max_batch"] == 32 and h["accbits"] == 64
    assert h["arena"] == 16 << 20 and h["wbits"] == h["sbits"] == h["ibits"] == 16
    assert h["ns_per_mac"] > 0 and h["base_us"] > 0 and h["max_steps"] >= 1000
    assert link.status()["boot_id"] == h["boot_id"]


def test_every_command_needs_hello_first(link):
    for cmd in (PING, CONFIGURE, GET_STATUS, RELAX, 0x55):
        link.call(cmd, b"", expect=BAD_VERSION)
    link.call(HELLO, b"\x02\x03", expect=BAD_VERSION)  # the host speaks only majors 2..3
    link.call(PING, b"x", expect=BAD_VERSION)
    link.seq += 1
    link.send_raw(frame(link.seq, HELLO, b"\x01\x01", major=2))
    assert link.response()[3] == BAD_VERSION
    link.hello()
    assert link.call(PING, b"\x00abc\x00")[1] == b"\x00abc\x00"
    link.call(0x55, b"", expect=UNKNOWN)


def test_bad_crc_gets_a_nak_only_for_requests(link):
    link.hello()
    bad = bytearray(body(77, PING, b"hello"))
    bad[-1] ^= 0x40
    link.send_raw(cobs(bytes(bad)) + b"\0")
    kind, seq, cmd, status, payload = link.response()
    assert (kind, seq, cmd, status, payload) == (3, 77, PING, BAD_CRC, b"")
    resp = bytearray(body(78, PING, b"x", kind=1))  # a response with a bad CRC: silence
    resp[-2] ^= 1
    link.send_raw(cobs(bytes(resp)) + b"\0")
    assert link.recv(0.2) is None
    st = link.status()
    assert (st["rx_bad_crc"], st["naks"], st["last_error"]) == (2, 1, BAD_CRC)


def test_replay_returns_the_same_bytes_and_applies_a_delta_once(link):
    link.hello()
    rng = np.random.default_rng(0)
    tensors = program_small(link, rng)
    req = frame(500, DELTA, struct.pack("<BBII", 0, 0, 7, 2) + tensor(I8, [1, -1, 1]))
    link.send_raw(req)
    first = link.recv()
    link.send_raw(req)
    second = link.recv()
    assert first == second and uncobs(first)[5] == OK
    assert struct.unpack("<II", uncobs(first)[8:16]) == (0, 8)
    link.seq = 500
    crc, version = struct.unpack("<II", link.call(TENSOR_CRC, b"\x00")[1])
    assert version == 8
    expected = tensors[0][1].copy()
    expected[2:5] += [1, -1, 1]
    assert crc == zlib.crc32(expected.astype("<i1").tobytes())
    got = untensor(link.call(READ, struct.pack("<BBIH", 0, 0, 0, len(expected)))[1])
    assert np.array_equal(got, expected)
    assert link.status()["replays"] == 1


def test_stale_version_applies_nothing(link):
    link.hello()
    program_small(link, np.random.default_rng(1))
    before = link.call(TENSOR_CRC, b"\x01")[1]
    status, payload = link.call(DELTA, struct.pack("<BBII", 1, 0, 6, 0) + tensor(I32, [5]), expect=STALE)
    assert struct.unpack("<I", payload) == (7,)
    assert link.call(TENSOR_CRC, b"\x01")[1] == before
    sat, version = struct.unpack("<II", link.call(DELTA, struct.pack("<BBII", 0, 0, 7, 0) + tensor(I8, [127] * 4),
                                                  expect=SATURATED)[1])
    assert (sat, version) == (4, 8)  # every weight clipped at +31 (6 bits)
    w = untensor(link.call(READ, struct.pack("<BBIH", 0, 0, 0, 4))[1])
    assert list(w) == [31] * 4


def test_resync_after_garbage_and_bad_frames(link):
    link.hello()
    rng = random.Random(3)
    garbage = bytes(rng.randrange(1, 256) for _ in range(300))
    link.send_raw(garbage + b"\0" + b"\x05\x01\x02\0" + b"\0\0" + bytes([3, 1, 1]) + b"\0")
    assert link.call(PING, b"after")[1] == b"after"
    link.send_raw(frame(9, PING, b"cut")[:6] + b"\0")  # a frame cut short by a delimiter: dropped
    assert link.call(PING, b"again")[1] == b"again"
    st = link.status()
    assert st["rx_dropped"] >= 4 and st["naks"] == 0


def test_overlong_frame_overflows_then_the_board_recovers(link):
    link.hello()
    link.send_raw(bytes([0x42]) * 5000)
    link.send_raw(frame(999, PING, b"lost"))  # its start belongs to the overflowed run: dropped with it
    assert link.call(PING, b"ok")[1] == b"ok"
    st = link.status()
    assert st["rx_overflow"] == 1
    big = b"\xAA" * 2048  # the largest payload still fits
    assert link.call(PING, big)[1] == big
    link.seq += 1
    link.send_raw(frame(link.seq, PING, big + b"!"))  # one byte too many: dropped
    assert link.recv(0.3) is None
    assert link.status()["rx_overflow"] == 2


def test_reset_sends_a_boot_event_with_a_new_boot_id(link):
    first = link.hello()["boot_id"]
    link.call(RESET)
    raw = link.recv()
    b = uncobs(raw)
    assert struct.unpack_from("<BBHBBH", b) == (1, 2, 0, 0x80, 0, 4)
    boot_id = struct.unpack_from("<I", b, 8)[0]
    assert boot_id != first
    link.call(PING, b"", expect=BAD_VERSION)
    assert link.hello()["boot_id"] == boot_id
    assert link.status()["configured"] == 0


def test_self_test_and_status(link):
    link.hello()
    passed, failed = struct.unpack("<II", link.call(SELF_TEST, struct.pack("<I", 0xFFFFFFFF))[1])
    assert (passed, failed) == (0xF, 0)
    st = link.status()
    assert st["requests"] == 3 and st["configured"] == 0 and st["rx_frames"] == 3


# -- argument checking ------------------------------------------------------------------------------------

def w(tid, offset, t, reserved=0):
    return struct.pack("<BBI", tid, reserved, offset) + t


BAD_REQUESTS = [
    (HELLO, b"\x01", BAD_LENGTH, None),
    (RESET, b"\x00", BAD_LENGTH, None),
    (SELF_TEST, b"\x00\x00\x00", BAD_LENGTH, None),
    (GET_STATUS, b"\x00", BAD_LENGTH, None),
    (TENSOR_CRC, b"", BAD_LENGTH, None),
    (TENSOR_CRC, b"\x02", BAD_ARG, 0),  # B_1 does not exist (tied)
    (TENSOR_CRC, b"\x09", BAD_ARG, 0),  # no readout
    (CONFIGURE, network([4], 3)[:-1], BAD_LENGTH, None),
    (CONFIGURE, network([4], 3) + b"\0", BAD_LENGTH, None),
    (CONFIGURE, network([], 3), BAD_ARG, 0),
    (CONFIGURE, network([4], 3, flags=0x10), BAD_ARG, 1),
    (CONFIGURE, network([4], 3, wb=17), BAD_ARG, 2),
    (CONFIGURE, network([4], 3, sb=0), BAD_ARG, 3),
    (CONFIGURE, network([4], 3, ib=1, flags=8), BAD_ARG, 4),
    (CONFIGURE, network([4], 3, max_batch=33), BAD_ARG, 6),  # the board's max_batch is 32
    (CONFIGURE, network([4], 0), BAD_ARG, 7),
    (CONFIGURE, network([0], 3), BAD_ARG, 8),
    (CONFIGURE, network([4], 3, shifts=[63]), BAD_ARG, 9),
    (CONFIGURE, network([4], 3, classes=2), BAD_ARG, 11),  # classes without the CE flag
    (CONFIGURE, network([4], 3, nudge=63), BAD_ARG, 12),
    (CONFIGURE, network([4], 3, flags=4, classes=2, nudge=63), BAD_ARG, 12),  # the CE nudge's shift, too
    (CONFIGURE, network([4], 3, softmax=9), BAD_ARG, 13),  # a softmax shift without the CE flag
    (CONFIGURE, network([4], 3, flags=4, classes=2, softmax=63), BAD_ARG, 13),
    (CONFIGURE, conv_network(block=b""), BAD_LENGTH, None),  # a conv layer without its block
    (CONFIGURE, conv_network() + b"\0", BAD_LENGTH, None),
    (CONFIGURE, network([8, 3], 16, kinds=[2, 0]), BAD_ARG, 10),  # no kind 2
    (CONFIGURE, network([3, 8], 16, kinds=[0, 1], blocks=conv_block(in_h=3, in_w=1, padding=2)), BAD_ARG, 10),
    (CONFIGURE, conv_network(in_c=2), BAD_ARG, 14),  # 2 x 4 x 4 is not the 16 inputs
    (CONFIGURE, conv_network(in_h=0), BAD_ARG, 15),
    (CONFIGURE, conv_network(in_w=0), BAD_ARG, 16),
    (CONFIGURE, conv_network(channels=3), BAD_ARG, 17),  # 3 x 2 x 2 is not the layer's 8 units
    (CONFIGURE, conv_network(kernel=0), BAD_ARG, 18),
    (CONFIGURE, conv_network(kernel=7), BAD_ARG, 18),  # wider than the padded input
    (CONFIGURE, network([3969, 3], 4096, kinds=[1, 0], blocks=conv_block(1, 64, 64, 1, 64, 1, 63, 1, 2)), BAD_ARG,
     18),  # 65M multiply-accumulates per sample: more than the largest dense layer's 4096 x 4096
    (CONFIGURE, conv_network(stride=0), BAD_ARG, 19),
    (CONFIGURE, conv_network(pool=3), BAD_ARG, 21),
    (CONFIGURE, conv_network(pool=0), BAD_ARG, 22),  # no pooling travels as pool_size 1
    (CONFIGURE, conv_network(pool=2, pool_size=3), BAD_ARG, 22),  # an average pool's size is a power of two
    (CONFIGURE, conv_network(pool_size=8), BAD_ARG, 22),  # pools the 4x4 map to nothing
    (CONFIGURE, conv_network(reserved=1), BAD_ARG, 23),
    (WRITE, w(0, 0, tensor(I8, [1]))[:5], BAD_LENGTH, None),
    (WRITE, w(0, 0, tensor(I8, [1, 2]))[:-1], BAD_LENGTH, None),
    (WRITE, w(0, 0, tensor(I16, [1])), BAD_ARG, 3),  # weights of 6 bits travel as i8
    (WRITE, w(0, 0, tensor(I8, [[1]])), BAD_ARG, 3),  # ndim 2
    (WRITE, w(0, 0, tensor(I8, [1]), reserved=1), BAD_ARG, 1),
    (WRITE, w(0, 30, tensor(I8, [1])), OUT_OF_RANGE, None),  # W_1 has 6 x 5 = 30 weights
    (WRITE, w(0, 0xFFFFFFFF, tensor(I8, [1])), OUT_OF_RANGE, None),
    (WRITE, w(0, 0, tensor(I8, [32])), OUT_OF_RANGE, None),  # beyond +-31
    (WRITE, w(0, 0, tensor(I8, [-32])), OUT_OF_RANGE, None),
    (WRITE, w(3, 0, tensor(U8, [63])), OUT_OF_RANGE, None),  # a shift above 62
    (WRITE, w(3, 12, tensor(U8, [1])), OUT_OF_RANGE, None),  # row 2 of a shift table is reserved (0)
    (WRITE, w(40, 0, tensor(I8, [1])), BAD_ARG, 0),
    (WRITE, struct.pack("<BBI", 0, 0, 0) + bytes([9, 0, 1, 1, 0, 1]), BAD_ARG, 3),  # dtype 9
    (WRITE, struct.pack("<BBI", 0, 0, 0) + bytes([0, 0, 5]), BAD_ARG, 3),  # ndim 5
    (READ, struct.pack("<BBIH", 0, 0, 0, 31), OUT_OF_RANGE, None),
    (READ, struct.pack("<BBIH", 1, 0, 0, 2044 // 4 + 1), OUT_OF_RANGE, None),
    (READ, struct.pack("<BBI", 0, 0, 0), BAD_LENGTH, None),
    (COMMIT, struct.pack("<BBII", 0, 0, 0, 1), CHECKSUM_MISMATCH, None),
    (COMMIT, struct.pack("<BBI", 0, 0, 0), BAD_LENGTH, None),
    (DELTA, struct.pack("<BBII", 3, 0, 0, 0) + tensor(U8, [1]), BAD_ARG, 0),  # no deltas to a shift table
    (DELTA, struct.pack("<BBII", 1, 0, 0, 0) + tensor(I8, [1]), BAD_ARG, 4),  # biases take i32
    (DELTA, struct.pack("<BBII", 1, 0, 0, 6) + tensor(I32, [1]), OUT_OF_RANGE, None),
    (SET_INPUT, struct.pack("<HH", 2, 0) + tensor(U8, [[1] * 5]), OK, None),
    (SET_INPUT, struct.pack("<HH", 5, 0) + tensor(U8, [[1] * 5]), OUT_OF_RANGE, None),  # max_batch 4
    (SET_INPUT, struct.pack("<HH", 0, 0) + tensor(U8, [[1] * 5]), OUT_OF_RANGE, None),
    (SET_INPUT, struct.pack("<HH", 2, 1) + tensor(U8, [[1] * 5] * 2), OUT_OF_RANGE, None),
    (SET_INPUT, struct.pack("<HH", 2, 0) + tensor(U8, [[1] * 4]), BAD_ARG, 2),
    (SET_INPUT, struct.pack("<HH", 2, 0) + tensor(I8, [[1] * 5]), BAD_ARG, 2),  # unsigned inputs: u8
    (SET_INPUT, struct.pack("<HH", 2, 0) + tensor(U8, [[16] * 5]), OUT_OF_RANGE, None),  # 4-bit inputs
    (SET_TARGET, struct.pack("<H", 0) + tensor(U8, [3]), OUT_OF_RANGE, None),  # MSE: labels < units_L = 3
    (SET_TARGET, struct.pack("<H", 3) + tensor(U8, [0, 0]), OUT_OF_RANGE, None),
    (SET_TARGET, struct.pack("<H", 0) + tensor(U16, [0]), BAD_ARG, 1),
    (SET_TARGET, b"\x00", BAD_LENGTH, None),
    (RELAX, struct.pack("<BBHiI", 0, 0, 5, 0, 0xFFFFFFFF), NOT_CONFIGURED, None),  # no inputs yet
    (RELAX, struct.pack("<BBHiI", 3, 0, 5, 0, 0xFFFFFFFF), BAD_ARG, 0),
    (RELAX, struct.pack("<BBHiI", 0, 5, 5, 0, 0xFFFFFFFF), BAD_ARG, 1),
    (RELAX, struct.pack("<BBHiI", 0, 0, 0, 0, 0xFFFFFFFF), OUT_OF_RANGE, None),
    (RELAX, struct.pack("<BBHi", 0, 0, 5, 0), BAD_LENGTH, None),
    (READ_STATES, struct.pack("<BBHH", 4, 1, 0, 1), BAD_ARG, 0),
    (READ_STATES, struct.pack("<BBHH", 0, 3, 0, 1), BAD_ARG, 1),
    (READ_STATES, struct.pack("<BBHH", 0, 0, 0, 1), BAD_ARG, 1),
    (READ_STATES, struct.pack("<BBHH", 0, 1, 3, 2), OUT_OF_RANGE, None),
    (READ_STATES, struct.pack("<BBH", 0, 1, 0), BAD_LENGTH, None),
    (SET_STATES, struct.pack("<BBH", 1, 0, 0) + tensor(U8, [[1] * 6]), OK, None),
    (SET_STATES, struct.pack("<BBH", 1, 0, 0) + tensor(U8, [[16] * 6]), OUT_OF_RANGE, None),  # 4-bit states
    (SET_STATES, struct.pack("<BBH", 1, 0, 0) + tensor(U16, [[1] * 6]), BAD_ARG, 3),
    (SET_STATES, struct.pack("<BBH", 2, 0, 0) + tensor(U8, [[1] * 6]), BAD_ARG, 3),  # layer 2 has 3 units
    (SET_STATES, struct.pack("<BBH", 3, 0, 0) + tensor(U8, [[1] * 6]), BAD_ARG, 0),
    (SET_STATES, struct.pack("<BBH", 1, 1, 0) + tensor(U8, [[1] * 6]), BAD_ARG, 1),
    (SET_STATES, struct.pack("<BBH", 1, 0, 4) + tensor(U8, [[1] * 6]), OUT_OF_RANGE, None),
]


def test_every_command_checks_its_arguments(link):
    """Each bad request gets its status (and field index); none of them changes the board."""
    link.hello()
    program_small(link, np.random.default_rng(2))
    reference = [link.call(TENSOR_CRC, bytes([t]))[1] for t in (0, 1, 3, 4, 5, 7)]
    for cmd, payload, status, field in BAD_REQUESTS:
        st, out = link.call(cmd, payload, expect=None)
        assert st == status, (cmd, payload.hex(), st, status)
        if status == BAD_ARG:
            assert out == bytes([field]), (cmd, payload.hex(), out)
        elif status != OK:
            assert out == b"", (cmd, out)
    assert [link.call(TENSOR_CRC, bytes([t]))[1] for t in (0, 1, 3, 4, 5, 7)] == reference
    link.call(PING, b"still fine")


def test_requests_with_a_nonzero_status_byte_are_refused(link):
    link.hello()
    link.seq += 1
    link.send_raw(frame(link.seq, PING, b"", status=3))
    assert link.response()[3:] == (BAD_ARG, b"\xff")


def test_configure_no_memory_with_a_small_arena(host_binary):
    with HostBoard(arena=4096) as board, serial.Serial(board.url, timeout=0.05) as port:
        link = Link(port)
        assert link.hello()["arena"] == 4096
        link.call(CONFIGURE, network([64, 32], 100, max_batch=8), expect=NO_MEMORY)
        assert link.status()["configured"] == 0
        used, size = struct.unpack("<II", link.call(CONFIGURE, network([8, 4], 10, max_batch=2))[1])
        assert 0 < used <= size == 4096
        link.call(CONFIGURE, network([64, 32], 100, max_batch=8), expect=NO_MEMORY)
        assert link.status()["configured"] == 1  # a refused CONFIGURE keeps the previous network


# -- relaxation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_relaxation_matches_the_spec_arithmetic(link, flags):
    link.hello()
    rng = np.random.default_rng(10 + flags)
    tensors = program_small(link, rng, flags)
    x = rng.integers(0, 16, (4, 5))
    link.call(SET_INPUT, struct.pack("<HH", 4, 0) + tensor(U8, x))
    steps, done, _, _ = 6, *struct.unpack("<HBxI", link.call(RELAX, struct.pack("<BBHiI", 0, 0, 6, 0,
                                                                                   0xFFFFFFFF))[1])
    assert done == steps
    want = relax_model(tensors, x, steps, flags)
    for layer in (1, 2):
        got = untensor(link.call(READ_STATES, struct.pack("<BBHH", 0, layer, 0, 4))[1])
        assert np.array_equal(got, want[layer - 1]), (layer, got, want[layer - 1])
    assert len(np.unique(np.concatenate([s.ravel() for s in want]))) > 3  # the test network is not trivial
    scores = untensor(link.call(READ_STATES, struct.pack("<BBHH", 0, 0xF0, 0, 4))[1])
    assert np.array_equal(scores, want[1])  # MSE: the scores are the last layer's states


def test_tolerance_stops_early_and_reports_not_converged(link):
    link.hello()
    rng = np.random.default_rng(5)
    program_small(link, rng)
    link.call(SET_INPUT, struct.pack("<HH", 2, 0) + tensor(U8, rng.integers(0, 16, (2, 5))))
    st, out = link.call(RELAX, struct.pack("<BBHiI", 0, 0, 1, 0, 0), expect=NOT_CONVERGED)
    assert struct.unpack("<HBxI", out)[:2] == (1, 0)
    done, conv, moved = struct.unpack("<HBxI", link.call(RELAX, struct.pack("<BBHiI", 0, 0, 200, 0, 0))[1])
    assert conv == 1 and moved == 0 and done < 200
    resid = untensor(link.call(READ_STATES, struct.pack("<BBHH", 0, 0xF1, 0, 2))[1])
    assert resid.shape == (2, 1) and resid.max() == 0


# -- transports, sanitizers, QEMU ---------------------------------------------------------------------------

def test_tcp_transport_serves_one_client_after_another(host_binary):
    with HostBoard(transport="tcp") as board:
        assert board.url.startswith("socket://127.0.0.1:")
        for _ in range(2):
            with serial.serial_for_url(board.url, timeout=0.05) as port:
                link = Link(port)
                link.hello()
                assert link.call(PING, b"tcp")[1] == b"tcp"
        assert board.stop() == 0


def test_pty_client_can_reconnect(board):
    for _ in range(2):
        with serial.Serial(board.url, timeout=0.05) as port:
            link = Link(port)
            link.hello()
            assert link.call(PING, b"pty")[1] == b"pty"
    assert board.stop() == 0


def random_frames(rng: random.Random, n: int):
    """Valid frames of random commands (RESET aside: it zeroes the counters) and payloads, mutated ones, noise."""
    good = [frame(1, HELLO, b"\x01\x01"), frame(2, CONFIGURE, network([6, 3], 5, max_batch=4)),
            frame(3, SET_INPUT, struct.pack("<HH", 2, 0) + tensor(U8, [[1] * 5] * 2)),
            frame(4, RELAX, struct.pack("<BBHiI", 0, 0, 3, 0, 0xFFFFFFFF))]
    for i in range(n):
        r = rng.random()
        if r < 0.4:
            payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 4, 6, 8, 10, 12, 20, 60])))
            yield frame(rng.randrange(65536), rng.choice([c for c in range(0x12) if c != RESET]), payload)
        elif r < 0.8:
            f = bytearray(rng.choice(good))
            for _ in range(rng.randrange(1, 4)):
                f[rng.randrange(len(f))] = rng.randrange(256)
            yield bytes(f)
        elif r < 0.9:
            yield rng.choice(good)
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))


def test_sanitizer_build_survives_random_and_mutated_frames():
    ok, why = toolchain_available("host-asan")
    if not ok:
        pytest.skip(why)
    with HostBoard(sanitizers=True, arena=1 << 20) as board, serial.Serial(board.url, timeout=0.05) as port:
        rng = random.Random(1234)
        chunk = bytearray()
        for i, f in enumerate(random_frames(rng, 3000)):
            chunk += f
            if len(chunk) > 2000 or i % 50 == 0:  # let the board answer now and then
                port.write(bytes(chunk))
                chunk.clear()
                port.reset_input_buffer()
        port.write(b"\0" * 2)
        time.sleep(0.2)
        port.reset_input_buffer()
        link = Link(port)
        link.hello()
        assert link.call(PING, b"alive")[1] == b"alive"
        assert link.status()["requests"] > 1000
        assert board.stop() == 0, "".join(board.output)
    assert not any("Sanitizer" in line or "runtime error" in line for line in board.output)
