"""The bad-input probe: inputs a new user gets wrong, each run as a user runs it, under a time limit.

Every row must end in a one-line error with status 2 (never a traceback, never a hang, never a NaN figure
with status 0). Prints a table (input, exit status, seconds, first line of the message), writes JSON under
benchmarks/results/, and exits 1 if any row is not as expected. The test suite runs the same cases in
process (tests/hwtoolkit/test_bad_inputs.py).

    .venv/bin/python benchmarks/bad_inputs.py [--timeout 60] [--json benchmarks/results/bad_inputs.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_report  # noqa: E402
from hwtoolkit.data import write_idx  # noqa: E402

SIDE, CLASSES = 8, 4


@dataclass(frozen=True)
class Case:
    """One command line; ``{cfg}``, ``{run}``, ``{tmp}``, ``{file}``, ``{other_ckpt}``, ``{bad_data_cfg}`` are filled in."""

    name: str
    args: tuple[str, ...]
    expect: int = 2


CASES = [
    Case("phase of 10^12 steps", ("train", "{cfg}", "--set", "ep.free_steps=1000000000000", "--out", "{tmp}/r1")),
    Case("beta 1e30", ("train", "{cfg}", "--set", "ep.beta=1e30", "--out", "{tmp}/r2")),
    Case("beta nan", ("train", "{cfg}", "--set", "ep.beta=nan", "--out", "{tmp}/r3")),
    Case("learning rate 1e30", ("train", "{cfg}", "--set", "optim.lr=1e30", "--out", "{tmp}/r4")),
    Case("learning rate inf", ("train", "{cfg}", "--set", "optim.lr=[0.1, inf]", "--out", "{tmp}/r5")),
    Case("board timeout nan in a config", ("train", "{cfg}", "--target", "serial", "--set", "quant.weight_bits=8",
                                           "--set", "quant.state_bits=8", "--set", "target.url='/dev/null'",
                                           "--set", "target.timeout=nan", "--out", "{tmp}/r6")),
    Case("board timeout inf in a config", ("train", "{cfg}", "--target", "serial", "--set", "quant.weight_bits=8",
                                           "--set", "quant.state_bits=8", "--set", "target.url='/dev/null'",
                                           "--set", "target.timeout=inf", "--out", "{tmp}/r7")),
    Case("board --timeout nan", ("board", "/dev/null", "--timeout", "nan")),
    Case("board --baudrate 999999999999", ("board", "/dev/null", "--baudrate", "999999999999")),
    Case("evaluate --wait nan", ("evaluate", "{run}", "--wait", "nan")),
    Case("evaluate --wait inf", ("evaluate", "{run}", "--wait", "inf")),
    Case("gdu --beta nan", ("gdu", "{cfg}", "--beta", "nan", "--plot", "{tmp}/g.png")),
    Case("gdu --beta inf", ("gdu", "{cfg}", "--beta", "inf", "--plot", "{tmp}/g.png")),
    Case("gdu --batch 0", ("gdu", "{cfg}", "--batch", "0", "--plot", "{tmp}/g.png")),
    Case("gdu --steps 0", ("gdu", "{cfg}", "--steps", "0", "--plot", "{tmp}/g.png")),
    Case("gdu --weights of another network", ("gdu", "{cfg}", "--weights", "{other_ckpt}", "--plot", "{tmp}/g.png")),
    Case("gdu --json into a missing folder", ("gdu", "{cfg}", "--json", "{tmp}/no/such/dir/g.json",
                                              "--plot", "{tmp}/g.png")),
    Case("export over the run's checkpoint", ("export", "{run}", "--format", "onnx", "--out",
                                              "{run}/checkpoints/best.pt")),
    Case("export over an existing file", ("export", "{run}", "--format", "onnx", "--out", "{file}")),
    Case("export --out a directory", ("export", "{run}", "--format", "onnx", "--out", "{tmp}")),
    Case("export --steps 1000000", ("export", "{run}", "--format", "onnx", "--out", "{tmp}/x.onnx",
                                    "--steps", "1000000")),
    Case("export --steps 10^12, fixed format", ("export", "{run}", "--format", "fixed", "--out", "{tmp}/x.epqw",
                                                "--steps", "1000000000000")),
    Case("export --json into a missing folder", ("export", "{run}", "--format", "onnx", "--out", "{tmp}/y.onnx",
                                                 "--json", "{tmp}/no/such/dir/r.json")),
    Case("train --out an existing file", ("train", "{cfg}", "--out", "{file}")),
    Case("unreadable data file", ("train", "{bad_data_cfg}", "--out", "{tmp}/r8")),
    Case("--resume without --out", ("train", "{cfg}", "--resume")),
    Case("--resume of a missing run", ("train", "{cfg}", "--resume", "--out", "{tmp}/never-trained")),
    Case("run name with separators", ("train", "{cfg}", "--set", "name='../../x'")),
    Case("negative seed", ("train", "{cfg}", "--set", "seed=-1", "--out", "{tmp}/r9")),
    Case("network too large to allocate", ("train", "{cfg}", "--set", "network.hidden=[100000000000]",
                                           "--out", "{tmp}/r10")),
    Case("evaluate a run with a broken config", ("evaluate", "{broken_run}")),
]


def config_text(data: Path, epochs: int = 1, hidden: int = 16) -> str:
    return f"""
