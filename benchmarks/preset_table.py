"""The preset tables of docs/crossbar.md from sweep outputs: test accuracy over seeds, fidelity, and tuned rates.

    python benchmarks/preset_table.py --untuned benchmarks/results/presets_untuned_10ep/sweep.json \
        benchmarks/results/presets_refit_10ep/sweep.json \
        --tuned benchmarks/results/presets_tuned_10ep/*/sweep.json --studies benchmarks/results/tune_lr/*/tune.json \
        --json benchmarks/results/presets_tuned_10ep/table.json

Each sweep's rows are grouped by preset (the sweep's ``crossbar.preset`` value, or the ``--set
crossbar.preset=...`` of a sweep over another key); a later file's preset replaces an earlier file's. A preset
whose study chose the config's own rate (its baseline) has no tuned sweep of its own: its tuned row is its
untuned row, the same runs. Differences are against the ideal preset's mean of the same table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

FIDELITY = ("applied_vs_ideal", "applied_vs_ideal_windowed", "device_vs_ideal")


def value_of(sweep: dict, row: dict, key: str, default: str | None = None) -> str:
    """What a sweep row ran with for ``key``: the swept value, or the sweep's ``--set`` of it (else ``default``)."""
    if sweep["key"] == key:
        return str(row["value"])
    for item in sweep.get("sets", []):
        name, _, value = item.partition("=")
        if name.strip() == key:
            return value.strip().strip("'\"")
    if default is not None:
        return default
    raise SystemExit(f"{sweep.get('out')}: neither sweeps nor sets {key}")


def preset_of(sweep: dict, row: dict) -> str:
    """The preset a sweep row trained: the swept value, or the sweep's fixed ``crossbar.preset``."""
    return value_of(sweep, row, "crossbar.preset")


def read_rows(paths: list[Path]) -> dict[str, list[dict]]:
    """The finished rows of each preset, a later file's preset replacing an earlier one's."""
    out: dict[str, list[dict]] = {}
    for path in paths:
        sweep = json.loads(path.read_text())
        mine: dict[str, list[dict]] = {}
        for row in sweep["rows"]:
            if row.get("test_accuracy") is None:
                raise SystemExit(f"{path}: point {row.get('point')} has no test accuracy (failed or unfinished)")
            mine.setdefault(preset_of(sweep, row), []).append({**row, "source": str(path)})
        out.update(mine)
    return out


def summarize(rows: list[dict]) -> dict:
    acc = [100 * r["test_accuracy"] for r in rows]
    record = {"seeds": sorted(r["seed"] for r in rows), "mean": statistics.fmean(acc),
              "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0, "min": min(acc), "max": max(acc),
              "sources": sorted({r["source"] for r in rows})}
    for key in FIDELITY:
        values = [r[key] for r in rows if r.get(key) is not None]
        record[key] = statistics.fmean(values) if values else None
    return record


def table(rows: dict[str, list[dict]], rates: dict[str, dict] | None = None) -> tuple[list[str], dict]:
    stats = {p: summarize(r) for p, r in rows.items()}
    ideal = stats.get("ideal", {}).get("mean")
    head = "| preset | " + ("learning rate (study) | " if rates else "") + \
           "test accuracy, mean ± sd (%) | min | max | vs ideal (points) | applied vs ideal | windowed | device EP vs ideal |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for preset, s in stats.items():
        rate = ""
        if rates:
            study = rates.get(preset)
            rate = ("- | " if study is None else
                    f"{study['lr']:.4g}{' (default)' if study['baseline'] else ''} | ")
        vs = f"{s['mean'] - ideal:+.2f}" if ideal is not None else "-"
        fid = " | ".join("-" if s[k] is None else f"{s[k]:.3f}" for k in FIDELITY)
        lines.append(f"| `{preset}` | {rate}{s['mean']:.2f} ± {s['sd']:.2f} | {s['min']:.2f} | {s['max']:.2f} | "
                     f"{vs} | {fid} |")
    return lines, stats


def read_studies(paths: list[Path]) -> dict[str, dict]:
    """Each preset's chosen learning rate: the best trial (validation) of its study, and whether it is the baseline."""
    out = {}
    for path in paths:
        report = json.loads(path.read_text())
        best = report["best"]
        config = Path(best["config"])
        preset = next((line.split("=", 1)[1].strip().strip('"') for line in
                       (path.parent / "best.toml").read_text().splitlines() if line.startswith("preset")), None)
        if preset is None:
            raise SystemExit(f"{path}: its best.toml names no crossbar preset ({config})")
        out[preset] = {"lr": best["params"]["optim.lr"], "baseline": bool(best["baseline"]),
                       "val_accuracy": best["val_accuracy"], "trials": len(report["trials"]),
                       "baseline_val_accuracy": (report["baseline"] or {}).get("val_accuracy"), "study": str(path)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--untuned", type=Path, nargs="+", required=True, help="sweep.json files at the default rates")
    p.add_argument("--tuned", type=Path, nargs="*", default=[], help="sweep.json files at the studies' rates")
    p.add_argument("--studies", type=Path, nargs="*", default=[], help="tune.json of each preset's study")
    p.add_argument("--json", type=Path, help="write the tables' figures here")
    args = p.parse_args(argv)

    untuned = read_rows(args.untuned)
    lines, untuned_stats = table(untuned)
    print("Untuned (the ideal device's learning rate):\n" + "\n".join(lines))
    record: dict = {"untuned": untuned_stats}
    if args.studies:
        rates = read_studies(args.studies)
        tuned = dict(untuned)
        own = read_rows(args.tuned) if args.tuned else {}
        for preset, study in rates.items():
            if preset in own:
                tuned[preset] = own[preset]
            elif not study["baseline"]:
                raise SystemExit(f"{preset}: its study chose lr {study['lr']:.4g}, but no --tuned sweep has it")
        missing = sorted(set(untuned) - set(rates))
        if missing:
            raise SystemExit(f"no study for {', '.join(missing)}")
        lines, tuned_stats = table(tuned, rates)
        print("\nTuned (each preset's rate chosen on validation accuracy):\n" + "\n".join(lines))
        record.update(tuned=tuned_stats, studies=rates)
    if args.json:
        write_report(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
