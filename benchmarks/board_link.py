"""Where the link's bytes and time go when training with a board in the loop: per command, per training batch.

Trains the config with ``target.name = "serial"`` on a board (QEMU, the host build, or a URL) and counts every
request: its bytes on the wire into the board, the payload bytes, and the seconds until its answer, split
into the training batches and the validation passes of each epoch (the final test pass is skipped). With
``--no-packed`` the host speaks protocol 1.0 (dense APPLY_DELTA and SET_INPUT), for the figures before the
packed tensors. Prints a table and writes JSON (default benchmarks/results/board_link_BOARD[_dense].json).

    python benchmarks/board_link.py [--board qemu|host|URL] [--no-packed] [--set train.epochs=1 ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.board_training import open_board  # noqa: E402
from benchmarks.report import machine  # noqa: E402

DEFAULT_SETS = ["data.limit=10000", "data.val_size=2000", "train.epochs=1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu", help="qemu, host, or the pyserial URL of a board")
    parser.add_argument("--config", default="configs/fmnist_board.toml")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config overrides (default: {' '.join(DEFAULT_SETS)})")
    parser.add_argument("--no-packed", action="store_true", help="dense transfers only (protocol 1.0)")
    parser.add_argument("--runs", default="runs/bench-board-link", help="where the run goes (replaced)")
    parser.add_argument("--json", help="default benchmarks/results/board_link_BOARD[_dense].json")
    args = parser.parse_args(argv)
    import shutil

    import firmware_interface.client as client_mod
    import hwtoolkit.training.loop as loop
    from firmware_interface.frame import Frame, Kind
    from firmware_interface.protocol import command_name
    from hwtoolkit import config as config_mod

    phase = {"name": "train"}
    counts: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(
        lambda: [0, 0, 0, 0.0]))  # phase -> command -> requests, wire bytes in, payload bytes in, seconds
    original_request, original_init = client_mod.BoardClient.request, client_mod.BoardClient.__init__

    def request(self, command, payload=b"", *a, **k):
        started = time.perf_counter()
        try:
            return original_request(self, command, payload, *a, **k)
        finally:
            row = counts[phase["name"]][command_name(command)]
            row[0] += 1
            row[1] += len(Frame(Kind.REQUEST, 0, command, 0, payload).encode())
            row[2] += len(payload)
            row[3] += time.perf_counter() - started

    def init(self, *a, **k):
        original_init(self, *a, **k)
        if args.no_packed:
            self.packed = False

    original_evaluate = loop.evaluate

    def evaluate(*a, **k):
        phase["name"] = "evaluation"
        try:
            return original_evaluate(*a, **k)
        finally:
            phase["name"] = "train"

    client_mod.BoardClient.request, client_mod.BoardClient.__init__ = request, init
    loop.evaluate = evaluate
    loop._finish = lambda *a, **k: {}  # no test pass: the figures are per training batch and per epoch

    sets = DEFAULT_SETS if args.set is None else args.set
    out_dir = Path(args.runs)
    shutil.rmtree(out_dir, ignore_errors=True)
    with open_board(args.board) as url:
        cfg = config_mod.load(args.config, sets + ["target.name=\"serial\"", f"target.url={json.dumps(url)}"])
        started = time.perf_counter()
        loop.train(cfg, out_dir, progress=False)
        wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batches = sum(m["train_batches"] for m in metrics)
    epochs = len(metrics)
    table = {}
    for name, rows in counts.items():
        per = batches if name == "train" else epochs
        table[name] = {c: {"requests": r[0] / per, "wire_bytes_in": r[1] / per, "payload_bytes_in": r[2] / per,
                           "seconds": r[3] / per} for c, r in sorted(rows.items(), key=lambda kv: -kv[1][1])}
        table[name]["total"] = {k: sum(v[k] for v in table[name].values()) for k in
                                ("requests", "wire_bytes_in", "payload_bytes_in", "seconds")}
    epoch_seconds = [m["seconds"] - (metrics[i - 1]["seconds"] if i else 0.0) for i, m in enumerate(metrics)]
    print(f"board {args.board}, {'dense (protocol 1.0)' if args.no_packed else 'packed where offered'}; "
          f"{batches} training batches in {epochs} epochs; seconds per epoch (training and validation): "
          + ", ".join(f"{s:.1f}" for s in epoch_seconds))
    for name, rows in table.items():
        print(f"per {'training batch' if name == 'train' else 'validation pass'}:")
        print(f"  {'command':20} {'requests':>9} {'wire B in':>10} {'payload B':>10} {'seconds':>8}")
        for c, r in rows.items():
            print(f"  {c:20} {r['requests']:9.1f} {r['wire_bytes_in']:10.0f} {r['payload_bytes_in']:10.0f} "
                  f"{r['seconds']:8.3f}")
    kind = args.board if args.board in ("qemu", "host") else "hardware"
    path = Path(args.json or f"benchmarks/results/board_link_{kind}{'_dense' if args.no_packed else ''}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "board": args.board, "config": args.config, "sets": sets,
                                "packed": not args.no_packed, "training_batches": batches, "epochs": epochs,
                                "epoch_seconds": epoch_seconds, "wall_seconds": wall, "per_batch": table.get("train"),
                                "per_validation_pass": table.get("evaluation")}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
