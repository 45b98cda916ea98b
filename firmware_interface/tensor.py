"""The tensor encoding of payloads and of the ``.epqw`` weight file.

    tensor = dtype u8 | frac_bits i8 | ndim u8 | shape u16 * ndim | data (little-endian, row-major)

dtype codes: 0 i8, 1 i16, 2 i32, 3 u8, 4 u16; ``value = int * 2^-frac_bits``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

I8, I16, I32, U8, U16 = 0, 1, 2, 3, 4
DTYPES: dict[int, np.dtype] = {I8: np.dtype("<i1"), I16: np.dtype("<i2"), I32: np.dtype("<i4"), U8: np.dtype("u1"),
                               U16: np.dtype("<u2")}
NAMES = {I8: "i8", I16: "i16", I32: "i32", U8: "u8", U16: "u16"}
MAX_NDIM = 4


def header_size(ndim: int) -> int:
    """Bytes before a tensor's data: dtype, frac_bits, ndim and the shape."""
    return 3 + 2 * ndim


class TensorError(ValueError):
    """A tensor that cannot be encoded, or bytes that are not a valid tensor."""


@dataclass(frozen=True)
class Tensor:
    """Integers with their wire dtype and fractional bits."""

    data: np.ndarray
    frac: int
    code: int


def smallest_code(values: np.ndarray, signed: bool = True) -> int:
    """The smallest dtype code that holds every value (u8 for small unsigned data, else i8/i16/i32)."""
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if not signed and 0 <= lo and hi <= 255:
        return 3
    for code, bound in ((0, 127), (1, 32767), (2, 2**31 - 1)):
        if -bound - 1 <= lo and hi <= bound:
            return code
    raise TensorError(f"values in [{lo}, {hi}] do not fit in 32 bits")


def encode(values: np.ndarray, code: int, frac: int = 0, max_ndim: int = MAX_NDIM) -> bytes:
    """``values`` (integers) as a tensor of dtype ``code``; an error if a value does not fit the dtype."""
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        raise TensorError(f"values of dtype {values.dtype} are not integers")
    if code not in DTYPES:
        raise TensorError(f"dtype code {code} is invalid; valid: {NAMES}")
    if values.ndim > max_ndim or any(d > 0xFFFF for d in values.shape):
        raise TensorError(f"shape {values.shape} does not fit the encoding (at most {max_ndim} dimensions of "
                          f"at most 65535)")
    if not -128 <= frac <= 127:
        raise TensorError(f"frac_bits {frac} does not fit in an i8")
    dtype = DTYPES[code]
    info = np.iinfo(dtype)
    if values.size and (int(values.min()) < info.min or int(values.max()) > info.max):
        raise TensorError(f"values in [{int(values.min())}, {int(values.max())}] do not fit {NAMES[code]}")
    head = struct.pack("<BbB", code, frac, values.ndim) + struct.pack(f"<{values.ndim}H", *values.shape)
    return head + np.ascontiguousarray(values).astype(dtype).tobytes()


def decode(blob: bytes, offset: int = 0, *, expect_code: int | None = None, max_ndim: int = MAX_NDIM,
           exact: bool = True, what: str = "tensor") -> tuple[Tensor, int]:
    """Read one tensor at ``offset``; returns it and the offset after it.

    Every length is checked against ``blob``; with ``exact`` the tensor must end the blob.
    """
    if len(blob) - offset < 3:
        raise TensorError(f"{what}: {len(blob) - offset} bytes, too short for a tensor header")
    code, frac, ndim = struct.unpack_from("<BbB", blob, offset)
    if code not in DTYPES:
        raise TensorError(f"{what}: unknown dtype code {code}")
    if expect_code is not None and code != expect_code:
        raise TensorError(f"{what}: dtype {NAMES[code]}, expected {NAMES[expect_code]}")
    if ndim > max_ndim:
        raise TensorError(f"{what}: {ndim} dimensions, at most {max_ndim} allowed")
    pos = offset + 3
    if len(blob) - pos < 2 * ndim:
        raise TensorError(f"{what}: truncated shape")
    shape = struct.unpack_from(f"<{ndim}H", blob, pos)
    pos += 2 * ndim
    size = DTYPES[code].itemsize * math.prod(shape)
    if len(blob) - pos < size or (exact and len(blob) - pos != size):
        raise TensorError(f"{what}: shape {tuple(shape)} of {NAMES[code]} needs {size} data bytes, "
                          f"{len(blob) - pos} present")
    data = np.frombuffer(blob, DTYPES[code], math.prod(shape), pos).reshape(shape).copy()
    return Tensor(data, frac, code), pos + size
