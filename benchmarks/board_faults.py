"""The board protocol under a faulty link: exactly-once weight updates and no silent corruption.

The host build of the reference firmware (``firmware_interface.launch.HostBoard``; ``--asan`` for the
ASan + UBSan build) serves on a pty; the client talks to it through ``FaultyPort``, which corrupts, drops,
duplicates, delays and splits bytes in both directions. The workload mixes PING with random payloads (the
echo must match exactly, or the request must fail with ``BoardTimeout``) and APPLY_DELTA of small random
increments to a configured tiny network, tracked on the host; since protocol 1.1 the increments travel as
APPLY_DELTA_PACKED (sparse: smaller than dense), with ``--dense`` as APPLY_DELTA. ``--conv`` configures a
conv network instead (protocol 1.2: a padded 3x3 conv layer of 2 channels with 2x2 max pooling under a dense
layer) and updates its conv kernel.

Recovery rule after an APPLY_DELTA that failed with ``BoardTimeout``: it may or may not have reached the
weights. The host asks TENSOR_CRC (retrying until it gets an answer) and reads the board's weights version:
``expected + 1`` means it was applied (the host adds the increments to its copy), ``expected`` means not
(the host drops them); either way the board's CRC must equal the CRC of the host's copy. At the end the
weights are read back over a clean link and compared with the host's sum.

Prints a table and writes JSON (default benchmarks/results/board_faults.json).

    python benchmarks/board_faults.py [--requests 10000] [--asan] [--conv]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine  # noqa: E402
from firmware_interface.client import BoardClient, BoardTimeout, StaleVersionError, tensor_crc  # noqa: E402
from firmware_interface.faults import FaultConfig, FaultyPort, open_faulty  # noqa: E402
from firmware_interface.protocol import POOL_CODES, Command, ConvRecord, LayerRecord, NetworkRecord  # noqa: E402

#: The acceptance link: per byte 1% of bytes get a bit flipped, 0.5% are dropped, 0.1% sent twice; 1% of
#: frames are sent twice whole; 2% of pieces are held back up to 20 ms; writes are cut into 1-16 byte pieces.
LINK = dict(flip=0.01, drop=0.005, duplicate=0.001, frame_duplicate=0.01, delay=0.02, max_delay=0.02, split=16)

NETWORK = NetworkRecord((LayerRecord(6, 4), LayerRecord(3, 4)), input_size=5, weight_bits=8, state_bits=8,
                        input_bits=8, max_batch=4)
TENSOR, CODE, SHAPE = 0, 0, (6, 5)  # W_1: 6 x 5, i8
CONV_NETWORK = NetworkRecord((LayerRecord(8, 4, ConvRecord(1, 4, 4, 2, 3, 1, 1, POOL_CODES["max"], 2)),
                              LayerRecord(3, 4)), input_size=16, weight_bits=8, state_bits=8, input_bits=8,
                             max_batch=4)
CONV_SHAPE = (2, 1, 3, 3)  # W_1 of the conv network: 2 channels x 1 input channel x 3 x 3, i8
LIMIT = 100  # the host keeps every weight within +-LIMIT, so nothing saturates at +-127


def link_configs(seed: int, **overrides: float) -> tuple[FaultConfig, FaultConfig]:
    """The tx and rx fault configurations of the acceptance link (seeded, independent streams)."""
    base = {**LINK, **overrides}
    return FaultConfig(**base, seed=seed), FaultConfig(**base, seed=seed + 1)


@dataclass
class MixResult:
    """What one run of the workload saw; the three integrity counts must be 0."""

    requests: int = 0  # workload operations (each PING or APPLY_DELTA, counting its recovery as part of it)
    completed: int = 0
    failed: Counter = field(default_factory=Counter)  # by error type
    pings: int = 0
    deltas: int = 0
    deltas_applied: int = 0
    timeouts_resolved_applied: int = 0  # APPLY_DELTA timed out, TENSOR_CRC showed it had been applied
    timeouts_resolved_not_applied: int = 0
    crc_checks: int = 0
    silent_corruptions: int = 0  # a PING echo that differs, a CRC or version that disagrees with the host
    double_applied: int = 0
    lost_updates: int = 0
    weights_mismatch: int = 0  # elements of the final read-back that differ from the host's sum
    host_version: int = 0
    board_version: int = 0
    wall_s: float = 0.0
    client: dict = field(default_factory=dict)
    faults_tx: dict = field(default_factory=dict)
    faults_rx: dict = field(default_factory=dict)
    receiver: dict = field(default_factory=dict)
    board_status: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = dict(self.failed)
        return d

    @property
    def integrity_ok(self) -> bool:
        return not (self.silent_corruptions or self.double_applied or self.lost_updates or self.weights_mismatch)


def program(client: BoardClient, version: int = 1, conv: bool = False) -> np.ndarray:
    """CONFIGURE the tiny network (or the conv one), write and commit W_1 at ``version``; returns the host's copy."""
    client.configure((CONV_NETWORK if conv else NETWORK).pack())
    weights = np.random.default_rng(version).integers(-50, 51, CONV_SHAPE if conv else SHAPE)
    client.write_tensor(TENSOR, weights, CODE)
    client.commit_tensor(TENSOR, weights, CODE, version)
    return weights


