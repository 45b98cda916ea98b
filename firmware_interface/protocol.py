"""Command and status codes, and the fixed records of the board protocol (docs/board_protocol.md)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .frame import PROTOCOL_MAJOR


class Command(IntEnum):
    HELLO = 0x01
    PING = 0x02
    RESET = 0x03
    SELF_TEST = 0x04
    CONFIGURE = 0x05
    WRITE_WEIGHTS = 0x06
    READ_WEIGHTS = 0x07
    COMMIT_WEIGHTS = 0x08
    APPLY_DELTA = 0x09
    SET_INPUT = 0x0A
    SET_TARGET = 0x0B
    RELAX = 0x0C
    READ_STATES = 0x0D
    GET_STATUS = 0x0E
    TENSOR_CRC = 0x0F
    SET_STATES = 0x10
    APPLY_DELTA_PACKED = 0x11  # protocol 1.1, Capability.PACKED
    SET_INPUT_PACKED = 0x12  # protocol 1.1, Capability.PACKED
    BOOT = 0x80  # event


class Status(IntEnum):
    OK = 0
    BAD_CRC = 1
    BAD_LENGTH = 2
    BAD_VERSION = 3
    UNKNOWN_COMMAND = 4
    BAD_ARGUMENT = 5
    OUT_OF_RANGE = 6
    BUSY = 7
    NOT_CONFIGURED = 8
    UNSUPPORTED = 9
    CHECKSUM_MISMATCH = 10
    NOT_CONVERGED = 11
    SATURATED = 12
    HARDWARE_FAULT = 13
    SELF_TEST_FAILED = 14
    INTERNAL_TIMEOUT = 15
    STALE_VERSION = 16
    NO_MEMORY = 17


WARNINGS = frozenset({Status.NOT_CONVERGED, Status.SATURATED, Status.SELF_TEST_FAILED})
"""Statuses whose response still carries the complete payload."""


def status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"status {code}"


def command_name(code: int) -> str:
    try:
        return Command(code).name
    except ValueError:
        return f"command 0x{code:02x}"


class Capability(IntFlag):
    MSE_NUDGE = 1 << 0
    CE_READOUT = 1 << 1
    ALTERNATING = 1 << 2
    UNTIED = 1 << 3
    EARLY_STOP = 1 << 4
    SELF_TEST = 1 << 5
    SET_STATES = 1 << 6
    PACKED = 1 << 7  # APPLY_DELTA_PACKED and SET_INPUT_PACKED (protocol 1.1)
    CE_NUDGE = 1 << 8  # nudged phases of a CE network (the integer softmax; softmax_shift in CONFIGURE)
    CONV = 1 << 9  # conv layers with max, average or no pooling (protocol 1.2; a conv block per conv layer)


class Phase(IntEnum):
    FREE = 0
    PLUS = 1
    MINUS = 2


class Init(IntEnum):
    ZERO = 0
    KEEP = 1
    FREE = 2
    PLUS = 3
    MINUS = 4


class Snapshot(IntEnum):
    FREE = 0
    PLUS = 1
    MINUS = 2
    CURRENT = 3


SCORES = 0xF0  # READ_STATES layer: class scores
RESIDUAL = 0xF1  # READ_STATES layer: per-sample residual of the last step
NO_TOLERANCE = 0xFFFFFFFF
BETA_FRAC = 16
MAX_SHIFT = 62


class ProtocolError(ValueError):
    """The board sent something malformed or not what was asked for."""


def unpack_exact(fmt: struct.Struct, payload: bytes, what: str) -> tuple:
    """``fmt.unpack(payload)`` with an error naming ``what`` when the length is wrong."""
    if len(payload) != fmt.size:
        raise ProtocolError(f"{what}: {len(payload)} bytes, expected {fmt.size}")
    return fmt.unpack(payload)


@dataclass(frozen=True)
class HelloInfo:
    """What a board says of itself in its HELLO response."""

    protocol_major: int
    protocol_minor: int
    firmware: tuple[int, int, int]
    max_payload: int
    device_id: int
    boot_id: int
    capabilities: Capability
    arena_size: int
    max_layers: int
    max_units: int
    max_batch: int
    max_steps: int
    max_weight_bits: int
    max_state_bits: int
    max_input_bits: int
    accumulator_bits: int
    ns_per_mac: int
    base_latency_us: int

    FORMAT = struct.Struct("<BBBBBBHIIIIHHHHBBBBII")

    @classmethod
    def unpack(cls, payload: bytes) -> "HelloInfo":
        v = unpack_exact(cls.FORMAT, payload, "HELLO response")
        return cls(v[0], v[1], (v[2], v[3], v[4]), v[6], v[7], v[8], Capability(v[9]), *v[10:])

    def pack(self) -> bytes:
        return self.FORMAT.pack(self.protocol_major, self.protocol_minor, *self.firmware, 0, self.max_payload,
                                self.device_id, self.boot_id, int(self.capabilities), self.arena_size,
                                self.max_layers, self.max_units, self.max_batch, self.max_steps,
                                self.max_weight_bits, self.max_state_bits, self.max_input_bits,
                                self.accumulator_bits, self.ns_per_mac, self.base_latency_us)

    def describe(self) -> str:
        return (f"protocol {self.protocol_major}.{self.protocol_minor}, firmware "
                f"{'.'.join(map(str, self.firmware))}, device 0x{self.device_id:08x}, arena {self.arena_size} B, "
                f"max batch {self.max_batch}, max payload {self.max_payload} B")


@dataclass(frozen=True)
class BoardStatus:
    """GET_STATUS: the board's counters."""

    uptime_ms: int
    boot_id: int
    rx_frames: int
    rx_dropped: int
    rx_bad_crc: int
    rx_overflow: int
    naks_sent: int
    replays: int
    requests: int
    version: int
    last_error: int
    configured: bool

    FORMAT = struct.Struct("<IIIIIIIIIIBBH")

    @classmethod
    def unpack(cls, payload: bytes) -> "BoardStatus":
        v = unpack_exact(cls.FORMAT, payload, "GET_STATUS response")
        return cls(*v[:10], v[10], bool(v[11]))


