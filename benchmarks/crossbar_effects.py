"""One figure and one table from several `hwtoolkit sweep` results: which device effect costs how much.

Reads each sweep directory's sweep.json, plots test accuracy and the applied-vs-ideal update
cosine against the swept value, one panel per effect, and prints a Markdown table.

    python benchmarks/crossbar_effects.py runs/sweep_up_down runs/sweep_adc ... --out docs/img/crossbar_effects.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep output directories (each with sweep.json)")
    parser.add_argument("--out", default="crossbar_effects.png")
    parser.add_argument("--title", default="F-MNIST MLP in situ on the crossbar: one effect at a time")
    args = parser.parse_args(argv)
    reports = [json.loads((Path(d) / "sweep.json").read_text()) for d in args.sweeps]
    cols = min(3, len(reports))
    rows = (len(reports) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    print("| effect (key) | value | seeds | test accuracy (%) | applied vs ideal | device EP vs ideal |")
    print("|---|---|---|---|---|---|")
    for ax, report in zip(axes.flat, reports):
        agg = report["aggregate"]
        xs = list(range(len(agg)))  # values in the order swept, evenly spaced (0 often means "ideal")
        acc = [100 * a["test_accuracy"]["mean"] for a in agg]
        lo = [100 * (a["test_accuracy"]["mean"] - a["test_accuracy"]["min"]) for a in agg]
        hi = [100 * (a["test_accuracy"]["max"] - a["test_accuracy"]["mean"]) for a in agg]
        ax.errorbar(xs, acc, yerr=[lo, hi], fmt="o-", color="C0", capsize=3)
        ax.set(xlabel=report["key"], ylabel="test accuracy (%)", title=report["key"].removeprefix("crossbar."))
        ax.set_xticks(xs, [a["label"] for a in agg])
        twin = ax.twinx()
        cos = [a["applied_vs_ideal"]["mean"] if a.get("applied_vs_ideal") else float("nan") for a in agg]
        twin.plot(xs, cos, "s--", color="C1")
        twin.set_ylim(-0.05, 1.05)
        twin.set_ylabel("applied vs ideal update (cosine)", color="C1")
        ax.grid(alpha=0.3)
        for a in agg:
            fid = [a[c]["mean"] if a.get(c) else float("nan") for c in ("applied_vs_ideal", "device_vs_ideal")]
            print(f"| {report['key']} | {a['label']} | {a['seeds']} | {100 * a['test_accuracy']['mean']:.2f} "
                  f"| {fid[0]:.3f} | {fid[1]:.3f} |")
    low = min(100 * a["test_accuracy"]["min"] for r in reports for a in r["aggregate"])
    high = max(100 * a["test_accuracy"]["max"] for r in reports for a in r["aggregate"])
    for ax in list(axes.flat)[:len(reports)]:
        ax.set_ylim(low - 0.5, high + 0.5)  # one accuracy scale for every effect, so panels compare
    for ax in list(axes.flat)[len(reports):]:
        ax.axis("off")
    fig.suptitle(args.title)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
