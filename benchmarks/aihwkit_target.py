"""EP on aihwkit's analog tiles against the crossbar on the matching preset: accuracy and time per batch.

Trains configs/fmnist_mlp.toml (784-512-10, symmetric EP) on the aihwkit target with an aihwkit RPU configuration
and on the crossbar with the preset of the same device, with the same seed and data, and times one training batch
of each (the estimator's phases and the update, as the learning loop runs them; median of interleaved rounds).
Prints a table and writes JSON (default benchmarks/results/aihwkit_target.json).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/aihwkit_target.py --limit 10000 --epochs 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.crossbar_speed import batch_step  # noqa: E402
from benchmarks.report import machine, write_report  # noqa: E402
from benchmarks.step_speed import timed  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.training.loop import train  # noqa: E402

PAIRS = {"EcRamMOPreset": "ecram-mo", "EcRamPreset": "ecram-li", "ReRamSBPreset": "reram-sb",
         "CapacitorPreset": "capacitor"}
"""aihwkit RPU configuration -> the crossbar preset of the same device."""


def cases(pairs: list[str], seed: int) -> list[tuple[str, str, dict, str]]:
    out = []
    for rpu in pairs:
        out.append(("aihwkit", rpu, {"rpu_config": rpu, "seed": seed},
                    f'[target]\nname = "aihwkit"\nrpu_config = "{rpu}"\n'))
        preset = PAIRS[rpu]
        out.append(("crossbar", preset, {"preset": preset, "seed": seed},
                    f'[target]\nname = "crossbar"\n[crossbar]\npreset = "{preset}"\n'))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--pairs", default="EcRamMOPreset", help=f"comma-separated, of {sorted(PAIRS)}")
    parser.add_argument("--limit", type=int, default=10000, help="data.limit: first N train and test samples")
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per round (median taken)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/aihwkit_target.json")
    args = parser.parse_args(argv)
    base = config_mod.load(args.config)
    pairs = [p for p in args.pairs.split(",") if p]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        parser.error(f"--pairs: unknown {unknown}; expected some of {sorted(PAIRS)}")
    text = Path(args.config).read_text().split("[target]")[0]
    text = text.replace("[train]", f"[train]\ncheckpoint_every = 0").replace(
        "epochs = 30", f"epochs = {args.epochs}").replace("val_size = 5000", f"val_size = {args.val_size}\n"
                                                                           f"limit = {args.limit}")
    rows = []
    steps = []
    for name, device, options, table in cases(pairs, base.seed):
        cfg = config_mod.loads(text + table)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = train(cfg, Path(tmp) / "run", progress=False, log=lambda m: None)
            wall = time.perf_counter() - start
        rows.append({"target": name, "device": device, "test_accuracy": summary["test_accuracy"],
                     "train_seconds": wall})
        steps.append(batch_step(cfg, name, options, cfg.train.batch_size))
    seconds = [[] for _ in steps]
    for _ in range(args.rounds):
        for times, step in zip(seconds, steps):
            times.append(timed(step, torch.device("cpu"), 1, args.repeats))
    for row, t in zip(rows, seconds):
        row["ms_per_batch"] = 1e3 * statistics.median(t)
    print(f"{base.name}: {args.limit or 'all'} samples ({args.val_size} for validation), {args.epochs} epoch(s), batch "
          f"{base.train.batch_size}; {machine().get('cpu', 'cpu')}, {torch.get_num_threads()} threads")
    print(f"{'target':9} {'device':15} {'test acc':>9} {'ms/batch':>9} {'train s':>8}")
    for r in rows:
        print(f"{r['target']:9} {r['device']:15} {100 * r['test_accuracy']:8.2f}% {r['ms_per_batch']:9.0f} "
              f"{r['train_seconds']:8.0f}")
    write_report(args.out, {"config": args.config, "limit": args.limit, "val_size": args.val_size,
                            "epochs": args.epochs, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
