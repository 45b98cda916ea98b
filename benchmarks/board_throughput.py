"""Link throughput and relaxation time of a board: weight upload and state read-back as a fraction of the
link's byte rate, and the time per RELAX.

The link's byte rate is measured, not assumed, in each direction (a QEMU UART is far faster out than in; a
real UART carries about baud / 10 each way): a maximum-size frame with a bad CRC, answered by a 12-byte NAK,
times host to board; a PING echo of it, less that, times board to host (each the fastest of many). For
comparison, ``--burst`` such frames written back to back time a host that would not wait for answers.
Weight upload (WRITE_WEIGHTS + COMMIT_WEIGHTS of the config's network), input upload (SET_INPUT of a
batch) and state read-back (READ_STATES of a batch) are timed and reported as payload bytes per second and as a fraction of that rate.
Where the board offers packed tensors (protocol 1.1) the packed uploads are timed too, on what training
sends: a batch of the config's real images (SET_INPUT_PACKED) and a sparse update of every weight tensor
(15% of the increments +-1, APPLY_DELTA_PACKED, one ``apply_deltas`` as the serial target sends it); their rows
give the payload bytes on the wire per second (the link's utilisation) and the decoded bytes per second (the
effective rate), and the update's time is taken apart (``delta_breakdown``). RELAX is timed at batch 1
and at the full batch, for 1 and ``--steps`` steps, so that the per-step cost and the fixed cost per
request separate. Prints a table and writes JSON (default benchmarks/results/board_throughput_BOARD.json).

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
from benchmarks.report import machine  # noqa: E402
from firmware_interface.frame import Frame, Kind  # noqa: E402
from firmware_interface.protocol import Command  # noqa: E402


def timed(fn, repeats: int, summary=statistics.median) -> float:
    """Median (or ``summary``) seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return summary(times)


def nak_round_trip(client, payload: bytes, burst: int = 1) -> None:
    """Send ``burst`` PING frames whose CRCs are wrong, back to back, and wait for the board's NAKs: the time the
    board takes to read them."""
    from firmware_interface import cobs

    frames = []
    for i in range(burst):
        body = bytearray(Frame(Kind.REQUEST, 0xFF00 + i, Command.PING, 0, payload).body())
        body[-1] ^= 0xFF
        frames.append(cobs.encode(bytes(body)) + b"\x00")
    client.port.write(b"".join(frames))
    for i in range(burst):
        if client.await_frame(0xFF00 + i, Command.PING, 30.0) is None:
            raise TimeoutError("the board did not NAK a frame with a bad CRC")


def packed_row(client, fn, decoded_bytes: int, repeats: int) -> dict:
    """Time ``fn`` (packed uploads); the payload bytes it put on the wire, and the bytes they decode to."""
    sent = client.stats.payload_sent
    fn()
    wire = client.stats.payload_sent - sent
    t = timed(fn, repeats)
    return {"payload_bytes": wire, "seconds": t, "bytes_per_second": wire / t, "direction": "host_to_board",
            "decoded_bytes": decoded_bytes, "decoded_bytes_per_second": decoded_bytes / t}


