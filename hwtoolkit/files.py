"""Atomic file writing and directory locks.

A reader of a file written here sees the old file or the new one, never a partial one, and no temporary file
is left behind on any exit path (exceptions, ``KeyboardInterrupt`` and, through the command line's handler,
SIGTERM included). A directory that a process writes into (a run, a sweep) is locked for the life of that
process, so that a second writer fails at once instead of mixing two runs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


def temp_file_next_to(path: Path) -> Path:
    """An empty temporary file in ``path``'s directory, with the usual file mode, to be renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
    return Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is synced and renamed over ``path``, else removed."""
    path = Path(path)
    tmp = temp_file_next_to(path)
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # makes the rename itself durable


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_path``: never a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``."""
    write_bytes_atomic(path, text.encode())


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


LOCK_FILE = ".lock"


class DirectoryLockedError(RuntimeError):
    """Another process holds the directory's lock."""


@contextmanager
def locked_directory(path: str | Path, what: str = "directory") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs.

    The lock is an ``flock`` on ``path/.lock``: the kernel releases it when the process ends however it ends,
    so a killed writer never blocks the next one; the file itself stays and means nothing unless held.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise DirectoryLockedError(f"{what} {str(path)!r} is in use by process {holder}; wait for it to "
                                       f"end or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files ``atomic_path`` leaves only when a process is killed mid-write.

    Call it only while holding the directory's lock: then no writer can still own one.
    """
    stale = sorted(Path(directory).glob(".*.tmp")) if Path(directory).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def remove_if_unused(directory: str | Path) -> None:
    """Remove a directory that holds nothing but its lock file (one a failed writer created)."""
    directory = Path(directory)
    if directory.is_dir() and {p.name for p in directory.iterdir()} <= {LOCK_FILE}:
        (directory / LOCK_FILE).unlink(missing_ok=True)
        directory.rmdir()


def check_output_dir(out: Path, resume: bool, what: str, error: Callable[[str], Exception],
                     kept: str = "") -> None:
    """``--out`` of a sweep or study: a directory (or nothing yet), empty but for its lock unless resumed."""
    if out.exists() and not out.is_dir():
        raise error(f"--out {str(out)!r} is a file, not a directory")
    if not resume and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise error(f"--out {str(out)!r} already exists and is not empty; pass --resume to continue the {what} "
                    f"there{kept} or choose another --out")


def check_same_spec(out: Path, spec_file: str, spec: Mapping[str, Any], what: str,
                    error: Callable[[str], Exception]) -> None:
    """On ``--resume``: ``out/spec_file`` must record this very ``spec`` (JSON-safe), never another study's."""
    path = out / spec_file
    if not path.exists():
        raise error(f"--resume: {str(out)!r} holds no {what} to continue (no {spec_file}); leave out --resume "
                    f"to start one in a new directory")
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise error(f"--resume: {str(path)!r} cannot be read: {e}") from None
    differ = [k for k in spec if stored.get(k) != spec[k]]
    if differ:
        shown = "; ".join(f"{k}: {stored.get(k)!r} -> {spec[k]!r}" for k in differ if k != "config")
        raise error(f"--resume: {str(out)!r} holds another {what} (different {', '.join(differ)}"
                    f"{': ' + shown if shown else ''}); choose another --out")
