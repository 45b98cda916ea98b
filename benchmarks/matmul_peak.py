"""Matmul peak: the best TFLOP/s of square matmuls per precision, the ceiling to report achieved FLOP/s against.

Each precision times ``repeats`` runs of a few ``size x size`` matmuls (after a warm-up, with CUDA
synchronisation) and keeps the best run: 2 size^3 FLOPs per matmul. "float32" runs with TF32 off, "tf32"
with it on (CUDA only); the TF32 flag is restored afterwards. Prints a table and writes JSON (default
benchmarks/results/matmul_peak_<device>.json).

    python benchmarks/matmul_peak.py [--device cpu|cuda] [--precisions float32,tf32,bfloat16] [--size N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import chosen_names  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {  # name -> (dtype, TF32 allowed)
    "float32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bfloat16": (torch.bfloat16, False),
    "float16": (torch.float16, False),
    "float64": (torch.float64, False),
}
DEFAULT_SIZE = {"cuda": 8192, "cpu": 2048}
DEFAULT_PRECISIONS = {"cuda": "float32,tf32,bfloat16,float16,float64", "cpu": "float32,float64"}


def _precision_of(dtype: torch.dtype | None, precision: str | None) -> tuple[torch.dtype, bool | None]:
    """The dtype to multiply in and the TF32 flag to set (``None``: leave it as it is)."""
    if precision is None:
        return (torch.float32 if dtype is None else dtype), None
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} is invalid: expected one of {list(PRECISIONS)}")
    implied, tf32 = PRECISIONS[precision]
    if dtype is not None and dtype != implied:
        raise ValueError(f"dtype = {dtype} contradicts precision = {precision!r}, which runs in {implied}")
    return implied, tf32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype | None = None, size: int | None = None,
                        repeats: int = 5, precision: str | None = None, inner: int = 4) -> float:
    """Best achieved TFLOP/s of ``size x size`` matmuls on ``device`` over ``repeats`` timed runs of ``inner``.

    ``precision`` (one of ``PRECISIONS``) sets the dtype and, on CUDA, whether float32 may run as TF32, and
    restores the flag after. Without it float32 runs as ``torch.backends.cuda.matmul.allow_tf32`` says.
    ``size`` defaults to 8192 on CUDA and 2048 elsewhere.
    """
    device = torch.device(device)
    dtype, tf32 = _precision_of(dtype, precision)
    if tf32 and device.type != "cuda":
        raise ValueError(f"precision = 'tf32' needs a CUDA device, got device = {str(device)!r}")
    size = DEFAULT_SIZE.get(device.type, 2048) if size is None else size
    for name, value in (("size", size), ("repeats", repeats), ("inner", inner)):
        if value < 1:
            raise ValueError(f"{name} = {value} is invalid: expected an integer >= 1")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.matmul(a, b, out=c)  # warm-up: kernel selection, workspace, clocks
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b, out=c)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * size ** 3 * inner / best / 1e12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default=None,
                        help=f"comma-separated, from {list(PRECISIONS)} (default: all on cuda, float32,float64 on cpu)")
    parser.add_argument("--size", type=int, default=None, help="matrix side (default 8192 on cuda, 2048 on cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per precision; the best is kept")
    parser.add_argument("--json", default=None, help="output (default benchmarks/results/matmul_peak_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    names = chosen_names(parser, "--precisions", args.precisions or DEFAULT_PRECISIONS[args.device], PRECISIONS)
    if args.device != "cuda" and "tf32" in names:
        parser.error("precision 'tf32' needs --device cuda")
    device = torch.device(args.device)
    size = args.size or DEFAULT_SIZE[args.device]
    rows = []
    print(f"matmul peak, {size}x{size}, best of {args.repeats}, {args.device}")
    print(f"{'precision':10} {'TFLOP/s':>9}")
    for name in names:
        tflops = measure_matmul_peak(device, size=size, repeats=args.repeats, precision=name)
        rows.append({"precision": name, "dtype": str(PRECISIONS[name][0]).removeprefix("torch."),
                     "tf32": PRECISIONS[name][1], "tflops": tflops})
        print(f"{name:10} {tflops:9.3f}")
    write_report(args.json or f"benchmarks/results/matmul_peak_{args.device}.json",
                 {"benchmark": "matmul_peak", "device": args.device, "size": size, "repeats": args.repeats,
                  "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