def ask_crc(client: BoardClient, attempts: int = 100) -> tuple[int, int]:
    """TENSOR_CRC until an answer comes (each try is a new request with its own retries)."""
    for _ in range(attempts - 1):
        try:
            return client.tensor_crc(TENSOR)
        except BoardTimeout:
            continue
    return client.tensor_crc(TENSOR)


class Mix:
    """The workload: PING and APPLY_DELTA against a host copy of the weights."""

    def __init__(self, client: BoardClient, weights: np.ndarray, version: int, seed: int,
                 ping_fraction: float = 0.5, max_ping: int = 48, check_every: int = 25) -> None:
        self.client = client
        self.expected = weights.astype(np.int64).reshape(-1).copy()
        self.version = version
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.ping_fraction, self.max_ping, self.check_every = ping_fraction, max_ping, check_every
        self.result = MixResult(host_version=version)

    def run(self, requests: int) -> MixResult:
        start = time.perf_counter()
        for _ in range(requests):
            if self.rng.random() < self.ping_fraction:
                self.ping()
            else:
                self.delta()
        self.result.wall_s += time.perf_counter() - start
        self.result.host_version = self.version
        return self.result

    def _failed(self, error: Exception) -> None:
        self.result.failed[type(error).__name__] += 1

    def ping(self) -> None:
        r = self.result
        r.requests += 1
        r.pings += 1
        data = self.rng.randbytes(self.rng.randint(0, self.max_ping))
        try:
            reply = self.client.request(Command.PING, data, reply_bytes=len(data))
        except BoardTimeout as e:
            self._failed(e)
            return
        except Exception as e:  # noqa: BLE001 - every other error is counted and reported
            self._failed(e)
            return
        if reply.payload != data:
            r.silent_corruptions += 1
        r.completed += 1

    def increments(self) -> np.ndarray:
        inc = np.zeros(self.expected.size, np.int64)
        where = self.np_rng.choice(self.expected.size, int(self.np_rng.integers(1, 5)), replace=False)
        inc[where] = self.np_rng.choice([-3, -2, -1, 1, 2, 3], where.size)
        over = np.abs(self.expected + inc) > LIMIT
        inc[over] = -inc[over]
        return inc

    def delta(self) -> None:
        r = self.result
        r.requests += 1
        r.deltas += 1
        inc = self.increments()
        try:
            saturated, new = self.client.apply_delta(TENSOR, inc, CODE, self.version)
        except BoardTimeout as e:
            self._failed(e)
            self.resolve(inc)
            return
        except StaleVersionError as e:  # never expected: the host's version is always the board's
            self._failed(e)
            self.resolve(inc)
            return
        except Exception as e:  # noqa: BLE001
            self._failed(e)
            self.resolve(inc)
            return
        if saturated:
            r.silent_corruptions += 1  # the host keeps every weight in range: nothing may clip
        self.expected += inc
        self.version = new
        r.deltas_applied += 1
        r.completed += 1
        if r.deltas_applied % self.check_every == 0:
            self.check()

    def resolve(self, inc: np.ndarray) -> None:
        """The recovery rule: learn from TENSOR_CRC's version whether the failed APPLY_DELTA was applied."""
        r = self.result
        crc, board = ask_crc(self.client)
        if board == self.version + 1:
            self.expected += inc
            self.version = board
            r.timeouts_resolved_applied += 1
            r.deltas_applied += 1
        elif board == self.version:
            r.timeouts_resolved_not_applied += 1
        elif board > self.version + 1:
            r.double_applied += board - self.version - 1
            self.version = board
        else:
            r.lost_updates += self.version - board
            self.version = board
        r.crc_checks += 1
        if crc != tensor_crc(self.expected, CODE):
            r.silent_corruptions += 1

    def check(self) -> None:
        """TENSOR_CRC against the host's copy (through the faulty link)."""
        r = self.result
        try:
            crc, board = ask_crc(self.client)
        except BoardTimeout as e:
            self._failed(e)
            return
        r.crc_checks += 1
        if board != self.version:
            r.double_applied += max(0, board - self.version)
            r.lost_updates += max(0, self.version - board)
        if crc != tensor_crc(self.expected, CODE):
            r.silent_corruptions += 1

    def finish(self, port: FaultyPort) -> MixResult:
        """Over a clean link: read the weights back and compare them and the version with the host's."""
        r = self.result
        port.configure()  # no more faults
        port.flush()
        time.sleep(0.05)
        port.reset_input_buffer()
        back = self.client.read_tensor(TENSOR, self.expected.size, CODE).astype(np.int64)
        crc, board = self.client.tensor_crc(TENSOR)
        r.weights_mismatch = int(np.sum(back != self.expected))
        r.board_version, r.host_version = board, self.version
        r.double_applied += max(0, board - self.version)
        r.lost_updates += max(0, self.version - board)
        if crc != tensor_crc(self.expected, CODE):
            r.silent_corruptions += 1
        status = self.client.get_status()
        r.board_status = {k: getattr(status, k) for k in ("rx_frames", "rx_dropped", "rx_bad_crc", "rx_overflow",
                                                          "naks_sent", "replays", "requests", "version")}
        s = self.client.stats
        r.client = {"requests": s.requests, "retries": s.retries, "timeouts": s.timeouts, "naks": s.naks,
                    "discarded": s.discarded, "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
                    "apply_delta": s.commands.get(Command.APPLY_DELTA, 0),
                    "apply_delta_packed": s.commands.get(Command.APPLY_DELTA_PACKED, 0)}
        r.faults_tx, r.faults_rx = asdict(port.tx_counts), asdict(port.rx_counts)
        r.receiver = {k: getattr(self.client.receiver.stats, k)
                      for k in ("frames", "bad_cobs", "bad_frames", "bad_crc", "overflows")}
        return r


