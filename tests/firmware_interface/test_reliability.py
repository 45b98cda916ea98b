"""The client against the real host build of the firmware, through a faulty link (``FaultyPort``).

Recovery rule for a weight update that failed with ``BoardTimeout``: the APPLY_DELTA may or may not have
reached the weights (its response may be what was lost). The host asks TENSOR_CRC: a board version of
``expected + 1`` means it was applied (the host adds the increments to its copy), ``expected`` means it was
not (the host drops them); the board's CRC must then equal the CRC of the host's copy. Then it continues.
The workload (``benchmarks/board_faults.py``, shared with the 10,000-request acceptance run) follows it.
"""

import struct
import threading
import time

import numpy as np
import pytest

serial = pytest.importorskip("serial")

from benchmarks import board_faults  # noqa: E402  (the workload shared with the acceptance run)
from firmware_interface import launch  # noqa: E402
from firmware_interface.client import (BoardClient, BoardError, BoardLinkError, BoardResetError, BoardTimeout,  # noqa: E402
                                       StaleVersionError, tensor_crc)
from firmware_interface.faults import FaultConfig, FaultyPort  # noqa: E402
from firmware_interface.frame import Frame, FrameReceiver, Kind  # noqa: E402
from firmware_interface.protocol import Command, Status  # noqa: E402
from firmware_interface import tensor as T  # noqa: E402


AVAILABLE, WHY = launch.toolchain_available("host")
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"host firmware cannot be built: {WHY}")

TIMEOUT = 0.04  # client timeout per attempt; a pty answers in well under a millisecond
LINK = dict(board_faults.LINK, max_delay=0.01)  # 1% flipped, 0.5% dropped bytes...; holds stay below TIMEOUT


@pytest.fixture
def board():
    with launch.HostBoard() as b:
        yield b


def connect(board, retries: int = 8, timeout: float = TIMEOUT) -> tuple[BoardClient, FaultyPort]:
    """A greeted client behind a (for now clean) ``FaultyPort`` on the board's pty."""
    return board_faults.open_faulty_client(board.url, FaultConfig(), FaultConfig(), timeout, retries)


@pytest.mark.parametrize("conv", [False, True])
def test_faulty_link_no_silent_corruption_and_exactly_once_updates(board, conv):
    """200 requests over 1% corrupted + 0.5% dropped bytes (and duplicates, delays, splits) in both directions;
    updates to a dense layer or to a conv kernel (protocol 1.2)."""
    client, port = connect(board)
    with client:
        weights = board_faults.program(client, version=1, conv=conv)
        tx, rx = board_faults.link_configs(seed=7, **LINK)
        port.configure(tx=tx, rx=rx)
        mix = board_faults.Mix(client, weights, 1, seed=7, max_ping=40)
        start = time.monotonic()
        mix.run(200)
        r = mix.finish(port)
    assert time.monotonic() - start < 60
    # every request either completed with the right answer or failed with BoardTimeout
    assert set(r.failed) <= {"BoardTimeout"}, r.failed
    assert r.completed + sum(r.failed.values()) == r.requests == 200
    assert r.completed >= 0.75 * r.requests
    # the integrity counts
    assert r.silent_corruptions == 0
    assert r.double_applied == 0 and r.lost_updates == 0 and r.weights_mismatch == 0
    assert r.board_version == r.host_version == 1 + r.deltas_applied
    assert r.client["apply_delta_packed"] > 0 and r.client["apply_delta"] == 0  # protocol 1.1: packed updates
    assert r.deltas_applied == r.deltas - r.timeouts_resolved_not_applied
    # the faults really happened, in both directions, and the protocol's repairs were used
    for counts in (r.faults_tx, r.faults_rx):
        assert counts["flipped"] > 0 and counts["dropped"] > 0 and counts["delayed"] > 0
    assert r.faults_tx["frames_duplicated"] > 0 and r.faults_tx["pieces"] > r.client["requests"]
    assert r.client["retries"] > 0 and r.client["naks"] > 0 and r.client["timeouts"] > 0
    assert r.board_status["naks_sent"] > 0 and r.board_status["replays"] > 0
    assert r.board_status["rx_bad_crc"] > 0 and r.board_status["rx_dropped"] > 0
    assert r.receiver["bad_crc"] + r.receiver["bad_cobs"] + r.receiver["bad_frames"] > 0


