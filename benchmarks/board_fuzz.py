"""Fuzz the board protocol's parsers: the Python codec in-process, and the firmware's frame parser with libFuzzer.

(a) Python: random and mutated frames (bit flips, truncation, insertion, duplicated slices, random bytes, zero
bytes, splices, valid CRCs around mutated payloads) go through ``FrameReceiver`` and, for every frame that
parses, through the payload decoders of its command (``tensor.decode``, ``HelloInfo.unpack``,
``BoardStatus.unpack``, the client's response checks). Only the codec's own errors may escape, each call site
its own; each input's CPU time is measured and a wall-clock watchdog catches hangs.

(b) Firmware: the libFuzzer harness ``firmware_interface/firmware/fuzz/fuzz_frames.c`` runs from a seed corpus
of valid request sessions that this script writes (built by ``make fuzz``, which caps RELAX at 16 steps: a
65535-step phase of a large network runs for seconds under ASan and libFuzzer would stop at it).

Prints a table and writes JSON (default benchmarks/results/board_fuzz.json).

    python benchmarks/board_fuzz.py [--frames 1000000] [--runs 1000000] [--skip-firmware]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_interface import cobs  # noqa: E402
from benchmarks.report import machine  # noqa: E402
from firmware_interface import packed as P  # noqa: E402
from firmware_interface import tensor as T  # noqa: E402
from firmware_interface.client import (BoardClient, BoardError, BoardResetError, ProtocolError,  # noqa: E402
                                       tensor_crc)
from firmware_interface.frame import Frame, FrameError, FrameReceiver, Kind  # noqa: E402
from firmware_interface.protocol import (BoardStatus, Capability, Command, ConvRecord, HelloInfo,  # noqa: E402
                                         LayerRecord, NetworkRecord, Status, hello_request)

DEFAULT_BINARY = ROOT / "firmware_interface" / "firmware" / "build" / "fuzz" / "fuzz_frames"
BOARD_MAX_PAYLOAD = 2048


class Hang(Exception):
    """The watchdog fired: one batch of inputs ran far longer than it may."""


# -- valid material to mutate ----------------------------------------------------------------------------------

def tiny_network() -> tuple[NetworkRecord, dict[int, tuple[np.ndarray, int]]]:
    """A 2-layer network record and its tensors (id -> (values, dtype code)); shift tables: row 0 forward,
    row 1 feedback (unused in layer 1), row 2 reserved (0)."""
    record = NetworkRecord((LayerRecord(6, 4), LayerRecord(3, 4)), input_size=5, weight_bits=8, state_bits=8,
                           input_bits=8, max_batch=4)
    rng = np.random.default_rng(0)
    tensors = {0: (rng.integers(-20, 21, (6, 5)), 0), 1: (rng.integers(-100, 101, 6), 2),
               3: (np.array([[1] * 6, [0] * 6, [0] * 6]), 3), 4: (rng.integers(-20, 21, (3, 6)), 0),
               5: (rng.integers(-100, 101, 3), 2), 7: (np.array([[1] * 3, [2] * 3, [0] * 3]), 3)}
    return record, tensors


def request_session() -> list[tuple[int, bytes]]:
    """A plausible sequence of requests (command, payload): greet, configure, program, run, read back."""
    record, tensors = tiny_network()
    out: list[tuple[int, bytes]] = [(Command.HELLO, hello_request()), (Command.PING, b"ping"),
                                    (Command.CONFIGURE, record.pack())]
    for tid, (values, code) in tensors.items():
        out.append((Command.WRITE_WEIGHTS, struct.pack("<BBI", tid, 0, 0) + T.encode(values.reshape(-1), code)))
        out.append((Command.COMMIT_WEIGHTS, struct.pack("<BBII", tid, 0, tensor_crc(values, code), 1)))
    out += [
        (Command.APPLY_DELTA, struct.pack("<BBII", 0, 0, 1, 3) + T.encode(np.array([1, -1, 2]), 0)),
        (Command.APPLY_DELTA_PACKED, struct.pack("<BBII", 0, 0, 2, 0)
         + P.encode(np.array([0, 0, 1, -1, 0, 0, 0, 2, 0, 0, 0, 0, -3, 0]), 0)),
        (Command.APPLY_DELTA_PACKED, struct.pack("<BBII", 1, 0, 3, 1) + P.encode(np.array([300, -7000, 0]), 2)),
        (Command.APPLY_DELTA_PACKED, struct.pack("<BBII", 4, 0, 4, 2)
         + P.encode(np.array([0, 5, 6, 7, 0, 0, 2]), 0, P.PRED_PREV)),
        (Command.TENSOR_CRC, b"\x00"),
        (Command.READ_WEIGHTS, struct.pack("<BBIH", 0, 0, 0, 30)),
        (Command.SET_INPUT, struct.pack("<HH", 2, 0) + T.encode(np.arange(10).reshape(2, 5), 3)),
        (Command.SET_INPUT_PACKED, struct.pack("<HH", 3, 0)
         + P.encode(np.array([[0, 0, 9, 200, 0], [0, 3, 180, 220, 1], [0, 0, 0, 0, 0]]), 3, P.PRED_MED, 5)),
        (Command.SET_INPUT_PACKED, struct.pack("<HH", 2, 1) + P.encode(np.array([[1, 2, 3, 4, 5]]), 3, P.PRED_PREV)),
        (Command.SET_TARGET, struct.pack("<H", 0) + T.encode(np.array([1, 2]), 3)),
        (Command.RELAX, struct.pack("<BBHiI", 0, 0, 8, 0, 0xFFFFFFFF)),
        (Command.RELAX, struct.pack("<BBHiI", 1, 2, 4, 1 << 15, 2)),
        (Command.READ_STATES, struct.pack("<BBHH", 0, 1, 0, 2)),
        (Command.READ_STATES, struct.pack("<BBHH", 0, 0xF0, 0, 2)),
        (Command.SET_STATES, struct.pack("<BBH", 1, 0, 0) + T.encode(np.ones((2, 6), np.int64), 3)),
        (Command.GET_STATUS, b""),
        (Command.SELF_TEST, struct.pack("<I", 0xFFFFFFFF)),
        (Command.RESET, b""),
    ]
    return out


def tiny_conv_network(pool: int) -> tuple[NetworkRecord, dict[int, tuple[np.ndarray, int]]]:
    """Two conv layers (protocol 1.2): a 1x4x4 input, 2 channels 3x3 padded with a 2x2 pool (``pool``: 1 max,
    2 average) = 8 units, then 3 channels 2x2 without pooling = 3 units (the MSE output)."""
    record = NetworkRecord((LayerRecord(8, 4, ConvRecord(1, 4, 4, 2, 3, 1, 1, pool, 2)),
                            LayerRecord(3, 4, ConvRecord(2, 2, 2, 3, 2, 1, 0, 0, 1))),
                           input_size=16, weight_bits=8, state_bits=8, input_bits=8, max_batch=4)
    rng = np.random.default_rng(pool)
    tensors = {0: (rng.integers(-20, 21, (2, 1, 3, 3)), 0), 1: (rng.integers(-100, 101, 2), 2),
               3: (np.array([[1] * 2, [0] * 2, [0] * 2]), 3), 4: (rng.integers(-20, 21, (3, 2, 2, 2)), 0),
               5: (rng.integers(-100, 101, 3), 2), 7: (np.array([[1] * 3, [2] * 3, [0] * 3]), 3)}
    return record, tensors


def conv_session(pool: int) -> list[tuple[int, bytes]]:
    """Greet, configure a conv network, program it, relax free and nudged, read back, update."""
    record, tensors = tiny_conv_network(pool)
    out: list[tuple[int, bytes]] = [(Command.HELLO, hello_request()), (Command.CONFIGURE, record.pack())]
    for tid, (values, code) in tensors.items():
        out.append((Command.WRITE_WEIGHTS, struct.pack("<BBI", tid, 0, 0) + T.encode(values.reshape(-1), code)))
        out.append((Command.COMMIT_WEIGHTS, struct.pack("<BBII", tid, 0, tensor_crc(values, code), 1)))
    return out + [
        (Command.SET_INPUT, struct.pack("<HH", 2, 0) + T.encode(np.arange(32).reshape(2, 16) * 7, 3)),
        (Command.SET_TARGET, struct.pack("<H", 0) + T.encode(np.array([1, 2]), 3)),
        (Command.RELAX, struct.pack("<BBHiI", 0, 0, 8, 0, 0xFFFFFFFF)),
        (Command.RELAX, struct.pack("<BBHiI", 1, 2, 4, 1 << 15, 2)),
        (Command.READ_STATES, struct.pack("<BBHH", 1, 1, 0, 2)),
        (Command.APPLY_DELTA, struct.pack("<BBII", 4, 0, 1, 3) + T.encode(np.array([1, -1, 2]), 0)),
        (Command.SET_STATES, struct.pack("<BBH", 2, 0, 0) + T.encode(np.ones((2, 3), np.int64), 3)),
        (Command.RELAX, struct.pack("<BBHiI", 2, 1, 3, -(1 << 15), 0xFFFFFFFF)),
    ]


def response_payloads() -> list[tuple[int, bytes]]:
    """Valid response payloads (command, payload), as the host parses them."""
    info = HelloInfo(1, 1, (1, 1, 0), BOARD_MAX_PAYLOAD, 0x1234, 7, Capability(255), 1 << 16, 16, 4096, 256,
                     65535, 16, 16, 16, 64, 2, 500)
    status = struct.pack("<10IBBH", 1, 7, 100, 2, 3, 0, 3, 1, 90, 5, 0, 1, 0)
    return [
        (Command.HELLO, info.pack()), (Command.GET_STATUS, status), (Command.PING, b"echo"),
        (Command.READ_WEIGHTS, T.encode(np.arange(-15, 15), 0)),
        (Command.READ_STATES, T.encode(np.arange(12).reshape(2, 6), 3)),
        (Command.READ_STATES, T.encode(np.arange(8).reshape(2, 4) * 1000, 2)),
        (Command.TENSOR_CRC, struct.pack("<II", 0xDEADBEEF, 3)), (Command.APPLY_DELTA, struct.pack("<II", 0, 4)),
        (Command.CONFIGURE, struct.pack("<II", 1000, 65536)), (Command.RELAX, struct.pack("<HBBI", 8, 1, 0, 0)),
        (Command.COMMIT_WEIGHTS, struct.pack("<I", 0x1234)), (Command.SELF_TEST, struct.pack("<II", 127, 0)),
        (Command.BOOT, struct.pack("<I", 9)),
    ]


# -- the Python side -------------------------------------------------------------------------------------------

class Mutator:
    """Cheap mutations of encoded frames, driven by one seeded ``random.Random``."""

    INTERESTING = (0x00, 0x01, 0xFE, 0xFF, 0x7F, 0x80)

    def __init__(self, rng: random.Random, wires: list[bytes], payloads: list[tuple[int, bytes]]) -> None:
        self.rng, self.wires, self.payloads = rng, wires, payloads
        self.bodies = [cobs.decode(w[:-1]) for w in wires]

    def valid_frame(self) -> tuple[str, bytes]:
        """A frame with a valid CRC around a (possibly mutated) payload and random header fields."""
        r = self.rng
        command, payload = r.choice(self.payloads)
        if r.random() < 0.8:
            payload = bytes(self.mutate_bytes(bytearray(payload), r.randint(1, 3)))[:BOARD_MAX_PAYLOAD + 64]
        kind = r.choice((Kind.RESPONSE, Kind.RESPONSE, Kind.NAK, Kind.EVENT, Kind.REQUEST))
        status = r.choice((0, 0, 0, r.randrange(256), Status.STALE_VERSION, Status.BAD_ARGUMENT,
                           Status.BAD_VERSION, Status.SATURATED))
        return "valid-crc", Frame(kind, r.randrange(65536), command, status, payload).encode()

    def mutate_bytes(self, b: bytearray, count: int) -> bytearray:
        r = self.rng
        for _ in range(count):
            op = r.randrange(8)
            n = len(b)
            if op == 0 and n:  # bit flips
                for _ in range(r.randint(1, 4)):
                    b[r.randrange(n)] ^= 1 << r.randrange(8)
            elif op == 1 and n:  # truncation
                del b[r.randrange(n):]
            elif op == 2:  # insert random bytes
                i = r.randint(0, n)
                b[i:i] = r.randbytes(r.randint(1, 16))
            elif op == 3 and n:  # duplicate a slice
                i, j = sorted((r.randrange(n), r.randrange(n + 1)))
                k = r.randint(0, n)
                b[k:k] = b[i:j][:512]
            elif op == 4 and n:  # overwrite with random bytes
                i = r.randrange(n)
                chunk = r.randbytes(r.randint(1, 8))
                b[i:i + len(chunk)] = chunk
            elif op == 5:  # zero bytes inserted
                i = r.randint(0, n)
                b[i:i] = bytes(r.randint(1, 3))
            elif op == 6 and n:  # interesting values
                b[r.randrange(n)] = r.choice(self.INTERESTING)
            elif op == 7:  # splice with another frame
                other = r.choice(self.wires)
                b[r.randint(0, n):] = other[r.randint(0, len(other)):]
        return b

    def next(self) -> tuple[str, bytes]:
        r = self.rng
        x = r.random()
        if x < 0.05:
            return "random", r.randbytes(r.randint(0, 300))
        if x < 0.08:
            return "random-nonzero", bytes(v | 1 for v in r.randbytes(r.randint(0, 3000)))
        if x < 0.30:
            return self.valid_frame()
        if x < 0.45:  # mutate the body and COBS-encode it again: reaches the length and CRC checks
            body = self.mutate_bytes(bytearray(r.choice(self.bodies)), r.randint(1, 2))
            return "mutated-body", cobs.encode(bytes(body)) + b"\x00"
        return "mutated", bytes(self.mutate_bytes(bytearray(r.choice(self.wires)), r.randint(1, 4)))


TENSOR_OFFSET = {Command.READ_WEIGHTS: 0, Command.READ_STATES: 0, Command.WRITE_WEIGHTS: 6,
                 Command.APPLY_DELTA: 10, Command.SET_INPUT: 4, Command.SET_TARGET: 2, Command.SET_STATES: 4}
PACKED_OFFSET = {Command.APPLY_DELTA_PACKED: 10, Command.SET_INPUT_PACKED: 4}


class NullPort:
    """A port that never answers (the client is only used for its response checks)."""

    timeout = 0.0
    in_waiting = 0

    def write(self, data: bytes) -> int:
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return b""

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        pass


class Escape(Exception):
    """An exception that is not one of the codec's own escaped a call site."""

    def __init__(self, site: str, error: BaseException) -> None:
        super().__init__(f"{site}: {type(error).__name__}: {error}")
        self.site, self.error = site, error


