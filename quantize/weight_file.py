"""The integer weight file (``.epqw``) a board loader reads: every parameter in its fixed-point format.

Little-endian throughout; the tensor records use the payload encoding of the board protocol::

    file    = magic "EPQW" | version u8 (=1) | reserved u8 (=0) | count u16 | record * count | crc32 u32
    record  = name_len u8 | name (ASCII) | tensor
    tensor  = dtype u8 (0 i8, 1 i16, 2 i32, 3 u8) | frac_bits i8 | ndim u8 | shape u16 * ndim | data, row-major

``frac_bits`` gives ``value = int * 2^-frac_bits``. A tensor with one format per output row (per-channel
weights, their biases) has ``frac_bits = -128`` and a companion record ``<name>.frac`` (i8, one per row).
The record ``meta`` (u8) holds UTF-8 JSON: the network spec, every format, the accumulator width and the
per-layer shifts. The CRC-32 (zlib) covers every byte before it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch

from firmware_interface import tensor
from hwtoolkit.files import write_bytes_atomic

MAGIC = b"EPQW"
VERSION = 1
PER_ROW = -128


class WeightFileError(ValueError):
    """A weight file is malformed, truncated, corrupted or of another version."""


def encode_tensor(data: torch.Tensor, frac: int, signed: bool = True) -> bytes:
    """One tensor in the protocol's payload encoding (the smallest integer type that holds it)."""
    values = data.detach().cpu().numpy()
    try:
        return tensor.encode(values, tensor.smallest_code(values, signed), frac, max_ndim=255)
    except tensor.TensorError as e:
        raise WeightFileError(str(e)) from None


def write(path: str | Path, tensors: dict[str, tuple[torch.Tensor, torch.Tensor, bool]], meta: dict) -> None:
    """Write ``name -> (integers, frac bits (scalar or per row), signed)`` and ``meta``, atomically."""
    records: list[bytes] = [_record("meta", encode_tensor(torch.tensor(list(json.dumps(meta).encode()),
                                                                       dtype=torch.uint8), 0, False))]
    for name, (data, frac, signed) in tensors.items():
        if frac.dim() == 0:
            records.append(_record(name, encode_tensor(data, int(frac), signed)))
        else:
            records.append(_record(name, encode_tensor(data, PER_ROW, signed)))
            records.append(_record(f"{name}.frac", encode_tensor(frac.to(torch.int8), 0)))
    if len(records) > 0xFFFF:
        raise WeightFileError(f"{len(records)} records do not fit the u16 count")
    body = MAGIC + struct.pack("<BBH", VERSION, 0, len(records)) + b"".join(records)
    blob = body + struct.pack("<I", zlib.crc32(body))
    write_bytes_atomic(Path(path), blob)


def _record(name: str, tensor: bytes) -> bytes:
    raw = name.encode("ascii")
    if not 1 <= len(raw) <= 255:
        raise WeightFileError(f"record name {name!r} must be 1 to 255 ASCII bytes")
    return struct.pack("<B", len(raw)) + raw + tensor


class _Reader:
    def __init__(self, blob: bytes, where: str) -> None:
        self.blob, self.pos, self.where = blob, 0, where

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.blob):
            raise WeightFileError(f"{self.where}: truncated while reading {what} at byte {self.pos}")
        out = self.blob[self.pos:self.pos + n]
        self.pos += n
        return out


def read(path: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Read a weight file: ``name -> (integers (int64), frac bits)`` and the meta table; checks CRC and bounds."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise WeightFileError(f"cannot read weight file {str(path)!r}: {e}") from None
    where = str(path)
    if len(blob) < 12 or blob[:4] != MAGIC:
        raise WeightFileError(f"{where}: not an EPQW weight file (bad magic)")
    body, (crc,) = blob[:-4], struct.unpack("<I", blob[-4:])
    if zlib.crc32(body) != crc:
        raise WeightFileError(f"{where}: CRC mismatch (file corrupted or truncated)")
    r = _Reader(body, where)
    r.take(4, "magic")
    version, _, count = struct.unpack("<BBH", r.take(4, "header"))
    if version != VERSION:
        raise WeightFileError(f"{where}: version {version}, this reader understands {VERSION}")
    raw: dict[str, tuple[torch.Tensor, int]] = {}
    for _ in range(count):
        (n,) = struct.unpack("<B", r.take(1, "name length"))
        name = r.take(n, "name").decode("ascii", errors="replace")
        try:
            t, r.pos = tensor.decode(body, r.pos, max_ndim=255, exact=False, what=f"{where}: record {name!r}")
        except tensor.TensorError as e:
            raise WeightFileError(str(e)) from None
        if t.code == tensor.U16:
            raise WeightFileError(f"{where}: record {name!r} has dtype u16, which weight files do not use")
        if name in raw:
            raise WeightFileError(f"{where}: record {name!r} appears twice")
        raw[name] = (torch.from_numpy(t.data.astype("int64")), t.frac)
    if r.pos != len(body):
        raise WeightFileError(f"{where}: {len(body) - r.pos} unexpected bytes after the last record")
    if "meta" not in raw:
        raise WeightFileError(f"{where}: no meta record")
    try:
        meta = json.loads(bytes(raw.pop("meta")[0].to(torch.uint8).tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise WeightFileError(f"{where}: the meta record is not UTF-8 JSON: {e}") from None
    if not isinstance(meta, dict):
        raise WeightFileError(f"{where}: the meta record is {type(meta).__name__}, expected a JSON object")
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (data, frac) in raw.items():
        if name.endswith(".frac"):
            continue
        if frac == PER_ROW:
            if f"{name}.frac" not in raw:
                raise WeightFileError(f"{where}: {name!r} has per-row formats but no {name}.frac record")
            rows = raw[f"{name}.frac"][0]
            if rows.shape != (data.shape[0],):
                raise WeightFileError(f"{where}: {name}.frac has shape {tuple(rows.shape)}, expected ({data.shape[0]},)")
            out[name] = (data, rows)
        else:
            out[name] = (data, torch.tensor(frac))
    return out, meta