POOL_CODES = {"none": 0, "max": 1, "avg": 2}


@dataclass(frozen=True)
class ConvRecord:
    """The geometry of a conv layer (protocol 1.2): its input grid, channels, kernel and pooling."""

    in_channels: int
    in_height: int
    in_width: int
    channels: int
    kernel: int
    stride: int
    padding: int
    pool: int  # POOL_CODES
    pool_size: int  # 1 without pooling

    FORMAT = struct.Struct("<HHHHBBBBBB")

    def pack(self) -> bytes:
        return self.FORMAT.pack(self.in_channels, self.in_height, self.in_width, self.channels, self.kernel,
                                self.stride, self.padding, self.pool, self.pool_size, 0)


@dataclass(frozen=True)
class LayerRecord:
    units: int
    state_shift: int
    conv: ConvRecord | None = None  # a conv layer (kind 1); None for a dense one (kind 0)


@dataclass(frozen=True)
class NetworkRecord:
    """CONFIGURE's payload: the integer network's shape and per-layer constants (section 6)."""

    layers: tuple[LayerRecord, ...]
    input_size: int
    weight_bits: int
    state_bits: int
    input_bits: int
    max_batch: int
    alternating: bool = False
    untied: bool = False
    signed_input: bool = False
    classes: int = 0  # readout rows (CE); 0 without a readout
    nudge_shift: int = 0  # MSE: the nudge's left shift; CE: the CE nudge's right shift (docs/board_protocol.md)
    softmax_shift: int = 0  # CE: F_out + 15 - 6, the integer softmax's exponent shift; 0 otherwise

    HEAD = struct.Struct("<BBBBBBHH")
    LAYER = struct.Struct("<HbB")
    TAIL = struct.Struct("<HBB")

    def pack(self) -> bytes:
        flags = (self.alternating << 0) | (self.untied << 1) | ((self.classes > 0) << 2) | (self.signed_input << 3)
        out = self.HEAD.pack(len(self.layers), flags, self.weight_bits, self.state_bits, self.input_bits, 0,
                             self.max_batch, self.input_size)
        out += b"".join(self.LAYER.pack(g.units, g.state_shift, 0 if g.conv is None else 1) for g in self.layers)
        out += self.TAIL.pack(self.classes, self.nudge_shift, self.softmax_shift)
        return out + b"".join(g.conv.pack() for g in self.layers if g.conv is not None)

    def fan_in(self, layer: int) -> int:
        """Inputs of 1-based state layer ``layer``."""
        return self.input_size if layer == 1 else self.layers[layer - 2].units


def tensor_id(layer: int, slot: int) -> int:
    """The id of slot ``slot`` (0 W, 1 b, 2 B, 3 shift table) of 1-based layer ``layer`` (L+1 = readout)."""
    return 4 * (layer - 1) + slot


W, BIAS, FEEDBACK, SHIFTS = 0, 1, 2, 3


def hello_request(host_min: int = PROTOCOL_MAJOR, host_max: int = PROTOCOL_MAJOR) -> bytes:
    return struct.pack("<BB", host_min, host_max)