def open_faulty_client(url: str, tx: FaultConfig, rx: FaultConfig, timeout: float, retries: int = 8,
                       packed: bool = True) -> tuple[BoardClient, FaultyPort]:
    """A greeted client on ``url`` (a pty) behind a clean ``FaultyPort``; faults start with ``configure``.
    ``packed``: weight differences as APPLY_DELTA_PACKED where smaller (protocol 1.1), else dense."""
    port = open_faulty(url, FaultConfig(), baudrate=115_200, timeout=0.01)
    client = BoardClient(port, timeout=timeout, retries=retries, byte_rate=1e6, packed=packed)  # a pty: no line rate
    client.hello()
    port.configure(tx=tx, rx=rx)
    return client, port


def run(url: str, requests: int, seed: int, timeout: float, link: dict, packed: bool = True,
        conv: bool = False) -> MixResult:
    """One board: program it over a clean link, run the mix over the faulty one, check over a clean one."""
    tx, rx = link_configs(seed, **link)
    client, port = open_faulty_client(url, FaultConfig(), FaultConfig(), timeout, packed=packed)
    try:
        weights = program(client, version=1, conv=conv)
        port.configure(tx=tx, rx=rx)
        mix = Mix(client, weights, 1, seed)
        mix.run(requests)
        return mix.finish(port)
    finally:
        client.close()


