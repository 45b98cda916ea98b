"""The edges a user meets: one writer per run directory, exports that never destroy their input, resumption
rules, cleanup of what a killed process leaves, and clear errors for malformed files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_text
from hwtoolkit import config
from hwtoolkit.cli import main
from hwtoolkit.files import LOCK_FILE, locked_directory
from hwtoolkit.training import checkpoint
from hwtoolkit.training.loop import config_difference

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, idx_dataset: Path, epochs: int = 2, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(idx_dataset, epochs=epochs, extra=extra))
    return path


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hwtoolkit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ one writer


def test_a_second_writer_of_a_run_directory_fails_and_writes_nothing(idx_dataset, tmp_path, capsys):
    cfg = _cfg(tmp_path, idx_dataset)
    out = tmp_path / "run"
    with locked_directory(out, "run directory"):  # a first writer, alive
        assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 2
        assert f"run directory {str(out)!r} is in use by process {os.getpid()}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_two_trainings_into_one_directory_at_once(idx_dataset, tmp_path):
    """Two real processes started together: one trains, the other exits 2 at once; the run is one run's."""
    cfg = _cfg(tmp_path, idx_dataset, epochs=40, extra="")
    out = tmp_path / "run"
    slow = ["--set", "ep.free_steps=150", "--no-progress"]  # so that the first is still training when the second starts
    first = _spawn("train", str(cfg), "--out", str(out), *slow)
    _wait_for(lambda: (out / LOCK_FILE).exists() and (out / LOCK_FILE).read_text().strip() == str(first.pid))
    second = _spawn("train", str(cfg), "--out", str(out), *slow, "--set", "seed=4")
    assert second.wait(60) == 2
    assert first.poll() is None  # the first was alive all along
    assert "is in use by process" in second.stderr.read()
    assert first.wait(300) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 41))
    assert config.loads((out / "config.toml").read_text()).seed == 3


