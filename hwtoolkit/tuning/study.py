"""The tuning study: Optuna on a database (SQLite in the study's directory by default), trials as run directories.

Why Optuna on a database: the study *is* the database, so a study killed or interrupted at any point resumes by
opening it again (trials left running by a dead process are marked failed, and new ones are drawn until ``trials``
have completed or been pruned); a server URL (PostgreSQL, MySQL) lets workers on many machines share one study.
Trials run here (``local``) or as Ray tasks, each task a worker drawing trials from the shared study.

Every trial trains ``DIR/trials/trialNNNN`` with the config's epochs and reports its validation accuracy after
every epoch; the pruner (median or ASHA) stops trials that trail. The first trial of a new study is the config's
own values (``baseline``) when they lie in the spaces, so the study says what tuning gained over the default.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hwtoolkit import config as config_mod
from hwtoolkit.executors import ExecutorSpec, run_tasks
from hwtoolkit.files import check_output_dir, check_same_spec, locked_directory, remove_if_unused, write_text_atomic
from hwtoolkit.sweep.report import json_safe
from hwtoolkit.sweep.values import safe_name
from hwtoolkit.tracking import Tracker

from .space import SearchSpace, TuneError, base_value, check_spaces, contains, overrides, parse_search, sample

STUDY_NAME = "hwtoolkit"
SPEC_FILE = "tune_spec.json"
REPORT_FILE = "tune.json"
BEST_CONFIG = "best.toml"
PRUNERS = ("median", "asha", "none")
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class TrialsTask:
    """One worker's share of the study: what it needs to open the study and train trials (picklable, for Ray)."""

    storage: str
    base_toml: str
    spaces: tuple[SearchSpace, ...]
    trials: int
    pruner: str
    out: Path
    seed: int
    attempts_per_trial: int = 3
    log: Callable[[str], None] | None = field(default=None, compare=False)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_for(url: str) -> Any:
    """The study's storage; SQLite waits for its lock instead of failing when two workers write at once."""
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_pruner(name: str) -> Any:
    optuna = _optuna()
    if name == "median":  # stop a trial whose validation accuracy is below the median of earlier ones at that epoch
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "asha":  # asynchronous successive halving: rungs at 1, 3, 9, ... epochs, keep the best third
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _finished_states():
    optuna = _optuna()
    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def run_trials(task: TrialsTask) -> int:
    """Draw and train trials until the study holds ``task.trials`` completed or pruned ones; how many ran here."""
    optuna = _optuna()
    from hwtoolkit.training.loop import train

    log = task.log or (lambda message: None)
    base = config_mod.loads(task.base_toml)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_for(task.storage),
                              sampler=optuna.samplers.TPESampler(seed=task.seed), pruner=make_pruner(task.pruner))
    ran = 0

    def objective(trial: Any) -> float:
        nonlocal ran
        ran += 1
        values = {s.name: sample(trial, s) for s in task.spaces}
        cfg = config_mod.loads(task.base_toml, overrides(base, list(task.spaces), values))
        run_dir = task.out / "trials" / f"trial{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(task.out)))
        trial.set_user_attr("host", f"{socket.gethostname()}:{os.getpid()}")  # which worker ran it
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        log(f"trial {trial.number}: {shown}")

        def report(record: dict, target: Any) -> None:
            trial.report(record["val_accuracy"], record["epoch"])
            if trial.should_prune():
                log(f"trial {trial.number}: pruned after epoch {record['epoch']} (validation accuracy "
                    f"{100 * record['val_accuracy']:.2f}%)")
                raise optuna.TrialPruned()

        summary = train(cfg, run_dir, progress=False, log=lambda m: None, on_epoch=report)
        log(f"trial {trial.number}: validation accuracy {100 * summary['val_accuracy']:.2f}% "
            f"(best epoch {summary['best_epoch']})")
        return summary["val_accuracy"]

    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state in _finished_states())
    if done < task.trials:
        budget = (task.trials - done) * task.attempts_per_trial  # failed trials are retried, within bounds
        study.optimize(objective, n_trials=budget, catch=(Exception,),
                       callbacks=[optuna.study.MaxTrialsCallback(task.trials, states=_finished_states())])
    return ran


