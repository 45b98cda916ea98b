"""Tests for hwtoolkit.training.checkpoint (atomic weights-only files) and hwtoolkit.training.rundir."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from hwtoolkit.files import write_text_atomic
from hwtoolkit.training import checkpoint
from hwtoolkit.training.checkpoint import FORMAT, CheckpointError
from hwtoolkit.training.rundir import RunDir


def payload() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "epoch": 3,
        "batch": 17,
        "best_val": 0.8125,
        "name": "run-a",
        "done": False,
        "params": {"w1": torch.randn(4, 3, generator=gen), "b1": torch.randn(4, generator=gen, dtype=torch.float64)},
        "optim": {"buffers": {"w1": torch.zeros(4, 3)}, "lrs": [0.1, 0.05]},
        "rng": torch.randint(0, 255, (8,), generator=gen, dtype=torch.uint8),
        "history": [{"epoch": 0, "acc": 0.5}, {"epoch": 1, "acc": 0.75}],
    }


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


# --------------------------------------------------------------------------- save / load


def test_round_trip_nested_tensors_and_numbers(tmp_path: Path) -> None:
    p = tmp_path / "ckpt" / "last.pt"  # parent directories are created
    data = payload()
    checkpoint.save(p, data)
    loaded = checkpoint.load(p)
    assert loaded["format"] == FORMAT
    assert_same({k: v for k, v in loaded.items() if k != "format"}, data)
    assert loaded["params"]["w1"].device.type == "cpu"


def test_save_does_not_mutate_payload(tmp_path: Path) -> None:
    data = {"epoch": 1}
    checkpoint.save(tmp_path / "a.pt", data)
    assert data == {"epoch": 1}


def test_save_overwrites_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "last.pt"
    checkpoint.save(p, {"epoch": 1})
    checkpoint.save(p, {"epoch": 2})
    assert checkpoint.load(p)["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "last.pt"
    checkpoint.save(p, {"epoch": 1, "w": torch.arange(5.0)})
    before = p.read_bytes()

    def broken_save(obj: object, f, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(p, {"epoch": 2, "w": torch.zeros(5)})
    monkeypatch.undo()

    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert checkpoint.load(p)["epoch"] == 1


def test_interrupted_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt (not an Exception) during writing is cleaned up too."""
    p = tmp_path / "last.pt"
    checkpoint.save(p, {"epoch": 1})
    before = p.read_bytes()

    def interrupted(obj: object, f, *args: object, **kwargs: object) -> None:
        f.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(p, {"epoch": 2})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(obj: object, f, *args: object, **kwargs: object) -> None:
        f.write(b"junk")
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.save(tmp_path / "last.pt", {"epoch": 0})
    assert os.listdir(tmp_path) == []


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "nothing.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(p))):
        checkpoint.load(p)


def test_load_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        checkpoint.load(tmp_path)


def _random_bytes(p: Path) -> None:
    p.write_bytes(bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(5),
                                      dtype=torch.uint8).tolist()))


def _dict_without_format(p: Path) -> None:
    torch.save({"epoch": 1, "w": torch.ones(2)}, p)


def _wrong_format(p: Path) -> None:
    torch.save({"format": "something-else/9", "epoch": 1}, p)


def _not_a_dict(p: Path) -> None:
    torch.save([torch.ones(2), 3], p)


def _module(p: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), p)


def _pickled_object(p: Path) -> None:
    p.write_bytes(pickle.dumps({"format": FORMAT, "obj": Path("/x")}, protocol=2))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize(
    "write",
    [_random_bytes, _dict_without_format, _wrong_format, _not_a_dict, _module, _pickled_object, _empty],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_load_rejects_non_checkpoints_naming_path(tmp_path: Path, write) -> None:
    p = tmp_path / "bad.pt"
    write(p)
    with pytest.raises(CheckpointError, match=re.escape(repr(str(p)))):
        checkpoint.load(p)


def test_load_accepts_str_path(tmp_path: Path) -> None:
    p = tmp_path / "c.pt"
    checkpoint.save(str(p), {"epoch": 5})
    assert checkpoint.load(str(p))["epoch"] == 5


# --------------------------------------------------------------------------- RunDir


def test_rundir_paths(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.config == tmp_path / "config.toml"
    assert run.metrics == tmp_path / "metrics.jsonl"
    assert run.summary == tmp_path / "summary.json"
    assert run.last_checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert run.best_checkpoint == tmp_path / "checkpoints" / "best.pt"
    assert run.plots == tmp_path / "plots"


def test_read_metrics_without_file_is_empty(tmp_path: Path) -> None:
    assert RunDir(tmp_path).read_metrics() == []


def test_append_and_read_metrics(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    records = [{"epoch": 0, "train_acc": 0.5, "split": "val"}, {"epoch": 1, "train_acc": 0.75, "nested": {"a": [1, 2]}}]
    for r in records:
        run.append_metrics(r)
    assert run.read_metrics() == records
    lines = run.metrics.read_text().splitlines()
    assert [json.loads(line) for line in lines] == records  # one JSON object per line


def test_read_metrics_skips_blank_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics.write_text('{"epoch": 0}\n\n  \n{"epoch": 1}\n')
    assert run.read_metrics() == [{"epoch": 0}, {"epoch": 1}]


def test_truncate_metrics_keeps_epochs_before(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    records = [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(5)] + [{"epoch": 2, "loss": 9.0}]
    for r in records:
        run.append_metrics(r)
    run.truncate_metrics(3)
    assert run.read_metrics() == [r for r in records if r["epoch"] < 3]
    # appending after truncation continues the file
    run.append_metrics({"epoch": 3, "loss": 0.1})
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left behind


def test_truncate_metrics_to_zero_empties(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 0})
    run.truncate_metrics(0)
    assert run.read_metrics() == []
    assert run.metrics.exists()


def test_truncate_metrics_without_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.truncate_metrics(2)
    assert run.read_metrics() == []


def test_write_summary(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_summary({"best_val": 0.9, "epochs": 3})
    assert json.loads(run.summary.read_text()) == {"best_val": 0.9, "epochs": 3}
    run.write_summary({"best_val": 0.95})
    assert json.loads(run.summary.read_text()) == {"best_val": 0.95}


def test_write_text_atomic_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.txt"
    write_text_atomic(p, "old\n")

    def failing_replace(src: str, dst: object) -> None:
        raise OSError("no rename today")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="no rename today"):
        write_text_atomic(p, "new\n")
    monkeypatch.undo()
    assert p.read_text() == "old\n"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]


def test_payload_may_not_overwrite_the_format_marker(tmp_path):
    from hwtoolkit.training import checkpoint as ckpt

    with pytest.raises(ValueError, match="format"):
        ckpt.save(tmp_path / "c.pt", {"format": "mine"})
    assert not (tmp_path / "c.pt").exists()