def test_recovery_rule_after_a_timed_out_update(board):
    """A lost response (applied) and a lost request (not applied), each resolved by TENSOR_CRC's version."""
    client, port = connect(board, retries=2)
    with client:
        expected = board_faults.program(client, version=5).reshape(-1).astype(np.int64)
        version = 5
        inc = np.zeros(expected.size, np.int64)
        inc[[1, 7]] = [2, -3]
        # every byte from the board is lost: the board applies the update once and replays its answer
        port.configure(rx=FaultConfig(drop=1.0, seed=1))
        with pytest.raises(BoardTimeout, match="3 attempts"):
            client.apply_delta(0, inc, 0, version)
        port.configure()
        crc, board_version = client.tensor_crc(0)
        assert board_version == version + 1  # applied: the host adds it
        expected += inc
        version = board_version
        assert crc == tensor_crc(expected, 0)
        assert client.get_status().replays == 2  # the two retries were answered from the replay cache
        # every byte to the board is lost: nothing is applied
        port.configure(tx=FaultConfig(drop=1.0, seed=2))
        with pytest.raises(BoardTimeout):
            client.apply_delta(0, inc, 0, version)
        port.configure()
        crc, board_version = client.tensor_crc(0)
        assert board_version == version  # not applied: the host drops it
        assert crc == tensor_crc(expected, 0)
        assert np.array_equal(client.read_tensor(0, expected.size, 0), expected)


def test_duplicate_apply_delta_frame_is_applied_once_and_stale_version_is_refused(board):
    client, port = connect(board)
    with client:
        expected = board_faults.program(client, version=10).reshape(-1).astype(np.int64)
        inc = np.zeros(expected.size, np.int64)
        inc[3] = 4
        seq = (client._seq + 1) & 0xFFFF
        client._seq = seq  # the client's next request takes the number after this one
        payload = struct.pack("<BBII", 0, 0, 10, 0) + T.encode(inc, 0)
        wire = Frame(Kind.REQUEST, seq, Command.APPLY_DELTA, 0, payload).encode()
        replays_before = client.get_status().replays
        port.write(wire + wire)  # the same encoded frame twice, back to back
        receiver, replies = FrameReceiver(), []
        deadline = time.monotonic() + 2.0
        while len(replies) < 2 and time.monotonic() < deadline:
            for item in receiver.feed(port.read(max(1, port.in_waiting))):
                if isinstance(item, Frame) and item.seq == seq and item.command == Command.APPLY_DELTA:
                    replies.append(item)
        assert len(replies) == 2
        assert replies[0] == replies[1]  # the second is the cached response, byte for byte
        assert replies[0].status == Status.OK
        assert struct.unpack("<II", replies[0].payload) == (0, 11)
        status = client.get_status()
        assert status.replays == replays_before + 1 and status.version == 11
        crc, version = client.tensor_crc(0)
        assert version == 11 and crc == tensor_crc(expected + inc, 0)  # applied once, not twice
        # the same update again with the old expected version (a new request): refused, nothing applied
        with pytest.raises(StaleVersionError) as info:
            client.apply_delta(0, inc, 0, 10)
        assert info.value.status == Status.STALE_VERSION and info.value.board_version == 11
        assert client.tensor_crc(0) == (crc, 11)
        assert np.array_equal(client.read_tensor(0, expected.size, 0), expected + inc)