def test_a_killed_writer_does_not_block_resume(idx_dataset, tmp_path, capsys):
    cfg = _cfg(tmp_path, idx_dataset, epochs=6)
    out = tmp_path / "run"
    proc = _spawn("train", str(cfg), "--out", str(out), "--no-progress")
    _wait_for(lambda: (out / "checkpoints" / "last.pt").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    stale = out / "checkpoints" / ".last.pt.abc123.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert not stale.exists()
    assert "removed" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["epochs"] == 6


def test_sweep_directory_has_one_writer(idx_dataset, tmp_path, capsys):
    cfg = _cfg(tmp_path, idx_dataset, epochs=1)
    out = tmp_path / "sweep"
    with locked_directory(out, "sweep directory"):
        assert main(["sweep", str(cfg), "--param", "ep.beta", "--values", "0.1", "--out", str(out),
                     "--no-progress"]) == 2
    assert "sweep directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


# ------------------------------------------------------------------------------------------------ resumption


def test_resume_needs_an_existing_run(idx_dataset, tmp_path, capsys):
    cfg = _cfg(tmp_path, idx_dataset)
    assert main(["train", str(cfg), "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_config_text(tmp_path / "no-data-here"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert main(["train", str(cfg), "--set", "seed=-5", "--out", str(tmp_path / "run")]) == 2
    assert "seed = -5 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_connection_options_may_change_on_resume_nothing_else(idx_dataset):
    base = tiny_config_text(idx_dataset, extra='[quant]\nweight_bits = 8\nstate_bits = 8\n')
    stored = config.loads(base, ["target.name=serial", "target.url='/dev/pts/3'", "target.baudrate=115200"])
    moved = config.loads(base, ["target.name=serial", "target.url='socket://127.0.0.1:4000'", "target.timeout=2.0",
                                "target.retries=3"])
    assert config_difference(stored, moved) == []
    bigger = config.loads(base, ["target.name=serial", "target.url='/dev/pts/4'", "target.max_batch=8"])
    assert config_difference(stored, bigger) == ["target.max_batch: None -> 8"]
    other = config.loads(base, ["target.name=serial", "target.url='/dev/pts/4'", "train.batch_size=5"])
    assert config_difference(stored, other) == ["train.batch_size: 25 -> 5"]
    reference = config.loads(tiny_config_text(idx_dataset), ["target.device='cpu'"])
    assert config_difference(config.loads(tiny_config_text(idx_dataset)), reference) == \
        ["target.device: None -> 'cpu'"]  # the reference target declares no connection options


def test_a_board_at_a_new_address_resumes(idx_dataset, tmp_path, host_board):
    """A relaunched board has a new pty: the run resumes there, and the stored config names the new URL."""
    from firmware_interface import launch

    cfg = _cfg(tmp_path, idx_dataset, epochs=1, extra='[quant]\nweight_bits = 8\nstate_bits = 8\n')
    common = ["--target", "serial", "--set", "network.output='mse'", "--set", "optim.lr=[0.05]", "--no-progress"]
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--set", f"target.url='{host_board.url}'", *common]) == 0
    with launch.HostBoard() as second:
        assert second.url != host_board.url
        assert main(["train", str(cfg), "--out", str(out), "--resume", "--set", f"target.url='{second.url}'",
                     *common]) == 0
    assert config.loads((out / "config.toml").read_text()).target.options["url"] == second.url


# ------------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def trained(idx_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    cfg = _cfg(root, idx_dataset, epochs=1)
    assert main(["train", str(cfg), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def test_export_never_replaces_a_checkpoint(trained, capsys):
    best = trained / "checkpoints" / "best.pt"
    before = best.read_bytes()
    for target in (best, trained / "checkpoints" / "new.onnx"):
        assert main(["export", str(trained), "--format", "onnx", "--out", str(target), "--check-samples", "10",
                     "--force"]) == 2
        assert "inside the run's checkpoints" in capsys.readouterr().err
    assert best.read_bytes() == before
    assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt", "last.pt"]


def test_export_overwrites_only_with_force(trained, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    out.write_text("mine")
    assert main(["export", str(trained), "--format", "onnx", "--out", str(out), "--check-samples", "10"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["export", str(trained), "--format", "onnx", "--out", str(out), "--check-samples", "10",
                 "--force"]) == 0
    assert out.read_bytes()[:4] != b"mine"


def test_sigterm_during_an_export_leaves_no_temporary_file(trained, tmp_path):
    out = tmp_path / "exports" / "net.onnx"
    out.parent.mkdir()
    proc = _spawn("export", str(trained), "--format", "onnx", "--out", str(out), "--check-samples", "0",
                  "--steps", "2000")  # long enough to be caught writing
    _wait_for(lambda: any(out.parent.glob(".*.tmp")), 120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert "terminated" in proc.stderr.read()
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------ files


class Pickled:
    """Any class: a checkpoint holding one is not weights-only."""


def test_a_pickle_checkpoint_error_does_not_advise_unsafe_loading(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "obj": Pickled()}, path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert "not a weights-only checkpoint of this toolkit" in str(e.value)
    assert "weights_only=False" not in str(e.value) and "trust" not in str(e.value)


def test_evaluate_of_a_crossbar_run_reproduces_its_summary(idx_dataset, tmp_path, capsys):
    """A pcm run: evaluate restores the device the run ended on and gets the summary's test figure exactly."""
    cfg = _cfg(tmp_path, idx_dataset, epochs=2, extra='[target]\nname = "crossbar"\n[crossbar]\npreset = "pcm"\n')
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "checkpoints" / "device.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_accuracy"] == summary["test_accuracy"] and again["test_loss"] == summary["test_loss"]
    (out / "checkpoints" / "device.pt").unlink()  # a fresh device instead: another draw, time, weight scale
    assert main(["evaluate", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["test_loss"] != summary["test_loss"]


def test_a_crossbar_state_of_another_device_is_refused_by_name():
    import targets
    from hwtoolkit.network import NetworkSpec
    from hwtoolkit.network.parameters import init_parameters

    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4)
    saved = targets.open("crossbar", spec, preset="pcm", seed=3)
    saved.program(init_parameters(spec, 1))
    state = saved.device_state()
    other_seed = targets.open("crossbar", spec, preset="pcm", seed=4)
    with pytest.raises(targets.TargetError, match="drawn with seed 3, this target with 4"):
        other_seed.load_device_state(state)
    other_net = targets.open("crossbar", NetworkSpec(input_shape=(1, 6, 6), hidden=(7,), classes=4), seed=3)
    with pytest.raises(targets.TargetError, match="does not fit this target"):
        other_net.load_device_state({**state, "arrays": {n: a for n, a in state["arrays"].items()}})
    with pytest.raises(targets.TargetError, match="holds no weights yet"):
        other_net.read_weights()  # a failed restore leaves no half-made device behind
