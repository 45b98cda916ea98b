"""The learning loop: drive the phases on a target, form the update on the host, write it back.

Model selection uses the validation split; the test set is evaluated once, at
the end, on the weights of the best validation epoch. Every random choice of a
batch (order, augmentation, the sign of beta) is drawn from a generator seeded by
``(seed, epoch, batch)``, so a run resumed from a mid-epoch checkpoint replays
exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import targets
from hwtoolkit.config import Config, ConfigError
from hwtoolkit.data import BatchSampler, augment_cifar10
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.runs import Splits, load_splits, open_target

from . import checkpoint
from .distributed import Workers, from_environment
from .estimators import make_estimator
from .evaluate import PhaseStats, evaluate
from .optimizer import SGD, lr_factor
from hwtoolkit.files import locked_directory, remove_if_unused, remove_stale_temporaries, write_text_atomic
from hwtoolkit.runs import read_config

from .rundir import RunDir


class RunExistsError(RuntimeError):
    """The run directory already holds a run and ``resume`` was not asked for."""


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A generator for one batch's random choices, independent of every other batch."""
    state = np.random.SeedSequence([seed, epoch, batch]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def config_difference(stored: Config, current: Config) -> list[str]:
    """``"key: old -> new"`` for every field a resumed run may not change.

    Everything counts except the options the target declares as how it is reached (``reconnect_options``,
    such as a board's URL): the network, the data, the learning settings and what the device computes are
    fixed for the life of a run.
    """
    a, b = stored.to_dict(), current.to_dict()
    if stored.target.name == current.target.name:
        for key in targets.get(current.target.name).reconnect_options:
            a["target"].pop(key, None)
            b["target"].pop(key, None)

    def walk(x: object, y: object, path: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            return [d for k in sorted(set(x) | set(y)) for d in walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)]
        return [] if x == y else [f"{path}: {x!r} -> {y!r}"]

    return walk(a, b, "")


EpochHook = Callable[[dict, targets.Target], None]
"""``on_epoch(record, target)``: called by the leader after each epoch's record is written."""


def train(cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] = print, on_epoch: EpochHook | None = None) -> dict:
    """Train ``cfg`` into ``out_dir`` and return the summary written to ``summary.json``.

    Under ``torchrun`` every worker calls this; the leader's return value is the summary, the others get ``{}``.
    ``on_epoch`` lets a benchmark look at the target after every epoch (time to an accuracy); it is not
    available under ``torchrun``.
    """
    device = str(cfg.target.options.get("device", "cpu"))
    workers = from_environment("cuda" if device.startswith("cuda") else "cpu")
    if on_epoch is not None and workers.size > 1:
        workers.close()
        raise ValueError("on_epoch is not available in data-parallel training")
    try:
        return _prepare_and_train(cfg, Path(out_dir), resume, progress, log, workers, on_epoch)
    finally:
        workers.close()


def _prepare_and_train(cfg: Config, out_dir: Path, resume: bool, progress: bool | None,
                       log: Callable[[str], None], workers: Workers, on_epoch: EpochHook | None = None) -> dict:
    run = RunDir(out_dir)
    created = workers.leader and not run.root.exists()
    try:
        # one writer per run directory: the leader holds its lock until training ends, however it ends
        with locked_directory(run.root, "run directory") if workers.leader else nullcontext():
            return _prepare_locked(cfg, run, resume, progress, log, workers, on_epoch)
    except BaseException:
        if created:
            remove_if_unused(run.root)
        raise


def _prepare_locked(cfg: Config, run: RunDir, resume: bool, progress: bool | None, log: Callable[[str], None],
                    workers: Workers, on_epoch: EpochHook | None) -> dict:
    state = None
    if run.last_checkpoint.exists() or run.summary.exists():
        if not resume:
            raise RunExistsError(f"{str(run.root)!r} already holds a run; pass --resume to continue it "
                                 f"or choose another --out")
        if run.config.exists():
            diff = config_difference(read_config(run.config), cfg)
            if diff:
                raise ConfigError(f"--resume with a config that differs from the run's: {'; '.join(diff)}")
        if workers.leader:
            for stale in remove_stale_temporaries(run.root / "checkpoints"):
                log(f"removed {stale}, left by a process killed while writing it")
        if run.last_checkpoint.exists():
            state = checkpoint.load(run.last_checkpoint)
    splits = load_splits(cfg)
    target = open_target(cfg)
    try:
        workers.barrier()  # every worker has checked the run directory before the leader writes into it
        if workers.leader:
            write_text_atomic(run.config, cfg.to_toml())
        return _train(cfg, run, target, splits, state, progress, log if workers.leader else _quiet, workers,
                      on_epoch)
    finally:
        target.close()


