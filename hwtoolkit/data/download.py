"""Fetching a published file into a directory: temp file, md5 check, atomic rename.

A failed or mismatching download never leaves a file behind under the final
name or as a temp file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Sequence

from .errors import ChecksumError
from .registry import FileSpec

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


class DownloadError(OSError):
    """Every URL for a file failed; `failures` holds (url, error) pairs."""

    def __init__(self, spec: FileSpec, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        lines = "; ".join(f"{url}: {error}" for url, error in failures)
        super().__init__(f"could not download {spec.name} ({lines})")


def open_url(url: str, timeout: float) -> BinaryIO:
    """Open a URL for reading (a seam the tests replace)."""
    return urllib.request.urlopen(url, timeout=timeout)


def fetch_file(spec: FileSpec, urls: Sequence[str], directory: Path) -> Path:
    """Download `spec` from the first URL that works into directory/spec.name and return that path.

    Network failures move on to the next URL, then raise DownloadError; a wrong md5
    raises ChecksumError at once.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec.name
    failures: list[tuple[str, BaseException]] = []
    for url in urls:
        log.info("downloading %s to %s", url, target)
        try:
            _fetch_to(url, spec, target)
            return target
        except (OSError, http.client.HTTPException) as error:
            failures.append((url, error))
    raise DownloadError(spec, failures)


def _fetch_to(url: str, spec: FileSpec, target: Path) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out, open_url(url, TIMEOUT_S) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.md5:
            raise ChecksumError(target, spec.md5, digest.hexdigest(), detail=f"downloaded from {url}; nothing was kept")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
