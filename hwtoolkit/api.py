"""The Python API: what the command line does, as functions for notebooks and scripts (docs/python_api.md).

Every ``hwtoolkit`` command calls one of these; they take a ``Config`` or a config file with ``--set``-style
overrides, return plain data (dicts, dataclasses) and print only through ``log``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import targets
from hwtoolkit import config as config_mod
from hwtoolkit.config import Config
from hwtoolkit.executors import ExecutorSpec
from hwtoolkit.runs import Run, open_target, read_run

ConfigLike = Config | str | Path

__all__ = ["Config", "ExecutorSpec", "Run", "available_targets", "evaluate", "export", "gdu", "load_config", "open_target", "read_run",
           "run_sweep", "train", "tune"]


def load_config(path: str | Path, overrides: Sequence[str] = (), *, target: str | None = None) -> Config:
    """Read a TOML experiment file, apply ``key=value`` overrides (as ``--set``) and validate it.

    ``target`` picks the target by name, as ``--target`` does.
    """
    overrides = list(overrides) + ([f"target.name={json.dumps(target)}"] if target else [])
    return config_mod.load(path, overrides)


def _config(config: ConfigLike, overrides: Sequence[str]) -> Config:
    if isinstance(config, Config):
        if overrides:
            return config_mod.loads(config.to_toml(), list(overrides))
        return config
    return load_config(config, overrides)


def train(config: ConfigLike, out: str | Path, *, overrides: Sequence[str] = (), resume: bool = False,
          progress: bool | None = False, log: Callable[[str], None] = print, tracking_uri: str | None = None) -> dict:
    """Train into the run directory ``out`` and return its summary (test accuracy of the best validation epoch).

    ``tracking_uri``: an MLflow store to log the finished run to (experiment ``train NAME``); None: not tracked.
    """
    from hwtoolkit.training.loop import train as train_run

    cfg = _config(config, overrides)
    tracker = _tracker(tracking_uri, f"train {cfg.name}")  # a bad store fails before training
    summary = train_run(cfg, out, resume=resume, progress=progress, log=log)
    if tracker is not None and summary:
        tracker.log_run(out, name=Path(out).name, tags={"hwtoolkit.kind": "run"})
    return summary


def evaluate(run_dir: str | Path, *, wait: float = 0.0, log: Callable[[str], None] = print) -> dict:
    """Re-evaluate a run's best weights on its validation and test splits (``wait``: simulated seconds first)."""
    from hwtoolkit.runs import evaluate_run

    return evaluate_run(run_dir, log=log, wait=wait)


def run_sweep(config: str | Path, key: str, values: str | Sequence[Any], *, seeds: int = 1,
              overrides: Sequence[str] = (), out: str | Path | None = None, fidelity_batches: int = 4,
              resume: bool = False, progress: bool | None = False, log: Callable[[str], None] = print,
              executor: ExecutorSpec | None = None, tracking_uri: str | None = None) -> dict:
    """Train ``config`` at every value of ``key`` and seed; the report written to ``sweep.json``.

    (Named ``run_sweep`` because ``hwtoolkit.sweep`` is the package that implements it.)

    ``values`` is the command line's comma-separated text or a list of values (each written as TOML).
    ``executor``: where the points run (default: here, one after the other; ``ExecutorSpec("ray", ...)`` for
    Ray tasks). ``tracking_uri``: an MLflow store to log every point to (``tracking.default_uri()`` is the
    command line's default); None: not tracked.
    """
    from hwtoolkit.sweep import run_sweep as run
    from hwtoolkit.sweep.runner import default_out

    text = values if isinstance(values, str) else ",".join(_toml_value(v) for v in values)
    if out is None:
        out = default_out(config_mod.read_raw(config), key.strip())
    tracker = _tracker(tracking_uri, f"sweep {Path(out).name}")
    return run(config, key, text, seeds=seeds, sets=list(overrides), out=out, fidelity_batches=fidelity_batches,
               resume=resume, progress=progress, log=log, executor=executor, tracking=tracker)


