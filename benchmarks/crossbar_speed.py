"""Time one training batch on the crossbar target, per preset, against the reference target.

One batch = the estimator's phases + the update + the optimizer step written through the
target's write path, as in the learning loop. Prints a table and writes JSON
(default benchmarks/results/crossbar_speed.json).

    python benchmarks/crossbar_speed.py [--config configs/fmnist_mlp.toml] [--presets ideal,ecram-mo]
    OMP_NUM_THREADS=1 python benchmarks/crossbar_speed.py --threads 1 \
        --out benchmarks/results/crossbar_speed_cpu_1thread.json
    OMP_NUM_THREADS=1 python benchmarks/crossbar_speed.py --threads 1 --presets reram-sb,ecram-mo,pcm \
        --algorithms in_situ,mixed_precision,tiki_taka,ttv2,c_ttv2,agad --transfer-columns 128
    OMP_NUM_THREADS=1 python benchmarks/crossbar_speed.py --threads 1 --numerics native,torch

Compare ratios measured in one run: the targets are timed in interleaved rounds (docs/crossbar.md, "Speed").
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import targets  # noqa: E402
from benchmarks.cli import chosen_names  # noqa: E402
from benchmarks.report import machine, write_report  # noqa: E402
from benchmarks.step_speed import timed  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.training.estimators import make_estimator  # noqa: E402
from hwtoolkit.training.optimizer import SGD  # noqa: E402
from targets.crossbar import PRESETS  # noqa: E402
from targets.crossbar.config import ALGORITHM_KEYS, ALGORITHMS, NUMERICS  # noqa: E402


def batch_step(cfg: config_mod.Config, name: str, options: dict, batch: int) -> Callable[[], None]:
    """One training batch on a freshly programmed target, as the learning loop runs it."""
    spec = cfg.network
    target = targets.open(name, spec, **options)
    target.program(init_parameters(spec, cfg.seed))
    estimator = make_estimator(cfg.estimator, cfg.ep)
    lrs = cfg.layer_lrs()
    optimizer = SGD({n: lrs[i] for n, i in spec.parameter_layers().items()}, cfg.optim.momentum)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *spec.input_shape, generator=gen)
    y = torch.randint(0, spec.classes, (batch,), generator=gen)

    def one_batch() -> None:
        result = estimator(target, x, y, gen)
        target.apply_update(optimizer.update(result, None))

    return one_batch


def algorithm_options(algorithm: str, transfer_columns: int | None) -> dict:
    """The crossbar options of ``algorithm``: ``transfer_columns`` where it transfers columns and one is given."""
    if transfer_columns is None or "transfer_columns" not in ALGORITHM_KEYS[algorithm]:
        return {}
    return {"transfer_columns": transfer_columns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    parser.add_argument("--algorithms", default="in_situ", help="comma-separated crossbar training algorithms")
    parser.add_argument("--numerics", default="native",
                        help="comma-separated crossbar.numerics values to time (native, torch)")
    parser.add_argument("--transfer-columns", type=int,
                        help="columns of A transferred per batch, for the algorithms that transfer (default: theirs)")
    parser.add_argument("--batch", type=int, help="batch size (default: the config's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per round (median taken)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all targets, interleaved so that machine noise hits all alike (median)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/crossbar_speed.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_mod.load(args.config)
    batch = args.batch or cfg.train.batch_size
    presets = chosen_names(parser, "--presets", args.presets, PRESETS)
    algorithms = chosen_names(parser, "--algorithms", args.algorithms, ALGORITHMS)
    numerics = chosen_names(parser, "--numerics", args.numerics, NUMERICS)
    cases = [("reference", "", "", {})] + [
        ("crossbar", p, a, {"preset": p, "seed": cfg.seed, "algorithm": a, "numerics": n,
                            **algorithm_options(a, args.transfer_columns)})
        for p in presets for a in algorithms for n in numerics]
    steps = [batch_step(cfg, name, options, batch) for name, _, _, options in cases]
    seconds = [[] for _ in cases]
    for _ in range(args.rounds):
        for times, step in zip(seconds, steps):
            times.append(timed(step, torch.device("cpu"), args.warmup, args.repeats))
    medians = [statistics.median(t) for t in seconds]
    rows = [{"target": name, "preset": preset, "algorithm": algorithm, "options": options, "ms_per_batch": 1e3 * m,
             "vs_reference": m / medians[0], "rounds_ms": [1e3 * v for v in t]}
            for (name, preset, algorithm, options), m, t in zip(cases, medians, seconds)]
    print(f"{cfg.name}, batch {batch}, {cfg.estimator} EP, T1 = {cfg.ep.free_steps}, T2 = {cfg.ep.nudged_steps}; "
          f"{machine().get('cpu', 'cpu')}, {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    print(f"{'target':10} {'preset':12} {'algorithm':16} {'numerics':8} {'ms/batch':>9} {'x reference':>12}")
    for r in rows:
        print(f"{r['target']:10} {r['preset']:12} {r['algorithm']:16} {r['options'].get('numerics', ''):8} "
              f"{r['ms_per_batch']:9.2f} {r['vs_reference']:12.2f}")
    write_report(args.out, {"config": args.config, "batch": batch, "rounds": args.rounds, "repeats": args.repeats,
                            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