def test_killed_board_mid_stream_fails_fast(board):
    """SIGKILL while PINGs flow over a faulty link: the next request fails within its retries, never hangs.

    On a pty the dead board takes its end of the pseudo-terminal with it, so pyserial reports the I/O error,
    which the client raises as ``BoardLinkError``, before the timeouts run out; a board behind a real UART
    adapter just stops answering, which gives ``BoardTimeout`` (see the frozen-board test).
    """
    retries = 3
    client, port = connect(board, retries=retries)
    tx, rx = board_faults.link_configs(seed=3, **LINK)
    port.configure(tx=tx, rx=rx)
    killer = threading.Timer(0.3, board.kill)
    killer.start()
    start = time.monotonic()
    pings = 0
    try:
        with pytest.raises((BoardTimeout, BoardLinkError)):
            while time.monotonic() - start < 10:
                try:
                    client.ping(bytes([pings % 251 + 1]) * 8)
                    pings += 1
                except BoardTimeout:
                    if board.process.poll() is not None:
                        raise
    finally:
        killer.join()
        port.close()
    assert board.process.poll() is not None and pings > 0
    # bounded: the kill, then at most one request's attempts
    assert time.monotonic() - start < 0.3 + (retries + 1) * (TIMEOUT + 0.1) + 2.0


def test_frozen_board_times_out_then_recovers(board):
    """A board that stops answering (SIGSTOP) costs ``retries + 1`` timeouts and a ``BoardTimeout``."""
    import signal

    client, port = connect(board, retries=2, timeout=0.05)
    with client:
        client.ping(b"before")
        before = client.stats.timeouts
        board.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(BoardTimeout, match="3 attempts"):
                client.ping(b"frozen")
            elapsed = time.monotonic() - start
        finally:
            board.process.send_signal(signal.SIGCONT)
        assert 3 * 0.05 <= elapsed < 3 * 0.05 + 1.0
        assert client.stats.timeouts - before == 3
        # the board wakes up, answers the queued requests late; the client discards those and goes on
        assert client.ping(b"after") == b"after"


def test_reset_raises_board_reset_error_until_the_next_hello(board):
    client, port = connect(board)
    with client:
        board_faults.program(client)
        first = client.info.boot_id
        client.request(Command.RESET)  # a raw RESET: the client does not expect the reboot
        with pytest.raises(BoardResetError):
            client.ping(b"x")  # a BOOT event, or BAD_VERSION: either says the board rebooted
        with pytest.raises(BoardResetError, match="BAD_VERSION"):
            client.ping(b"y")  # the board answers BAD_VERSION until the next HELLO
        second = client.hello().boot_id
        assert second != first
        assert client.ping(b"z") == b"z"
        # the reboot took the configuration and the weights
        with pytest.raises(BoardError) as info:
            client.tensor_crc(0)
        assert info.value.status in (Status.NOT_CONFIGURED, Status.OUT_OF_RANGE)


def reset_behind_the_clients_back(port) -> None:
    """RESET written straight to the port; its response and the BOOT event are thrown away unread."""
    port.write(Frame(Kind.REQUEST, 0xABCD, Command.RESET).encode())
    time.sleep(0.1)
    port.reset_input_buffer()


def test_reset_when_the_boot_event_is_lost_is_seen_through_bad_version(board):
    client, port = connect(board)
    with client:
        reset_behind_the_clients_back(port)
        with pytest.raises(BoardResetError, match="BAD_VERSION"):
            client.ping(b"x")


def test_client_reset_returns_the_new_boot_id(board):
    client, port = connect(board)
    with client:
        first = client.info.boot_id
        new = client.reset(timeout=1.0)
        assert new != first
        assert client.hello().boot_id == new


def test_client_reset_ignores_an_earlier_boot_event(board):
    client, port = connect(board)
    with client:
        port.write(Frame(Kind.REQUEST, 0xABCD, Command.RESET).encode())  # a reboot the client learns of ...
        time.sleep(0.1)
        before = client.hello().boot_id  # ... only through HELLO, which keeps its BOOT event in stats.events
        new = client.reset(timeout=1.0)
        assert new != before
        assert client.hello().boot_id == new
