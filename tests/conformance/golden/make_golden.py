"""Write golden aihwkit pulse responses: aihwkit_traces.json beside this script.

    .venv/bin/python tests/conformance/golden/make_golden.py

For every noise-free conformance case (targets.aihwkit.conformance.cases) and sequence, aihwkit's weight after each
pulse (every step of the first up/down cycle or run, 1 device). tests/conformance/test_aihwkit_golden.py checks the
installed aihwkit against the file (so a change of aihwkit's behaviour between versions shows up as a failing
diff, not as a silent shift of the conformance results) and the crossbar against it within the case's tolerance.
Rerun it only on purpose, after reading that diff.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("aihwkit_traces.json")
STEPS = 1  # up/down cycles (or up and down runs) kept per sequence


def golden() -> dict:
    import aihwkit

    from targets.aihwkit.conformance import SEQUENCES, cases, directions, states
    from targets.aihwkit.traces import aihwkit_trace

    out: dict = {"aihwkit": aihwkit.__version__, "traces": []}
    for name, case in cases().items():
        device = case.device()
        fields = {f.name: getattr(device, f.name) for f in dataclasses.fields(device) if f.name != "drift"}
        for kind in SEQUENCES:
            dirs = directions(kind, device)[: STEPS * 2 * states(device) if kind != "random" else 200]
            trace = aihwkit_trace(device, dirs, 1)[:, 0]
            out["traces"].append({"model": name, "sequence": kind, "device": type(device).__name__,
                                  "fields": fields, "directions": dirs.tolist(),
                                  "weights": [float(np.float32(w)) for w in trace]})
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(golden(), indent=0) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")
