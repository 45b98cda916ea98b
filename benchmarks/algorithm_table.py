"""The analog training algorithms study of docs/crossbar.md: the choice of each algorithm's transfer rate on
validation data, then test accuracy, fidelity, pulses, and EP's energy per training example beside backprop's.

    python benchmarks/algorithm_table.py select runs/alg10/select-*/sweep.json
    python benchmarks/algorithm_table.py table runs/alg10/*-a/sweep.json runs/alg10/*-b/sweep.json \
        --json benchmarks/results/algorithms_10ep/table.json
    python benchmarks/algorithm_table.py best runs/alg10/{reram-sb,ecram-mo,pcm}-{a,tiki_taka,ttv2,c_ttv2,agad}/sweep.json \
        runs/alg10/*-mp/sweep.json \
        --baseline benchmarks/results/presets_untuned_10ep/sweep.json benchmarks/results/presets_refit_10ep/sweep.json \
        benchmarks/results/presets_tuned_10ep/*/sweep.json
    python benchmarks/algorithm_table.py effects runs/alg10/ko-*/sweep.json runs/alg10/ko2-*/sweep.json \
        --baseline benchmarks/results/presets_untuned_10ep/sweep.json benchmarks/results/presets_refit_10ep/sweep.json

``select`` groups the rows of selection sweeps by (preset, algorithm) and picks the swept value of the best
validation accuracy. ``table`` groups the rows of the final sweeps by (preset, algorithm) and reads every point's
``summary.json`` for its costs (energy per example by part: array, converters, pulses, digital). ``effects``
lists sweeps that switch one device effect off on a preset (a "knockout"), against the preset's own rows in the
``--baseline`` sweeps and its distance from the ideal device there. ``best`` picks each preset's algorithm by mean
validation accuracy: the study's sweeps, and ``in_situ`` from the ``--baseline`` preset sweeps (a later file's
preset replacing an earlier one's) where the study has no ``in_situ`` rows of the preset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preset_table import read_rows, value_of  # noqa: E402
from report import write_report  # noqa: E402

FIDELITY = ("applied_vs_ideal", "applied_vs_ideal_windowed", "device_vs_ideal")
PARTS = ("array", "dac", "adc", "pulses", "pulse_trains", "digital")


def groups(paths: list[Path]) -> dict[tuple[str, str], list[tuple[dict, dict]]]:
    """Finished rows by (preset, algorithm), each with its sweep."""
    out: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for path in paths:
        sweep = json.loads(path.read_text())
        sweep["dir"] = path.parent
        for row in sweep["rows"]:
            if row.get("test_accuracy") is None:
                raise SystemExit(f"{path}: point {row.get('point')} has no test accuracy (failed or unfinished)")
            key = (value_of(sweep, row, "crossbar.preset"), value_of(sweep, row, "crossbar.algorithm", "in_situ"))
            out.setdefault(key, []).append((sweep, row))
    return out


def select(paths: list[Path]) -> dict:
    chosen = {}
    print("| preset | algorithm | " + " | ".join(["value: validation accuracy (%)"]) + " | chosen |")
    print("|---|---|---|---|")
    for (preset, algorithm), rows in groups(paths).items():
        key = rows[0][0]["key"]
        scored = sorted(((r["val_accuracy"], str(r["value"])) for _, r in rows), key=lambda t: -t[0])
        best = scored[0]
        chosen[f"{preset}/{algorithm}"] = {"key": key, "value": best[1], "val_accuracy": best[0],
                                           "tried": {v: a for a, v in scored}}
        tried = ", ".join(f"{v}: {100 * a:.2f}" for a, v in sorted(scored, key=lambda t: float(t[1])))
        print(f"| `{preset}` | `{algorithm}` | {tried} | {key} = {best[1]} |")
    return chosen


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def table(paths: list[Path]) -> dict:
    record = {}
    print("| preset | algorithm | seeds | test accuracy (%) | applied/ideal | windowed | pulses / example | "
          "EP energy / example (uJ) | backprop (uJ) | EP / backprop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (preset, algorithm), rows in sorted(groups(paths).items()):
        acc = _mean_sd([100 * r["test_accuracy"] for _, r in rows])
        fid = {k: statistics.fmean(v) if (v := [r[k] for _, r in rows if r.get(k) is not None]) else None
               for k in FIDELITY}
        costs = [json.loads((s["dir"] / r["point"] / "summary.json").read_text())["costs"] for s, r in rows]
        per = {m: {p: statistics.fmean(c["per_example"][m]["energy_pj"][p] * 1e-6 for c in costs)
                   for p in (*PARTS, "total")} for m in ("ep", "backprop")}
        pulses = _mean_sd([c["per_example"]["ep"]["pulses"] for c in costs])
        ratio = statistics.fmean(c["ep_over_backprop_energy"] for c in costs)
        latency = {m: statistics.fmean(c["per_example"][m]["latency_ns"]["total"] * 1e-3 for c in costs)
                   for m in ("ep", "backprop")}
        record[f"{preset}/{algorithm}"] = {
            "seeds": sorted(r["seed"] for _, r in rows), "test_accuracy": {"mean": acc[0], "sd": acc[1]},
            "fidelity": fid, "pulses_per_example": {"mean": pulses[0], "sd": pulses[1]},
            "energy_uj_per_example": per, "latency_us_per_example": latency, "ep_over_backprop_energy": ratio,
            "memory_words": costs[0]["memory_words"], "table": costs[0]["table"],
            "transfer_lr": value_of(rows[0][0], rows[0][1], "crossbar.transfer_lr", "-")}
        f = " | ".join("-" if fid[k] is None else f"{fid[k]:.3f}" for k in FIDELITY[:2])
        print(f"| `{preset}` | `{algorithm}` | {len(rows)} | {acc[0]:.2f} ± {acc[1]:.2f} | {f} | {pulses[0]:.4g} | "
              f"{per['ep']['total']:.3g} | {per['backprop']['total']:.3g} | {ratio:.3g} |")
    return record


def effects(paths: list[Path], baseline: list[Path]) -> dict:
    base = {p: [100 * r["test_accuracy"] for r in rows] for p, rows in read_rows(baseline).items()}
    ideal = statistics.fmean(base["ideal"])
    record = {}
    print(f"| preset | switched off | seeds | test accuracy (%) | vs the preset ({len(base['ideal'])} seeds) | "
          "vs ideal |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        sweep = json.loads(path.read_text())
        for value in dict.fromkeys(str(r["value"]) for r in sweep["rows"]):
            rows = [r for r in sweep["rows"] if str(r["value"]) == value and r.get("test_accuracy") is not None]
            preset = value_of(sweep, rows[0], "crossbar.preset")
            acc = _mean_sd([100 * r["test_accuracy"] for r in rows])
            own = statistics.fmean(base[preset])
            change = " ".join([f"{sweep['key']} = {value}", *(s for s in sweep.get("sets", [])
                                                              if s.startswith("crossbar.") and "preset" not in s)])
            record[f"{preset}: {change}"] = {"seeds": len(rows), "mean": acc[0], "sd": acc[1],
                                              "vs_preset": acc[0] - own, "vs_ideal": acc[0] - ideal}
            print(f"| `{preset}` | {change} | {len(rows)} | {acc[0]:.2f} ± {acc[1]:.2f} | {acc[0] - own:+.2f} | "
                  f"{acc[0] - ideal:+.2f} |")
    return record


def best(paths: list[Path], baseline: list[Path]) -> dict:
    found = {key: [r for _, r in rows] for key, rows in groups(paths).items()}
    base = read_rows(baseline)
    for preset, rows in base.items():
        found.setdefault((preset, "in_situ"), rows)
    ideal = statistics.fmean(100 * r["test_accuracy"] for r in base["ideal"])
    record = {}
    print("| preset | algorithm (best validation) | seeds | validation (%) | test accuracy (%) | vs ideal | others |")
    print("|---|---|---|---|---|---|---|")
    for preset in sorted({p for p, _ in found} - {"ideal"}):
        scored = sorted(((statistics.fmean(100 * r["val_accuracy"] for r in rows), alg, rows)
                         for (p, alg), rows in found.items() if p == preset), key=lambda t: -t[0])
        val, alg, rows = scored[0]
        acc = _mean_sd([100 * r["test_accuracy"] for r in rows])
        others = ", ".join(f"{a} {v:.2f}" for v, a, _ in scored[1:])
        record[preset] = {"algorithm": alg, "seeds": len(rows), "val_accuracy": val, "test_accuracy":
                          {"mean": acc[0], "sd": acc[1]}, "vs_ideal": acc[0] - ideal,
                          "others_val": {a: v for v, a, _ in scored[1:]}}
        print(f"| `{preset}` | `{alg}` | {len(rows)} | {val:.2f} | {acc[0]:.2f} ± {acc[1]:.2f} | "
              f"{acc[0] - ideal:+.2f} | {others or '-'} |")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("select", "table", "effects", "best"))
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep.json files")
    p.add_argument("--baseline", type=Path, nargs="*", default=[],
                   help="effects, best: the presets' own sweep.json files (in_situ, every preset and the ideal device)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.mode in ("effects", "best") and not args.baseline:
        p.error(f"{args.mode} needs --baseline sweep.json files holding every preset's rows and the ideal device's")
    modes = {"select": lambda: select(args.sweeps), "table": lambda: table(args.sweeps),
             "effects": lambda: effects(args.sweeps, args.baseline), "best": lambda: best(args.sweeps, args.baseline)}
    record = modes[args.mode]()
    if args.json:
        write_report(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
