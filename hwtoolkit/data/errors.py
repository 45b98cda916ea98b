"""Exceptions raised when a data set cannot be found or fails verification."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """No complete copy of a data set was found and none could be downloaded.

    `searched` holds every directory that was looked at, in search order.
    """

    def __init__(self, message: str, searched: list[Path]) -> None:
        super().__init__(message)
        self.searched = list(searched)

    def __str__(self) -> str:
        return str(self.args[0])


class ChecksumError(ValueError):
    """A data file's digest differs from the published one."""

    def __init__(self, path: Path | str, expected: str, actual: str, detail: str = "") -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        message = f"checksum mismatch for {self.path}: expected md5 {expected}, got {actual}"
        super().__init__(message + (f"; {detail}" if detail else ""))
