"""Test accuracy per preset with the crossbar's two numerics (docs/crossbar.md, "Speed"): the same sweep run with
``crossbar.numerics = "torch"`` and ``"native"``, compared seed set against seed set.

    python benchmarks/numerics_table.py --torch benchmarks/results/presets_untuned_10ep/sweep.json \
        benchmarks/results/presets_refit_10ep/sweep.json --native benchmarks/results/presets_native_10ep/*/sweep.json \
        --json benchmarks/results/presets_native_10ep/table.json

Rows are grouped by preset as in preset_table.py (a later file's preset replaces an earlier file's). The
difference is native minus torch, with Welch's t-test (two-sided) and its 95% confidence interval: the two
numerics draw different random numbers, so a run's accuracy moves by the spread between seeds, and a real
difference between the numerics would show as a difference of the means beyond it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preset_table import read_rows  # noqa: E402
from report import write_report  # noqa: E402


def compare(torch_acc: list[float], native_acc: list[float]) -> dict:
    """Means, spreads and Welch's comparison of two seed sets of accuracies (in %)."""
    test = stats.ttest_ind(native_acc, torch_acc, equal_var=False)
    interval = test.confidence_interval(0.95)
    return {"torch_mean": statistics.mean(torch_acc), "torch_sd": statistics.stdev(torch_acc),
            "native_mean": statistics.mean(native_acc), "native_sd": statistics.stdev(native_acc),
            "difference": statistics.mean(native_acc) - statistics.mean(torch_acc),
            "ci95": [float(interval.low), float(interval.high)], "p_value": float(test.pvalue),
            "seeds": [len(torch_acc), len(native_acc)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", nargs="+", type=Path, required=True, help="sweep.json files run with torch numerics")
    parser.add_argument("--native", nargs="+", type=Path, required=True,
                        help="sweep.json files run with native numerics")
    parser.add_argument("--json", type=Path, help="where to write the table as JSON")
    args = parser.parse_args(argv)
    torch_rows, native_rows = read_rows(args.torch), read_rows(args.native)
    presets = [p for p in native_rows if p in torch_rows]
    if not presets:
        parser.error("no preset is in both the --torch and the --native sweeps")
    table = {}
    for preset in presets:
        accuracies = [[100 * r["test_accuracy"] for r in rows[preset]] for rows in (torch_rows, native_rows)]
        if min(map(len, accuracies)) < 2:
            parser.error(f"{preset}: at least two seeds per numerics are needed to compare")
        table[preset] = compare(*accuracies)
    print("| preset | torch, mean ± sd (%) | native, mean ± sd (%) | native - torch (points) | 95% CI | Welch p |")
    print("|---|---|---|---|---|---|")
    for preset, r in table.items():
        print(f"| `{preset}` | {r['torch_mean']:.2f} ± {r['torch_sd']:.2f} | {r['native_mean']:.2f} ± "
              f"{r['native_sd']:.2f} | {r['difference']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] | "
              f"{r['p_value']:.2f} |")
    if args.json:
        write_report(str(args.json), {"torch": [str(p) for p in args.torch], "native": [str(p) for p in args.native],
                                      "presets": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
