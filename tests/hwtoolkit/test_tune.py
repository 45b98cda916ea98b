"""Tuning: search spaces, a real Optuna study on SQLite (per-layer learning rates, pruning, selection on
validation accuracy only), trials in a real MLflow store, and a study killed mid-trial that resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import tiny_config_text
from hwtoolkit import config
from hwtoolkit.cli import main
from hwtoolkit.tracking import Tracker
from hwtoolkit.tuning import TuneError, parse_search


@pytest.mark.parametrize("text, kind, low, high, index", [
    ("optim.lr=log(1e-3, 0.3)", "log", 1e-3, 0.3, None),
    ("optim.lr[1]=log(1e-3,0.3)", "log", 1e-3, 0.3, 1),
    ("ep.beta = uniform(0.1, 1)", "uniform", 0.1, 1.0, None),
    ("train.batch_size=int(8, 64)", "int", 8, 64, None),
])
def test_spaces_are_read(text, kind, low, high, index):
    space = parse_search(text)
    assert (space.kind, space.low, space.high, space.index) == (kind, low, high, index)


def test_choice_values_are_read_as_toml():
    assert parse_search('estimator=choice(symmetric, "one_sided")').choices == ("symmetric", "one_sided")
    assert parse_search("ep.beta=choice(0.1, 0.5)").choices == (0.1, 0.5)


@pytest.mark.parametrize("text, message", [
    ("optim.lr", "expected KEY=SPACE"),
    ("optim.lr=loguniform(1, 2)", "expected a space"),
    ("optim.lr=log(0, 1)", "LOW > 0"),
    ("optim.lr=uniform(1, 0.5)", "must be below"),
    ("optim.lr=uniform(a, 1)", "is not a number"),
    ("optim.lr=uniform(1, inf)", "finite"),
    ("optim.lr=log(1)", "two bounds"),
    ("train.epochs=int(1.5, 3)", "integer bounds"),
    ("ep.beta=choice(0.1, 0.1)", "given twice"),
])
def test_bad_spaces_are_refused_by_name(text, message):
    with pytest.raises(TuneError, match=message.replace("(", r"\(")):
        parse_search(text)


def test_the_baseline_of_a_scalar_learning_rate_search_is_the_common_rate():
    """A scalar optim.lr sets every layer's rate: its baseline is that rate when the config's rates are equal."""
    from hwtoolkit.tuning.space import base_value

    space = parse_search("optim.lr=log(0.01, 0.3)")
    root = Path(__file__).resolve().parents[2]

    def base(lr: str) -> config.Config:
        return config.load(root / "configs" / "fmnist_mlp.toml", [f"optim.lr={lr}"])

    assert base("0.05").layer_lrs() == [0.05, 0.05] and base_value(base("0.05"), space) == 0.05
    assert base_value(base("[0.05, 0.05]"), space) == 0.05
    assert base_value(base("[0.05, 0.1]"), space) == [0.05, 0.1]


@pytest.fixture
def cfg_file(idx_dataset, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(idx_dataset, epochs=2))
    return path


@pytest.mark.parametrize("search, message", [
    ("network.colour=uniform(0, 1)", "unknown key"),
    ("optim.lr[2]=log(1e-3, 0.3)", "out of range"),
    ("ep.beta=uniform(-1, 0.5)", "ep.beta"),
    ("optim.lr=log(1, 2", "expected a space"),
])
def test_a_bad_search_fails_before_anything_is_trained(cfg_file, tmp_path, capsys, search, message):
    out = tmp_path / "study"
    assert main(["tune", str(cfg_file), "--search", search, "--trials", "2", "--out", str(out), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "hwtoolkit tune: error:" in err and message in err
    assert not out.exists()


def test_tune_without_a_validation_split_or_a_search_is_refused(cfg_file, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["tune", str(cfg_file), "--search", "optim.lr=log(1e-3, 0.3)", "--trials", "2", "--out", str(out),
                 "--set", "data.val_size=0", "--no-track"]) == 2
    assert "validation accuracy" in capsys.readouterr().err
    assert main(["tune", str(cfg_file), "--trials", "2", "--out", str(out), "--no-track"]) == 2
    assert "--search" in capsys.readouterr().err
    assert not out.exists()


def test_resume_needs_a_readable_study_record_and_loses_nothing(cfg_file, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["tune", str(cfg_file), "--search", "optim.lr=log(1e-3, 0.3)", "--trials", "2", "--out", str(out),
            "--resume", "--no-track"]
    assert main(args) == 2
    assert "holds no study to continue" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "tune_spec.json").write_text("{not json")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tune_spec.json" in err and "cannot be read" in err and "Traceback" not in err
    assert (out / "tune_spec.json").read_text() == "{not json"


def test_a_study_selects_on_validation_writes_the_best_config_and_tracks_every_trial(cfg_file, tmp_path, capsys):
    out = tmp_path / "study"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["tune", str(cfg_file), "--search", "optim.lr[0]=log(1e-4, 0.3)", "--search",
                 "optim.lr[1]=log(1e-4, 0.3)", "--trials", "6", "--out", str(out), "--tracking-uri", store])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "tune.json").read_text())
    study = optuna.load_study(study_name="hwtoolkit", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 6 == report["finished"]
    # the first trial is the config's own learning rates: the baseline the study is compared with
    assert study.trials[0].params == {"optim.lr[0]": 0.1, "optim.lr[1]": 0.05}
    assert report["baseline"]["number"] == 0 and "baseline" in printed
    # selection: the highest validation accuracy among completed trials, never the test accuracy
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert report["best"]["number"] == best.number and report["best"]["val_accuracy"] == best.value
    run = out / best.user_attrs["run_dir"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_accuracy"] == best.value and report["best"]["test_accuracy"] == summary["test_accuracy"]
    best_cfg = config.load(out / "best.toml")
    assert list(best_cfg.optim.lr) == pytest.approx([best.params["optim.lr[0]"], best.params["optim.lr[1]"]])
    assert printed.count("test accuracy") == 1
    # every finished trial is in the MLflow store with its searched values and per-epoch validation accuracy
    tracker = Tracker(store, f"tune {out.name}")
    runs = [r for r in tracker.runs() if r.data.tags.get("hwtoolkit.kind") == "trial"]
    assert len(runs) == 6
    for r in runs:
        number = int(r.info.run_name.rsplit("trial", 1)[1])
        trial = study.trials[number]
        assert float(r.data.params["search.optim.lr.0"]) == pytest.approx(trial.params["optim.lr[0]"])
        history = tracker.client.get_metric_history(r.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(trial.intermediate_values) + 1))
        assert [m.value for m in history] == pytest.approx([trial.intermediate_values[s] for s in
                                                            sorted(trial.intermediate_values)])


def _running_trial(out: Path) -> Path | None:
    for run in sorted((out / "trials").glob("trial*")) if (out / "trials").is_dir() else []:
        metrics = run / "metrics.jsonl"
        if run.name >= "trial0002" and metrics.exists() and metrics.read_text().strip() and \
                not (run / "summary.json").exists():
            return run
    return None


def test_a_killed_study_resumes_to_the_asked_number_of_trials(idx_dataset, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=25))
    out = tmp_path / "study"
    args = ["tune", str(cfg), "--search", "optim.lr=log(1e-3, 0.3)", "--trials", "4", "--pruner", "none",
            "--out", str(out), "--no-track"]
    proc = subprocess.Popen([sys.executable, "-m", "hwtoolkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while proc.poll() is None and _running_trial(out) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _running_trial(out)
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the trial stays "running" in the database
    proc.wait()
    assert victim is not None, proc.stderr.read() if proc.stderr else ""
    number = int(victim.name.removeprefix("trial"))

    assert main([*args[:-1], "--resume", "--no-track"]) == 0
    study = optuna.load_study(study_name="hwtoolkit", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states[number] == "FAIL"  # the killed trial, marked failed on resume
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states
    assert all((out / t.user_attrs["run_dir"] / "summary.json").exists() for t in study.trials
               if t.state.name == "COMPLETE")
    assert json.loads((out / "tune.json").read_text())["finished"] == 4
    # --resume of another study is refused
    assert main(["tune", str(cfg), "--search", "ep.beta=uniform(0.1, 1)", "--trials", "4", "--out", str(out),
                 "--resume", "--no-track"]) == 2


def test_a_study_on_ray_shares_one_database_between_two_workers(idx_dataset, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=2))
    out = tmp_path / "study"
    assert main(["tune", str(cfg), "--search", "optim.lr=log(1e-3, 0.3)", "--trials", "6", "--out", str(out),
                 "--executor", "ray", "--workers", "2", "--no-track"]) == 0
    study = optuna.load_study(study_name="hwtoolkit", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(finished) <= 7  # each worker stops once 6 are finished; one may be mid-trial then
    hosts = {t.user_attrs["host"] for t in study.trials}
    assert len(hosts) == 2 and not any(h.endswith(f":{os.getpid()}") for h in hosts)  # two Ray workers, not here
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == len(study.trials)  # no trial directory shared
    assert json.loads((out / "tune.json").read_text())["best"]["val_accuracy"] == max(
        t.value for t in study.trials if t.state.name == "COMPLETE")
    assert "best trial" in capsys.readouterr().out
