"""Seed inputs for fuzz_frames: a small network configured, written, relaxed and read, in the harness's
record format (mode byte 0x03: records, HELLO first); dense networks and conv networks (protocol 1.2).
Usage: python3 make_seeds.py DIR"""

import random
import struct
import zlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from firmware_interface import packed  # noqa: E402  (the host's encoder of packed tensors)


def rec(cmd: int, payload: bytes) -> bytes:
    assert len(payload) < 255
    return bytes([len(payload) + 1, cmd]) + payload


def tensor(dtype: int, fmt: str, values, shape) -> bytes:
    return struct.pack(f"<BbB{len(shape)}H", dtype, 0, len(shape), *shape) + struct.pack(f"<{len(values)}{fmt}", *values)


def session(rng: random.Random, flags: int) -> bytes:
    units, inp, ce = [4, 3], 5, flags & 4
    out = rec(0x05, struct.pack("<BBBBBBHH", 2, flags, 6, 4, 4, 0, 4, inp)
              + b"".join(struct.pack("<HbB", u, 6, 0) for u in units) + struct.pack("<HBB", 2 if ce else 0, 0 if ce else 3, 0))
    fan = [inp, units[0]]
    ids = [(0, units[0] * fan[0]), (1, units[0]), (3, 3 * units[0]), (4, units[1] * fan[1]), (5, units[1]), (7, 3 * units[1])]
    if flags & 2:
        ids.append((6, units[1] * fan[1]))
    if ce:
        ids += [(8, 2 * units[1]), (9, 2), (11, 2)]
    for tid, n in ids:
        if tid % 4 == 1:
            t = tensor(2, "i", [rng.randrange(-200, 200) for _ in range(n)], (n,))
        elif tid % 4 == 3:
            t = tensor(3, "B", [rng.randrange(3) if i < 2 * n // 3 or tid == 11 else 0 for i in range(n)], (n,))
        else:
            t = tensor(0, "b", [rng.randrange(-31, 32) for _ in range(n)], (n,))
        out += rec(0x06, struct.pack("<BBI", tid, 0, 0) + t)
        out += rec(0x08, struct.pack("<BBII", tid, 0, zlib.crc32(t[5:]) ^ (tid == 5), 1))  # id 5: a mismatch
        out += rec(0x08, struct.pack("<BBII", tid, 0, zlib.crc32(t[5:]), 1))
        out += rec(0x0F, bytes([tid]))
    out += rec(0x0A, struct.pack("<HH", 2, 0) + tensor(3, "B", [rng.randrange(16) for _ in range(10)], (2, 5)))
    out += rec(0x0B, struct.pack("<H", 0) + tensor(3, "B", [1, 0], (2,)))
    out += rec(0x0C, struct.pack("<BBHiI", 0, 0, 5, 0, 0xFFFFFFFF))
    out += rec(0x0C, struct.pack("<BBHiI", 1, 2, 3, 32768, 2))
    out += rec(0x0D, struct.pack("<BBHH", 0, 1, 0, 2)) + rec(0x0D, struct.pack("<BBHH", 1, 0xF0, 0, 2))
    out += rec(0x0D, struct.pack("<BBHH", 3, 0xF1, 0, 2))
    out += rec(0x09, struct.pack("<BBII", 0, 0, 1, 0) + tensor(0, "b", [5, -5], (2,)))
    # the packed commands (protocol 1.1): sparse increments, the three predictors
    out += rec(0x11, struct.pack("<BBII", 0, 0, 2, 1) + packed.encode([0, 3, 0, 0, -2, 1, 0, 0, 0, 7], 0))
    out += rec(0x11, struct.pack("<BBII", 1, 0, 3, 0) + packed.encode([rng.randrange(-900, 900) for _ in range(4)], 2))
    out += rec(0x12, struct.pack("<HH", 2, 0) + packed.encode(
        [[0, 0, rng.randrange(16), rng.randrange(16), 0], [0, 1, 15, 14, 0]], 3, packed.PRED_MED, 5))
    out += rec(0x12, struct.pack("<HH", 2, 1) + packed.encode([[1, 2, 3, 0, 5]], 3, packed.PRED_PREV))
    out += rec(0x10, struct.pack("<BBH", 2, 0, 0) + tensor(3, "B", [1, 2, 3], (1, 3)))
    out += rec(0x07, struct.pack("<BBIH", 0, 0, 0, 4)) + rec(0x04, struct.pack("<I", 15)) + rec(0x0E, b"")
    return bytes([0x03]) + out


def conv_session(rng: random.Random, flags: int, pool: int) -> bytes:
    """A conv layer (1x4x4 input, 2 channels 3x3 padded, 2x2 pool ``pool``: 1 max, 2 average; 8 units) under a
    dense MSE layer of 3, configured, written, relaxed free and nudged, and read back."""
    out = rec(0x05, struct.pack("<BBBBBBHH", 2, flags & 3, 6, 4, 4, 0, 4, 16) + struct.pack("<HbBHbB", 8, 6, 1, 3, 6, 0)
              + struct.pack("<HBB", 0, 3, 0) + struct.pack("<HHHHBBBBBB", 1, 4, 4, 2, 3, 1, 1, pool, 2, 0))
    ids = [(0, 18), (1, 2), (3, 6), (4, 24), (5, 3), (7, 9)] + ([(6, 24)] if flags & 2 else [])
    for tid, n in ids:
        if tid % 4 == 1:
            t = tensor(2, "i", [rng.randrange(-200, 200) for _ in range(n)], (n,))
        elif tid % 4 == 3:
            t = tensor(3, "B", [rng.randrange(3) if i < 2 * n // 3 else 0 for i in range(n)], (n,))
        else:
            t = tensor(0, "b", [rng.randrange(-31, 32) for _ in range(n)], (n,))
        out += rec(0x06, struct.pack("<BBI", tid, 0, 0) + t)
        out += rec(0x08, struct.pack("<BBII", tid, 0, zlib.crc32(t[5:]), 1))
    out += rec(0x0A, struct.pack("<HH", 2, 0) + tensor(3, "B", [rng.randrange(16) for _ in range(32)], (2, 16)))
    out += rec(0x0B, struct.pack("<H", 0) + tensor(3, "B", [1, 0], (2,)))
    out += rec(0x0C, struct.pack("<BBHiI", 0, 0, 5, 0, 0xFFFFFFFF))
    out += rec(0x0C, struct.pack("<BBHiI", 1, 2, 3, 32768, 2))
    out += rec(0x0D, struct.pack("<BBHH", 1, 1, 0, 2))
    out += rec(0x09, struct.pack("<BBII", 0, 0, 1, 0) + tensor(0, "b", [5, -5], (2,)))
    return bytes([0x03]) + out


if __name__ == "__main__":
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    for flags in range(16):
        (root / f"seed_{flags:02d}").write_bytes(session(random.Random(flags), flags & 0x0F))
    for flags in range(4):
        for pool in (1, 2):
            (root / f"seed_conv_{flags}_{pool}").write_bytes(conv_session(random.Random(flags), flags, pool))
