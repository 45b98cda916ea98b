"""Consistent overhead byte stuffing: a body without zero bytes, so that ``0x00`` can end every frame."""

from __future__ import annotations


class CobsError(ValueError):
    """Bytes that are not a valid COBS encoding."""


def encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (without the trailing delimiter); the result holds no zero byte."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(255)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Invert ``encode``; ``CobsError`` on a zero byte or a code that runs past the end."""
    out = bytearray()
    i, n = 0, len(data)
    if n == 0:
        raise CobsError("empty COBS block")
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte at offset {i} inside a COBS block")
        end = i + code
        if end > n:
            raise CobsError(f"code {code} at offset {i} runs past the end ({n} bytes)")
        block = data[i + 1:end]
        if 0 in block:
            raise CobsError(f"zero byte inside a COBS block at offset {i + 1 + block.index(0)}")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(size: int) -> int:
    """The longest encoding of ``size`` bytes, without the delimiter."""
    return size + size // 254 + 1
