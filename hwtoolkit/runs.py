"""Runs as a public API: a config's data splits and target, and a run directory's config and weights.

The learning loop, sweeps, export and the Python API all open targets and read runs through here, so that
none of them reaches into another's internals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import targets
from hwtoolkit.config import Config, ConfigError, loads
from hwtoolkit.data import downsample, load_dataset, split_train_val
from hwtoolkit.training import checkpoint
from hwtoolkit.training.distributed import local_device
from hwtoolkit.training.evaluate import evaluate
from hwtoolkit.training.rundir import RunDir


@dataclass
class Splits:
    """Training, validation and test images (uint8, NCHW) with labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_splits(cfg: Config) -> Splits:
    """Load the configured data set and carve the validation split out of its training set."""
    data = load_dataset(cfg.data.dataset, root=cfg.data.root or None, download=cfg.data.download,
                        limit=cfg.data.limit or None)
    if cfg.data.downsample > 1:
        data = downsample(data, cfg.data.downsample)
    if tuple(data.train_x.shape[1:]) != tuple(cfg.network.input_shape):
        scaled = f" after data.downsample = {cfg.data.downsample}" if cfg.data.downsample > 1 else ""
        raise ConfigError(f"network.input_shape = {list(cfg.network.input_shape)} does not match the "
                          f"{cfg.data.dataset} images{scaled}, which are {list(data.train_x.shape[1:])}")
    if data.classes != cfg.network.classes:
        raise ConfigError(f"network.classes = {cfg.network.classes}, but {cfg.data.dataset} has {data.classes}")
    train_idx, val_idx = split_train_val(data.train_x.shape[0], cfg.data.val_size, cfg.seed)
    return Splits(data.train_x[train_idx], data.train_y[train_idx], data.train_x[val_idx], data.train_y[val_idx],
                  data.test_x, data.test_y)


def open_target(cfg: Config) -> targets.Target:
    """Open the configured target with its typed options, its own tables and the run's seed and quant config.

    A ``device = "cuda"`` option means this worker's own GPU under ``torchrun``.
    """
    options = dict(cfg.target.options)
    if isinstance(options.get("device"), str):
        options["device"] = local_device(options["device"])
    typed = targets.configure(cfg.target.name, options, cfg.target.tables, cfg.run_context())
    return targets.get(cfg.target.name)(cfg.network, typed)


@dataclass(frozen=True)
class Run:
    """A run directory and the config it was trained with."""

    dir: RunDir
    config: Config

    @property
    def root(self) -> Path:
        return self.dir.root

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The weights of the best validation epoch (``checkpoints/best.pt``)."""
        return checkpoint.load(self.dir.best_checkpoint)["weights"]


def read_config(path: Path) -> Config:
    """A run directory's stored config; errors name the file."""
    try:
        return loads(path.read_text())
    except ConfigError as e:
        raise ConfigError(f"{str(path)!r}: {e}") from None


def read_run(run_dir: str | Path) -> Run:
    """A run directory and its stored config; an error if the directory holds no run."""
    run = RunDir(Path(run_dir))
    if not run.config.exists():
        raise FileNotFoundError(f"{str(run.root)!r} is not a run directory (no config.toml)")
    return Run(run, read_config(run.config))


def evaluate_run(run_dir: str | Path, log: Callable[[str], None] = print, wait: float = 0.0) -> dict:
    """Re-evaluate a finished run's best weights on its validation and test splits.

    A target with device state is first restored to the device the run ended on (``checkpoints/device.pt``),
    so that the test figure is the summary's, draw for draw.

    ``wait``: simulated seconds that pass between programming the weights and reading them (drift,
    decay and diffusion act), for targets that model time.
    """
    if not math.isfinite(wait) or wait < 0:
        raise ValueError(f"wait = {wait} is invalid: expected finite simulated seconds >= 0")
    run = read_run(run_dir)
    cfg = run.config
    splits = load_splits(cfg)
    with open_target(cfg) as target:
        if run.dir.device_checkpoint.exists():  # the device the training run evaluated its test figure on
            target.load_device_state(checkpoint.load(run.dir.device_checkpoint)["device"])
        target.program(run.best_weights())
        if wait:
            if not target.capabilities.models_time:
                raise ValueError(f"--wait {wait}: the {cfg.target.name} target does not model time")
            target.wait(wait)
        # the test split first: on a noisy device it then sees the very draws the run's own test evaluation saw
        figures = {name: evaluate(target, x, y, cfg.ep, cfg.train.eval_batch_size, name)
                   for name, x, y in (("test", splits.test_x, splits.test_y), ("val", splits.val_x, splits.val_y))
                   if x.shape[0]}
        result = {**figures.get("val", {}), **figures.get("test", {})}
    log(json.dumps(result, indent=2))
    return result
