"""The host side of the board protocol: one request in flight, timeouts, retries, and bounded parsing.

``BoardClient`` talks to a board through any pyserial port (``serial.serial_for_url``: a device path, a pty
path, ``socket://127.0.0.1:PORT``). A retry resends the identical frame (same sequence number), so the board's
replay cache answers it without executing it twice. Every length and count the board sends is checked
against what was asked before it is used; anything malformed raises ``ProtocolError``.
"""

from __future__ import annotations

import logging
import random
import struct
from collections import deque
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from . import packed as P
from . import tensor as T
from .frame import HOST_MAX_PAYLOAD, PROTOCOL_MAJOR, Frame, FrameError, FrameReceiver, Kind
from .protocol import (NO_TOLERANCE, WARNINGS, BoardStatus, Capability, Command, HelloInfo, ProtocolError, Status,
                       command_name, hello_request, status_name)

log = logging.getLogger(__name__)

DEFAULT_BYTE_RATE = 11_520  # 115200 baud, 8N1: the slowest link we plan for when the port does not say


class Port(Protocol):
    """What the client needs of a pyserial port (``serial.Serial`` and the fault-injecting wrapper)."""

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...
    def read(self, size: int = 1) -> bytes: ...
    @property
    def in_waiting(self) -> int: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


class BoardError(RuntimeError):
    """The board answered a request with an error status."""

    def __init__(self, command: int, status: int, detail: str = "", payload: bytes = b"") -> None:
        self.command, self.status, self.payload = command, status, payload
        text = f"board refused {command_name(command)}: {status_name(status)}"
        super().__init__(f"{text} ({detail})" if detail else text)


class StaleVersionError(BoardError):
    """APPLY_DELTA expected another weights version than the board holds; nothing was applied."""

    @property
    def board_version(self) -> int:
        return struct.unpack("<I", self.payload)[0] if len(self.payload) == 4 else -1


class BoardTimeout(TimeoutError):
    """No valid response after every retry."""


class BoardLinkError(ConnectionError):
    """The port itself failed (the device vanished, a pty's board process died)."""


class BoardResetError(RuntimeError):
    """The board has rebooted (a BOOT event, or BAD_VERSION after a HELLO): its weights and inputs are gone."""


@dataclass
class ClientStats:
    """Traffic and faults seen by a client (for throughput figures and fault-injection reports)."""

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    naks: int = 0
    discarded: int = 0  # frames that were not the awaited response (late duplicates, bad CRC, noise)
    bytes_sent: int = 0
    bytes_received: int = 0
    payload_sent: int = 0
    payload_received: int = 0
    commands: dict[int, int] = field(default_factory=dict)  # requests by command code
    events: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class RelaxResult:
    """What RELAX reports: the steps run, whether the last one moved no unit by more than the tolerance."""

    steps: int
    converged: bool
    max_delta: int  # largest state move of the last step, in LSBs
    status: Status


@dataclass(frozen=True)
class _Sent:
    """A request written to the port and not yet answered: what a retry resends and what its answer must match."""

    command: int
    seq: int
    wire: bytes
    payload_bytes: int
    timeout: float
    expect_boot: bool


RELAX_REQUEST = struct.Struct("<BBHiI")
RELAX_RESPONSE = struct.Struct("<HBBI")


