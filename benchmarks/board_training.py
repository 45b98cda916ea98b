"""Training with a board in the loop against the fixed-point model on the reference target, same config and seed.

Starts the board (the QEMU Cortex-M3 build, the host build, the fpga-sim build with RELAX on the Verilated
RTL core, or a real board by URL), trains the config with
``target.name = "serial"``, trains it again on the reference target, and reports both accuracies, the
difference (the acceptance asks for at most 0.5 points), whether the weights are identical, and the time.
Prints a table and writes JSON (default benchmarks/results/board_training_BOARD.json).

    python benchmarks/board_training.py [--board qemu|host|fpga-sim|URL] [--config configs/fmnist_board.toml]
        [--set data.limit=10000 ...] [--runs runs/bench-board-training]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import machine  # noqa: E402

ACCEPTANCE_SETS = ["data.limit=10000", "data.val_size=2000", "train.epochs=3"]


@contextlib.contextmanager
def open_board(kind: str):
    """The URL of a board of ``kind`` for the duration of the block."""
    from firmware_interface import launch

    if kind == "qemu":
        with launch.QemuBoard() as board:
            yield board.url
    elif kind in ("host", "fpga-sim"):
        with launch.HostBoard(rtl=kind == "fpga-sim") as board:
            yield board.url
    else:
        yield kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu", help="qemu, host, fpga-sim, or the pyserial URL of a real board")
    parser.add_argument("--config", default="configs/fmnist_board.toml")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config overrides (default: {' '.join(ACCEPTANCE_SETS)})")
    parser.add_argument("--runs", default="runs/bench-board-training", help="where the runs go (must be new)")
    parser.add_argument("--json", help="default benchmarks/results/board_training_BOARD.json")
    args = parser.parse_args(argv)
    import torch

    from hwtoolkit import config as config_mod
    from hwtoolkit.training import checkpoint
    from hwtoolkit.training.loop import train

    sets = ACCEPTANCE_SETS if args.set is None else args.set
    rows = []
    with open_board(args.board) as url:
        for name, target in (("board", ["target.name=\"serial\"", f"target.url={json.dumps(url)}"]),
                             ("reference", ["target.name=\"reference\""])):
            cfg = config_mod.load(args.config, sets + target)
            started = time.perf_counter()
            summary = train(cfg, Path(args.runs) / name, progress=False)
            rows.append({"run": name, "wall_seconds": time.perf_counter() - started, **summary})
    weights = [checkpoint.load(Path(args.runs) / r["run"] / "checkpoints" / "best.pt")["weights"] for r in rows]
    identical = all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    gap = 100 * (rows[0]["test_accuracy"] - rows[1]["test_accuracy"])
    print(f"\n{'run':10} {'test acc':>9} {'best val':>9} {'epoch':>6} {'train s':>9}")
    for r in rows:
        print(f"{r['run']:10} {100 * r['test_accuracy']:8.2f}% {100 * r['val_accuracy']:8.2f}% {r['best_epoch']:6d} "
              f"{r['train_seconds']:9.1f}")
    print(f"board - reference: {gap:+.2f} points; identical weights: {identical}")
    kind = args.board if args.board in ("qemu", "host", "fpga-sim") else "hardware"
    out = Path(args.json or f"benchmarks/results/board_training_{kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "board": args.board, "config": args.config, "sets": sets,
                               "runs": rows, "gap_points": gap, "identical_weights": identical}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if abs(gap) <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
