"""The sweep driver: build and validate every point, then train them on an executor and measure fidelity.

Each point is an ordinary run directory, ``DIR/points/<KEY>=<VALUE>/seed<S>``, trained by
``training.loop.train``; after training, the gradient fidelity of the device is measured on its best-validation
weights (``fidelity.json`` next to ``summary.json``, see ``hwtoolkit.diagnostics.fidelity``). Points run here, one
after the other, or as Ray tasks (``hwtoolkit.executors``); this process alone writes the sweep's outputs, in
point order, and a point that fails after its retries is a row with ``status = failed``.

Seeds: the points of a value use seeds ``seed + k`` for ``k`` in ``range(seeds)``, where ``seed`` is the
config's seed after the overrides and the value (so sweeping ``seed`` itself works too).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

import targets
from hwtoolkit import config as config_mod
from hwtoolkit.config import Config, ConfigError
from hwtoolkit.diagnostics.fidelity import FIGURES, run_fidelity
from hwtoolkit.executors import ExecutorSpec, Progress, run_tasks
from hwtoolkit.files import check_output_dir, check_same_spec, locked_directory, remove_if_unused, write_text_atomic
from hwtoolkit.runs import open_target
from hwtoolkit.training.loop import train
from hwtoolkit.training.rundir import RunDir
from hwtoolkit.tracking import Tracker

from .errors import SweepError
from .report import (COST_FIGURES, ERROR_BARS, STATUS_FAILED, STATUS_OK, aggregate, cost_figures, json_safe,
                     write_outputs)
from .values import SweepValue, is_numeric, parse_values, point_dirname, safe_name

FIDELITY_FILE = "fidelity.json"
SPEC_FILE = "sweep_spec.json"  # the sweep a directory holds, checked by --resume


@dataclass(frozen=True)
class Point:
    """One training run of the sweep."""

    value: SweepValue
    seed: int
    cfg: Config
    dir: Path


# ----------------------------------------------------------------------------------------------- points


def point_config(raw: dict[str, Any], sets: Sequence[str], key: str, value: SweepValue,
                 seed: int | None = None) -> Config:
    """The validated config of one point; an invalid value raises a ``ConfigError`` naming it."""
    overrides = [*sets, f"{key}={value.text}"]
    if seed is not None:
        overrides.append(f"seed={seed}")
    try:
        return config_mod.from_dict(config_mod.apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"--param {key} value {value.text}: {e}") from None


def build_points(raw: dict[str, Any], key: str, values: Sequence[SweepValue], seeds: int, sets: Sequence[str],
                 out: Path) -> list[Point]:
    """Every point's validated config and run directory, values first, then seeds."""
    if seeds < 1:
        raise SweepError(f"--seeds {seeds}: expected an integer >= 1")
    if not values:
        raise SweepError("--values: no values given")
    names: dict[str, SweepValue] = {}
    points = []
    for value in values:
        name = point_dirname(key, value.label)
        if name in names:
            raise SweepError(f"--values: {names[name].text} and {value.text} are the same point ({name})")
        names[name] = value
        base = point_config(raw, sets, key, value).seed
        for k in range(seeds):
            cfg = point_config(raw, sets, key, value, base + k)
            points.append(Point(value, cfg.seed, cfg, out / "points" / name / f"seed{cfg.seed}"))
    return points


def sweep_spec(raw: dict[str, Any], key: str, values: Sequence[SweepValue], seeds: int, sets: Sequence[str]) -> dict:
    """What makes a sweep this sweep: the base config as read, the overrides, the key, the values and the seeds."""
    return {"config": raw, "sets": list(sets), "key": key, "values": [v.label for v in values], "seeds": seeds}


def check_finished_points(points: Sequence[Point]) -> None:
    """On ``--resume``: a finished point must have been trained with the config it would get now."""
    for p in points:
        run = RunDir(p.dir)
        if run.summary.exists() and run.config.exists():
            stored = config_mod.loads(run.config.read_text())
            if stored.to_dict() != p.cfg.to_dict():
                raise SweepError(f"--resume: {str(p.dir)!r} was trained with a different config than this sweep "
                                 f"gives it (other --set options or config file?); choose another --out")


def check_targets(points: Sequence[Point], key: str) -> None:
    """Open (and close) the target of every value once, so a bad target option fails before any training."""
    seen: set[str] = set()
    for p in points:
        if p.value.label in seen:
            continue
        seen.add(p.value.label)
        try:
            with open_target(p.cfg):
                pass
        except targets.TargetError as e:
            raise targets.TargetError(f"--param {key} value {p.value.text}: {e}") from None


