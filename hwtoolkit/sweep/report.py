"""The sweep's outputs: rows aggregated over seeds, ``sweep.csv``, ``sweep.json``, ``sweep.png`` and a text table.

``DIR/sweep.csv`` and ``DIR/sweep.json`` hold one row per point; the JSON adds the mean, sample standard
deviation, min and max of the test accuracy over the seeds of each value, and the same of each cosine and of each
cost figure (from ``summary.json``'s ``costs``, for a target that counts them).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from hwtoolkit.diagnostics.fidelity import FIGURES
from hwtoolkit.files import write_text_atomic

from .values import SweepValue

COST_FIGURES = {"pulses_per_example": ("ep", "pulses", 1.0),
                "energy_uj_per_example": ("ep", "energy_pj", 1e-6),
                "backprop_energy_uj_per_example": ("backprop", "energy_pj", 1e-6)}
"""Per training example, from a run's ``costs``: (method, figure, scale to the column's unit)."""
COLUMNS = ("key", "value", "seed", "test_accuracy", "val_accuracy", "train_seconds", *FIGURES, *COST_FIGURES,
           "test_loss", "point", "status", "attempts", "error")
STATUS_OK, STATUS_FAILED = "ok", "failed"  # a failed point stays in the outputs with its last error
ERROR_BARS = "min-max over seeds"
HEADERS = {"applied_vs_ideal": "applied/ideal", "ideal_vs_bptt": "ideal/BPTT", "device_vs_ideal": "device/ideal",
           "applied_vs_ideal_windowed": "applied/ideal (window)"}
COST_HEADERS = {"pulses_per_example": "pulses/ex", "energy_uj_per_example": "EP uJ/ex",
                "backprop_energy_uj_per_example": "BP uJ/ex"}


def cost_figures(summary: dict) -> dict[str, float | None]:
    """The cost columns of a run's summary (None where the target does not count its operations)."""
    per_example = summary.get("costs", {}).get("per_example", {})
    out: dict[str, float | None] = {}
    for column, (method, figure, scale) in COST_FIGURES.items():
        value = per_example.get(method, {}).get(figure)
        value = value.get("total") if isinstance(value, dict) else value
        out[column] = None if value is None else scale * value
    return out


def _stats(xs: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def aggregate(rows: Sequence[dict], values: Sequence[SweepValue]) -> list[dict]:
    """Per value (in the order given): mean, sample std, min and max over seeds of the test accuracy and cosines.

    Failed points are counted (``failed``) but have no figures to aggregate.
    """
    result = []
    for v in values:
        group = [r for r in rows if r["label"] == v.label and r.get("status", STATUS_OK) == STATUS_OK]
        failed = sum(1 for r in rows if r["label"] == v.label and r.get("status") == STATUS_FAILED)
        if not group:
            continue
        entry: dict[str, Any] = {"value": v.value, "label": v.label, "seeds": len(group), "failed": failed,
                                 "test_accuracy": _stats([r["test_accuracy"] for r in group])}
        for c in (*FIGURES, *COST_FIGURES):
            xs = [r[c] for r in group if r.get(c) is not None]
            entry[c] = _stats(xs) if xs else None
        result.append(entry)
    return result


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def rows_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV; the value column holds the value's label (bare strings, TOML-like lists)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(r["label"] if c == "value" else r.get(c)) for c in COLUMNS])
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null, so the JSON files stay valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_outputs(out: Path, report: dict, plot: bool = True) -> None:
    """``sweep.json`` and ``sweep.csv`` (atomically), and ``sweep.png`` when ``plot``."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(report), indent=2, allow_nan=False, default=str)  # default: TOML dates
    write_text_atomic(out / "sweep.json", text + "\n")
    write_text_atomic(out / "sweep.csv", rows_csv(report["rows"]))
    if plot and report["aggregate"]:
        from hwtoolkit.plots import plot_sweep

        plot_sweep(report, out / "sweep.png")


def format_table(report: dict) -> str:
    """A plain-text table of the aggregate: one line per value (accuracy in %, bars min-max over seeds)."""
    key = report["key"]
    width = max([len(key), *(len(a["label"]) for a in report["aggregate"])])
    costs = [c for c in COST_FIGURES if any(a.get(c) for a in report["aggregate"])]
    lines = [f"{key:<{width}}  {'seeds':>5}  {'test acc. (%): mean ± std [min, max]':<36}  "
             + "  ".join([*(HEADERS[c] for c in FIGURES), *(COST_HEADERS[c] for c in costs)])]
    for a in report["aggregate"]:
        acc = a["test_accuracy"]
        cell = (f"{100 * acc['mean']:6.2f} ± {100 * acc['std']:5.2f} "
                f"[{100 * acc['min']:6.2f}, {100 * acc['max']:6.2f}]")
        cos = "  ".join([*(f"{'-' if a[c] is None else format(a[c]['mean'], '.4f'):>{len(HEADERS[c])}}"
                           for c in FIGURES),
                         *(f"{'-' if a.get(c) is None else format(a[c]['mean'], '.4g'):>{len(COST_HEADERS[c])}}"
                           for c in costs)])
        lines.append(f"{a['label']:<{width}}  {a['seeds']:>5}  {cell:<36}  {cos}")
    failed = [r for r in report["rows"] if r.get("status") == STATUS_FAILED]
    for r in failed:
        lines.append(f"FAILED {key}={r['label']} seed {r['seed']} after {r['attempts']} attempt(s): {r['error']}")
    return "\n".join(lines)
