"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian
uint32 per dimension, then the values in big-endian C order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"

DTYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file (bad header, wrong size, broken gzip)."""


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file, gzipped or plain, into a native-endian numpy array."""
    path = Path(path)
    return parse_idx(decompress(path.read_bytes(), path), path)


def decompress(data: bytes, source: Path) -> bytes:
    """Return the gunzipped content if `data` is gzip (by its magic bytes), else `data`."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as error:
        raise IdxFormatError(f"{source}: broken or truncated gzip stream ({error})") from error


def parse_idx(data: bytes, source: Path | str) -> np.ndarray:
    """Parse uncompressed IDX bytes; `source` names the file in error messages."""
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header (4 bytes at least)")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000 followed by a dtype code and ndim"
        )
    code, ndim = data[2], data[3]
    if code not in DTYPE_CODES:
        valid = ", ".join(f"0x{c:02x}" for c in DTYPE_CODES)
        raise IdxFormatError(f"{source}: unknown IDX dtype code 0x{code:02x}; valid codes are {valid}")
    if ndim == 0:
        raise IdxFormatError(f"{source}: IDX header declares 0 dimensions; at least 1 is needed")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{source}: truncated IDX header: {ndim} dimensions need {header_size} bytes, file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = DTYPE_CODES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        state = "truncated" if found < expected else "has trailing bytes"
        raise IdxFormatError(f"{source}: IDX data {state}: shape {dims} of {dtype.name} needs {expected} bytes, found {found}")
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)
    return values.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: Path | str, array: np.ndarray) -> None:
    """Write a uint8 array as IDX, gzipped when the path ends in .gz (for building test data)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx({path}): only uint8 arrays are supported, got dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx({path}): IDX needs 1 to 255 dimensions, got shape {array.shape}")
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array).tobytes()
    if path.name.endswith(".gz"):
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(payload)
    else:
        path.write_bytes(payload)
