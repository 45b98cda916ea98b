"""Time to a test accuracy: the default relaxation schedule against faster ones, same network and seed.

Each schedule trains the config for its full number of epochs; after every epoch (outside the timed part)
the weights are evaluated on the test set. The figure is the training time (the batches only, not the
evaluations) until the first epoch whose test accuracy reaches ``--target``. The test set is only
reported here: nothing is selected or stopped on it. Prints a table and writes JSON (default
benchmarks/results/time_to_accuracy.json).

    python benchmarks/time_to_accuracy.py [--config configs/fmnist_mlp.toml] [--target 0.88]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_speed import machine  # noqa: E402

SCHEDULES = {  # name -> config overrides
    "default": [],
    "early stop 1e-4": ["ep.stop_tolerance=1e-4"],
    "early stop 1e-3": ["ep.stop_tolerance=1e-3"],
}


def run_schedule(config: str, sets: list[str], target: float, out: Path) -> dict:
    """Train one schedule, evaluating the test set after each epoch; the time to ``target`` and the curve."""
    import torch

    from hwtoolkit import config as config_mod
    from hwtoolkit.training.evaluate import evaluate
    from hwtoolkit.training.loop import load_splits, train

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--target", type=float, default=0.88, help="test accuracy to reach (default 0.88)")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma-separated, from {list(SCHEDULES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--runs", default="runs/bench-time-to-accuracy", help="where the runs go (must be new)")
    parser.add_argument("--json", default="benchmarks/results/time_to_accuracy.json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.schedules.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        parser.error(f"unknown schedules {unknown}; valid: {list(SCHEDULES)}")
    results = {n: run_schedule(args.config, args.set + SCHEDULES[n], args.target,
                               Path(args.runs) / n.replace(" ", "_")) for n in names}
    base = results[names[0]]["reached"]
    print(f"\ntime to {100 * args.target:.0f}% test accuracy, {args.config}")
    print(f"{'schedule':18} {'epoch':>6} {'train s':>9} {'speed-up':>9} {'free steps':>11} {'final test':>11}")
    for name, r in results.items():
        hit = r["reached"]
        final = 100 * r["summary"]["test_accuracy"]
        steps = sum(c["free_steps_mean"] for c in r["curve"]) / len(r["curve"])
        if hit is None:
            print(f"{name:18} {'never':>6} {'':>9} {'':>9} {steps:11.1f} {final:10.2f}%")
            continue
        speedup = f"{base['train_seconds'] / hit['train_seconds']:.2f}x" if base else "-"
        print(f"{name:18} {hit['epoch']:6d} {hit['train_seconds']:9.1f} {speedup:>9} {steps:11.1f} {final:10.2f}%")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "config": args.config, "target": args.target,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