# ------------------------------------------------------------------------------------------------ the study


def default_out(raw: dict[str, Any]) -> Path:
    name = raw.get("name") if isinstance(raw.get("name"), str) else "experiment"
    return Path("runs") / f"{safe_name(name)}-tune-{time.strftime('%Y%m%d-%H%M%S')}"


def _fail_stale_trials(study: Any, log: Callable[[str], None]) -> None:
    """Trials still marked running when the study is opened were left by a killed process (the directory lock
    says no one else runs this study): they are failed, and new ones take their place."""
    optuna = _optuna()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
        log(f"trial {t.number} was left running by an interrupted study; marked failed")


def _enqueue_baseline(study: Any, base: config_mod.Config, spaces: Sequence[SearchSpace],
                      log: Callable[[str], None]) -> None:
    values = {s.name: base_value(base, s) for s in spaces}
    outside = [s.name for s in spaces if not contains(s, values[s.name])]
    if outside:
        log(f"the config's own {', '.join(outside)} lie outside the search spaces: no baseline trial")
        return
    study.enqueue_trial(values, user_attrs={"baseline": True})


def _trial_row(t: Any) -> dict:
    return {"number": t.number, "state": t.state.name, "params": t.params, "val_accuracy": t.value,
            "baseline": bool(t.user_attrs.get("baseline")), "run_dir": t.user_attrs.get("run_dir"),
            "epochs_reported": len(t.intermediate_values)}


