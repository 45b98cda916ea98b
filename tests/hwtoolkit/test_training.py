"""The learning loop end to end on a small IDX data set: learning, run directory, determinism, resume."""

import json
import math
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
from hwtoolkit.training import checkpoint
from hwtoolkit.runs import evaluate_run
from hwtoolkit.training.loop import RunExistsError, train

REPO = Path(__file__).resolve().parents[2]


def _weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt")["weights"]


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided", "random_sign", "bptt"])
def test_every_estimator_learns(idx_dataset, tmp_path, estimator):
    cfg = config.loads(tiny_config_text(idx_dataset, estimator))
    summary = train(cfg, tmp_path / "run", log=lambda s: None)
    # four classes: chance is 25%; the prototypes are separable, so any working estimator gets far above it
    assert summary["test_accuracy"] > 0.9
    assert summary["val_accuracy"] > 0.9


def test_run_directory_contents(tiny_config, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config, run, log=lambda s: None)
    assert {"test_accuracy", "val_accuracy", "train_seconds", "epochs"} <= set(summary)
    assert json.loads((run / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["train_batches"] == 20 and r["train_unconverged_batches"] == 0  # 500 samples / 25, all counted
        assert 0 <= r["val_accuracy"] <= 1 and r["train_residual_max"] >= 0
    assert config.loads((run / "config.toml").read_text()).to_dict() == tiny_config.to_dict()
    assert (run / "plots" / "training.png").stat().st_size > 1000
    assert set(_weights(run)) == set(tiny_config.network.parameter_shapes())
    best = checkpoint.load(run / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    again = evaluate_run(run, log=lambda s: None)
    assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"])


def test_unconverged_batches_are_counted_not_dropped(idx_dataset, tmp_path):
    # one free step from zero cannot reach the fixed point of a two-layer network
    text = tiny_config_text(idx_dataset, epochs=1).replace("hidden = [16]", "hidden = [16, 12]").replace(
        "lr = [0.1, 0.05]", "lr = [0.1]").replace("free_steps = 8", "free_steps = 1")
    train(config.loads(text), tmp_path / "run", log=lambda s: None)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["train_unconverged_batches"] == record["train_batches"] == 20
    assert record["train_unconverged_samples"] == 500


def test_same_seed_same_weights_and_other_seed_differs(idx_dataset, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = config.loads(tiny_config_text(idx_dataset, "random_sign", epochs=1), [f"seed={seed}"])
        train(cfg, tmp_path / name, log=lambda s: None)
        runs[name] = _weights(tmp_path / name)
    assert all(torch.equal(runs["a"][n], runs["b"][n]) for n in runs["a"])
    assert not torch.equal(runs["a"]["w1"], runs["c"]["w1"])


def test_existing_run_needs_resume_and_same_config(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "run", log=lambda s: None)
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_config, tmp_path / "run", log=lambda s: None)
    changed = config.loads(tiny_config.to_toml(), ["ep.beta=0.3"])
    with pytest.raises(config.ConfigError, match="ep.beta: 0.5 -> 0.3"):
        train(changed, tmp_path / "run", resume=True, log=lambda s: None)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "hwtoolkit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


CROSSBAR_RUN = ('[target]\nname = "crossbar"\n[crossbar]\npreset = "pcm"\npulse_mode = "stochastic"\n'
                'stuck_prob = 0.05\ndiffusion = 1e-5\n')  # drift, stuck devices, stochastic pulses, diffusion


@pytest.mark.parametrize("extra", ["", CROSSBAR_RUN], ids=["reference", "crossbar-pcm"])
def test_killed_run_resumes_to_the_same_weights(idx_dataset, tmp_path, extra):
    """SIGKILL a real training process mid-epoch, resume it, and compare with an uninterrupted run: weights,
    metrics, the test figure and, on a crossbar, every device's state bit for bit."""
    cfg_file = tmp_path / "tiny.toml"
    # a bigger network and more epochs, so the run is still going when we kill it
    cfg_file.write_text(tiny_config_text(idx_dataset, "random_sign", epochs=6, extra=extra).replace(
        "hidden = [16]", "hidden = [256]").replace("free_steps = 8", "free_steps = 60"))
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _cli("train", str(cfg_file), "--out", str(full), "--no-progress").wait(timeout=300) == 0

    proc = _cli("train", str(cfg_file), "--out", str(killed), "--no-progress")
    deadline = time.monotonic() + 120
    state = None
    while time.monotonic() < deadline:
        ckpt = killed / "checkpoints" / "last.pt"
        if ckpt.exists():
            state = checkpoint.load(ckpt)
            if state["epoch"] >= 1 and state["batch"] > 0:  # mid-epoch, after at least one full epoch
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert state is not None and state["batch"] > 0, "the run finished before it could be killed mid-epoch"
    assert not (killed / "summary.json").exists()

    resumed = _cli("train", str(cfg_file), "--out", str(killed), "--resume", "--no-progress")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming" in out
    a, b = _weights(full), _weights(killed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    def records(run):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert [r["epoch"] for r in records(killed)] == [1, 2, 3, 4, 5, 6]
    assert records(killed) == records(full)
    assert json.loads((killed / "summary.json").read_text())["test_accuracy"] == \
        json.loads((full / "summary.json").read_text())["test_accuracy"]
    if extra:  # the cost accounting counts every training batch once, resumed or not
        costs = [json.loads((run / "summary.json").read_text())["costs"] for run in (full, killed)]
        assert costs[0] == costs[1] and costs[0]["batches"] == 6 * math.ceil(costs[0]["examples"] / 6 / 25)
        assert (full / "plots" / "costs.png").stat().st_size > 0
        a, b = (checkpoint.load(run / "checkpoints" / "device.pt")["device"] for run in (full, killed))
        assert a["now"] == b["now"] and a["totals"] == b["totals"] and torch.equal(a["gen"], b["gen"])
        for name, array in a["arrays"].items():
            for key, value in array.items():
                other = b["arrays"][name][key]
                assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (name, key)


def test_on_epoch_sees_every_epoch_and_the_trained_target(tiny_config, tmp_path):
    """The hook gets each epoch's record (with the batches' own time) and the target holding that epoch's
    weights, which it can evaluate without changing the run."""
    seen = []

    def on_epoch(record, target):
        seen.append((record["epoch"], record["epoch_train_seconds"], target.read_weights()["w1"].clone()))

    summary = train(tiny_config, tmp_path / "hooked", log=lambda s: None, on_epoch=on_epoch)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(0 < s[1] <= r["seconds"] for s, r in zip(seen, _records(tmp_path / "hooked")))
    assert not torch.equal(seen[0][2], seen[-1][2])
    plain = train(tiny_config, tmp_path / "plain", log=lambda s: None)
    assert plain["test_accuracy"] == summary["test_accuracy"]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
