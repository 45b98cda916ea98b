"""Wall time of one 16-point sweep with the local executor and with Ray at 1 and 2 workers, and Ray's overhead.

The sweep: ``--config`` (default configs/fmnist_mlp.toml, on a ``data.limit`` subset so that a point takes a
second or two) at 8 learning rates x 2 seeds, 1 fidelity batch, every point on one thread. Ray's fixed cost (start
and shut down a local instance) is timed alone. The overhead per point is measured on a sweep of near-empty points
(``data.limit = 600``, 1 epoch, no fidelity, well under a second each), where noise from other jobs is small: what
the 1-worker Ray sweep takes beyond the local one and the fixed cost, over the points (worker start, task
dispatch, pickled configs and rows). Prints a table and
writes JSON (default benchmarks/results/sweep_scaling.json). The load average is recorded: on a shared machine it
says how many cores were really free.

    OMP_NUM_THREADS=1 python benchmarks/sweep_scaling.py [--config configs/fmnist_mlp.toml] [--limit 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.report import write_report  # noqa: E402
from hwtoolkit.executors import ExecutorSpec, ray_session  # noqa: E402
from hwtoolkit.sweep import run_sweep  # noqa: E402

VALUES = "0.005,0.01,0.02,0.03,0.05,0.07,0.1,0.2"
SEEDS = 2


def _load() -> float:
    return os.getloadavg()[0]


def timed_sweep(config: str, sets: list[str], executor: ExecutorSpec, work: Path,
                fidelity_batches: int = 1) -> tuple[float, dict]:
    out = work / f"sweep-{executor.kind}-{executor.workers or 0}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = run_sweep(config, "optim.lr", VALUES, seeds=SEEDS, sets=sets, out=out, fidelity_batches=fidelity_batches,
                       progress=False, log=lambda m: None, executor=executor)
    return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--limit", type=int, default=3000, help="data.limit: train/test samples kept")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/sweep_scaling.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = [f"data.limit={args.limit}", "data.val_size=500", f"train.epochs={args.epochs}"]
    points = len(VALUES.split(",")) * SEEDS
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        work = Path(tmp)
        load_before = _load()
        start = time.perf_counter()
        with ray_session(ExecutorSpec("ray", workers=2)):
            pass
        ray_fixed = time.perf_counter() - start
        reference = None
        for label, spec in (("local", ExecutorSpec()), ("ray, 1 worker", ExecutorSpec("ray", workers=1)),
                            ("ray, 2 workers", ExecutorSpec("ray", workers=2))):
            seconds, report = timed_sweep(args.config, sets, spec, work)
            figures = [(r["test_accuracy"], r["val_accuracy"], r["applied_vs_ideal"]) for r in report["rows"]]
            reference = reference or figures
            rows.append({"executor": label, "workers": spec.workers or 1, "seconds": seconds,
                         "seconds_per_point": seconds / points, "same_figures_as_local": figures == reference,
                         "train_seconds_per_point": sum(r["train_seconds"] for r in report["rows"]) / points})
            print(f"{label}: {seconds:.1f} s", flush=True)
        tiny = ["data.limit=600", "data.val_size=100", "train.epochs=1"]
        tiny_local, _ = timed_sweep(args.config, tiny, ExecutorSpec(), work, fidelity_batches=0)
        tiny_ray, _ = timed_sweep(args.config, tiny, ExecutorSpec("ray", workers=1), work, fidelity_batches=0)
        print(f"near-empty points: local {tiny_local:.1f} s, ray 1 worker {tiny_ray:.1f} s", flush=True)
        load_after = _load()
    local = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_local"] = local / r["seconds"]
    overhead = (tiny_ray - ray_fixed - tiny_local) / points
    print(f"\n16-point sweep ({args.config}, data.limit={args.limit}, {args.epochs} epoch(s), 1 thread per point)")
    print(f"{'executor':<16} {'wall (s)':>9} {'s/point':>8} {'train s/point':>14} {'speedup':>8} {'same figures':>13}")
    for r in rows:
        print(f"{r['executor']:<16} {r['seconds']:9.1f} {r['seconds_per_point']:8.2f} "
              f"{r['train_seconds_per_point']:14.2f} {r['speedup_vs_local']:8.2f} {str(r['same_figures_as_local']):>13}")
    print(f"Ray local instance, start + shut down: {ray_fixed:.1f} s; overhead per point (1 worker): {overhead:.2f} s")
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs")
    write_report(args.json, {"config": args.config, "sets": sets, "values": VALUES, "seeds": SEEDS, "points": points,
                             "rows": rows, "ray_start_and_shutdown_seconds": ray_fixed,
                             "ray_overhead_per_point_seconds": overhead,
                             "near_empty_points": {"sets": tiny, "local_seconds": tiny_local,
                                                   "ray_1_worker_seconds": tiny_ray}, "load_average_before": load_before,
                             "load_average_after": load_after, "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