def run_tune(config_path: str | Path, searches: Sequence[str], trials: int, sets: Sequence[str] = (),
             out: str | Path | None = None, storage: str | None = None, pruner: str = "median",
             resume: bool = False, executor: ExecutorSpec | None = None, tracking: Tracker | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Run (or resume) a study to ``trials`` finished trials; write ``best.toml`` and ``tune.json``; the report."""
    executor = executor or ExecutorSpec()
    executor.validate()
    if not searches:
        raise TuneError("--search: give at least one KEY=SPACE, e.g. --search 'optim.lr=log(1e-3, 0.3)'")
    if not 1 <= trials <= MAX_TRIALS:
        raise TuneError(f"--trials {trials}: expected an integer from 1 to {MAX_TRIALS}")
    if pruner not in PRUNERS:
        raise TuneError(f"--pruner {pruner!r}: expected one of {', '.join(PRUNERS)}")
    spaces = [parse_search(s) for s in searches]
    raw = config_mod.read_raw(config_path)
    base = config_mod.from_dict(config_mod.apply_overrides(raw, list(sets)))
    if base.data.val_size <= 0:
        raise TuneError("tuning selects on validation accuracy: data.val_size must be > 0")
    check_spaces(base, spaces)
    out = Path(out) if out else default_out(raw)
    url = storage or f"sqlite:///{out.resolve() / 'study.db'}"
    if executor.kind == "ray" and executor.address is not None and url.startswith("sqlite"):
        raise TuneError("--executor ray --address: the workers on other machines need a database server; give "
                        "--storage postgresql://... (a SQLite file serves one machine)")
    spec = {"config": raw, "sets": list(sets), "search": [s.text for s in spaces], "pruner": pruner}
    check_output_dir(out, resume, "study", TuneError)
    created = not out.exists()
    try:
        with locked_directory(out, "tune directory"):  # one study writer per directory
            if resume:
                check_same_spec(out, SPEC_FILE, json_safe(spec), "study", TuneError)
            write_text_atomic(out / SPEC_FILE, json.dumps(json_safe(spec), indent=2) + "\n")
            return _run_study(base, spaces, trials, out, url, pruner, executor, tracking, log)
    except BaseException:
        if created:
            remove_if_unused(out)
        raise


def _run_study(base: config_mod.Config, spaces: list[SearchSpace], trials: int, out: Path, url: str, pruner: str,
               executor: ExecutorSpec, tracking: Tracker | None, log: Callable[[str], None]) -> dict:
    optuna = _optuna()
    try:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage_for(url), direction="maximize",
                                    load_if_exists=True)
    except Exception as e:  # SQLAlchemy's errors for a bad URL or an unreachable server
        raise TuneError(f"--storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    _fail_stale_trials(study, log)
    if not study.get_trials(deepcopy=False):
        _enqueue_baseline(study, base, spaces, log)
    workers = 1 if executor.kind == "local" else (executor.workers or _cluster_workers(executor))
    tasks = [TrialsTask(url, base.to_toml(), tuple(spaces), trials, pruner, out.resolve(), base.seed + k,
                        log=log if executor.kind == "local" else None) for k in range(workers)]
    try:
        for outcome in run_tasks(run_trials, tasks, executor, log=log,
                                 names=[f"tuning worker {k}" for k in range(workers)]):
            if not outcome.ok:
                log(f"tuning worker {outcome.index} failed: {outcome.error}")
    finally:
        if tracking is not None:
            _track_trials(study, out, tracking, log)
    return _report(study, out, tracking)


def _cluster_workers(executor: ExecutorSpec) -> int:
    """Without --workers: one tuning worker per ``cpus_per_task`` CPUs of this machine (a local Ray instance)."""
    return max(1, (os.cpu_count() or 1) // executor.cpus_per_task)


def _track_trials(study: Any, out: Path, tracking: Tracker, log: Callable[[str], None]) -> None:
    """Every finished trial that is not in the tracking store yet (idempotent, so a resumed study adds only new ones)."""
    for t in study.get_trials(deepcopy=False, states=_finished_states()):
        run_dir = out / t.user_attrs.get("run_dir", f"trials/trial{t.number:04d}")
        if run_dir.is_dir():
            tracking.try_log_run(log, run_dir, name=f"{out.name}/trial{t.number:04d}",
                                 tags={"hwtoolkit.kind": "trial", "hwtoolkit.study": str(out.resolve()),
                                       "hwtoolkit.trial_state": t.state.name,
                                       "hwtoolkit.baseline": str(bool(t.user_attrs.get("baseline")))},
                                 extra_params={f"search.{k}": v for k, v in t.params.items()},
                                 extra_metrics={"trial.val_accuracy": t.value} if t.value is not None else None)


def _report(study: Any, out: Path, tracking: Tracker | None) -> dict:
    optuna = _optuna()
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    report: dict[str, Any] = {"out": str(out), "trials": rows,
                              "finished": sum(1 for r in rows if r["state"] in ("COMPLETE", "PRUNED")),
                              "baseline": next((r for r in rows if r["baseline"] and r["state"] == "COMPLETE"), None),
                              "best": None}
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))  # validation accuracy only; earliest on a tie
        run_dir = out / best.user_attrs["run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        write_text_atomic(out / BEST_CONFIG, (run_dir / "config.toml").read_text())
        report["best"] = {**_trial_row(best), "config": str(out / BEST_CONFIG),
                          "test_accuracy": summary["test_accuracy"]}  # the one test figure of the study
    write_text_atomic(out / REPORT_FILE, json.dumps(json_safe(report), indent=2) + "\n")
    if tracking is not None:
        tracking.log_files(f"{out.name}/study", [out / REPORT_FILE, out / BEST_CONFIG],
                           tags={"hwtoolkit.kind": "study", "hwtoolkit.study": str(out.resolve())})
    return report


def format_report(report: dict) -> str:
    """The study in a few lines: trials by state, the baseline and the best trial (validation), its test figure."""
    states: dict[str, int] = {}
    for r in report["trials"]:
        states[r["state"]] = states.get(r["state"], 0) + 1
    lines = [f"{len(report['trials'])} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))]
    if report["baseline"]:
        b = report["baseline"]
        lines.append(f"baseline (the config's values) trial {b['number']}: validation accuracy "
                     f"{100 * b['val_accuracy']:.2f}%  {b['params']}")
    best = report["best"]
    if best is None:
        lines.append("no trial completed: nothing to select")
    else:
        lines.append(f"best trial {best['number']}: validation accuracy {100 * best['val_accuracy']:.2f}%  "
                     f"{best['params']}")
        lines.append(f"test accuracy of the best trial (reported once, not used to select): "
                     f"{100 * best['test_accuracy']:.2f}%")
        lines.append(f"best config: {best['config']}")
    return "\n".join(lines)


