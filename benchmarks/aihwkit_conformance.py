"""The conformance table of the crossbar's device models against aihwkit (docs/crossbar.md, "Conformance").

Runs the cases of targets.aihwkit.conformance (the same as tests/conformance, which assert them) and prints one row
per model, sequence and metric with its tolerance and the measured value; writes JSON (default
benchmarks/results/aihwkit_conformance.json).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/aihwkit_conformance.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_report  # noqa: E402
from targets.aihwkit.conformance import (KS_ALPHA, SEQUENCES, cases, checkpoints, crossbar_trace,  # noqa: E402
                                         directions, ks_pvalues, trajectory_error, variation_cases)
from targets.aihwkit.traces import aihwkit_trace  # noqa: E402
from targets.crossbar.importers import from_aihwkit  # noqa: E402

WRONG = {"dw_min": 1.05, "dw_min_dtod": 1.2, "dw_min_std": 1.3}


def rows(devices: int) -> list[dict]:
    out = []
    for name, case in cases().items():
        device = case.device()
        for kind in SEQUENCES:
            error = trajectory_error(device, kind)
            out.append({"model": name, "sequence": kind, "metric": "max |w - w_aihwkit| / range, no variation",
                        "tolerance": case.tolerance_text, "value": f"{error:.2g}",
                        "pass": error <= case.tolerance(device)})
    for name, device in variation_cases().items():
        dirs = directions("updown", device)
        at = checkpoints(dirs)
        ref = aihwkit_trace(device, dirs, devices, seed=0)
        p = ks_pvalues(ref, crossbar_trace(device, dirs, devices, seed=1), at)
        threshold = KS_ALPHA / len(p)
        imported = from_aihwkit(device)
        wrong = {key: min(ks_pvalues(ref, crossbar_trace(device, dirs, devices, seed=1,
                                                         tweak={key: imported[key] * f}), at).values())
                 for key, f in WRONG.items()}
        out.append({"model": name, "sequence": "updown", "metric": f"min KS p over {len(p)} (w, dw) at "
                    f"{len(at)} checkpoints, {devices} devices", "tolerance": f"> {threshold:.2g} (99.9%)",
                    "value": f"{min(p.values()):.2g}; wrong: " + ", ".join(
                        f"{k} x{WRONG[k]}: {v:.1g}" for k, v in wrong.items()),
                    "pass": min(p.values()) > threshold and all(v < threshold for v in wrong.values())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4000)
    parser.add_argument("--out", default="benchmarks/results/aihwkit_conformance.json")
    args = parser.parse_args()
    table = rows(args.devices)
    print("| model | sequence | metric | tolerance | result |\n|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['sequence']} | {r['metric']} | {r['tolerance']} | {r['value']} "
              f"({'pass' if r['pass'] else 'FAIL'}) |")
    import aihwkit

    write_report(args.out, {"aihwkit": aihwkit.__version__, "rows": table})
    if not all(r["pass"] for r in table):
        sys.exit(1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
