"""Packed tensors (docs/board_protocol.md, section 4.1): the encoder of the host and a reference decoder.

A packed tensor carries the same integers as a dense one (section 4) in three Rice-coded bit streams: the
lengths of the runs of zeros, the lengths of the runs of nonzero values (less one), and the nonzero values
(zigzag-coded differences from a predictor: none, the previous nonzero value, or JPEG-LS's median edge
detector over rows of ``width`` elements). Sparse weight differences shrink by 5x to 9x, images with a
blank background by about 1.7x. APPLY_DELTA_PACKED and SET_INPUT_PACKED carry them to a board that offers
``Capability.PACKED``.

    packed = dtype u8 | flags u8 | ndim u8 | shape u16 x ndim | k_zero u8 | k_lit u8 | k_val u8 | reserved u8
             | width u16 | zero_bytes u16 | lit_bytes u16 | zero-run stream | literal-run stream | value stream
"""

from __future__ import annotations

import struct

import numpy as np

from .tensor import DTYPES, TensorError

PRED_NONE, PRED_PREV, PRED_MED = 0, 1, 2  # flags bits 0-1: what a nonzero value is coded against
ESCAPE = 16  # a unary prefix of 16 ones: the (zigzag) value follows as 32 raw bits
MAX_K = 31
UNPACKED_FACTOR = 8  # a packed tensor decodes to at most 8 x the board's maximum payload in bytes
_U32 = 0xFFFFFFFF


def _range(code: int) -> tuple[int, int]:
    info = np.iinfo(DTYPES[code])
    return int(info.min), int(info.max)


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def _lengths(u: np.ndarray, k: int) -> np.ndarray:
    q = u >> np.uint64(k)
    return np.where(q < ESCAPE, q + np.uint64(1 + k), np.uint64(ESCAPE + 32))


def best_k(u: np.ndarray) -> int:
    """The Rice parameter that codes ``u`` (unsigned) in the fewest bits (searched near log2 of the mean)."""
    return _best(u)[0]


def _best(u: np.ndarray) -> tuple[int, int]:
    """``(k, bits)``: the best Rice parameter for ``u`` and the bits it takes."""
    if u.size == 0:
        return 0, 0
    centre = int(np.log2(float(u.mean()) + 1.0))
    costs = [(int(_lengths(u, k).sum()), k) for k in range(max(0, centre - 2), min(MAX_K, centre + 2) + 1)]
    bits, k = min(costs)
    return k, bits


