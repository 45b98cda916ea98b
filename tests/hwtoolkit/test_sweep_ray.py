"""Sweeps on Ray: a real local Ray instance with 2 workers, a worker killed mid-point, and the same outputs as
the local executor; failed points reported, bad executor options refused."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config_text
from hwtoolkit.cli import main
from hwtoolkit.sweep import run_sweep

EPOCHS = 40  # long enough (a second or two per point) to kill a point's worker partway
FIGURES = ("test_accuracy", "val_accuracy", "test_loss", "applied_vs_ideal", "ideal_vs_bptt", "device_vs_ideal")


def _sweep_args(cfg: Path, out: Path) -> list[str]:
    return ["sweep", str(cfg), "--param", "optim.lr", "--values", "0.02,0.1", "--seeds", "2", "--out", str(out),
            "--fidelity-batches", "1", "--no-progress"]


def _worker_pid(point: Path) -> int | None:
    """The pid in the point's run-directory lock while it trains (a Ray worker's), once an epoch is written."""
    metrics = point / "metrics.jsonl"
    if (point / "summary.json").exists() or not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        return None
    text = (point / ".lock").read_text().strip()
    return int(text) if text.isdigit() else None


@pytest.fixture(scope="module")
def killed_sweep(idx_dataset, tmp_path_factory):
    """The sweep run by the command on Ray (2 workers), with one point's worker killed with SIGKILL partway."""
    root = tmp_path_factory.mktemp("ray_sweep")
    cfg = root / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=EPOCHS))
    out = root / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HWTOOLKIT_NO_TRACK": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hwtoolkit", *_sweep_args(cfg, out), "--executor", "ray",
                             "--workers", "2", "--cpus-per-point", "1", "--retries", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    victim = out / "points" / "optim.lr=0.1" / "seed3"  # the third point: it starts after Ray is warm
    killed = None
    deadline = time.monotonic() + 240
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            pid = _worker_pid(victim)
            if pid is not None and pid != proc.pid:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                assert "ray" in cmdline.lower(), cmdline  # a Ray worker, not the command itself
                os.kill(pid, signal.SIGKILL)
                killed = pid
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return cfg, out, killed, proc.returncode, stdout, stderr


def test_a_killed_worker_is_retried_and_the_sweep_equals_the_local_executors(killed_sweep, tmp_path):
    cfg, out, killed, code, stdout, stderr = killed_sweep
    assert killed is not None, f"the point finished before its worker could be killed:\n{stderr}"
    assert code == 0, stderr
    assert "worker died" in stdout and "attempt 1 failed" in stdout  # the log goes to stdout without a bar
    ray_rows = json.loads((out / "sweep.json").read_text())["rows"]
    by_point = {(r["label"], r["seed"]): r for r in ray_rows}
    assert by_point[("0.1", 3)]["attempts"] == 2  # retried once, then finished
    assert all(r["status"] == "ok" for r in ray_rows)
    assert sorted(r["attempts"] for r in ray_rows) == [1, 1, 1, 2]
    for name in ("sweep.csv", "sweep.json", "sweep.png"):
        assert (out / name).stat().st_size > 0

    local = tmp_path / "local"
    report = run_sweep(cfg, "optim.lr", "0.02,0.1", seeds=2, out=local, fidelity_batches=1, progress=False,
                       log=lambda m: None)
    assert [(r["label"], r["seed"], r["point"]) for r in report["rows"]] == \
        [(r["label"], r["seed"], r["point"]) for r in ray_rows]  # same points, same order, same directories
    for mine, theirs in zip(report["rows"], ray_rows):
        assert {k: mine[k] for k in FIGURES} == {k: theirs[k] for k in FIGURES}, mine["point"]
    # the killed point resumed from its last checkpoint: every epoch's figures as in the uninterrupted run
    def epochs(root):
        lines = (root / "points" / "optim.lr=0.1" / "seed3" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in lines]
    assert epochs(out) == epochs(local) and len(epochs(out)) == EPOCHS
    with open(out / "sweep.csv") as f, open(local / "sweep.csv") as g:
        ray_csv, local_csv = list(csv.DictReader(f)), list(csv.DictReader(g))
    drop = ("train_seconds", "attempts")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ray_csv] == \
        [{k: v for k, v in r.items() if k not in drop} for r in local_csv]


def test_resume_on_ray_skips_the_finished_points(killed_sweep, capsys):
    cfg, out, _, _, _, _ = killed_sweep
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert len(stamps) == 4
    started = time.monotonic()
    assert main([*_sweep_args(cfg, out), "--resume", "--executor", "ray", "--workers", "2"]) == 0
    assert time.monotonic() - started < 10  # nothing to run: no Ray instance is even started
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert capsys.readouterr().out.count("finished earlier, kept") == 4


def test_a_point_that_keeps_raising_is_reported_failed_not_dropped(idx_dataset, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=1))
    out = tmp_path / "sweep"
    missing = tmp_path / "no-such-data"
    code = main(["sweep", str(cfg), "--param", "data.root", "--values", f'"{idx_dataset}","{missing}"', "--out",
                 str(out), "--fidelity-batches", "0", "--retries", "1", "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 point(s) failed" in captured.err and "attempt 2 failed" in captured.out
    report = json.loads((out / "sweep.json").read_text())
    good, bad = report["rows"]
    assert good["status"] == "ok" and good["test_accuracy"] > 0.5 and good["attempts"] == 1
    assert bad["status"] == "failed" and bad["attempts"] == 2 and bad["test_accuracy"] is None
    assert "no-such-data" in bad["error"] or "not found" in bad["error"].lower()
    assert report["failed"] == 1 and [a["seeds"] for a in report["aggregate"]] == [1]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[1]["test_accuracy"] == ""
    assert "FAILED data.root=" in captured.out


@pytest.mark.parametrize("options, message", [
    (["--executor", "ray", "--address", "nowhere"], "expected HOST:PORT"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "no Ray head node answers"),
    (["--workers", "2"], "need --executor ray"),
    (["--executor", "dask"], "invalid choice"),
    (["--cpus-per-point", "0"], "--cpus-per-point"),
    (["--retries", "-1"], "--retries"),
    (["--tracking-uri", "mlflow.db"], "expected sqlite:///PATH"),
])
def test_bad_executor_and_tracking_options_are_refused_before_anything_runs(idx_dataset, tmp_path, capsys,
                                                                             options, message):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=1))
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg), "--param", "ep.beta", "--values", "0.3", "--out", str(out), "--no-progress",
                 *options]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2
    assert not out.exists()