class BoardClient:
    """A board behind a serial port. Call ``hello()`` first (``open`` does).

    ``timeout``: seconds to wait for a response to a small request (the wire time of larger ones and the
    board's compute time for RELAX are added); ``retries``: resends after a timeout or NAK before giving up;
    ``packed``: send weight differences and inputs as packed tensors (APPLY_DELTA_PACKED, SET_INPUT_PACKED)
    where the board offers them (``Capability.PACKED``) and they are smaller; ``False`` speaks protocol 1.0.
    """

    def __init__(self, port: Port, timeout: float = 0.5, retries: int = 8, byte_rate: float | None = None,
                 poll: float = 0.01, packed: bool = True) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError(f"timeout = {timeout} and retries = {retries} are invalid: expected > 0 and >= 0")
        self.port = port
        self.timeout, self.retries = timeout, retries
        baud = getattr(port, "baudrate", None)
        self.byte_rate = byte_rate or (baud / 10 if isinstance(baud, (int, float)) and baud > 0 else DEFAULT_BYTE_RATE)
        self.port.timeout = poll
        self.receiver = FrameReceiver(HOST_MAX_PAYLOAD)
        self.stats = ClientStats()
        self.packed = packed
        self._packed_ratio: dict[tuple[int, int], float] = {}
        self.info: HelloInfo | None = None
        self.last_delta_version: int | None = None  # the version the latest APPLY_DELTA sent would produce
        self._seq = random.getrandbits(16)  # another session's requests are not mistaken for replays
        self._pending: deque[Frame | FrameError] = deque()  # frames read but not yet looked at

    @classmethod
    def open(cls, url: str, baudrate: int = 115_200, **options: object) -> "BoardClient":
        """Open ``url`` with pyserial and greet the board; the port is closed again if that fails."""
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.01)
        except (serial.SerialException, ValueError) as e:
            raise ConnectionError(f"cannot open board port {url!r}: {e}") from None
        client = cls(port, **options)
        try:
            port.write(b"\x00")  # ends whatever partial frame an earlier host left in the board's receiver
            client.hello()
        except BaseException:
            port.close()
            raise
        return client

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> "BoardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the transaction ----------------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest payload either side accepts (the board's, once greeted)."""
        return self.info.max_payload if self.info else 256

    @property
    def uses_packed(self) -> bool:
        """Whether packed tensors go to this board: it offers them (HELLO) and the client may use them."""
        return bool(self.packed and self.info is not None and self.info.capabilities & Capability.PACKED)

    def _packed_chunk(self, values: np.ndarray, start: int, stop: int, unit: int, header: int, code: int,
                      dense_units: int, encode) -> tuple[int, bytes | None]:
        """The next packed request's elements (or rows) ``start .. start + n`` and its encoding, shrunk until it
        fits the payload after ``header`` bytes; ``(min(n, dense_units), None)`` where the dense encoding of the
        same values is no larger. ``unit``: decoded bytes per element (or row)."""
        n = min(stop - start, P.UNPACKED_FACTOR * self.max_payload // unit)
        room = self.max_payload - header
        ratio = self._packed_ratio.get((header, unit))  # packed bytes per unit of the last chunk of this kind
        if ratio and n * ratio > 2 * room:  # clearly too many: start near what fitted last time
            n = max(1, int(room / ratio * 0.97))
        while True:
            enc = encode(values[start:start + n], code)
            if len(enc) <= room or n == 1:
                break
            n = max(1, min(n - 1, n * room // len(enc) * 31 // 32))
        self._packed_ratio[(header, unit)] = len(enc) / n
        if len(enc) >= T.header_size(values.ndim) + n * unit or len(enc) > room:
            return min(n, dense_units), None
        return n, enc

    def _wire_time(self, nbytes: int) -> float:
        return 4 * nbytes / self.byte_rate

    def request(self, command: int, payload: bytes = b"", compute: float = 0.0, reply_bytes: int = 64,
                expect_boot: bool = False) -> Frame:
        """Send one request and return its response (status ``OK`` or a warning); retries on timeouts and NAKs.

        ``compute``: seconds the board is expected to work on it; ``reply_bytes``: the expected response
        payload (both lengthen the timeout).
        """
        return self._finish(self._send(command, payload, compute, reply_bytes, expect_boot))

    def _send(self, command: int, payload: bytes, compute: float = 0.0, reply_bytes: int = 64,
              expect_boot: bool = False) -> _Sent:
        """Write a new request's first attempt; ``_finish`` awaits its response."""
        if len(payload) > self.max_payload:
            raise ValueError(f"{command_name(command)} payload of {len(payload)} bytes exceeds the board's "
                             f"maximum of {self.max_payload}")
        self._seq = (self._seq + 1) & 0xFFFF
        wire = Frame(Kind.REQUEST, self._seq, command, 0, payload).encode()
        base = self.info.base_latency_us * 1e-6 if self.info else 0.0
        timeout = self.timeout + base + compute + self._wire_time(len(wire) + reply_bytes + 16)
        self.stats.requests += 1
        self.stats.commands[command] = self.stats.commands.get(command, 0) + 1
        if command in (Command.APPLY_DELTA, Command.APPLY_DELTA_PACKED):  # taken once sent, answered or not
            self.last_delta_version = (struct.unpack_from("<I", payload, 2)[0] + 1) & 0xFFFFFFFF
        sent = _Sent(command, self._seq, wire, len(payload), timeout, expect_boot)
        self._write(sent)
        return sent

    def _write(self, sent: _Sent) -> None:
        try:
            self.port.write(sent.wire)
        except OSError as e:  # pyserial's SerialException is one
            raise BoardLinkError(f"{command_name(sent.command)}: the link to the board failed: {e}") from None
        self.stats.bytes_sent += len(sent.wire)

    def _finish(self, sent: _Sent) -> Frame:
        """The response to a request ``_send`` wrote, resending the identical frame after a timeout or NAK."""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                self._write(sent)
            try:
                reply = self._await(sent.seq, sent.command, sent.timeout, sent.expect_boot)
            except OSError as e:
                raise BoardLinkError(f"{command_name(sent.command)}: the link to the board failed: {e}") from None
            if reply is None:
                self.stats.timeouts += 1
                continue
            if reply.kind == Kind.NAK:
                self.stats.naks += 1
                continue
            self.stats.payload_sent += sent.payload_bytes
            self.stats.payload_received += len(reply.payload)
            return self._check(sent.command, reply)
        raise BoardTimeout(f"{command_name(sent.command)} (seq {sent.seq}): no valid response in "
                           f"{self.retries + 1} attempts of {sent.timeout:.3f} s each")

    def _in_turn(self, requests: Iterable[tuple[int, bytes, Callable[[Frame], None]]]) -> None:
        """Send ``(command, payload, done)`` requests one at a time, exactly as ``request`` does, ``done`` taking
        each response; the next one is drawn (encoded) while the board still reads the one before."""
        items = iter(requests)
        item = next(items, None)
        while item is not None:
            command, payload, done = item
            sent = self._send(command, payload)
            try:
                item = next(items, None)
            except BaseException:
                done(self._finish(sent))  # the request in flight is answered before the error goes up
                raise
            done(self._finish(sent))

    def await_frame(self, seq: int, command: int, timeout: float) -> Frame | None:
        """The board's next frame answering ``(seq, command)`` (a response or a NAK), or ``None`` after ``timeout``.

        For measuring the link with frames sent by hand (``port.write``); requests go through ``request``.
        """
        return self._await(seq, command, timeout, False)

    def _await(self, seq: int, command: int, timeout: float, expect_boot: bool) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            if not self._pending:
                if time.monotonic() >= deadline:
                    return None
                data = self.port.read(max(1, self.port.in_waiting))
                self.stats.bytes_received += len(data)
                self._pending.extend(self.receiver.feed(data))
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, FrameError):
                    self.stats.discarded += 1
                    continue
                if item.kind == Kind.EVENT:
                    self.stats.events.append((item.command, item.payload))
                    if item.command == Command.BOOT and not expect_boot:
                        raise BoardResetError(f"the board rebooted (BOOT event) while waiting for "
                                              f"{command_name(command)}")
                    continue
                if item.seq == seq and item.command == command and item.kind in (Kind.RESPONSE, Kind.NAK):
                    return item
                self.stats.discarded += 1

    def _check(self, command: int, reply: Frame) -> Frame:
        if reply.version != PROTOCOL_MAJOR:
            raise ProtocolError(f"{command_name(command)} response has protocol version {reply.version}, "
                                f"expected {PROTOCOL_MAJOR}")
        status = reply.status
        if status == Status.OK or status in WARNINGS:
            return reply
        if status == Status.BAD_VERSION and command != Command.HELLO:
            raise BoardResetError(f"the board answered {command_name(command)} with BAD_VERSION: it has rebooted "
                                  f"(or was never greeted) and waits for a HELLO")
        detail = ""
        if status == Status.BAD_ARGUMENT and len(reply.payload) == 1:
            detail = f"field {reply.payload[0]}"
        cls = StaleVersionError if status == Status.STALE_VERSION else BoardError
        raise cls(command, status, detail, reply.payload)

    # -- commands -----------------------------------------------------------------------------------------

    def hello(self) -> HelloInfo:
        """Greet the board and learn its limits; a changed ``boot_id`` means it rebooted since the last HELLO."""
        reply = self.request(Command.HELLO, hello_request(), expect_boot=True)
        info = HelloInfo.unpack(reply.payload)
        if info.protocol_major != PROTOCOL_MAJOR:
            raise ProtocolError(f"board speaks protocol {info.protocol_major}.{info.protocol_minor}, this host "
                                f"{PROTOCOL_MAJOR}.x")
        if not 64 <= info.max_payload <= HOST_MAX_PAYLOAD:
            raise ProtocolError(f"board advertises a maximum payload of {info.max_payload} bytes; expected "
                                f"64 to {HOST_MAX_PAYLOAD}")
        for name in ("max_batch", "max_steps", "max_layers", "max_units"):
            if getattr(info, name) < 1:
                raise ProtocolError(f"board advertises {name} = {getattr(info, name)}; expected at least 1")
        self.info = info
        self.receiver.max_payload = info.max_payload
        return info

    def ping(self, data: bytes = b"") -> bytes:
        """Echo ``data`` through the board (a liveness and link check)."""
        reply = self.request(Command.PING, data, reply_bytes=len(data))
        if reply.payload != data:
            raise ProtocolError(f"PING echoed {len(reply.payload)} bytes that differ from the {len(data)} sent")
        return reply.payload

    def reset(self, timeout: float = 5.0) -> int:
        """Soft-reset the board and wait for its BOOT event; returns the new ``boot_id``. Greet it again after."""
        seen = len(self.stats.events)  # BOOT events from before (the board's power-on) do not count
        try:
            self.request(Command.RESET, expect_boot=True)
        except BoardResetError:
            pass  # the response was lost and the resent RESET met the rebooted board: it did reset
        deadline = time.monotonic() + timeout
        while True:
            for command, payload in self.stats.events[seen:]:
                if command == Command.BOOT and len(payload) == 4:
                    return struct.unpack("<I", payload)[0]
            if time.monotonic() >= deadline:
                raise BoardTimeout(f"no BOOT event within {timeout} s of RESET")
            self._await(-1, -1, min(0.05, deadline - time.monotonic()), expect_boot=True)

    def self_test(self, mask: int = 0xFFFFFFFF) -> tuple[int, int]:
        """Run the board's self-tests; returns ``(passed, failed)`` bit masks."""
        reply = self.request(Command.SELF_TEST, struct.pack("<I", mask), compute=1.0)
        return struct.unpack("<II", self._exact(reply, 8))

    def configure(self, record: bytes) -> tuple[int, int]:
        """Send a CONFIGURE record (``NetworkRecord.pack()``); returns ``(arena_used, arena_size)``."""
        reply = self.request(Command.CONFIGURE, record)
        return struct.unpack("<II", self._exact(reply, 8))

    def get_status(self) -> BoardStatus:
        """The board's uptime, boot id, frame and error counters, and weights version."""
        return BoardStatus.unpack(self.request(Command.GET_STATUS).payload)

    def tensor_crc(self, tensor_id: int) -> tuple[int, int]:
        """``(crc, version)`` of a tensor as the board holds it."""
        reply = self.request(Command.TENSOR_CRC, struct.pack("<B", tensor_id))
        return struct.unpack("<II", self._exact(reply, 8))

    def _exact(self, reply: Frame, size: int) -> bytes:
        if len(reply.payload) != size:
            raise ProtocolError(f"{command_name(reply.command)} response has {len(reply.payload)} bytes, "
                                f"expected {size}")
        return reply.payload

    def _chunk(self, header: int, row_bytes: int, what: str) -> int:
        """How many rows of ``row_bytes`` fit in one payload after ``header`` bytes."""
        rows = (self.max_payload - header) // row_bytes
        if rows < 1:
            raise ValueError(f"{what}: one row of {row_bytes} bytes does not fit the board's "
                             f"{self.max_payload}-byte payload")
        return rows

    # weights

    def write_tensor(self, tensor_id: int, values: np.ndarray, code: int) -> None:
        """Write a whole tensor (flattened) with as few WRITE_WEIGHTS requests as the payload allows."""
        flat = np.asarray(values).reshape(-1)
        step = self._chunk(6 + T.header_size(1), T.DTYPES[code].itemsize, f"tensor {tensor_id}")
        self._in_turn((Command.WRITE_WEIGHTS, struct.pack("<BBI", tensor_id, 0, start)
                       + T.encode(flat[start:start + step], code), _ignore) for start in range(0, flat.size, step))

    def commit_tensor(self, tensor_id: int, values: np.ndarray, code: int, version: int) -> int:
        """Commit a written tensor: the board checks its CRC against ``values`` and takes ``version``."""
        crc = tensor_crc(values, code)
        reply = self.request(Command.COMMIT_WEIGHTS, struct.pack("<BBII", tensor_id, 0, crc, version),
                             compute=self._wire_time(np.asarray(values).size * T.DTYPES[code].itemsize))
        (board,) = struct.unpack("<I", self._exact(reply, 4))
        if board != crc:
            raise ProtocolError(f"COMMIT_WEIGHTS of tensor {tensor_id} succeeded with CRC 0x{board:08x}, "
                                f"the host's is 0x{crc:08x}")
        return board

    def read_tensor(self, tensor_id: int, count: int, code: int) -> np.ndarray:
        """Read ``count`` elements of a tensor back (what the board really holds)."""
        out = np.empty(count, T.DTYPES[code])
        step = self._chunk(T.header_size(1), T.DTYPES[code].itemsize, f"tensor {tensor_id}")
        for start in range(0, count, step):
            n = min(step, count - start)
            reply = self.request(Command.READ_WEIGHTS, struct.pack("<BBIH", tensor_id, 0, start, n),
                                 reply_bytes=n * T.DTYPES[code].itemsize)
            out[start:start + n] = self._tensor(reply, code, (n,))
        return out

    def apply_delta(self, tensor_id: int, increments: np.ndarray, code: int, version: int) -> tuple[int, int]:
        """Add ``increments`` (flattened, the tensor's wire dtype) chunk by chunk, skipping all-zero chunks.

        Each chunk carries the weights version it expects, so none is ever applied twice; returns
        ``(saturated, version)`` after the last chunk. Where the board offers packed tensors, a chunk goes
        as APPLY_DELTA_PACKED when that is smaller (runs of zeros cost a few bits).
        """
        return self.apply_deltas([(tensor_id, increments, code)], version)

    def apply_deltas(self, updates: Iterable[tuple[int, np.ndarray, int]], version: int) -> tuple[int, int]:
        """``apply_delta`` of several ``(tensor_id, increments, code)``, one request in flight, the next chunk
        encoded while the board reads the one before (the smallest tensors first, so that the largest
        encoding overlaps their requests); every increment is checked against its dtype before anything is
        sent. Returns ``(saturated, version)`` after the last chunk."""
        updates = sorted(((tid, np.asarray(inc).reshape(-1), code) for tid, inc, code in updates),
                         key=lambda u: u[1].size)
        for tid, flat, code in updates:
            if code not in T.DTYPES:
                raise T.TensorError(f"tensor {tid}: unknown dtype code {code}")
            info = np.iinfo(T.DTYPES[code])
            if flat.size and (flat.min() < info.min or flat.max() > info.max):
                raise T.TensorError(f"tensor {tid}: increments outside dtype code {code}")
        state = {"saturated": 0, "version": version}

        def done(reply: Frame) -> None:
            clipped, new = struct.unpack("<II", self._exact(reply, 8))
            if new != (state["version"] + 1) & 0xFFFFFFFF:
                raise ProtocolError(f"APPLY_DELTA moved the weights version from {state['version']} to {new}, "
                                    f"expected {state['version'] + 1}")
            state["saturated"] += clipped
            state["version"] = new

        self._in_turn(self._delta_requests(updates, version, done))
        return state["saturated"], state["version"]

    def _delta_requests(self, updates: list[tuple[int, np.ndarray, int]], version: int,
                        done: Callable[[Frame], None]) -> Iterator[tuple[int, bytes, Callable[[Frame], None]]]:
        """The APPLY_DELTA(_PACKED) requests of ``updates``, encoded one at a time; the k-th expects
        ``version + k`` (a request that does not move the version by one stops the sending)."""
        for tensor_id, flat, code in updates:
            step = self._chunk(10 + T.header_size(1), T.DTYPES[code].itemsize, f"tensor {tensor_id}")
            start = 0
            while start < flat.size:
                n, enc = step, None
                if self.uses_packed:
                    n, enc = self._packed_chunk(flat, start, flat.size, T.DTYPES[code].itemsize, 10, code, step,
                                                P.encode)
                chunk = flat[start:start + n]
                head = struct.pack("<BBII", tensor_id, 0, version, start)
                start += n
                if not chunk.any():
                    continue
                if enc is None:
                    yield Command.APPLY_DELTA, head + T.encode(chunk, code), done
                else:
                    yield Command.APPLY_DELTA_PACKED, head + enc, done
                version = (version + 1) & 0xFFFFFFFF

    # inputs, phases, states

    def set_input(self, x: np.ndarray, code: int, width: int = 0) -> None:
        """The batch's input integers, ``(batch, input_size)``, row chunks per payload (packed ones where the
        board offers them and they are smaller; ``width``: an image's row length, for the packed tensors'
        two-dimensional predictor)."""
        batch = x.shape[0]
        row = x.shape[1] * T.DTYPES[code].itemsize
        step = self._chunk(4 + T.header_size(2), row, "an input row")

        def requests() -> Iterator[tuple[int, bytes, Callable[[Frame], None]]]:
            start = 0
            while start < batch:
                n, enc = step, None
                if self.uses_packed:
                    n, enc = self._packed_chunk(x, start, batch, row, 4, code, step,
                                                lambda v, c: P.encode_best(v, c, width))
                head = struct.pack("<HH", batch, start)
                if enc is None:
                    yield Command.SET_INPUT, head + T.encode(x[start:start + n], code), _ignore
                else:
                    yield Command.SET_INPUT_PACKED, head + enc, _ignore
                start += n
        self._in_turn(requests())

    def set_target(self, y: np.ndarray) -> None:
        """The batch's class indices."""
        step = self._chunk(2 + T.header_size(1), 1, "targets")
        for start in range(0, len(y), step):
            self.request(Command.SET_TARGET, struct.pack("<H", start) + T.encode(y[start:start + step], 3))

    def set_states(self, layer: int, states: np.ndarray, code: int) -> None:
        """Host-given states of one layer, ``(batch, units)``, into the board's current states."""
        row = states.shape[1] * T.DTYPES[code].itemsize
        step = self._chunk(4 + T.header_size(2), row, f"a row of layer {layer}")
        for start in range(0, states.shape[0], step):
            self.request(Command.SET_STATES, struct.pack("<BBH", layer, 0, start)
                         + T.encode(states[start:start + step], code))

    def relax(self, phase: int, init: int, steps: int, beta_q: int, tolerance: int | None = None,
              compute: float = 0.0) -> RelaxResult:
        """Run one phase on the board; ``tolerance`` in state LSBs (``None``: every step)."""
        tol = NO_TOLERANCE if tolerance is None else tolerance
        reply = self.request(Command.RELAX, RELAX_REQUEST.pack(phase, init, steps, beta_q, tol), compute=compute)
        done, converged, _, max_delta = RELAX_RESPONSE.unpack(self._exact(reply, RELAX_RESPONSE.size))
        if not 1 <= done <= steps:
            raise ProtocolError(f"RELAX reports {done} steps, asked for at most {steps}")
        return RelaxResult(done, bool(converged), max_delta, Status(reply.status))

    def read_states(self, snapshot: int, layer: int, batch: int, units: int, code: int) -> np.ndarray:
        """``(batch, units)`` integers of one layer (or scores / residuals) of a snapshot."""
        out = np.empty((batch, units), T.DTYPES[code])
        step = self._chunk(T.header_size(2), units * T.DTYPES[code].itemsize, f"a row of layer {layer}")
        for start in range(0, batch, step):
            n = min(step, batch - start)
            reply = self.request(Command.READ_STATES, struct.pack("<BBHH", snapshot, layer, start, n),
                                 reply_bytes=n * units * T.DTYPES[code].itemsize)
            out[start:start + n] = self._tensor(reply, code, (n, units))
        return out

    def _tensor(self, reply: Frame, code: int, shape: tuple[int, ...]) -> np.ndarray:
        try:
            t, _ = T.decode(reply.payload, expect_code=code, what=f"{command_name(reply.command)} response")
        except T.TensorError as e:
            raise ProtocolError(str(e)) from None
        if t.data.shape != shape:
            raise ProtocolError(f"{command_name(reply.command)} returned shape {t.data.shape}, asked for {shape}")
        return t.data


def _ignore(reply: Frame) -> None:
    """The response of a request whose success is all that matters."""


def tensor_crc(values: np.ndarray, code: int) -> int:
    """CRC-32 of a tensor's bytes as the board stores them (wire dtype, row-major, little-endian)."""
    return zlib.crc32(np.ascontiguousarray(values).astype(T.DTYPES[code]).tobytes())
