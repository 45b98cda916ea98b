"""Test accuracy of quantized EP networks against the float network, same config and seed.

Each point trains the config with its ``quant.*`` settings (a full run: validation selects the epoch, the
test set is read once) and reports the points lost against the float run. Runs go in parallel, one CPU
thread each. Prints a table and writes JSON (default benchmarks/results/quant_accuracy.json).

    python benchmarks/quant_accuracy.py [--config configs/fmnist_mlp.toml] [--epochs 30] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import chosen_names  # noqa: E402
from benchmarks.report import machine  # noqa: E402

POINTS = {  # name -> quant.* overrides
    "float": {},
    "w8 s8": {"weight_bits": 8, "state_bits": 8},
    "w4 s4": {"weight_bits": 4, "state_bits": 4},
    "w4 s4 per-channel": {"weight_bits": 4, "state_bits": 4, "granularity": "per_channel"},
    "w2 s8": {"weight_bits": 2, "state_bits": 8},
    "w2 s8 per-channel": {"weight_bits": 2, "state_bits": 8, "granularity": "per_channel"},
}


def run_point(config: str, name: str, quant: dict, epochs: int, out: str) -> dict:
    """Train one point in this process (one thread) and return its summary."""
    import torch

    from hwtoolkit import config as config_mod
    from hwtoolkit.training.loop import train

    torch.set_num_threads(1)
    sets = [f"train.epochs={epochs}"] + [f"quant.{k}={json.dumps(v)}" for k, v in quant.items()]
    cfg = config_mod.load(config, sets)
    summary = train(cfg, Path(out) / name.replace(" ", "_"), progress=False, log=lambda m: None)
    return {"point": name, "quant": quant, "describe": cfg.quant.describe(), **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, from {list(POINTS)}")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--runs", default="runs/quant_accuracy", help="where the runs are written (must be new)")
    parser.add_argument("--json", default="benchmarks/results/quant_accuracy.json")
    args = parser.parse_args(argv)
    names = chosen_names(parser, "--points", args.points, POINTS)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_point, args.config, n, POINTS[n], args.epochs, args.runs) for n in names]
        results = [f.result() for f in futures]
    base = next((r["test_accuracy"] for r in results if r["point"] == "float"), None)
    print(f"{'point':22} {'test acc':>9} {'vs float':>9} {'best epoch':>10} {'train s':>8}")
    for r in results:
        diff = f"{100 * (r['test_accuracy'] - base):+9.2f}" if base is not None else f"{'':>9}"
        print(f"{r['point']:22} {100 * r['test_accuracy']:8.2f}% {diff} {r['best_epoch']:10d} {r['train_seconds']:8.0f}")
    report = {"config": args.config, "epochs": args.epochs, "machine": machine(), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
