"""The client against a board that misbehaves: a scripted peer on a real pty, driven through serial.Serial.

Every response the scripted board sends is malformed in one way; the client must refuse it with an error that
says what was wrong, never hand the bad data on, and never wait forever.
"""

from __future__ import annotations

import os
import struct
import threading
import tty

import numpy as np
import pytest
import serial

from firmware_interface import tensor as T
from firmware_interface.client import BoardClient, BoardError, BoardResetError, BoardTimeout, ProtocolError
from firmware_interface.frame import Frame, FrameReceiver, Kind
from firmware_interface.protocol import Capability, Command, HelloInfo, Status

HELLO = HelloInfo(1, 0, (1, 0, 0), 256, 7, 1234, Capability(0x7F), 1 << 16, 4, 64, 16, 100, 8, 8, 8, 64, 10, 100)


class ScriptedBoard:
    """Answers each request on a pty with ``script(frame) -> list of raw bytes to send`` (HELLO answered well)."""

    def __init__(self, script) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.url = os.ttyname(slave)
        self._slave = slave
        self.script, self.requests, self.hello = script, [], HELLO
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        receiver = FrameReceiver()
        while not self._stop:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for item in receiver.feed(data):
                if not isinstance(item, Frame):
                    continue
                self.requests.append(item)
                if item.command == Command.HELLO:
                    out = [Frame(Kind.RESPONSE, item.seq, item.command, 0, self.hello.pack()).encode()]
                else:
                    out = self.script(item)
                for raw in out:
                    os.write(self.master, raw)

    def close(self) -> None:
        self._stop = True
        os.close(self.master)
        os.close(self._slave)


def reply(req: Frame, payload: bytes = b"", status: int = 0, **changes) -> bytes:
    fields = dict(kind=Kind.RESPONSE, seq=req.seq, command=req.command, status=status, payload=payload)
    fields.update(changes)
    return Frame(**fields).encode()


@pytest.fixture
def board_with():
    boards = []

    def start(script, timeout: float = 0.5) -> BoardClient:
        board = ScriptedBoard(script)
        boards.append(board)
        port = serial.Serial(board.url, timeout=0.01)
        client = BoardClient(port, timeout=timeout, retries=2)
        client.hello()
        return client
    start.boards = boards
    yield start
    for b in boards:
        b.close()


def test_hello_limits_are_checked():
    assert HelloInfo.unpack(HELLO.pack()) == HELLO
    with pytest.raises(ProtocolError, match="HELLO response: 43 bytes, expected 44"):
        HelloInfo.unpack(HELLO.pack()[:-1])


@pytest.mark.parametrize("change, message", [
    ({"protocol_major": 2}, "speaks protocol 2.0"),
    ({"max_payload": 16}, "maximum payload of 16 bytes"),
    ({"max_batch": 0}, "max_batch = 0"),
    ({"max_steps": 0}, "max_steps = 0"),
])
def test_a_hello_with_impossible_limits_is_refused(change, message):
    import dataclasses

    board = ScriptedBoard(lambda req: [])
    board.hello = dataclasses.replace(HELLO, **change)
    try:
        with serial.Serial(board.url, timeout=0.01) as port:
            with pytest.raises(ProtocolError, match=message):
                BoardClient(port, timeout=0.5, retries=0).hello()
    finally:
        board.close()


@pytest.mark.parametrize("bad, message", [
    (lambda req: [reply(req, T.encode(np.zeros(5, np.int8), 0))], r"returned shape \(5,\), asked for \(4,\)"),
    (lambda req: [reply(req, T.encode(np.zeros(4, np.int16), 1))], "dtype i16, expected i8"),
    (lambda req: [reply(req, T.encode(np.zeros(4, np.int8), 0)[:-1])], "needs 4 data bytes, 3 present"),
    (lambda req: [reply(req, b"\x00\x00\x05" + b"\x01\x00" * 5 + b"\x00")], "5 dimensions"),
    (lambda req: [reply(req, b"\x09\x00\x01\x04\x00" + bytes(4))], "unknown dtype code 9"),
])
def test_malformed_tensors_are_refused(board_with, bad, message):
    client = board_with(bad)
    with pytest.raises(ProtocolError, match=message):
        client.read_tensor(0, 4, 0)