def restore(target: targets.Target, state: dict) -> None:
    """The target as the checkpoint left it: the very same device where it saved one, else its weights."""
    if state.get("device"):
        target.load_device_state(state["device"])
    else:
        target.program(state["weights"])


def _quiet(message: str) -> None:
    """The log of a worker that is not the leader."""


def _train(cfg: Config, run: RunDir, target: targets.Target, splits: Splits, state: dict | None,
           progress: bool | None, log: Callable[[str], None], workers: Workers,
           on_epoch: EpochHook | None = None) -> dict:
    spec = cfg.network
    layer_of = spec.parameter_layers()
    lrs = cfg.layer_lrs()
    optimizer = SGD({n: lrs[i] for n, i in layer_of.items()}, cfg.optim.momentum, cfg.optim.weight_decay)
    estimator = make_estimator(cfg.estimator, cfg.ep)
    sampler = BatchSampler(torch.arange(splits.train_x.shape[0]), cfg.train.batch_size, cfg.seed)
    tol = cfg.ep.tolerance

    if state is None:
        target.program(init_parameters(spec, cfg.seed))
        epoch, batch, elapsed = 0, 0, 0.0
        best = {"val_accuracy": -1.0, "epoch": -1}
        stats = PhaseStats()
        if workers.leader:
            run.truncate_metrics(1)
    else:
        restore(target, state)
        optimizer.load_state_dict(state["optimizer"])
        epoch, batch, elapsed = int(state["epoch"]), int(state["batch"]), float(state["elapsed"])
        best = dict(state["best"])
        # the checkpoint holds every worker's counts added up: the leader carries them on, the others start at 0
        stats = PhaseStats(**state["stats"]) if workers.leader else PhaseStats()
        if workers.leader:
            run.truncate_metrics(epoch + 1)  # records are numbered from 1: keep the epochs this checkpoint has seen
        log(f"resuming {run.root} at epoch {epoch + 1}, batch {batch}")

    def save_last(next_epoch: int, next_batch: int, seconds: float) -> None:
        total = workers.total_stats(stats)  # a collective: every worker takes part
        if workers.leader:
            checkpoint.save(run.last_checkpoint, {
                "weights": target.read_weights(), "device": target.device_state(),
                "optimizer": optimizer.state_dict(), "epoch": next_epoch,
                "batch": next_batch, "elapsed": seconds, "best": best, "stats": total.state()})

    show = (sys.stderr.isatty() if progress is None else progress) and workers.leader
    while epoch < cfg.train.epochs:
        started = time.perf_counter()
        factor = lr_factor(cfg.optim.schedule, epoch, cfg.train.epochs, cfg.optim.final_lr_factor)
        batches = sampler.epoch_batches(epoch)
        bar = tqdm(total=len(batches), initial=batch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not show, leave=False, unit="batch")
        while batch < len(batches):
            idx = batches[batch]
            gen = batch_generator(cfg.seed, epoch, batch)
            x = splits.train_x[idx].float().div_(255.0)
            if cfg.data.augment:
                x = augment_cifar10(x, gen)  # the whole global batch, so every worker draws the same crops
            shard = workers.shard(len(idx))
            x, y = x[shard], splits.train_y[idx][shard]
            result = workers.average_result(estimator(target, x, y, gen), len(y), len(idx))
            weights = target.read_weights() if cfg.optim.weight_decay else None
            target.apply_update(optimizer.update(result, weights, factor))
            stats.add(target, result.free, y, tol)
            batch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss_sum / stats.samples:.3f}", acc=f"{stats.correct / stats.samples:.3f}")
            if cfg.train.checkpoint_every and batch % cfg.train.checkpoint_every == 0 and batch < len(batches):
                save_last(epoch, batch, elapsed + time.perf_counter() - started)
        bar.close()
        record = {"epoch": epoch + 1, "lr_factor": factor, **workers.total_stats(stats).summary("train"),
                  "epoch_train_seconds": time.perf_counter() - started}  # batches only (since resuming, if so)
        if not workers.leader:  # the leader evaluates and writes; the others go on to the next epoch
            epoch, batch, stats = epoch + 1, 0, PhaseStats()
            save_last(epoch, batch, elapsed)  # joins the leader's collective, writes nothing
            continue
        if splits.val_x.shape[0]:
            record.update(evaluate(target, splits.val_x, splits.val_y, cfg.ep, cfg.train.eval_batch_size, "val"))
        elapsed += time.perf_counter() - started
        record["seconds"] = elapsed
        run.append_metrics(record)
        val_acc = record.get("val_accuracy", float(epoch))  # without a validation split, the last epoch wins
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "epoch": epoch + 1}
            checkpoint.save(run.best_checkpoint, {"weights": target.read_weights(), "epoch": epoch + 1})
        log(_epoch_line(cfg, record))
        epoch, batch, stats = epoch + 1, 0, PhaseStats()
        save_last(epoch, batch, elapsed)
        if on_epoch is not None:
            on_epoch(record, target)
    if not workers.leader:
        return {}
    return _finish(cfg, run, target, splits, best, elapsed, log)


