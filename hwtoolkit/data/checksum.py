"""Checking a data file's bytes against the published md5.

A file may be stored as published or, for .gz files, decompressed. A .gz whose
own md5 differs (a recompressed copy, e.g. Debian's) passes if its content
matches `raw_md5`. A decompressed copy passes if it matches `raw_md5`; when no
`raw_md5` is known its digest is not checked, and the loader's checks of the
IDX header and of the expected sample count are all that stand in for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ChecksumError
from .idx import decompress
from .registry import FileSpec


def md5_hex(data: bytes) -> str:
    """The md5 hex digest of `data`."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def verified_content(stored: bytes, path: Path, spec: FileSpec) -> bytes:
    """Return the (decompressed) content of a file after checking it against `spec`.

    Raises ChecksumError naming the file, the expected and the actual digest.
    """
    if not spec.name.endswith(".gz"):
        _expect(path, spec.md5, md5_hex(stored))
        return stored
    if not stored.startswith(b"\x1f\x8b"):
        if spec.raw_md5 is not None:
            _expect(path, spec.raw_md5, md5_hex(stored), f"md5 of the decompressed {spec.name}")
        return stored
    actual = md5_hex(stored)
    if actual == spec.md5:
        return decompress(stored, path)
    if spec.raw_md5 is None:
        raise ChecksumError(path, spec.md5, actual)
    content = decompress(stored, path)
    content_md5 = md5_hex(content)
    if content_md5 != spec.raw_md5:
        raise ChecksumError(
            path, spec.md5, actual,
            detail=f"its decompressed content has md5 {content_md5}, expected {spec.raw_md5}",
        )
    return content


def _expect(path: Path, expected: str, actual: str, detail: str = "") -> None:
    if actual != expected:
        raise ChecksumError(path, expected, actual, detail)