# ------------------------------------------------------------------------------------------ one point


@dataclass(frozen=True)
class PointTask:
    """What an executor needs to train one point (picklable, for Ray); ``log`` only in this process."""

    point: Point
    key: str
    fidelity_batches: int
    out: Path
    log: Callable[[str], None] | None = None


def is_finished(point: Point, fidelity_batches: int) -> bool:
    """Trained, and its fidelity measured with this many batches (or none asked): nothing left to run."""
    run = RunDir(point.dir)
    if not run.summary.exists():
        return False
    return fidelity_batches == 0 or stored_fidelity(point.dir, fidelity_batches) is not None


def stored_fidelity(point_dir: Path, batches: int) -> dict | None:
    """A point's stored fidelity if it was measured with ``batches`` batches and has every figure of this
    release (an older release's ``fidelity.json`` lacks the window), else ``None``: measure it again."""
    path = point_dir / FIDELITY_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    complete = isinstance(stored, dict) and all(c in stored for c in FIGURES)  # a NaN cosine is stored as null
    return stored if complete and stored.get("batches") == batches else None


def train_point(task: PointTask) -> dict:
    """Train one point (unless it is finished), measure its fidelity (unless stored), and return its row.

    An interrupted point (a killed worker, an earlier attempt) resumes from its last checkpoint, which replays
    exactly what an uninterrupted run does, so a retried point gives the same figures.
    """
    point, log = task.point, task.log or (lambda message: None)
    run = RunDir(point.dir)
    trained = not run.summary.exists()
    if trained:
        summary = train(point.cfg, point.dir, resume=True, progress=False, log=log)
    else:
        summary = json.loads(run.summary.read_text())
        log(f"finished earlier, kept: {point.dir}")
    fidelity: dict | None = None
    fidelity_path = point.dir / FIDELITY_FILE
    if task.fidelity_batches > 0:
        if not trained:
            fidelity = stored_fidelity(point.dir, task.fidelity_batches)
        if fidelity is None:
            fidelity = run_fidelity(point.cfg, point.dir, task.fidelity_batches)
            write_text_atomic(fidelity_path, json.dumps(json_safe(fidelity), indent=2) + "\n")
    row = point_row(point, task.key, task.out)
    row.update({"test_accuracy": summary["test_accuracy"], "val_accuracy": summary.get("val_accuracy"),
                "train_seconds": summary.get("train_seconds"), "test_loss": summary.get("test_loss")})
    for c in FIGURES:
        row[c] = fidelity.get(c) if fidelity else None
    row.update(cost_figures(summary))
    return row


def point_row(point: Point, key: str, out: Path, error: str | None = None, attempts: int = 1) -> dict:
    """A point's row without figures: what a failed point reports (its status, attempts and last error)."""
    row: dict[str, Any] = {"key": key, "value": point.value.value, "label": point.value.label, "seed": point.seed,
                           "test_accuracy": None, "val_accuracy": None, "train_seconds": None, "test_loss": None,
                           **{c: None for c in (*FIGURES, *COST_FIGURES)}}
    row["point"] = str(point.dir.relative_to(out)) if point.dir.is_relative_to(out) else str(point.dir)
    row.update({"status": STATUS_FAILED if error else STATUS_OK, "attempts": attempts, "error": error})
    return row


# ----------------------------------------------------------------------------------------------- sweep


def default_out(raw: dict[str, Any], key: str) -> Path:
    name = raw.get("name") if isinstance(raw.get("name"), str) else "experiment"
    return Path("runs") / f"{name}-sweep-{safe_name(key)}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_sweep(config_path: str | Path, key: str, values_text: str, seeds: int = 1, sets: Sequence[str] = (),
              out: str | Path | None = None, fidelity_batches: int = 4, resume: bool = False,
              progress: bool | None = None, log: Callable[[str], None] = print,
              executor: ExecutorSpec | None = None, tracking: Tracker | None = None) -> dict:
    """Validate every point, then train them on ``executor`` (default: one after the other, here); return the
    report written to ``sweep.json``. Finished points are logged to ``tracking`` as they end."""
    key = key.strip()
    if not key:
        raise SweepError("--param: expected a dotted config key, e.g. ep.beta")
    if fidelity_batches < 0:
        raise SweepError(f"--fidelity-batches {fidelity_batches}: expected an integer >= 0 (0 = no fidelity)")
    executor = executor or ExecutorSpec()
    executor.validate()
    sets = list(sets)
    values = parse_values(key, values_text)
    raw = config_mod.read_raw(config_path)
    out = Path(out) if out else default_out(raw, key)
    points = build_points(raw, key, values, seeds, sets, out)
    spec = sweep_spec(raw, key, values, seeds, sets)
    check_output_dir(out, resume, "sweep", SweepError, kept=" (finished points are kept)")
    created = not out.exists()
    try:
        with locked_directory(out, "sweep directory"):  # one writer per sweep directory
            if resume:
                check_same_spec(out, SPEC_FILE, json_safe(spec), "sweep", SweepError)
                check_finished_points(points)
            check_targets(points, key)
            write_text_atomic(out / SPEC_FILE, json.dumps(json_safe(spec), indent=2) + "\n")
            return _run_points(config_path, key, values, seeds, sets, out, points, fidelity_batches,
                               progress, log, executor, tracking)
    except BaseException:
        if created:
            remove_if_unused(out)
        raise


