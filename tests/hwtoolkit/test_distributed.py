"""Data-parallel training: two CPU workers under gloo end with the weights of one worker on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import tiny_config_text
from hwtoolkit.training import checkpoint
from hwtoolkit.training.distributed import Workers

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


def test_two_gloo_workers_match_one_process(idx_dataset, tmp_path):
    cfg = tmp_path / "tiny.toml"
    # float64 so that the only difference, the order of a sum, stays far below the tolerance;
    # batch 25 splits unevenly (13 + 12), which the weighted average must handle
    cfg.write_text(tiny_config_text(idx_dataset, "random_sign", epochs=2) + '\n[target]\ndtype = "float64"\n')
    single = _run(["-m", "hwtoolkit", "train", str(cfg), "--out", str(tmp_path / "one"), "--no-progress"], tmp_path)
    assert single.returncode == 0, single.stdout + single.stderr
    two = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "-m", "hwtoolkit", "train", str(cfg), "--out", str(tmp_path / "two"),
                "--no-progress"], tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    a = checkpoint.load(tmp_path / "one" / "checkpoints" / "last.pt")["weights"]
    b = checkpoint.load(tmp_path / "two" / "checkpoints" / "last.pt")["weights"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-10, rtol=0), name
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9  # the workers really trained, and only the leader wrote the summary
    one_metrics = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for m1, m2 in zip(one_metrics, two_metrics):
        assert m1["train_batches"] * 2 == m2["train_batches"]  # each worker counts its own shard of every batch
        assert abs(m1["train_accuracy"] - m2["train_accuracy"]) < 1e-9
        assert m1["val_accuracy"] == m2["val_accuracy"]


def test_shards_cover_a_batch_once():
    for n in (1, 7, 25, 128):
        for size in (1, 2, 3, 5):
            parts = [Workers(rank, size).shard(n) for rank in range(size)]
            covered = [i for p in parts for i in range(n)[p]]
            assert covered == list(range(n))
            assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1
