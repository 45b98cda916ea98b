"""A serial transport that corrupts, drops, duplicates, delays and splits bytes, to test the protocol under faults.

``FaultyPort`` wraps any pyserial-like port. Each direction (``tx``: what the host writes, ``rx``: what it
reads) has its own ``FaultConfig`` and its own seeded generator, so a run's faults depend only on the seed
and on the bytes that pass, not on the other direction. Bytes that are delayed stay in order: a delay holds
back everything behind it, like a slow link. Not thread-safe: one user at a time, as ``BoardClient`` is.

    port = FaultyPort(serial.Serial(path), FaultConfig(flip=0.01, drop=0.002, seed=1))
    client = BoardClient(port, timeout=0.05)
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

MAX_FRAME_MEMORY = 1 << 17  # bytes of the current frame kept for whole-frame duplication


@dataclass(frozen=True)
class FaultConfig:
    """The faults of one direction; every rate is a probability in [0, 1].

    * ``flip``: per byte, flip one random bit of it;
    * ``drop``: per byte, lose it;
    * ``duplicate``: per byte, send it twice;
    * ``frame_duplicate``: per frame delimiter (``0x00``), send the whole frame (as it travelled) again;
    * ``delay``: per piece (a write, a split piece, a chunk read from the port), hold it and everything
      after it back for a uniform time in ``[0, max_delay]`` seconds;
    * ``split``: cut the stream into pieces of 1 to ``split`` bytes (0: no splitting), written one by one
      and handed out one per ``read``;
    * ``seed``: the generator's seed (the two directions derive independent streams from it).
    """

    flip: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    frame_duplicate: float = 0.0
    delay: float = 0.0
    max_delay: float = 0.0
    split: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("flip", "drop", "duplicate", "frame_duplicate", "delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultConfig.{name} = {value!r}: expected a probability in [0, 1]")
        if (isinstance(self.max_delay, bool) or not isinstance(self.max_delay, (int, float))
                or not math.isfinite(self.max_delay) or self.max_delay < 0):
            raise ValueError(f"FaultConfig.max_delay = {self.max_delay!r}: expected finite seconds >= 0")
        if self.delay > 0 and self.max_delay == 0:
            raise ValueError(f"FaultConfig.max_delay = 0 with delay = {self.delay}: a delay needs max_delay > 0")
        if isinstance(self.split, bool) or not isinstance(self.split, int) or self.split < 0:
            raise ValueError(f"FaultConfig.split = {self.split!r}: expected an integer >= 0 (0: no splitting)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"FaultConfig.seed = {self.seed!r}: expected an integer >= 0")

    @property
    def active(self) -> bool:
        """Whether this configuration changes anything at all."""
        return bool(self.flip or self.drop or self.duplicate or self.frame_duplicate or self.delay or self.split)


@dataclass
class FaultCounts:
    """What one direction passed and injected."""

    bytes_in: int = 0  # bytes offered to the link
    bytes_out: int = 0  # bytes delivered (after drops and duplicates)
    flipped: int = 0  # bytes with one bit flipped
    dropped: int = 0
    duplicated: int = 0  # bytes sent twice
    frames_duplicated: int = 0
    delayed: int = 0  # pieces held back
    delay_seconds: float = 0.0
    pieces: int = 0  # pieces the stream was cut into by ``split``

    def __add__(self, other: "FaultCounts") -> "FaultCounts":
        return FaultCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class _Direction:
    """The fault pipeline of one direction: bytes in, timed pieces out (in order)."""

    def __init__(self, config: FaultConfig, stream: int) -> None:
        self.config = config
        self.rng = np.random.default_rng([config.seed, stream])
        self.counts = FaultCounts()
        self.queue: deque[tuple[float, bytes]] = deque()  # (release time, piece), release times non-decreasing
        self.frame = bytearray()  # the current frame as delivered so far, for whole-frame duplicates

    def inject(self, data: bytes, now: float) -> None:
        """Pass ``data`` through the faults and queue what comes out."""
        c, rng, counts = self.config, self.rng, self.counts
        counts.bytes_in += len(data)
        if not data:
            return
        if not c.active:
            self._queue(bytes(data), now)
            counts.bytes_out += len(data)
            return
        arr = np.frombuffer(bytes(data), np.uint8).copy()
        n = arr.size
        if c.flip:
            hit = np.flatnonzero(rng.random(n) < c.flip)
            if hit.size:
                arr[hit] ^= (np.uint8(1) << rng.integers(0, 8, hit.size, dtype=np.uint8))
                counts.flipped += int(hit.size)
        if c.drop or c.duplicate:
            repeats = np.ones(n, np.int64)
            if c.drop:
                dropped = rng.random(n) < c.drop
                repeats[dropped] = 0
                counts.dropped += int(dropped.sum())
            if c.duplicate:
                twice = (rng.random(n) < c.duplicate) & (repeats == 1)
                repeats[twice] = 2
                counts.duplicated += int(twice.sum())
            arr = np.repeat(arr, repeats)
        out = arr.tobytes()
        if c.frame_duplicate:
            out = self._duplicate_frames(out)
        counts.bytes_out += len(out)
        if c.split:
            pos = 0
            while pos < len(out):
                size = int(rng.integers(1, c.split + 1))
                self._queue(out[pos:pos + size], now)
                counts.pieces += 1
                pos += size
        elif out:
            self._queue(out, now)

    def _duplicate_frames(self, out: bytes) -> bytes:
        result = bytearray()
        start = 0
        while True:
            end = out.find(b"\x00", start)
            if end < 0:
                self.frame += out[start:]
                result += out[start:]
                if len(self.frame) > MAX_FRAME_MEMORY:
                    del self.frame[:-MAX_FRAME_MEMORY]
                return bytes(result)
            self.frame += out[start:end + 1]
            result += out[start:end + 1]
            if len(self.frame) > 1 and self.rng.random() < self.config.frame_duplicate:
                result += self.frame
                self.counts.frames_duplicated += 1
            self.frame.clear()
            start = end + 1

    def _queue(self, piece: bytes, now: float) -> None:
        release = now
        if self.config.delay and self.rng.random() < self.config.delay:
            hold = float(self.rng.uniform(0.0, self.config.max_delay))
            release += hold
            self.counts.delayed += 1
            self.counts.delay_seconds += hold
        if self.queue and self.queue[-1][0] > release:
            release = self.queue[-1][0]  # in order: nothing overtakes a held piece
        self.queue.append((release, piece))

    def due(self, now: float) -> bool:
        return bool(self.queue) and self.queue[0][0] <= now

    def next_release(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def reset(self) -> None:
        self.queue.clear()
        self.frame.clear()


class FaultyPort:
    """A pyserial-like port that injects faults into what is written (``tx``) and read (``rx``).

    ``config`` applies to both directions unless ``tx`` or ``rx`` is given. ``timeout`` is forwarded to the
    wrapped port and also bounds ``read``. Delayed outgoing bytes are delivered from within the next calls
    (``read``, ``in_waiting``, ``write``), which a polling client such as ``BoardClient`` makes continually.
    """

    POLL = 0.001  # seconds between looks at the queues while bytes are held back

    def __init__(self, port: Any, config: FaultConfig | None = None, *, tx: FaultConfig | None = None,
                 rx: FaultConfig | None = None) -> None:
        base = config or FaultConfig()
        self.port = port
        self._tx = _Direction(tx or base, 0)
        self._rx = _Direction(rx or base, 1)
        self._rx_ready: deque[bytes] = deque()  # released incoming pieces
        self._rx_ready_bytes = 0

    # configuration and statistics

    @property
    def tx_counts(self) -> FaultCounts:
        return self._tx.counts

    @property
    def rx_counts(self) -> FaultCounts:
        return self._rx.counts

    @property
    def counts(self) -> FaultCounts:
        """Both directions together."""
        return self._tx.counts + self._rx.counts

    def configure(self, config: FaultConfig | None = None, *, tx: FaultConfig | None = None,
                  rx: FaultConfig | None = None) -> None:
        """Change the faults from now on (``configure()``: a clean link); counts and generators continue."""
        base = config or FaultConfig()
        self._tx.config = tx or base
        self._rx.config = rx or base

    # the pyserial surface

    @property
    def timeout(self) -> float | None:
        return self.port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.port.timeout = value

    @property
    def baudrate(self) -> int:
        return self.port.baudrate  # AttributeError when the wrapped port has none, as getattr(..., None) expects

    @baudrate.setter
    def baudrate(self, value: int) -> None:
        self.port.baudrate = value

    @property
    def is_open(self) -> bool:
        return bool(getattr(self.port, "is_open", True))

    def write(self, data: bytes) -> int:
        """Queue ``data`` through the faults; what is due goes to the port at once."""
        now = time.monotonic()
        self._tx.inject(bytes(data), now)
        self._pump(now)
        return len(data)

    def flush(self) -> None:
        """Wait until every held-back outgoing byte has been written."""
        while self._tx.queue:
            release = self._tx.next_release()
            time.sleep(max(0.0, min(self.POLL, release - time.monotonic())))
            self._pump(time.monotonic())

    @property
    def in_waiting(self) -> int:
        """Bytes that ``read`` returns without waiting (one piece when splitting)."""
        self._pump(time.monotonic())
        if self._rx.config.split and self._rx_ready:
            return len(self._rx_ready[0])
        return self._rx_ready_bytes

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes: returns when ``size`` are there, after a piece when splitting, or at the timeout."""
        timeout = self.port.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        out = bytearray()
        while True:
            now = time.monotonic()
            self._pump(now)
            while self._rx_ready and len(out) < size:
                piece = self._rx_ready.popleft()
                take = size - len(out)
                if len(piece) > take:
                    self._rx_ready.appendleft(piece[take:])
                    piece = piece[:take]
                self._rx_ready_bytes -= len(piece)
                out += piece
                if self._rx.config.split:
                    break
            if len(out) >= size or (out and self._rx.config.split):
                return bytes(out)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return bytes(out)
            held = [t for t in (self._tx.next_release(), self._rx.next_release()) if t is not None]
            if held:  # something is held back: look again soon
                limit = min(held) - now
                if deadline is not None:
                    limit = min(limit, deadline - now)
                time.sleep(max(0.0, min(self.POLL, limit)))
            else:  # nothing held: block on the port itself (its timeout is ours)
                data = self.port.read(1)
                if data:
                    self._rx.inject(data, time.monotonic())

    def reset_input_buffer(self) -> None:
        """Discard what has arrived, including bytes held back on the way in."""
        self.port.reset_input_buffer()
        self._rx.reset()
        self._rx_ready.clear()
        self._rx_ready_bytes = 0

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> "FaultyPort":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # delivery

    def _pump(self, now: float) -> None:
        """Write due outgoing pieces, take what the port has, release due incoming pieces."""
        tx = self._tx
        while tx.due(now):
            self.port.write(tx.queue.popleft()[1])
        waiting = self.port.in_waiting
        if waiting:
            self._rx.inject(self.port.read(waiting), now)
        rx = self._rx
        while rx.due(now):
            piece = rx.queue.popleft()[1]
            self._rx_ready.append(piece)
            self._rx_ready_bytes += len(piece)


def open_faulty(url: str, config: FaultConfig | None = None, *, tx: FaultConfig | None = None,
                rx: FaultConfig | None = None, **serial_options: Any) -> FaultyPort:
    """``serial.serial_for_url(url, **serial_options)`` wrapped in a ``FaultyPort``."""
    import serial

    return FaultyPort(serial.serial_for_url(url, **serial_options), config, tx=tx, rx=rx)