def guarded(site: str, allowed: tuple[type[BaseException], ...], fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except allowed:
        return None
    except Exception as e:  # noqa: BLE001 - the point is to catch anything else
        raise Escape(site, e) from e


def decode_payload(frame: Frame, client: BoardClient, counts: dict[str, int]) -> None:
    """Every decoder that applies to ``frame``'s payload; only the codec's own errors may escape."""
    payload, command = frame.payload, frame.command
    if command in TENSOR_OFFSET:
        counts["tensor.decode"] += 1
        guarded("tensor.decode", (T.TensorError,), T.decode, payload, TENSOR_OFFSET[command])
        guarded("tensor.decode(exact=False)", (T.TensorError,), T.decode, payload, 0, exact=False)
    if command in PACKED_OFFSET:
        counts["packed.decode"] += 1
        guarded("packed.decode", (T.TensorError,), P.decode, payload[PACKED_OFFSET[command]:],
                P.UNPACKED_FACTOR * BOARD_MAX_PAYLOAD)
    if command == Command.HELLO:
        counts["HelloInfo.unpack"] += 1
        info = guarded("HelloInfo.unpack", (ValueError,), HelloInfo.unpack, payload)
        if info is not None and HelloInfo.unpack(info.pack()) != info:
            raise Escape("HelloInfo round trip", AssertionError(payload.hex()))
    if command == Command.GET_STATUS:
        counts["BoardStatus.unpack"] += 1
        guarded("BoardStatus.unpack", (ValueError,), BoardStatus.unpack, payload)
    if frame.kind in (Kind.RESPONSE, Kind.NAK):
        counts["client checks"] += 1
        reply = guarded("BoardClient._check", (BoardError, BoardResetError, ProtocolError), client._check,
                        command, frame)
        if reply is not None:
            guarded("BoardClient._exact", (ProtocolError,), client._exact, reply, 8)
            code = frame.seq % 5
            guarded("BoardClient._tensor", (ProtocolError,), client._tensor, reply, code,
                    (frame.status % 3, frame.seq % 7))


def fuzz_python(frames: int, seed: int, slow_input: float, batch: int = 2000, batch_limit: float = 30.0) -> dict:
    """Feed ``frames`` random and mutated inputs through the receivers and payload decoders."""
    rng = random.Random(seed)
    session = request_session() + conv_session(1)[1:] + conv_session(2)[1:]
    requests = [Frame(Kind.REQUEST, i + 1, c, 0, p).encode() for i, (c, p) in enumerate(session)]
    responses = [Frame(Kind.RESPONSE, i + 1, c, 0, p).encode() for i, (c, p) in enumerate(response_payloads())]
    mutator = Mutator(rng, requests + responses, session + response_payloads())
    receivers = [FrameReceiver(BOARD_MAX_PAYLOAD), FrameReceiver()]
    client = BoardClient(NullPort(), timeout=0.01, retries=0)
    counts = {k: 0 for k in ("tensor.decode", "packed.decode", "HelloInfo.unpack", "BoardStatus.unpack",
                             "client checks")}
    kinds: dict[str, int] = {}
    escapes: list[dict] = []
    parsed = errors = hangs = 0
    slowest, slowest_kind, slow = 0.0, "", 0
    bytes_fed = 0

    def alarm(signum, frame_):  # noqa: ARG001
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    start = time.perf_counter()
    done = 0
    try:
        while done < frames:
            n = min(batch, frames - done)
            signal.setitimer(signal.ITIMER_REAL, batch_limit)
            try:
                for _ in range(n):
                    kind, data = mutator.next()
                    kinds[kind] = kinds.get(kind, 0) + 1
                    receiver = receivers[done & 1]
                    if rng.random() < 0.9:
                        data += b"\x00"  # most inputs end their frame; the rest leave bytes for the next one
                    t0 = time.process_time()  # CPU time: a busy machine does not make an input slow
                    try:
                        out = guarded("FrameReceiver.feed", (), receiver.feed, data)
                        for item in out:
                            if isinstance(item, FrameError):
                                errors += 1
                                continue
                            parsed += 1
                            if len(item.payload) > receiver.max_payload:
                                raise Escape("FrameReceiver.feed", AssertionError("payload above the maximum"))
                            decode_payload(item, client, counts)
                        if len(receiver._buffer) > receiver.limit:
                            raise Escape("FrameReceiver.feed", AssertionError("buffer above its limit"))
                    except Escape as e:
                        if len(escapes) < 20:
                            escapes.append({"site": e.site, "error": f"{type(e.error).__name__}: {e.error}",
                                            "input": data[:200].hex()})
                        else:
                            escapes.append({"site": e.site})
                    dt = time.process_time() - t0
                    bytes_fed += len(data)
                    if dt > slowest:
                        slowest, slowest_kind = dt, kind
                    if dt > slow_input:
                        slow += 1
                    done += 1
            except Hang:
                hangs += 1
                done += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    stats = [r.stats for r in receivers]
    return {
        "inputs": done, "bytes": bytes_fed, "seed": seed, "inputs_by_kind": kinds,
        "frames_parsed": parsed, "frame_errors": errors,
        "receiver_counters": {k: sum(getattr(s, k) for s in stats)
                              for k in ("frames", "bad_cobs", "bad_frames", "bad_crc", "overflows")},
        "payload_decoder_calls": counts, "escaped_exceptions": len(escapes), "escapes": escapes[:20],
        "hangs": hangs, "slowest_input_s": slowest, "slowest_input_kind": slowest_kind,
        "inputs_over_limit": slow, "slow_input_limit_s": slow_input, "seconds": elapsed,
        "inputs_per_second": done / elapsed if elapsed else 0.0,
    }


# -- the firmware side -----------------------------------------------------------------------------------------

def write_seed_corpus(directory: Path) -> int:
    """Seed inputs for ``fuzz_frames`` in its format: a mode byte, then either raw wire bytes (bit 0 clear;
    bit 1 sends a HELLO first) or records ``[len u8][command u8][payload]`` that it frames as requests."""
    session = request_session()
    wires = [Frame(Kind.REQUEST, i + 1, c, 0, p).encode() for i, (c, p) in enumerate(session)]
    # SELF_TEST's memory test costs about a millisecond: only its own seeds carry it, not the sessions
    heavy = {i for i, (c, _) in enumerate(session) if c == Command.SELF_TEST}
    light = [w for i, w in enumerate(wires) if i not in heavy]
    files = {"raw-session": b"\x00" + b"".join(light), "raw-session-no-reset": b"\x00" + b"".join(light[:-1])}
    for i, w in enumerate(wires):
        files[f"raw-{i:02d}"] = b"\x02" + w
    bad = bytearray(wires[1])
    bad[3] ^= 0x04
    files["raw-bad-crc"] = b"\x00" + wires[0] + bytes(bad)  # a NAK
    files["raw-replay"] = b"\x00" + wires[0] + wires[1] + wires[1]  # the replay cache
    files["raw-overflow"] = b"\x02" + bytes(range(1, 256)) * 12 + b"\x00" + wires[1]
    records = [bytes([1 + len(p), c]) + p for c, p in session[1:] if len(p) <= 254]
    files["records-session"] = b"\x03" + b"".join(r for r in records if r[1] != Command.SELF_TEST)
    for i, r in enumerate(records):
        files[f"records-{i:02d}"] = b"\x03" + r
    for pool, name in ((1, "max"), (2, "avg")):  # conv layers (protocol 1.2): the record's conv blocks
        conv = conv_session(pool)
        files[f"records-conv-{name}"] = b"\x03" + b"".join(bytes([1 + len(p), c]) + p for c, p in conv[1:])
        files[f"raw-conv-{name}"] = b"\x00" + b"".join(
            Frame(Kind.REQUEST, i + 1, c, 0, p).encode() for i, (c, p) in enumerate(conv))
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return len(files)


def fuzz_firmware(binary: Path, runs: int, seed: int, max_len: int, timeout: float, unit_timeout: int) -> dict:
    """Run the libFuzzer binary from a fresh seed corpus; parse its executions, crashes and time."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return {"skipped": f"{binary} not found (build it with `make -C firmware_interface/firmware fuzz`)"}
    with tempfile.TemporaryDirectory(prefix="board_fuzz_") as tmp:
        corpus, artifacts = Path(tmp) / "corpus", Path(tmp) / "artifacts"
        seeds = write_seed_corpus(corpus)
        artifacts.mkdir()
        cmd = [str(binary), str(corpus), f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}",
               f"-timeout={unit_timeout}", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={artifacts}/"]
        start = time.perf_counter()
        log_path = Path(tmp) / "fuzz.log"  # a file, so a long run can be followed with tail -f
        timed_out = False
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # libFuzzer prints its final stats and exits
                rc, timed_out = proc.wait(), True
        log = log_path.read_text(errors="replace")
        elapsed = time.perf_counter() - start
        found = sorted(p.name for p in artifacts.iterdir())
        kept = {}
        if found:  # keep the reproducers next to the results
            keep = ROOT / "benchmarks" / "results" / "board_fuzz_artifacts"
            keep.mkdir(parents=True, exist_ok=True)
            for name in found:
                (keep / name).write_bytes((artifacts / name).read_bytes())
                kept[name] = str(keep / name)
        corpus_size = len(list(corpus.iterdir()))
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    peak = re.search(r"stat::peak_rss_mb:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    sanitizer = re.findall(r"==\d+==ERROR: (\w+Sanitizer[^\n]*)", log)
    crashes = [n for n in found if n.startswith(("crash-", "leak-", "oom-"))]
    slow_units = [n for n in found if n.startswith("timeout-")]
    slowest = re.search(r"stat::slowest_unit_time_sec:\s*(\d+)", log)
    return {
        "binary": str(binary), "command": " ".join(cmd), "returncode": rc, "seed_inputs": seeds,
        "executions": int(executed.group(1)) if executed else (int(done.group(1)) if done else None),
        "reported_seconds": int(done.group(2)) if done else None, "seconds": elapsed,
        "timed_out": timed_out, "exec_per_sec": round(int(executed.group(1)) / elapsed) if executed else None,
        "slowest_unit_s": int(slowest.group(1)) if slowest else None,
        "crashes": len(crashes) or int(bool(sanitizer) or "deadly signal" in log
                                       or (rc != 0 and not timed_out and not slow_units)),
        "unit_timeouts": len(slow_units), "unit_timeout_s": unit_timeout, "artifacts": kept,
        "sanitizer_reports": sanitizer[:5],
        "coverage": {"cov": int(cov[-1][0]), "ft": int(cov[-1][1])} if cov else None,
        "corpus_after": corpus_size, "peak_rss_mb": int(peak.group(1)) if peak else None,
        "log_tail": log[-3000:] if rc != 0 else log[-600:],
    }


# -- report ----------------------------------------------------------------------------------------------------

def table(py: dict | None, fw: dict | None) -> str:
    rows = []
    if py:
        rows += [("python: inputs", f"{py['inputs']:,}"), ("python: bytes fed", f"{py['bytes']:,}"),
                 ("python: frames parsed / errors", f"{py['frames_parsed']:,} / {py['frame_errors']:,}"),
                 ("python: receiver counters", ", ".join(f"{k} {v:,}" for k, v in py["receiver_counters"].items())),
                 ("python: payload decoder calls", ", ".join(f"{k} {v:,}" for k, v in
                                                             py["payload_decoder_calls"].items())),
                 ("python: escaped exceptions", str(py["escaped_exceptions"])), ("python: hangs", str(py["hangs"])),
                 ("python: slowest input (CPU)", f"{py['slowest_input_s'] * 1e3:.2f} ms ({py['slowest_input_kind']})"),
                 ("python: time", f"{py['seconds']:.1f} s ({py['inputs_per_second']:,.0f} inputs/s)")]
    if fw:
        if "skipped" in fw:
            rows.append(("firmware", "skipped: " + fw["skipped"]))
        else:
            rows += [("firmware: executions", f"{fw['executions']:,}" if fw["executions"] is not None else "?"),
                     ("firmware: crashes / unit timeouts", f"{fw['crashes']} / {fw['unit_timeouts']}"),
                     ("firmware: binary", fw["binary"] + (f" (RELAX capped at {fw['max_steps']} steps)"
                                                          if fw.get("max_steps") else "")),
                     ("firmware: returncode", str(fw["returncode"]) + (" (timed out)" if fw["timed_out"] else "")),
                     ("firmware: coverage", str(fw["coverage"])),
                     ("firmware: time", f"{fw['seconds']:.1f} s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="Python inputs (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slow-input", type=float, default=0.1, help="seconds above which an input counts as slow")
    parser.add_argument("--runs", type=int, default=1_000_000, help="libFuzzer runs (default 1,000,000)")
    parser.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--max-len", type=int, default=8192, help="libFuzzer -max_len")
    parser.add_argument("--fuzz-timeout", type=float, default=1800, help="wall-clock limit of the libFuzzer run")
    parser.add_argument("--unit-timeout", type=int, default=10, help="libFuzzer -timeout: seconds per input")
    parser.add_argument("--skip-python", action="store_true")
    parser.add_argument("--skip-firmware", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "board_fuzz.json")
    args = parser.parse_args(argv)

    py = None if args.skip_python else fuzz_python(args.frames, args.seed, args.slow_input)
    fw = None
    if not args.skip_firmware:
        if args.binary == DEFAULT_BINARY:
            subprocess.run(["make", "-C", str(DEFAULT_BINARY.parents[2]), "fuzz"], check=True, capture_output=True)
        fw = fuzz_firmware(args.binary, args.runs, args.seed, args.max_len, args.fuzz_timeout, args.unit_timeout)
    print(table(py, fw))
    result = {"benchmark": "board_fuzz", "machine": machine(), "python": py, "firmware": fw}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = (py and (py["escaped_exceptions"] or py["hangs"] or py["inputs_over_limit"])) or \
        (fw and "skipped" not in fw
         and (fw["crashes"] or fw["unit_timeouts"] or fw["returncode"] != 0 or fw["timed_out"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
