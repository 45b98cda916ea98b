"""Windowed gradient fidelity over many batches (an epoch, say) of trained sweep points.

A sweep measures fidelity over a few batches (``--fidelity-batches``, 4 by default); per-batch cosines of
stochastic pulses are low even when unbiased, and a 4-batch window averages little of that away. This measures
``applied_vs_ideal_windowed`` (hwtoolkit/diagnostics/fidelity.py) over ``--batches`` batches on each point's
best-validation weights, and the windowed cosine over the first 4, 16, ... of them on the way (how it rises as
per-batch noise averages out, or falls as a drift no update asks for accumulates), leaving the sweep's own
outputs alone:

    OMP_NUM_THREADS=1 python benchmarks/epoch_fidelity.py runs/presets_refit_10ep/sweep.json ... \
        --batches 430 --windows 4,16,64 --seeds 1 --json benchmarks/results/epoch_fidelity.json

Rows are grouped by (preset, algorithm): the swept value or the sweep's ``--set`` of each; a later sweep file's
(preset, algorithm) replaces an earlier one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.diagnostics.fidelity import WINDOWED, measure_fidelity, run_fidelity  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.runs import load_splits, open_target  # noqa: E402
from preset_table import value_of  # noqa: E402
from report import write_report  # noqa: E402


def points(paths: list[Path], seeds: set[int], presets: set[str] | None = None) -> list[dict]:
    """The finished points of the sweeps with one of ``seeds`` (and ``presets``, if given): preset, algorithm,
    seed and run directory. A later file's (preset, algorithm) replaces an earlier file's, as in preset_table.py."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        sweep = json.loads(path.read_text())
        mine: dict[tuple[str, str], list[dict]] = {}
        for row in sweep["rows"]:
            preset = value_of(sweep, row, "crossbar.preset")
            if row["seed"] not in seeds or (presets and preset not in presets):
                continue
            if row.get("test_accuracy") is None:
                raise SystemExit(f"{path}: point {row.get('point')} is not finished")
            algorithm = value_of(sweep, row, "crossbar.algorithm", "in_situ")
            mine.setdefault((preset, algorithm), []).append(
                {"preset": preset, "algorithm": algorithm, "seed": row["seed"], "run": str(path.parent / row["point"])})
        found.update(mine)
    return [point for group in found.values() for point in group]


def fidelity_at_start(cfg: config_mod.Config, batches: int, windows: list[int]) -> dict:
    """Fidelity from the weights the run started from (the initialisation), where EP's updates are large and
    consistent, instead of its trained weights, where they are small and point in many directions."""
    with open_target(cfg) as target:
        target.program(init_parameters(cfg.network, cfg.seed))
        return measure_fidelity(cfg, target, load_splits(cfg), cfg.seed, batches, windows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep.json files whose points hold their run directories")
    p.add_argument("--batches", type=int, default=430, help="batches in the window (430: an epoch of fmnist_mlp)")
    p.add_argument("--windows", default="4,16,64", help="comma-separated shorter windows to report on the way")
    p.add_argument("--weights", choices=("best", "init"), default="best",
                   help="measure from each run's best-validation weights or from its initial ones")
    p.add_argument("--seeds", default="1", help="comma-separated seeds of the points to measure")
    p.add_argument("--presets", help="comma-separated presets to measure (default: every one in the sweeps)")
    p.add_argument("--json", type=Path, help="write every point's figures here")
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error(f"--batches must be >= 1, got {args.batches}")
    seeds = {int(s) for s in args.seeds.split(",")}
    windows = sorted({int(w) for w in args.windows.split(",") if w} | {args.batches})
    if windows[0] < 1 or windows[-1] > args.batches:
        p.error(f"--windows must lie between 1 and --batches ({args.batches}), got {args.windows}")
    measured = []
    for point in points(args.sweeps, seeds, set(args.presets.split(",")) if args.presets else None):
        run = Path(point["run"])
        start = time.perf_counter()
        cfg = config_mod.load(run / "config.toml")
        fidelity = (run_fidelity(cfg, run, args.batches, windows) if args.weights == "best" else
                    fidelity_at_start(cfg, args.batches, windows))
        by_window = {int(k): v for k, v in fidelity["windowed_by_batches"].items()}
        measured.append({**point, "weights": args.weights, "batches": args.batches, "applied_vs_ideal": fidelity["applied_vs_ideal"],
                         "device_vs_ideal": fidelity["device_vs_ideal"], WINDOWED: fidelity[WINDOWED],
                         "windowed_by_batches": by_window, "seconds": time.perf_counter() - start})
        print(f"{point['preset']:>11} {point['algorithm']:>16} seed {point['seed']}: per batch "
              f"{fidelity['applied_vs_ideal']:.3f}, windows " +
              ", ".join(f"{k}: {v:.3f}" for k, v in by_window.items()), flush=True)
        if args.json:  # after every point: a killed run keeps what it measured
            write_report(args.json, {"batches": args.batches, "weights": args.weights, "points": measured})
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in measured:
        groups.setdefault((m["preset"], m["algorithm"]), []).append(m)
    print("\n| preset | algorithm | seeds | applied/ideal, per batch | " +
          " | ".join(f"windowed, {k} batches" for k in windows) + " |")
    print("|---|---|---|---|" + "---|" * len(windows))
    for (preset, algorithm), rows in sorted(groups.items()):
        per = statistics.fmean(r["applied_vs_ideal"] for r in rows)
        win = [statistics.fmean(r["windowed_by_batches"][k] for r in rows) for k in windows]
        print(f"| `{preset}` | `{algorithm}` | {len(rows)} | {per:.3f} | " + " | ".join(f"{w:.3f}" for w in win) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