def delta_breakdown(client, updates: list, version: list, rate_in: float, repeats: int) -> dict:
    """Where a packed update's time goes beyond its payload at the raw rate, request by request:
    the frames' framing bytes, the round trip of a frame the board only reads (its NAK round trip less the
    frame at the raw rate), the board's decoding and applying (the request less that NAK round trip), and
    the host's encoding (which the client overlaps with the request before). Each the fastest of many, like the
    raw rate: a small difference of larger times, which load on the machine would swamp."""
    import struct

    from firmware_interface import packed as P

    out = {"payload_bytes": 0, "framing_bytes": 0, "round_trip_s": 0.0, "board_s": 0.0, "encode_s": 0.0}
    for tid, inc, code in updates:
        encoded = [P.encode(-inc, code), P.encode(inc, code)]  # sent in turn: the weights stay where they were
        body = struct.pack("<BBII", tid, 0, 0, 0) + encoded[1]
        wire = len(Frame(Kind.REQUEST, 0, Command.APPLY_DELTA_PACKED, 0, body).encode())

        def request() -> None:
            payload = struct.pack("<BBII", tid, 0, version[0], 0) + encoded[version[0] & 1]
            version[0] = struct.unpack("<II", client.request(Command.APPLY_DELTA_PACKED, payload).payload)[1]
        t_request = timed(request, 4 * repeats, min)
        t_nak = timed(lambda: nak_round_trip(client, body), 4 * repeats, min)
        out["payload_bytes"] += len(body)
        out["framing_bytes"] += wire - len(body)
        out["round_trip_s"] += t_nak - wire / rate_in
        out["board_s"] += t_request - t_nak
        out["encode_s"] += timed(lambda: P.encode(inc, code), 4 * repeats, min)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu", help="qemu, host, or the pyserial URL of a real board")
    parser.add_argument("--config", default="configs/fmnist_board.toml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8, help="frames written back to back for the raw rate")
    parser.add_argument("--json", help="default benchmarks/results/board_throughput_BOARD.json")
    args = parser.parse_args(argv)
    import numpy as np
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
        wire = len(Frame(Kind.REQUEST, 0, Command.PING, 0, echo).encode())
        # fastest of many: the echo's outgoing half is a small difference of two larger times
        t_in = timed(lambda: nak_round_trip(client, echo), 4 * args.repeats, min)  # the board reads it all
        t_echo = timed(lambda: client.ping(echo), 4 * args.repeats, min)
        rate_in, rate_out = wire / t_in, wire / max(t_echo - t_in, 1e-9)
        # frames back to back (a pipelined host): on QEMU no faster, slower under load
        t_burst = timed(lambda: nak_round_trip(client, echo, args.burst), args.repeats, min)
        link = {"host_to_board": rate_in, "board_to_host": rate_out,
                "burst_host_to_board": args.burst * wire / t_burst}

        target = SerialTarget(spec, client=client, quant={k: v for k, v in vars(cfg.quant).items()})
        weights = init_parameters(spec, cfg.seed)
        target.program(weights)
        image = target.image

        def upload() -> None:  # the protocol's part of programming: no host-side quantization
            client.configure(image.record.pack())
            for tid, (values, c) in sorted(image.tensors.items()):
                client.write_tensor(tid, values, c)
                client.commit_tensor(tid, values, c, 0)
        t = timed(upload, args.repeats)
        size = sum(v.size * DTYPES[c].itemsize for v, c in image.tensors.values())
        rows["weight upload"] = {"payload_bytes": size, "seconds": t, "bytes_per_second": size / t,
                                 "direction": "host_to_board"}

        x = torch.rand(args.batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))
        x_int = target.fixed_point.encode_input(x).numpy()
        code = image.input_code
        packed = client.uses_packed
        client.packed = False
        t = timed(lambda: client.set_input(x_int, code), args.repeats)
        rows["input upload"] = {"payload_bytes": x_int.size, "seconds": t, "bytes_per_second": x_int.size / t,
                                "direction": "host_to_board"}
        client.packed = packed
        breakdown = None
        if packed:  # what training sends: real images, a sparse update
            from hwtoolkit.runs import load_splits

            images = load_splits(cfg).train_x[:args.batch].float().div_(255.0)
            real = target.fixed_point.encode_input(images).numpy()
            width = int(spec.input_shape[-1])
            rows["input upload, packed (real images)"] = packed_row(
                client, lambda: client.set_input(real, code, width=width), real.size * DTYPES[code].itemsize,
                args.repeats)
            rng = np.random.default_rng(0)
            updates = [(tid, np.where(rng.random(values.size) < 0.15, rng.choice([-1, 1], values.size), 0), c)
                       for tid, (values, c) in sorted(image.tensors.items()) if tid in image.weight_ids]
            version = [client.tensor_crc(image.weight_ids[0])[1]]

            def apply() -> None:  # as the serial target sends an update: every tensor in one apply_deltas
                version[0] = client.apply_deltas(updates, version[0])[1]
            rows["weight differences, packed (15% +-1)"] = packed_row(
                client, apply, sum(v.size * DTYPES[c].itemsize for _, v, c in updates), args.repeats)
            breakdown = delta_breakdown(client, updates, version, rate_in, args.repeats)

        units = [g.units for g in image.record.layers]
        sc = image.state_code

        def read_all() -> None:
            for layer, n in enumerate(units, start=1):
                client.read_states(Snapshot.CURRENT, layer, args.batch, n, sc)
        client.relax(Phase.FREE, Init.ZERO, 1, 0, compute=60.0)
        nbytes = args.batch * sum(units) * DTYPES[sc].itemsize
        t = timed(read_all, args.repeats)
        rows["state read-back"] = {"payload_bytes": nbytes, "seconds": t, "bytes_per_second": nbytes / t,
                                   "direction": "board_to_host"}

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
        row["fraction_of_link"] = row["bytes_per_second"] / link[row["direction"]]
    print(f"board: {args.board} ({info.describe()}); network {spec.describe()}, batch {args.batch}")
    print(f"link, raw bytes per second: host to board {rate_in:,.0f} (a {wire}-byte frame answered by a NAK; "
          f"{args.burst} back to back: {link['burst_host_to_board']:,.0f}), board to host {rate_out:,.0f} (a PING "
          f"echo of it, less the former)")
    print(f"{'transfer':38} {'payload B':>10} {'seconds':>9} {'B/s':>10} {'of link':>8} {'decoded B/s':>12}")
    for name, r in rows.items():
        decoded = f"{r['decoded_bytes_per_second']:12.0f}" if "decoded_bytes" in r else ""
        print(f"{name:38} {r['payload_bytes']:10d} {r['seconds']:9.4f} {r['bytes_per_second']:10.0f} "
              f"{100 * r['fraction_of_link']:7.1f}% {decoded}")
    if breakdown:
        b, row = breakdown, rows["weight differences, packed (15% +-1)"]
        print(f"packed differences, {1e3 * row['seconds']:.1f} ms: {b['payload_bytes']} payload bytes at the raw rate "
              f"{1e3 * b['payload_bytes'] / rate_in:.1f} ms, their {b['framing_bytes']} framing bytes "
              f"{1e3 * b['framing_bytes'] / rate_in:.1f} ms, round trips {1e3 * b['round_trip_s']:.1f} ms, the board's "
              f"decoding and applying {1e3 * b['board_s']:.1f} ms; the host's encoding {1e3 * b['encode_s']:.1f} ms "
              f"(overlapped)")
    print(f"{'RELAX':28} {'ms':>9}")
    for name, t in relax.items():
        print(f"{name:28} {1e3 * t:9.2f}")
    print(f"per step at batch {args.batch}: {1e3 * per_step:.2f} ms ({1e9 * per_step / macs_per_step:.1f} ns per "
          f"multiply-accumulate; HELLO says {info.ns_per_mac})")
    kind = args.board if args.board in ("qemu", "host") else "hardware"
    out = Path(args.json or f"benchmarks/results/board_throughput_{kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "board": args.board, "hello": info.describe(),
                               "network": spec.describe(), "batch": args.batch, "link_bytes_per_second": link,
                               "transfers": rows, "packed_difference_breakdown": breakdown,
                               "relax_seconds": relax, "step_seconds": per_step,
                               "ns_per_mac": 1e9 * per_step / macs_per_step, "requests": stats.requests,
                               "retries": stats.retries}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