def run_boards(boards: int, requests: int, seed: int, timeout: float, link: dict, sanitizers: bool,
               packed: bool = True, conv: bool = False) -> list[MixResult]:
    """``boards`` firmware processes, each with its own link seed, in threads: the run waits on timeouts
    far more than it computes, so boards in parallel cut the wall time without changing what each sees."""
    from firmware_interface import launch

    shares = [requests // boards + (i < requests % boards) for i in range(boards)]
    results: list[MixResult | BaseException | None] = [None] * boards

    def one(i: int) -> None:
        try:
            with launch.HostBoard(device_id=i, sanitizers=sanitizers) as board:
                results[i] = run(board.url, shares[i], seed + 1000 * i, timeout, link, packed, conv)
            if board.process.returncode != 0:  # SIGTERM ends it with 0; a sanitizer report does not
                raise RuntimeError(f"board {i} exited with {board.process.returncode}: "
                                   f"{''.join(board.output)[-2000:]}")
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(boards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def merge(results: list[MixResult], wall_s: float) -> MixResult:
    """The boards' results added up (versions are per board: the sums of both sides)."""
    total = MixResult()
    for r in results:
        for f in fields(MixResult):
            a, b = getattr(total, f.name), getattr(r, f.name)
            if isinstance(b, dict):
                merged = type(b)() if isinstance(b, Counter) else {}
                for k in set(a) | set(b):
                    merged[k] = a.get(k, 0) + b.get(k, 0)
                setattr(total, f.name, Counter(merged) if isinstance(b, Counter) else merged)
            else:
                setattr(total, f.name, a + b)
    total.wall_s = wall_s
    return total


# -- report ----------------------------------------------------------------------------------------------------

def table(name: str, r: MixResult) -> str:
    ft, fr = r.faults_tx, r.faults_rx
    rows = [
        ("requests (PING / APPLY_DELTA)", f"{r.requests:,} ({r.pings:,} / {r.deltas:,})"),
        ("delta requests packed / dense", f"{r.client.get('apply_delta_packed', 0):,} / "
                                          f"{r.client.get('apply_delta', 0):,}"),
        ("completed", f"{r.completed:,}"),
        ("failed, by error", ", ".join(f"{k} {v:,}" for k, v in sorted(r.failed.items())) or "0"),
        ("timed-out deltas: applied / not", f"{r.timeouts_resolved_applied:,} / {r.timeouts_resolved_not_applied:,}"),
        ("client requests / retries", f"{r.client.get('requests', 0):,} / {r.client.get('retries', 0):,}"),
        ("client NAKs / timeouts", f"{r.client.get('naks', 0):,} / {r.client.get('timeouts', 0):,}"),
        ("board NAKs sent / replays", f"{r.board_status.get('naks_sent', 0):,} / {r.board_status.get('replays', 0):,}"),
        ("silent corruptions", str(r.silent_corruptions)),
        ("double-applied updates", str(r.double_applied)),
        ("lost updates", str(r.lost_updates)),
        ("weights differing at the end", str(r.weights_mismatch)),
        ("weights versions host / board (sum)", f"{r.host_version} / {r.board_version}"),
        ("bytes host->board / board->host", f"{ft.get('bytes_in', 0):,} / {fr.get('bytes_in', 0):,}"),
        ("flipped tx / rx", f"{ft.get('flipped', 0):,} / {fr.get('flipped', 0):,}"),
        ("dropped tx / rx", f"{ft.get('dropped', 0):,} / {fr.get('dropped', 0):,}"),
        ("duplicated bytes tx / rx", f"{ft.get('duplicated', 0):,} / {fr.get('duplicated', 0):,}"),
        ("duplicated frames tx / rx", f"{ft.get('frames_duplicated', 0):,} / {fr.get('frames_duplicated', 0):,}"),
        ("delayed pieces tx / rx", f"{ft.get('delayed', 0):,} / {fr.get('delayed', 0):,}"),
        ("wall time", f"{r.wall_s:.1f} s ({r.requests / r.wall_s if r.wall_s else 0:,.0f} requests/s)"),
    ]
    width = max(len(k) for k, _ in rows)
    return f"== {name}\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0.03, help="client timeout per attempt, seconds")
    parser.add_argument("--boards", type=int, default=4, help="firmware processes run in parallel")
    parser.add_argument("--asan", action="store_true", help="also run the ASan + UBSan build")
    parser.add_argument("--asan-requests", type=int, default=None, help="requests on the ASan build (default: same)")
    parser.add_argument("--dense", action="store_true", help="dense APPLY_DELTA only (a protocol 1.0 host)")
    parser.add_argument("--conv", action="store_true", help="a conv network (protocol 1.2) and its conv kernel")
    for key, value in LINK.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "board_faults.json")
    args = parser.parse_args(argv)

    link = {k: getattr(args, k) for k in LINK}
    builds = [("host", False)] + ([("host-asan", True)] if args.asan else [])
    results, per_board = {}, {}
    for name, sanitizers in builds:
        requests = args.requests if name == "host" or args.asan_requests is None else args.asan_requests
        start = time.perf_counter()
        boards = run_boards(args.boards, requests, args.seed, args.timeout, link, sanitizers, not args.dense, args.conv)
        results[name] = merge(boards, time.perf_counter() - start)
        per_board[name] = [{"requests": b.requests, "completed": b.completed, "failed": dict(b.failed),
                            "host_version": b.host_version, "board_version": b.board_version,
                            "wall_s": b.wall_s} for b in boards]
        print(table(f"{name} build: {requests:,} requests on {args.boards} boards in parallel", results[name]))
    out = {"benchmark": "board_faults", "machine": machine(), "link": link, "client_timeout_s": args.timeout,
           "seed": args.seed, "boards": args.boards, "packed": not args.dense, "conv": args.conv,
           "results": {k: v.as_dict() for k, v in results.items()}, "per_board": per_board}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=int) + "\n")
    print(f"wrote {args.out}")
    ok = all(r.integrity_ok and set(r.failed) <= {"BoardTimeout"} for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