name = "probe"
seed = 1
[data]
dataset = "idx"
root = "{data}"
val_size = 50
[network]
input_shape = [1, {SIDE}, {SIDE}]
hidden = [{hidden}]
classes = {CLASSES}
[ep]
free_steps = 5
nudged_steps = 3
[optim]
lr = [0.1, 0.05]
[train]
epochs = {epochs}
batch_size = 25
"""


def workspace(root: Path) -> dict[str, str]:
    """Tiny data, configs, a trained run and the other files the cases need, under ``root``."""
    from hwtoolkit.cli import main

    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir(parents=True)
    for split, n in (("train", 300), ("t10k", 100)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, SIDE, SIDE)).astype(np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, CLASSES, n).astype(np.uint8))
    bad = root / "bad-data"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (bad / name).mkdir()  # where a file should be, a folder: the reader cannot open it
    paths = {"cfg": root / "probe.toml", "bad_data_cfg": root / "bad.toml", "other_cfg": root / "other.toml",
             "run": root / "run", "other_run": root / "other-run", "broken_run": root / "broken-run",
             "file": root / "existing.onnx", "tmp": root / "scratch"}
    paths["cfg"].write_text(config_text(data))
    paths["bad_data_cfg"].write_text(config_text(bad))
    paths["other_cfg"].write_text(config_text(data, hidden=7))
    paths["file"].write_text("mine")
    paths["tmp"].mkdir()
    quiet = ["--no-progress"]
    for cfg, run in (("cfg", "run"), ("other_cfg", "other_run"), ("cfg", "broken_run")):
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                status = main(["train", str(paths[cfg]), "--out", str(paths[run]), *quiet])
            finally:
                sys.stdout = stdout
        if status != 0:
            raise RuntimeError(f"the probe's workspace could not train {paths[run]}")
    (paths["broken_run"] / "config.toml").write_text("[network\nhidden = ")
    paths["other_ckpt"] = paths["other_run"] / "checkpoints" / "best.pt"
    return {k: str(v) for k, v in paths.items()}


def arguments(case: Case, ws: dict[str, str]) -> list[str]:
    return [a.format(**ws) for a in case.args]


def run_case(case: Case, ws: dict[str, str], timeout: float) -> dict:
    """The case as a subprocess: status (None if it hung past ``timeout``), seconds, first line of stderr."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "hwtoolkit", *arguments(case, ws)], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=ws["tmp"])
        status, err = done.returncode, done.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        status, err = None, [f"no answer within {timeout:g} s"]
    return {"case": case.name, "args": arguments(case, ws), "status": status, "expected": case.expect,
            "seconds": round(time.perf_counter() - started, 2), "stderr_lines": len(err),
            "message": err[0] if err else "", "ok": status == case.expect and len(err) == 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each case may take (default 60)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bad_inputs.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hwtoolkit-probe-") as tmp:
        ws = workspace(Path(tmp))
        rows = [run_case(case, ws, args.timeout) for case in CASES]
    width = max(len(r["case"]) for r in rows)
    print(f"{'input':{width}}  status  seconds  first line of the message")
    for r in rows:
        status = "hang" if r["status"] is None else str(r["status"])
        flag = "" if r["ok"] else "   <-- not a one-line error with the expected status"
        print(f"{r['case']:{width}}  {status:>6}  {r['seconds']:7.2f}  {r['message'][:110]}{flag}")
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} as expected")
    write_report(args.json, {"rows": rows, "timeout_s": args.timeout})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