def tune(config: str | Path, search: Sequence[str], trials: int, *, overrides: Sequence[str] = (),
         out: str | Path | None = None, storage: str | None = None, pruner: str = "median", resume: bool = False,
         executor: ExecutorSpec | None = None, tracking_uri: str | None = None,
         log: Callable[[str], None] = print) -> dict:
    """Tune the searched fields (``KEY=log(a, b)``, ``uniform``, ``int``, ``choice``) on validation accuracy.

    Runs (or, with ``resume``, continues) an Optuna study in ``out`` (``storage``: its database, SQLite in
    ``out`` by default) to ``trials`` finished trials; writes ``best.toml`` and ``tune.json`` and returns the
    report, whose ``best`` holds the one test accuracy of the study (the best trial's).
    """
    from hwtoolkit.tuning import run_tune
    from hwtoolkit.tuning.study import default_out

    if out is None:
        out = default_out(config_mod.read_raw(config))
    tracker = _tracker(tracking_uri, f"tune {Path(out).name}")
    return run_tune(config, list(search), trials, sets=list(overrides), out=out, storage=storage, pruner=pruner,
                    resume=resume, executor=executor, tracking=tracker, log=log)


def _tracker(uri: str | None, experiment: str):
    from hwtoolkit.tracking import open_tracker

    return open_tracker(uri, experiment)


def _toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def gdu(config: ConfigLike, *, overrides: Sequence[str] = (), beta: float | None = None,
        estimators: Sequence[str] = ("one_sided", "symmetric"), steps: int | None = None,
        free_steps: int | None = None, batch: int = 16, weights: str | Path | None = None,
        random_input: bool = False) -> dict[str, Any]:
    """The GDU check: per-step EP updates against BPTT gradients, one ``GDUResult`` per estimator (float64).

    Inputs are the first ``batch`` validation images (or random ones); weights a checkpoint's or the
    config's initial ones. ``beta``, ``steps`` and ``free_steps`` default to the config's phase settings.
    """
    import torch

    from hwtoolkit.diagnostics.gdu import gdu as gdu_check
    from hwtoolkit.network.parameters import check_parameters, init_parameters
    from hwtoolkit.runs import load_splits
    from hwtoolkit.training import checkpoint

    cfg = _config(config, overrides)
    spec = cfg.network
    gen = torch.Generator().manual_seed(cfg.seed)
    if random_input:
        x = torch.rand(batch, *spec.input_shape, generator=gen, dtype=torch.float64)
        y = torch.randint(0, spec.classes, (batch,), generator=gen)
    else:
        splits = load_splits(cfg)
        pool_x, pool_y = (splits.val_x, splits.val_y) if splits.val_x.shape[0] else (splits.train_x, splits.train_y)
        x, y = pool_x[:batch].double() / 255.0, pool_y[:batch]
    if weights is not None:
        params = {n: t.double() for n, t in checkpoint.load(weights)["weights"].items()}
    else:
        params = init_parameters(spec, cfg.seed, torch.float64)
    check_parameters(spec, params)  # a checkpoint of another network is refused here, by name
    beta = cfg.ep.beta if beta is None else beta
    steps = steps or cfg.ep.nudged_steps
    free_steps = free_steps or cfg.ep.free_steps
    return {est: gdu_check(spec, params, x, y, beta=beta, steps=steps, free_steps=free_steps, estimator=est)
            for est in estimators}


def export(run_dir: str | Path, fmt: str, out: str | Path, *, steps: int | None = None, samples: int = 1000,
           check: bool = True, report_json: str | Path | None = None, force: bool = False,
           log: Callable[[str], None] = print):
    """Export a run's best weights as ``fmt`` (``onnx``, ``qcdq``, ``qonnx``, ``fixed``), checked against PyTorch.

    Returns the check report (``None`` with ``check=False``); a failed check raises ``ExportCheckError`` and
    writes nothing. An existing ``out`` is replaced only with ``force``.
    """
    from quantize.export import export_run

    return export_run(run_dir, fmt, out, steps=steps, samples=samples, check=check, report_json=report_json,
                      force=force, log=log)


def available_targets() -> dict[str, str]:
    """Every target that can be opened, with its description (built-in and installed by entry point)."""
    out = {}
    for name in targets.available():
        try:
            out[name] = targets.get(name).description
        except Exception as e:  # a broken third-party entry point must not hide the others
            out[name] = f"(cannot be loaded: {e})"
    return out

