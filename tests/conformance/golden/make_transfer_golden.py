"""Write golden aihwkit transfers: aihwkit_transfers.json beside this script.

    .venv/bin/python tests/conformance/golden/make_transfer_golden.py

For every transfer case (targets.aihwkit.conformance.TRANSFER_CASES), aihwkit's BufferedTransferCompound after
each transfer event: C's change in steps and H in thresholds (targets.aihwkit.conformance.aihwkit_transfers).
tests/conformance/test_aihwkit_transfer_golden.py replays the crossbar against the file without aihwkit, and checks
the installed aihwkit against it where there is one. Rerun it only on purpose, after reading that diff.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("aihwkit_transfers.json")


def golden() -> dict:
    import aihwkit

    from targets.aihwkit.conformance import (TRANSFER_CASES, TRANSFER_DEVICE, TRANSFER_FAST, TRANSFER_LR,
                                             TTV2_FIELDS, aihwkit_transfers, transfer_case, ttv2_compound)

    out: dict = {"aihwkit": aihwkit.__version__, "device": TRANSFER_DEVICE, "lr": TRANSFER_LR,
                 "fast": [list(row) for row in TRANSFER_FAST], "cases": []}
    for name in TRANSFER_CASES:
        fields, events = transfer_case(name)
        compound = ttv2_compound(TRANSFER_DEVICE, **fields)
        trace = aihwkit_transfers(compound, TRANSFER_FAST, events, TRANSFER_LR)
        out["cases"].append({"case": name, "compound": {k: getattr(compound, k) for k in TTV2_FIELDS},
                             "events": events, "c": [e["c"].round(6).tolist() for e in trace],
                             "h": [e["h"].round(6).tolist() for e in trace]})
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(golden(), indent=0) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")