def test_wrong_lengths_and_counts_are_refused(board_with):
    def script(req):
        if req.command == Command.RELAX:
            return [reply(req, struct.pack("<HBBI", 99, 1, 0, 0))]  # more steps than asked
        if req.command == Command.TENSOR_CRC:
            return [reply(req, b"\x00" * 7)]
        if req.command == Command.PING:
            return [reply(req, b"other")]
        if req.command == Command.APPLY_DELTA:
            return [reply(req, struct.pack("<II", 0, 7))]  # the version jumped
        return [reply(req)]
    client = board_with(script)
    with pytest.raises(ProtocolError, match="RELAX reports 99 steps, asked for at most 10"):
        client.relax(0, 0, 10, 0)
    with pytest.raises(ProtocolError, match="TENSOR_CRC response has 7 bytes, expected 8"):
        client.tensor_crc(0)
    with pytest.raises(ProtocolError, match="PING echoed"):
        client.ping(b"hello")
    with pytest.raises(ProtocolError, match="from 3 to 7"):
        client.apply_delta(0, np.ones(4, np.int8), 0, 3)


def test_an_oversized_response_is_discarded_not_buffered(board_with):
    big = T.encode(np.zeros(2000, np.int8), 0)  # far above the board's advertised 256-byte maximum
    client = board_with(lambda req: [reply(req, big)], timeout=0.1)
    with pytest.raises(BoardTimeout, match="3 attempts"):
        client.read_tensor(0, 4, 0)
    assert client.receiver.stats.overflows + client.stats.discarded >= 3
    assert len(client.receiver._buffer) <= client.receiver.limit


def test_noise_wrong_sequence_numbers_and_bad_crcs_are_skipped(board_with):
    def script(req):
        stale = reply(req, b"stale", seq=(req.seq - 1) & 0xFFFF)
        other = reply(req, b"other", command=Command.GET_STATUS)
        corrupt = bytearray(reply(req, b"x" * 8))
        corrupt[5] ^= 0x40
        return [b"\x13\x37garbage\x00", stale, other, bytes(corrupt), reply(req, req.payload)]
    client = board_with(script)
    assert client.ping(b"echo") == b"echo"
    assert client.stats.discarded >= 4 and client.stats.retries == 0


def test_error_statuses_name_the_command_and_status(board_with):
    def script(req):
        if req.command == Command.APPLY_DELTA:
            return [reply(req, struct.pack("<I", 41), status=Status.STALE_VERSION)]
        if req.command == Command.CONFIGURE:
            return [reply(req, b"\x09", status=Status.BAD_ARGUMENT)]
        return [reply(req, status=Status.BAD_VERSION)]
    client = board_with(script)
    with pytest.raises(BoardError, match="APPLY_DELTA: STALE_VERSION") as e:
        client.apply_delta(0, np.ones(2, np.int8), 0, 40)
    assert e.value.board_version == 41
    with pytest.raises(BoardError, match=r"CONFIGURE: BAD_ARGUMENT \(field 9\)"):
        client.configure(b"\x01")
    with pytest.raises(BoardResetError, match="BAD_VERSION"):
        client.get_status()


def test_a_boot_event_while_waiting_means_a_reset(board_with):
    client = board_with(lambda req: [Frame(Kind.EVENT, 0, Command.BOOT, 0, struct.pack("<I", 99)).encode()])
    with pytest.raises(BoardResetError, match="BOOT event"):
        client.get_status()


def test_a_silent_board_times_out_after_the_retries(board_with):
    client = board_with(lambda req: [], timeout=0.1)
    with pytest.raises(BoardTimeout, match="GET_STATUS .* 3 attempts"):
        client.get_status()
    assert client.stats.retries == 2 and client.stats.timeouts == 3


def test_a_nak_makes_the_client_resend_the_same_frame(board_with):
    def script(req):
        if req.command == Command.PING and len([r for r in board_with.boards[-1].requests if r == req]) == 1:
            return [reply(req, kind=Kind.NAK, status=Status.BAD_CRC)]
        return [reply(req, req.payload)]
    client = board_with(script)
    assert client.ping(b"again") == b"again"
    pings = [r for r in board_with.boards[-1].requests if r.command == Command.PING]
    assert len(pings) == 2 and pings[0] == pings[1] and client.stats.naks == 1


def test_requests_larger_than_the_board_accepts_are_refused_before_sending(board_with):
    client = board_with(lambda req: [reply(req)])
    with pytest.raises(ValueError, match="exceeds the board's maximum of 256"):
        client.ping(bytes(300))
