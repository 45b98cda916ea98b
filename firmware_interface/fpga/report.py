"""Reads the synthesis and place-and-route outputs (``make reports``) into report.json and a Markdown table:
resources, Fmax, and the fmnist_board RELAX time at that clock from the cycle model."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from firmware_interface.fpga.cycle_model import drive_cycles, step_cycles  # noqa: E402
from firmware_interface.fpga.layout import CoreParams, LayerLayout, CoreImage  # noqa: E402

CELLS = {"LUTs": ["SB_LUT4", "LUT4"], "FFs": ["SB_DFF"], "DSPs": ["SB_MAC16", "MULT18X18D"],
         "BRAM": ["SB_RAM40_4K", "DP16KD"], "SPRAM": ["SB_SPRAM256KA"], "carry": ["SB_CARRY", "CCU2C"]}


def cells(stat: str) -> dict[str, int]:
    """Cell counts by kind from yosys ``stat`` (flip-flops: every SB_DFF* / TRELLIS_FF)."""
    counts: dict[str, int] = {}
    for name, n in re.findall(r"^\s+(\S+)\s+(\d+)$", stat, re.M):
        for kind, prefixes in CELLS.items():
            if any(name == p or (kind == "FFs" and name.startswith(p)) for p in prefixes):
                counts[kind] = counts.get(kind, 0) + int(n)
        if name == "TRELLIS_FF":
            counts["FFs"] = counts.get("FFs", 0) + int(n)
    return counts


def fmax(pnr_log: str) -> float | None:
    found = re.findall(r"Max frequency for clock '[^']*': ([\d.]+) MHz", pnr_log)
    return float(found[-1]) if found else None


def utilisation(pnr_log: str) -> dict[str, str]:
    """nextpnr's device utilisation lines (the last report), e.g. ``ICESTORM_LC: 3000/5280``."""
    out = {}
    for name, used, total in re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)", pnr_log, re.M):
        out[name] = f"{used}/{total}"
    return out


def fmnist_cycles(lanes: int) -> tuple[int, int]:
    """Cycles of a step and of the drive of the 196-64-10 fmnist_board network."""
    layers = (LayerLayout(64, 0, 196, 0, 0, 0), LayerLayout(10, 64, 64, 0, 0, 0))
    image = CoreImage(CoreParams(LANES=lanes), layers, 196, False, False, 8, ())
    return step_cycles(image), drive_cycles(image)


def main(out: Path) -> int:
    rows = []
    for name, network in (("up5k_fmnist", "196-64-10 (fmnist_board)"), ("up5k_largest", "196-300-10"),
                          ("ecp5_large", "16 lanes, 16-bit, 2048 units")):
        stat = (out / f"{name}.stat.txt").read_text()
        pnr = out / f"{name}.pnr.log"
        row = {"design": name, "network": network, **cells(stat)}
        if pnr.exists():
            text = pnr.read_text()
            row["fmax_mhz"] = fmax(text)
            row["utilisation"] = utilisation(text)
        rows.append(row)
    step, drive = fmnist_cycles(4)
    f = rows[0].get("fmax_mhz")
    timing = {"lanes": 4, "cycles_per_step": step, "drive_cycles": drive, "fmax_mhz": f,
              "step_us": step / f if f else None,
              "relax_20_steps_batch128_ms": (128 * (20 * step + drive)) / f / 1000 if f else None}
    (out / "report.json").write_text(json.dumps({"designs": rows, "fmnist_relax": timing}, indent=2) + "\n")
    lines = ["| design | network | logic cells (placed) | LUTs | FFs | carry | DSPs | BRAM (4 Kbit / 18 Kbit) | SPRAM "
             "| Fmax |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fm = f"{r['fmax_mhz']:.2f} MHz" if r.get("fmax_mhz") else "(no place-and-route)"
        placed = r.get("utilisation", {}).get("ICESTORM_LC", "-")
        lines.append(f"| {r['design']} | {r['network']} | {placed} | {r.get('LUTs', 0)} | {r.get('FFs', 0)} | {r.get('carry', 0)} "
                     f"| {r.get('DSPs', 0)} | {r.get('BRAM', 0)} | {r.get('SPRAM', 0)} | {fm} |")
    lines.append("")
    lines.append(f"fmnist_board on the UP5K: {step} cycles per step and sample, {drive} for the drive; at "
                 f"{f} MHz a step takes {timing['step_us']:.1f} us per sample, RELAX of 20 steps over a batch of "
                 f"128 {timing['relax_20_steps_batch128_ms']:.1f} ms" if f else "no Fmax")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
