"""Tracked results: finished run directories logged to MLflow (a local SQLite store by default, or a server).

A run directory already holds everything worth comparing (``config.toml``, ``metrics.jsonl``, ``summary.json``,
``plots/``), so a run is logged from its directory once it ends, by the one process that writes the sweep or the
study: the config flattened into parameters, every epoch's figures as metrics at that step, the summary as final
metrics, and the files as artifacts. Workers never write to the store (SQLite has one writer at a time), and a run
is logged once: the directory's absolute path is a tag, looked up before logging, so ``--resume`` adds only what
is new. Nothing here touches the network unless the tracking URI is a server's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from hwtoolkit.config import loads as load_config_text

DEFAULT_STORE = Path("runs") / "mlflow.db"
RUN_DIR_TAG = "hwtoolkit.run_dir"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
BATCH = 100  # parameters or metrics per request, within MLflow's limits


class TrackingError(ValueError):
    """The tracking store cannot be used as asked (a bad URI, a store that cannot be opened)."""


def default_uri() -> str:
    """``sqlite:///ABS/runs/mlflow.db`` under the current directory: no server, no network."""
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


def check_uri(uri: str) -> str:
    """A tracking URI MLflow can open: ``sqlite:///PATH``, ``postgresql://...``, ``http(s)://...``, ``file:...``."""
    schemes = ("sqlite:///", "postgresql", "mysql", "mssql", "http://", "https://", "file:", "databricks")
    if not uri or not uri.startswith(schemes):
        raise TrackingError(f"--tracking-uri {uri!r}: expected sqlite:///PATH, a database URL (postgresql://...) "
                            f"or a tracking server's http(s):// URL")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
    return uri


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": [0.1]}}`` -> ``{"optim.lr": "[0.1]"}``: every leaf of a config as one parameter."""
    out: dict[str, str] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = json.dumps(v, default=str)[:MAX_PARAM_LENGTH]
    return out


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")


def mlflow_name(key: str) -> str:
    """A parameter or metric name MLflow accepts: ``optim.lr[1]`` -> ``optim.lr.1``."""
    return _UNSAFE_NAME.sub("_", re.sub(r"\[(\d+)\]", r".\1", key))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Tracker:
    """Logs run directories to one MLflow experiment (created, with its artifacts next to a SQLite store)."""

    uri: str
    experiment: str

    def __post_init__(self) -> None:
        check_uri(self.uri)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports over the network
        os.environ.setdefault("DO_NOT_TRACK", "true")
        for name in ("mlflow", "alembic"):  # their table migrations and notices are not the command's output
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                artifacts = None
                if self.uri.startswith("sqlite:///"):  # artifacts beside the store, not in the current directory
                    store = Path(self.uri.removeprefix("sqlite:///"))
                    artifacts = (store.parent / "mlartifacts").resolve().as_uri()
                self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=artifacts)
            else:
                self.experiment_id = found.experiment_id
        except Exception as e:  # MLflow raises its own and SQLAlchemy's errors
            raise TrackingError(f"tracking store {self.uri!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None

    def logged(self, run_dir: Path) -> bool:
        """Whether this run directory is in the experiment already."""
        found = self.client.search_runs([self.experiment_id],
                                        filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir.resolve()}'",
                                        max_results=1)
        return bool(found)

    def log_run(self, run_dir: str | Path, name: str, tags: dict[str, str] | None = None,
                extra_params: dict[str, Any] | None = None, extra_metrics: dict[str, float] | None = None,
                status: str = "FINISHED") -> str | None:
        """Log one run directory (config, per-epoch metrics, summary, plots); its MLflow run id, or None if it was
        logged before."""
        from mlflow.entities import Metric, Param, RunTag

        run_dir = Path(run_dir)
        if self.logged(run_dir):
            return None
        params = {}
        config_path = run_dir / "config.toml"
        if config_path.exists():
            params = flatten(load_config_text(config_path.read_text()).to_dict())
        params.update({mlflow_name(k): json.dumps(v, default=str) for k, v in (extra_params or {}).items()})
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={RUN_DIR_TAG: str(run_dir.resolve()), **(tags or {})})
        run_id = run.info.run_id
        metrics: list[Metric] = []
        stamp = run.info.start_time
        metrics_path = run_dir / "metrics.jsonl"
        if metrics_path.exists():
            for line in metrics_path.read_text().splitlines():
                record = json.loads(line)
                step = int(record.get("epoch", 0))
                metrics += [Metric(k, float(v), stamp, step) for k, v in record.items() if k != "epoch" and _finite(v)]
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            metrics += [Metric(f"final.{k}", float(v), stamp, 0) for k, v in summary.items() if _finite(v)]
        metrics += [Metric(mlflow_name(k), float(v), stamp, 0) for k, v in (extra_metrics or {}).items()
                    if _finite(v)]
        param_list = [Param(k, v) for k, v in params.items()]
        for i in range(0, max(len(param_list), len(metrics)), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH], params=param_list[i:i + BATCH],
                                  tags=[RunTag("hwtoolkit.source", "hwtoolkit")] if i == 0 else [])
        for f in (config_path, summary_path, metrics_path, run_dir / "fidelity.json"):
            if f.exists():
                self.client.log_artifact(run_id, str(f))
        if (run_dir / "plots").is_dir():
            self.client.log_artifacts(run_id, str(run_dir / "plots"), "plots")
        self.client.set_terminated(run_id, status=status)
        return run_id

    def try_log_run(self, warn: Callable[[str], None], run_dir: str | Path, name: str, **kwargs: Any) -> str | None:
        """``log_run``, but a store that fails (locked, unreachable) is a warning: the study goes on, and
        ``--resume`` logs what is missing."""
        try:
            return self.log_run(run_dir, name, **kwargs)
        except Exception as e:  # MLflow and SQLAlchemy raise many kinds
            warn(f"tracking: {name} not logged to {self.uri}: {type(e).__name__}: {str(e).splitlines()[0]}")
            return None

    def log_files(self, name: str, files: Iterable[Path], tags: dict[str, str] | None = None) -> str:
        """One run holding a study's own outputs (``sweep.csv``, ``tune.json``, plots) as artifacts; logged again
        (the files replaced) when the study is resumed."""
        files = [Path(f) for f in files]
        key = str(files[0].parent.resolve()) if files else name
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{key}'",
                                        max_results=1)
        run_id = found[0].info.run_id if found else self.client.create_run(
            self.experiment_id, run_name=name, tags={RUN_DIR_TAG: key, **(tags or {})}).info.run_id
        for f in files:
            if f.exists():
                self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id)
        return run_id

    def runs(self) -> list[Any]:
        """Every run of the experiment (for checks and reports)."""
        return self.client.search_runs([self.experiment_id], max_results=50_000)


def open_tracker(uri: str | None, experiment: str) -> Tracker | None:
    """A tracker, or None when tracking is off (``uri`` None)."""
    return None if uri is None else Tracker(uri, experiment)