def rice_stream(u: np.ndarray, k: int) -> bytes:
    """``u`` (unsigned, each < 2^32) as Rice codes of parameter ``k``, MSB first, the last byte padded with 0s."""
    if u.size == 0:
        return b""
    u = u.astype(np.uint64)
    q = (u >> np.uint64(k)).astype(np.int64)
    esc = q >= ESCAPE
    ones = np.where(esc, ESCAPE, q)
    width = np.where(esc, 32, k)
    lengths = np.where(esc, ESCAPE + 32, q + 1 + k)
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), np.uint8)
    total = int(ones.sum())
    if total:
        first = np.cumsum(ones) - ones
        bits[np.repeat(starts, ones) + (np.arange(total) - np.repeat(first, ones))] = 1
    base = starts + np.where(esc, ESCAPE, q + 1)
    for b in range(32):
        m = width > b
        if not m.any():
            break
        shift = (width[m] - 1 - b).astype(np.uint64)
        bits[base[m] + b] = ((u[m] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def _med(flat: np.ndarray, width: int) -> np.ndarray:
    """The median edge detector's prediction of every element from its left, upper and upper-left neighbours
    in rows of ``width`` elements (0 outside)."""
    col = np.arange(flat.size) % width
    a = np.where(col > 0, np.concatenate(([0], flat[:-1])), 0)
    b = np.concatenate((np.zeros(min(width, flat.size), np.int64), flat[:-width] if width < flat.size else []))
    c = np.where(col > 0, np.concatenate((np.zeros(min(width + 1, flat.size), np.int64),
                                          flat[:-width - 1] if width + 1 < flat.size else [])), 0)
    mx, mn = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= mx, mn, np.where(c <= mn, mx, a + b - c))


def _split(values: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(flat, nonzero mask, zero-run lengths, literal-run lengths less one)`` of ``values``, checked."""
    if code not in DTYPES:
        raise TensorError(f"unknown dtype code {code}")
    arr = np.asarray(values)
    if arr.ndim > 4 or any(s > 0xFFFF for s in arr.shape):
        raise TensorError(f"shape {arr.shape} cannot be encoded (at most 4 dims of at most 65535)")
    flat = arr.reshape(-1).astype(np.int64)
    lo, hi = _range(code)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise TensorError(f"values outside dtype code {code}")
    nz = flat != 0
    edges = np.diff(np.concatenate(([0], nz.astype(np.int8), [0])))
    lit_starts, lit_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    zeros = lit_starts - np.concatenate(([0], lit_ends[:-1]))
    end = int(lit_ends[-1]) if lit_ends.size else 0
    if end < flat.size:
        zeros = np.concatenate((zeros, [flat.size - end]))
    return flat, nz, zeros.astype(np.uint64), (lit_ends - lit_starts - 1).astype(np.uint64)


def _residuals(flat: np.ndarray, nz: np.ndarray, predictor: int, width: int) -> np.ndarray:
    """The zigzag-coded nonzero values less their predictions."""
    if predictor not in (PRED_NONE, PRED_PREV, PRED_MED) or (predictor == PRED_MED) != (width > 0) \
            or width > 0xFFFF:
        raise TensorError(f"predictor {predictor} with width {width} is invalid")
    literals = flat[nz]
    if predictor == PRED_PREV:
        literals = np.diff(literals, prepend=0)
    elif predictor == PRED_MED:
        literals = literals - _med(flat, width)[nz]
    if literals.size and (literals.min() < -2**31 or literals.max() > 2**31 - 1):
        raise TensorError("differences beyond 32 bits cannot be coded")
    return _zigzag(literals)


def _pack(shape: tuple[int, ...], code: int, predictor: int, width: int, streams: list[np.ndarray]) -> bytes:
    ks, data = [], []
    for u in streams:
        k = best_k(u)
        ks.append(k)
        data.append(rice_stream(u, k))
    if len(data[0]) > 0xFFFF or len(data[1]) > 0xFFFF:
        raise TensorError("a run-length stream longer than 65535 bytes")
    head = struct.pack(f"<BBB{len(shape)}H", code, predictor, len(shape), *shape)
    return head + struct.pack("<BBBBHHH", *ks, 0, width, len(data[0]), len(data[1])) + b"".join(data)


def encode(values: np.ndarray, code: int, predictor: int = PRED_NONE, width: int = 0) -> bytes:
    """A packed tensor of ``values`` (its shape; integers within dtype ``code``); ``width``: the row length of
    the ``PRED_MED`` predictor (e.g. an image's width)."""
    flat, nz, zeros, lits = _split(values, code)
    return _pack(np.shape(values), code, predictor, width, [zeros, lits, _residuals(flat, nz, predictor, width)])


def encode_best(values: np.ndarray, code: int, width: int = 0) -> bytes:
    """The smallest packed encoding of ``values``: no predictor, the previous value, or (``width > 0``) the
    median edge detector over rows of ``width`` (the run streams are the same for all three)."""
    flat, nz, zeros, lits = _split(values, code)
    best = None
    for predictor, w in ((PRED_NONE, 0), (PRED_PREV, 0), (PRED_MED, width)):
        if predictor == PRED_MED and not 0 < width <= 0xFFFF:
            continue
        try:
            u = _residuals(flat, nz, predictor, w)
        except TensorError:
            continue
        bits = _best(u)[1]
        if best is None or bits < best[0]:
            best = (bits, predictor, w, u)
    return _pack(np.shape(values), code, best[1], best[2], [zeros, lits, best[3]])


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        x = 0
        for _ in range(n):
            if self.pos >= 8 * len(self.data):
                raise TensorError("packed stream overrun")
            x = (x << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return x

    def rice(self, k: int) -> int:
        q = 0
        while self.read(1):
            q += 1
            if q == ESCAPE:
                return self.read(32)
        x = (q << k) | self.read(k)
        if x > _U32:
            raise TensorError("packed value beyond 32 bits")
        return x

    def consumed(self) -> bool:
        if (self.pos + 7) // 8 != len(self.data):
            return False
        return not self.pos & 7 or self.data[-1] & (0xFF >> (self.pos & 7)) == 0


def decode(payload: bytes, max_bytes: int | None = None) -> tuple[np.ndarray, int]:
    """``(values, code)`` of a packed tensor filling ``payload`` exactly: the board's decoder, in Python."""
    if len(payload) < 3:
        raise TensorError("packed tensor header cut short")
    code, flags, ndim = payload[0], payload[1], payload[2]
    if code not in DTYPES or ndim > 4 or flags > PRED_MED:
        raise TensorError(f"packed tensor: dtype {code}, flags {flags}, ndim {ndim} invalid")
    head = 3 + 2 * ndim + 10
    if len(payload) < head:
        raise TensorError("packed tensor header cut short")
    shape = struct.unpack_from(f"<{ndim}H", payload, 3)
    kz, kl, kv, reserved, width, zb, lb = struct.unpack_from("<BBBBHHH", payload, 3 + 2 * ndim)
    if max(kz, kl, kv) > MAX_K or reserved or (flags == PRED_MED) != (width > 0):
        raise TensorError("packed tensor: k > 31, reserved byte set, or width invalid for the predictor")
    if zb + lb > len(payload) - head:
        raise TensorError("packed tensor: stream lengths beyond the payload")
    count = int(np.prod(shape, dtype=np.int64)) if ndim else 1
    item = DTYPES[code].itemsize
    if max_bytes is not None and count * item > max_bytes:
        raise TensorError(f"packed tensor decodes to {count * item} bytes, more than {max_bytes}")
    zs, ls = _Bits(payload[head:head + zb]), _Bits(payload[head + zb:head + zb + lb])
    vs = _Bits(payload[head + zb + lb:])
    lo, hi = _range(code)
    out = np.zeros(count, np.int64)
    pos, prev = 0, 0
    while pos < count:
        run = zs.rice(kz)
        if run > count - pos:
            raise TensorError("zero run past the end")
        pos += run
        if pos == count:
            break
        run = ls.rice(kl)
        if run >= count - pos:
            raise TensorError("literal run past the end")
        for _ in range(run + 1):
            r = vs.rice(kv)
            x = (r >> 1) ^ -(r & 1)
            if flags == PRED_PREV:
                x += prev
            elif flags == PRED_MED:
                col = pos % width
                a = int(out[pos - 1]) if col else 0
                b = int(out[pos - width]) if pos >= width else 0
                c = int(out[pos - width - 1]) if col and pos >= width else 0
                x += min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c
            if not lo <= x <= hi:
                raise TensorError(f"packed value {x} outside dtype code {code}")
            out[pos] = prev = x
            pos += 1
    if not (zs.consumed() and ls.consumed() and vs.consumed()):
        raise TensorError("packed tensor: unused stream bytes or nonzero padding")
    return out.astype(DTYPES[code]).reshape(shape), code
