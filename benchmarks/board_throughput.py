"""Link throughput and relaxation time of a board: weight upload and state read-back as a fraction of the
link's byte rate, and the time per RELAX.

The link's byte rate is measured, not assumed: maximum-size PING echoes give the bytes per second the link
carries in each direction (for a real UART it is about baud / 10). Weight upload (WRITE_WEIGHTS +
COMMIT_WEIGHTS of the config's network) and state read-back (READ_STATES of a batch) are timed and reported
as payload bytes per second and as a fraction of that rate. RELAX is timed at batch 1 and at the full batch,
for 1 and ``--steps`` steps, so that the per-step cost and the fixed cost per request separate. Prints a
table and writes JSON (default benchmarks/results/board_throughput_BOARD.json).

    python benchmarks/board_throughput.py [--board qemu|host|URL] [--config configs/fmnist_board.toml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.board_training import open_board  # noqa: E402
from benchmarks.step_speed import machine  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu", help="qemu, host, or the pyserial URL of a real board")
    parser.add_argument("--config", default="configs/fmnist_board.toml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="default benchmarks/results/board_throughput_BOARD.json")
    args = parser.parse_args(argv)
    import torch

    from firmware_interface.client import BoardClient
    from firmware_interface.tensor import DTYPES
    from firmware_interface.protocol import Init, Phase, Snapshot
    from hwtoolkit import config as config_mod
    from hwtoolkit.network.parameters import init_parameters
    from targets.serial.target import SerialTarget

    cfg = config_mod.load(args.config)
    spec = cfg.network
    rows: dict[str, dict] = {}
    with open_board(args.board) as url, BoardClient.open(url, timeout=5.0) as client:
        info = client.info
        echo = bytes(range(1, 256)) * (info.max_payload // 255) + bytes(info.max_payload % 255)
        t = timed(lambda: client.ping(echo), args.repeats)
        link = 2 * len(echo) / t  # the echo crosses the link twice, one direction after the other
        rows["link (PING echo)"] = {"payload_bytes": 2 * len(echo), "seconds": t, "bytes_per_second": link}

        target = SerialTarget(spec, client=client, quant={k: v for k, v in vars(cfg.quant).items()})
        weights = init_parameters(spec, cfg.seed)
        target.program(weights)
        image = target._image

        def upload() -> None:  # the protocol's part of programming: no host-side quantization
            client.configure(image.record.pack())
            for tid, (values, c) in sorted(image.tensors.items()):
                client.write_tensor(tid, values, c)
                client.commit_tensor(tid, values, c, 0)
        t = timed(upload, args.repeats)
        size = sum(v.size * DTYPES[c].itemsize for v, c in image.tensors.values())
        rows["weight upload"] = {"payload_bytes": size, "seconds": t, "bytes_per_second": size / t}

        x = torch.rand(args.batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))
        x_int = target._fp.encode_input(x).numpy()
        code = image.input_code
        t = timed(lambda: client.set_input(x_int, code), args.repeats)
        rows["input upload"] = {"payload_bytes": x_int.size, "seconds": t, "bytes_per_second": x_int.size / t}

        units = [g.units for g in image.record.layers]
        sc = image.state_code

        def read_all() -> None:
            for layer, n in enumerate(units, start=1):
                client.read_states(Snapshot.CURRENT, layer, args.batch, n, sc)
        client.relax(Phase.FREE, Init.ZERO, 1, 0, compute=60.0)
        nbytes = args.batch * sum(units) * DTYPES[sc].itemsize
        t = timed(read_all, args.repeats)
        rows["state read-back"] = {"payload_bytes": nbytes, "seconds": t, "bytes_per_second": nbytes / t}

        relax = {}
        for batch in (1, args.batch):
            client.set_input(x_int[:batch], code)
            for steps in (1, args.steps):
                relax[f"batch {batch}, {steps} steps"] = timed(
                    lambda: client.relax(Phase.FREE, Init.ZERO, steps, 0, compute=60.0), args.repeats)
        per_step = (relax[f"batch {args.batch}, {args.steps} steps"] - relax[f"batch {args.batch}, 1 steps"]) \
            / (args.steps - 1)
        macs_per_step = args.batch * sum(2 * a * b for a, b in zip(units, units[1:]))
        stats = client.stats
    for row in rows.values():
        row["fraction_of_link"] = row["bytes_per_second"] / link
    print(f"board: {args.board} ({info.describe()}); network {spec.describe()}, batch {args.batch}")
    print(f"{'transfer':18} {'payload B':>10} {'seconds':>9} {'B/s':>10} {'of link':>8}")
    for name, r in rows.items():
        print(f"{name:18} {r['payload_bytes']:10d} {r['seconds']:9.4f} {r['bytes_per_second']:10.0f} "
              f"{100 * r['fraction_of_link']:7.1f}%")
    print(f"{'RELAX':28} {'ms':>9}")
    for name, t in relax.items():
        print(f"{name:28} {1e3 * t:9.2f}")
    print(f"per step at batch {args.batch}: {1e3 * per_step:.2f} ms ({1e9 * per_step / macs_per_step:.1f} ns per "
          f"multiply-accumulate; HELLO says {info.ns_per_mac})")
    kind = args.board if args.board in ("qemu", "host") else "hardware"
    out = Path(args.json or f"benchmarks/results/board_throughput_{kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "board": args.board, "hello": info.describe(),
                               "network": spec.describe(), "batch": args.batch, "transfers": rows,
                               "relax_seconds": relax, "step_seconds": per_step,
                               "ns_per_mac": 1e9 * per_step / macs_per_step, "requests": stats.requests,
                               "retries": stats.retries}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
