"""Time to a test accuracy: the default relaxation schedule against faster ones, same network and seed.

Each schedule trains the config for its full number of epochs, once per seed; after every epoch (outside
the timed part) the weights are evaluated on the test set. The figure is the training time (the batches
only, not the evaluations) until the first epoch whose test accuracy reaches ``--target``; the table gives
its median over the seeds. The test set is only reported here: nothing is selected or stopped on it.
Prints a table and writes JSON (default benchmarks/results/time_to_accuracy.json).

    python benchmarks/time_to_accuracy.py [--config configs/fmnist_mlp.toml] [--target 0.88] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import chosen_names  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

SCHEDULES = {  # name -> config overrides
    "default": [],
    "early stop 1e-4": ["ep.stop_tolerance=1e-4"],
    "early stop 1e-3": ["ep.stop_tolerance=1e-3"],
    "anderson 1e-4": ["ep.stop_tolerance=1e-4", "target.solver='anderson'"],
    "inductor": ["target.compile='inductor'"],
}


def run_schedule(config: str, sets: list[str], target: float, out: Path) -> dict:
    """Train one schedule, evaluating the test set after each epoch; the time to ``target`` and the curve."""
    import torch

    from hwtoolkit import config as config_mod
    from hwtoolkit.training.evaluate import evaluate
    from hwtoolkit.runs import load_splits
    from hwtoolkit.training.loop import train

    cfg = config_mod.load(config, sets)
    splits = load_splits(cfg)
    curve: list[dict] = []

    def on_epoch(record: dict, device) -> None:
        with torch.no_grad():
            test = evaluate(device, splits.test_x, splits.test_y, cfg.ep, cfg.train.eval_batch_size, "test")
        seconds = record["epoch_train_seconds"] + (curve[-1]["train_seconds"] if curve else 0.0)
        curve.append({"epoch": record["epoch"], "train_seconds": seconds, "test_accuracy": test["test_accuracy"],
                      "val_accuracy": record.get("val_accuracy"), "free_steps_mean": record["train_free_steps_mean"]})

    summary = train(cfg, out, progress=False, log=lambda m: None, on_epoch=on_epoch)
    reached = next((c for c in curve if c["test_accuracy"] >= target), None)
    return {"sets": sets, "curve": curve, "reached": reached, "summary": summary}


def median_reached(runs: list[dict]) -> float | None:
    """Median seconds to the target over the seeds, or None unless every seed reached it."""
    hits = [r["reached"] for r in runs]
    return None if any(h is None for h in hits) else statistics.median(h["train_seconds"] for h in hits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--target", type=float, default=0.88, help="test accuracy to reach (default 0.88)")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma-separated, from {list(SCHEDULES)}")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds, one run per schedule and seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--runs", default="runs/bench-time-to-accuracy", help="where the runs go (must be new)")
    parser.add_argument("--json", default="benchmarks/results/time_to_accuracy.json")
    args = parser.parse_args(argv)
    names = chosen_names(parser, "--schedules", args.schedules, SCHEDULES)
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:  # schedules interleaved, so that a slow spell of a shared machine hits them alike
        for name in names:
            runs[name].append(run_schedule(args.config, args.set + SCHEDULES[name] + [f"seed={seed}"], args.target,
                                           Path(args.runs) / f"{name.replace(' ', '_')}_seed{seed}"))
    results = {name: {"sets": SCHEDULES[name], "seeds": seeds, "runs": runs[name],
                      "median_train_seconds_to_target": median_reached(runs[name])} for name in names}
    base = results[names[0]]["median_train_seconds_to_target"]
    print(f"\ntime to {100 * args.target:.0f}% test accuracy, {args.config}, seeds {seeds} (median)")
    print(f"{'schedule':18} {'epochs':>12} {'train s':>9} {'speed-up':>9} {'free steps':>11} {'final test':>11}")
    for name, r in results.items():
        epochs = ",".join(str(run["reached"]["epoch"]) if run["reached"] else "-" for run in r["runs"])
        steps = statistics.mean(c["free_steps_mean"] for run in r["runs"] for c in run["curve"])
        final = 100 * statistics.median(run["summary"]["test_accuracy"] for run in r["runs"])
        seconds = r["median_train_seconds_to_target"]
        if seconds is None:
            print(f"{name:18} {epochs:>12} {'never':>9} {'':>9} {steps:11.1f} {final:10.2f}%")
            continue
        speedup = f"{base / seconds:.2f}x" if base else "-"
        print(f"{name:18} {epochs:>12} {seconds:9.1f} {speedup:>9} {steps:11.1f} {final:10.2f}%")
    write_report(args.json, {"config": args.config, "target": args.target, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
