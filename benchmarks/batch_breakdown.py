"""Where one training batch's time goes: input drive, free phase, nudged phases, update, optimizer and write.

Runs the symmetric estimator's parts one by one on the reference target (as ``training.estimators`` does)
for ``--batches`` batches of the config's training data and reports the median milliseconds of each part,
for the default schedule and for the ones given with ``--schedule NAME=KEY=VALUE[,KEY=VALUE...]``.
It says how much a faster relaxation can gain at most: the parts that are not relaxation stay.
Prints a table and writes JSON (default benchmarks/results/batch_breakdown.json).

    python benchmarks/batch_breakdown.py [--config configs/fmnist_mlp.toml] [--schedule "early=ep.stop_tolerance=1e-4"]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_report  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.network.energy import ep_update  # noqa: E402
from hwtoolkit.runs import load_splits, open_target  # noqa: E402
from hwtoolkit.training.optimizer import SGD  # noqa: E402

PARTS = ("input drive", "free phase", "+beta phase", "-beta phase", "EP update", "optimizer and write")


def breakdown(config: str, sets: list[str], batches: int, warmup: int) -> dict:
    """Median seconds of each part of a symmetric-EP training batch, and the steps each phase ran."""
    cfg = config_mod.load(config, sets)
    if cfg.estimator != "symmetric":
        raise ValueError(f"estimator = {cfg.estimator!r}: this benchmark times the symmetric estimator's parts")
    splits, ep = load_splits(cfg), cfg.ep
    target = open_target(cfg)
    target.program(init_parameters(cfg.network, cfg.seed))
    lrs = cfg.layer_lrs()
    optimizer = SGD({n: lrs[i] for n, i in cfg.network.parameter_layers().items()}, cfg.optim.momentum)
    size = cfg.train.batch_size
    seconds: dict[str, list[float]] = {p: [] for p in PARTS}
    steps: list[tuple[int, int, int]] = []
    for b in range(warmup + batches):
        x = splits.train_x[b * size:(b + 1) * size].float().div_(255.0)
        y = splits.train_y[b * size:(b + 1) * size]
        marks = [time.perf_counter()]

        def mark() -> None:
            if target.device.type == "cuda":
                torch.cuda.synchronize(target.device)
            marks.append(time.perf_counter())

        with target.compute_context(), torch.no_grad():
            target.input_drive(x.to(target.device, target.dtype))  # the reference target keeps it for the phases
        mark()
        free = target.relax(x, ep.free_steps, stop_tolerance=ep.stop_tolerance)
        mark()
        plus = target.relax(x, ep.nudged_steps, ep.beta, y, init=free, stop_tolerance=ep.stop_tolerance)
        mark()
        minus = target.relax(x, ep.nudged_steps, -ep.beta, y, init=free, stop_tolerance=ep.stop_tolerance)
        mark()
        with target.compute_context():  # as training.estimators forms it (dense and avg-pooled nets need no weights)
            direction = ep_update(target.spec, target.params, x.to(target.device), y.to(target.device),
                                  (plus, ep.beta), (minus, -ep.beta))
        mark()
        target.apply_update(optimizer.step(direction, None))
        mark()
        if b >= warmup:
            for part, start, end in zip(PARTS, marks, marks[1:]):
                seconds[part].append(end - start)
            steps.append((free.steps, plus.steps, minus.steps))
    target.close()
    median = {p: statistics.median(s) for p, s in seconds.items()}
    return {"sets": sets, "median_seconds": median, "total_seconds": sum(median.values()),
            "mean_steps": [statistics.mean(s[i] for s in steps) for i in range(3)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--schedule", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="another schedule to time next to the default (repeatable)")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", default="benchmarks/results/batch_breakdown.json")
    args = parser.parse_args(argv)
    schedules = {"default": []}
    for item in args.schedule:
        name, sep, sets = item.partition("=")
        if not sep or not name or "=" not in sets:
            parser.error(f"--schedule {item!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
        schedules[name] = sets.split(",")
    if args.batches < 1 or args.warmup < 0:
        parser.error("--batches must be >= 1 and --warmup >= 0")
    results = {name: breakdown(args.config, sets, args.batches, args.warmup) for name, sets in schedules.items()}
    print(f"\nmedian ms per training batch, {args.config}, {args.batches} batches")
    print(f"{'part':20}" + "".join(f"{name:>16}" for name in results))
    for part in PARTS:
        print(f"{part:20}" + "".join(f"{1e3 * r['median_seconds'][part]:16.2f}" for r in results.values()))
    print(f"{'total':20}" + "".join(f"{1e3 * r['total_seconds']:16.2f}" for r in results.values()))
    print(f"{'steps free/+/-':20}" + "".join(f"{'/'.join(f'{s:.1f}' for s in r['mean_steps']):>16}"
                                             for r in results.values()))
    write_report(args.json, {"config": args.config, "batches": args.batches, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
