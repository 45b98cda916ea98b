"""Tests for hwtoolkit.files: atomic writes leave the old file or the new one, and never a temporary file."""

from __future__ import annotations

import builtins
import io
import os
import threading
from pathlib import Path

import pytest

from hwtoolkit import files
from hwtoolkit.files import atomic_path, write_bytes_atomic, write_text_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writes_bytes_and_text_creating_parents(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "x.bin"
    write_bytes_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    write_text_atomic(str(p), "µ\n")  # UTF-8 whatever the locale
    assert p.read_bytes() == "µ\n".encode("utf-8")
    assert os.listdir(p.parent) == ["x.bin"]
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~_umask()  # the usual mode, not mkstemp's private one


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    p = tmp_path / "out.onnx"
    p.write_text("old")
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and tmp != p and tmp.exists()
        tmp.write_text("new")
        assert p.read_text() == "old"
    assert p.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.onnx"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "first"])
def test_atomic_path_removes_the_temporary_when_the_body_fails(tmp_path: Path, error: BaseException,
                                                               existing: bool) -> None:
    p = tmp_path / "c.pt"
    if existing:
        p.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half a fi")
            raise error
    assert os.listdir(tmp_path) == (["c.pt"] if existing else [])
    if existing:
        assert p.read_bytes() == b"old"


@pytest.mark.parametrize("step", ["fsync", "replace"])
@pytest.mark.parametrize("writer", ["bytes", "text"])
def test_a_failing_sync_or_rename_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      step: str, writer: str) -> None:
    p = tmp_path / "x.json"
    write_text_atomic(p, "old\n")

    def fail(*args: object) -> None:
        raise OSError(f"no {step} today")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match=f"no {step} today"):
        if writer == "bytes":
            write_bytes_atomic(p, b"new\n")
        else:
            write_text_atomic(p, "new\n")
    monkeypatch.undo()
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.json"]


def test_a_failing_write_leaves_no_temporary(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "x", "not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_the_target_is_never_opened_for_writing_and_is_replaced_whole_after_a_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a reader of the target can see: the old content up to the rename, then the whole new content."""
    p = tmp_path / "sweep.json"
    write_text_atomic(p, "old")
    new = "new " * 100_000
    events: list[tuple] = []
    real_open, real_os_open, real_fsync, real_replace = io.open, os.open, os.fsync, os.replace

    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            events.append(("write-open", Path(file)))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            events.append(("write-open", Path(path)))
        return real_os_open(path, flags, *args, **kwargs)

    def spy_fsync(fd: int) -> None:
        events.append(("fsync",))
        real_fsync(fd)

    def spy_replace(src, dst) -> None:
        events.append(("replace", Path(src).read_text(), Path(dst).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    write_text_atomic(p, new)
    monkeypatch.undo()

    assert p.read_text() == new
    assert ("write-open", p) not in events
    replace = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert events[replace][1:] == (new, "old")  # the temporary is complete, the target still old
    assert ("fsync",) in events[:replace]  # the new content is on disk before the rename


def test_a_concurrent_reader_only_ever_sees_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "data.bin"
    versions = [bytes([65 + k]) * (1 << 21) for k in range(2)]
    write_bytes_atomic(p, versions[0])
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = p.read_bytes()
            if data not in versions:
                seen.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(30):
            write_bytes_atomic(p, versions[k % 2])
    finally:
        done.set()
        reader.join()
    assert [len(d) for d in seen] == []
    assert os.listdir(tmp_path) == ["data.bin"]


def test_temp_file_next_to_is_hidden_empty_and_in_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "new" / "w.epqw"
    tmp = files.temp_file_next_to(target)
    assert tmp.parent == target.parent and tmp.name.startswith(".w.epqw.") and tmp.read_bytes() == b""
    assert not target.exists()
