"""Frames on the wire: ``COBS(header | payload | crc32) || 0x00`` (docs/board_protocol.md, section 1)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from . import cobs

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 2
HEADER = struct.Struct("<BBHBBH")  # version, kind, seq, command, status, length
OVERHEAD = HEADER.size + 4
HOST_MAX_PAYLOAD = 0xFFFF


class Kind(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    EVENT = 2
    NAK = 3


class FrameError(ValueError):
    """Bytes that do not form a valid frame; ``header`` holds the header fields when only the CRC was wrong."""

    def __init__(self, message: str, header: tuple | None = None) -> None:
        super().__init__(message)
        self.header = header


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: int
    seq: int
    command: int
    status: int = 0
    payload: bytes = b""
    version: int = PROTOCOL_MAJOR

    def body(self) -> bytes:
        """Header, payload and CRC, before COBS."""
        if not 0 <= self.seq <= 0xFFFF:
            raise FrameError(f"sequence number {self.seq} does not fit in a u16")
        for name in ("version", "kind", "command", "status"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise FrameError(f"{name} {getattr(self, name)} does not fit in a u8")
        if len(self.payload) > HOST_MAX_PAYLOAD:
            raise FrameError(f"payload of {len(self.payload)} bytes exceeds {HOST_MAX_PAYLOAD}")
        head = HEADER.pack(self.version, self.kind, self.seq, self.command, self.status, len(self.payload))
        data = head + self.payload
        return data + struct.pack("<I", zlib.crc32(data))

    def encode(self) -> bytes:
        """The frame as it travels: COBS-encoded body and the ``0x00`` delimiter."""
        return cobs.encode(self.body()) + b"\x00"


def parse_body(body: bytes, max_payload: int = HOST_MAX_PAYLOAD) -> Frame:
    """A decoded (un-COBSed) body as a ``Frame``; ``FrameError`` names what is wrong."""
    if len(body) < OVERHEAD:
        raise FrameError(f"frame body of {len(body)} bytes is shorter than the {OVERHEAD}-byte minimum")
    version, kind, seq, command, status, length = HEADER.unpack_from(body)
    header = (version, kind, seq, command, status, length)
    if length != len(body) - OVERHEAD:
        raise FrameError(f"length field says {length} payload bytes, the frame holds {len(body) - OVERHEAD}")
    (crc,) = struct.unpack_from("<I", body, len(body) - 4)
    if zlib.crc32(body[:-4]) != crc:
        raise FrameError("CRC mismatch", header)
    if length > max_payload:
        raise FrameError(f"payload of {length} bytes exceeds the maximum of {max_payload}")
    if kind not in Kind.__members__.values():
        raise FrameError(f"unknown frame kind {kind}")
    return Frame(kind, seq, command, status, bytes(body[HEADER.size:-4]), version)


@dataclass
class ReceiverStats:
    """What a receiver threw away, by reason."""

    frames: int = 0
    bad_cobs: int = 0
    bad_frames: int = 0
    bad_crc: int = 0
    overflows: int = 0


@dataclass
class FrameReceiver:
    """Cuts a byte stream into frames at ``0x00``; never buffers more than one longest frame.

    Bytes that do not decode are counted and skipped; after an overflow everything up to the next
    ``0x00`` is discarded, so the receiver is back in step at the next frame boundary.
    """

    max_payload: int = HOST_MAX_PAYLOAD
    stats: ReceiverStats = field(default_factory=ReceiverStats)
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    @property
    def limit(self) -> int:
        return cobs.max_encoded_size(self.max_payload + OVERHEAD)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Take bytes; return the frames completed by them and an error for each bad one (in order)."""
        out: list[Frame | FrameError] = []
        start = 0
        while start < len(data):
            end = data.find(b"\x00", start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._discarding:
                self._buffer += chunk
                if len(self._buffer) > self.limit:
                    self.stats.overflows += 1
                    out.append(FrameError(f"no frame delimiter within {self.limit} bytes; resynchronising"))
                    self._buffer.clear()
                    self._discarding = True
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                out.append(self._complete(bytes(self._buffer)))
                self._buffer.clear()
            start = end + 1
        return out

    def _complete(self, encoded: bytes) -> Frame | FrameError:
        try:
            body = cobs.decode(encoded)
        except cobs.CobsError as e:
            self.stats.bad_cobs += 1
            return FrameError(f"invalid COBS: {e}")
        try:
            frame = parse_body(body, self.max_payload)
        except FrameError as e:
            if e.header is not None:
                self.stats.bad_crc += 1
            else:
                self.stats.bad_frames += 1
            return e
        self.stats.frames += 1
        return frame