def _run_points(config_path: str | Path, key: str, values: Sequence[SweepValue], seeds: int, sets: list[str],
                out: Path, points: list[Point], fidelity_batches: int, progress: bool | None,
                log: Callable[[str], None], executor: ExecutorSpec, tracking: Tracker | None) -> dict:
    report: dict[str, Any] = {
        "key": key, "config": str(config_path), "sets": sets, "values": [v.value for v in values],
        "labels": [v.label for v in values], "numeric": is_numeric([v.value for v in values]), "seeds": seeds,
        "fidelity_batches": fidelity_batches, "error_bars": ERROR_BARS, "out": str(out), "rows": [],
        "aggregate": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(points), desc=f"sweep {key}", unit="run", disable=not show)
    write = tqdm.write if show else log
    names = [f"{key}={p.value.label} seed {p.seed}" for p in points]
    rows: dict[int, dict] = {}

    def record(i: int, row: dict) -> None:
        """Keep a point's row (in point order, whatever order they end in) and rewrite the outputs."""
        rows[i] = row
        report["rows"] = [rows[k] for k in sorted(rows)]
        report["aggregate"] = aggregate(report["rows"], values)
        write_outputs(out, report, plot=False)
        bar.update(1)
        if tracking is not None and row["status"] == STATUS_OK:
            tracking.try_log_run(write, points[i].dir, name=f"{out.name}/{names[i]}",
                                 tags={"hwtoolkit.kind": "sweep point", "hwtoolkit.sweep": str(out.resolve()),
                                       "hwtoolkit.sweep_key": key, "hwtoolkit.sweep_value": row["label"]},
                                 extra_metrics={c: row[c] for c in (*FIGURES, *COST_FIGURES) if row[c] is not None})

    def show_progress(p: Progress) -> None:
        bar.set_postfix_str(p.describe())

    try:
        todo = []
        for i, point in enumerate(points):
            if is_finished(point, fidelity_batches):  # --resume: read here, whatever the executor
                record(i, train_point(PointTask(point, key, fidelity_batches, out, lambda m: None)))
                write(f"[{names[i]}] finished earlier, kept: {point.dir}")
            else:
                todo.append(i)
        local = executor.kind == "local"
        # a Ray worker may start elsewhere (another node, another directory): it gets absolute paths
        tasks = [PointTask(points[i] if local else replace(points[i], dir=points[i].dir.resolve()), key,
                           fidelity_batches, out if local else out.resolve(),
                           (lambda m, name=names[i]: write(f"[{name}] {m}")) if local else None) for i in todo]
        for outcome in run_tasks(train_point, tasks, executor, on_progress=show_progress,
                                 log=write, names=[names[i] for i in todo]):
            i = todo[outcome.index]
            if outcome.ok:
                row = {**outcome.result, "attempts": outcome.attempts}
                if not local:
                    write(f"[{names[i]}] test accuracy {100 * row['test_accuracy']:.2f}%")
            else:
                row = point_row(points[i], key, out, outcome.error, outcome.attempts)
                write(f"[{names[i]}] failed after {outcome.attempts} attempt(s): {outcome.error}")
            record(i, row)
    finally:
        bar.close()
    report["failed"] = sum(1 for r in report["rows"] if r["status"] == STATUS_FAILED)
    write_outputs(out, report, plot=True)
    if tracking is not None:
        tracking.log_files(f"{out.name}/sweep", [out / "sweep.csv", out / "sweep.json", out / "sweep.png"],
                           tags={"hwtoolkit.kind": "sweep", "hwtoolkit.sweep": str(out.resolve())})
    return report