def _epoch_line(cfg: Config, r: dict) -> str:
    val = f"val acc {100 * r['val_accuracy']:.2f}%  " if "val_accuracy" in r else ""
    return (f"epoch {r['epoch']}/{cfg.train.epochs}  train loss {r['train_loss']:.4f} acc "
            f"{100 * r['train_accuracy']:.2f}%  {val}free residual max {r['train_residual_max']:.1e} "
            f"({r['train_unconverged_batches']} of {r['train_batches']} batches not converged)  {r['seconds']:.1f} s")


def _finish(cfg: Config, run: RunDir, target: targets.Target, splits: Splits, best: dict, elapsed: float,
            log: Callable[[str], None]) -> dict:
    """Evaluate the best validation weights on the test set, once, and write the summary and plots."""
    if target.capabilities.device_state:  # evaluate_run restores this device to reproduce the test figure
        checkpoint.save(run.device_checkpoint, {"device": target.device_state()})
    costs = target.cost_report()  # of the training batches, before the test set is read
    target.program(checkpoint.load(run.best_checkpoint)["weights"])
    test = evaluate(target, splits.test_x, splits.test_y, cfg.ep, cfg.train.eval_batch_size, "test")
    metrics = run.read_metrics()
    summary = {
        "name": cfg.name, "estimator": cfg.estimator, "target": cfg.target.name, "network": cfg.network.describe(),
        "seed": cfg.seed, "epochs": cfg.train.epochs, "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"] if splits.val_x.shape[0] else None,
        "test_accuracy": test["test_accuracy"], "test_loss": test["test_loss"],
        "test_unconverged_samples": test["test_unconverged_samples"],
        "train_unconverged_batches": sum(m["train_unconverged_batches"] for m in metrics),
        "train_seconds": elapsed, "samples_per_second": cfg.train.epochs * splits.train_x.shape[0] / max(elapsed, 1e-9),
    }
    if costs:
        summary["costs"] = costs
    run.write_summary(summary)
    from hwtoolkit.plots import plot_costs, plot_training

    plot_training(metrics, run.plots / "training.png", title=f"{cfg.name} ({cfg.estimator}, {cfg.target.name})")
    if costs:
        plot_costs(costs, run.plots / "costs.png", title=f"{cfg.name} on {cfg.target.name}")
    log(f"test accuracy {100 * summary['test_accuracy']:.2f}% (best validation epoch {best['epoch']}), "
        f"trained in {elapsed:.1f} s; run directory {run.root}")
    return summary
