"""Gradient fidelity of a device: the update it applied against the ideal EP update on a float64 reference
target, and that ideal update against BPTT.

Over ``K`` training batches drawn by a generator seeded from ``seed``, each one update further on, with ``w0``
the weights the device holds:

* ``ideal``: the EP direction of the run's estimator (symmetric for a BPTT run) on a float64 reference target
  programmed with ``w0``;
* ``device_vs_ideal``: cosine of the same estimator's direction on the device with ``ideal`` (what the device's
  relaxations and read-out do to the estimate);
* ``applied_vs_ideal``: the device direction scaled per layer by the layer's learning rate is written with
  ``apply_update`` (as two pulse trains where the target's capabilities ask for them, as in training); cosine of
  the change the device really shows (``read_weights() - w0``) with the learning-rate-scaled ``ideal`` (what the
  write path adds on top);
* ``applied_vs_ideal_windowed``: one cosine over the whole window of ``K`` batches: the change the device really
  made from the first batch's weights to the last batch's result, against the sum of the ``K`` learning-rate-scaled
  ``ideal`` updates, each computed on the weights the device held at its batch (per-batch pulse noise averages out
  over the window; a drift that the updates do not ask for does not);
* ``ideal_vs_bptt``: cosine of ``ideal`` with the negative BPTT gradient through ``ep.free_steps`` free steps
  from ``w0`` (how well EP itself estimates the gradient at these settings, independent of the device).

Cosines are over all parameters concatenated and averaged over the ``K`` batches; a zero vector has cosine 0
with a non-zero one and 1 with another zero vector. On the exact reference target ``device_vs_ideal`` and
``applied_vs_ideal`` are 1 up to float32 rounding.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import targets
from hwtoolkit.config import Config
from hwtoolkit.data.batches import derive_seed
from hwtoolkit.network.bptt import bptt_grads
from hwtoolkit.runs import Splits, load_splits, open_target
from hwtoolkit.training import checkpoint
from hwtoolkit.training.estimators import make_estimator
from hwtoolkit.training.optimizer import SGD
from hwtoolkit.training.rundir import RunDir

COSINES = ("applied_vs_ideal", "ideal_vs_bptt", "device_vs_ideal")
"""The per-batch cosines, each a mean over the measured batches."""
WINDOWED = "applied_vs_ideal_windowed"
FIGURES = (*COSINES, WINDOWED)
"""Every fidelity figure a sweep point reports: the per-batch means and the one over the whole window."""


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine of two parameter dicts, all parameters concatenated (a missing parameter counts as zeros)."""
    names = sorted(set(a) | set(b))
    va = torch.cat([(a[n] if n in a else torch.zeros_like(b[n])).detach().cpu().double().flatten() for n in names])
    vb = torch.cat([(b[n] if n in b else torch.zeros_like(a[n])).detach().cpu().double().flatten() for n in names])
    na, nb = va.norm().item(), vb.norm().item()
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(torch.dot(va, vb).item() / (na * nb))


def _host(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().double() for n, t in d.items()}


def measure_fidelity(cfg: Config, target: targets.Target, splits: Splits, seed: int, batches: int,
                     windows: Sequence[int] = ()) -> dict:
    """Gradient fidelity of ``target`` over ``batches`` training batches (see the module docstring).

    The target's weights move by one learning-rate-scaled update per batch. ``windows`` adds the windowed
    cosine over each of these first numbers of batches (``windowed_by_batches``): how it grows as per-batch noise
    averages out, or falls as a drift that no update asks for accumulates.
    """
    if any(not 1 <= k <= batches for k in windows):
        raise ValueError(f"every window must be between 1 and the {batches} measured batches, got {list(windows)}")
    spec = cfg.network
    estimator_name = cfg.estimator if cfg.estimator != "bptt" else "symmetric"
    estimator = make_estimator(estimator_name, cfg.ep)
    layer_of = spec.parameter_layers()
    lrs = cfg.layer_lrs()
    plain_sgd = SGD({k: lrs[i] for k, i in layer_of.items()})  # one learning-rate-scaled step, as training writes it
    n = splits.train_x.shape[0]
    if n == 0:
        raise ValueError("the training split is empty: no batches to measure gradient fidelity on")
    gen = torch.Generator().manual_seed(derive_seed(seed))
    per_batch = []
    by_window: dict[int, float] = {}
    start: dict[str, torch.Tensor] | None = None
    ideal_sum: dict[str, torch.Tensor] = {}
    with targets.open_exact(spec, "float64") as reference:
        for batch in range(1, batches + 1):
            idx = torch.randperm(n, generator=gen)[:cfg.train.batch_size]
            sign_seed = int(torch.randint(0, 2 ** 62, (), generator=gen))  # the same random sign on both targets
            x = splits.train_x[idx].float().div_(255.0)
            y = splits.train_y[idx]
            w0 = target.read_weights()
            w0_64 = {k: t.double() for k, t in w0.items()}
            if start is None:
                start = w0_64
            reference.program(w0)
            ideal = _host(estimator(reference, x, y, torch.Generator().manual_seed(sign_seed)).direction)
            grads, _ = bptt_grads(spec, w0_64, x.double(), y, cfg.ep.free_steps)
            estimate = estimator(target, x, y, torch.Generator().manual_seed(sign_seed))
            device = estimate.direction
            report = target.apply_update(plain_sgd.update(estimate, None))
            after = target.read_weights()
            applied = {k: after[k].double() - w0_64[k] for k in after}
            scaled_ideal = {k: lrs[layer_of[k]] * d for k, d in ideal.items()}
            for k, d in scaled_ideal.items():
                ideal_sum[k] = ideal_sum[k] + d if k in ideal_sum else d.clone()
            if batch in windows:
                by_window[batch] = cosine({k: after[k].double() - start[k] for k in after}, ideal_sum)
            per_batch.append({
                "applied_vs_ideal": cosine(applied, scaled_ideal),
                "ideal_vs_bptt": cosine(ideal, {k: -g for k, g in grads.items()}),
                "device_vs_ideal": cosine(_host(device), ideal),
                "saturated": report.saturated,
            })
    summary: dict[str, Any] = {"batches": batches, "estimator": estimator_name, "seed": seed}
    for c in COSINES:
        summary[c] = statistics.fmean(b[c] for b in per_batch) if per_batch else None
    if start is not None:
        end = target.read_weights()
        summary[WINDOWED] = cosine({k: end[k].double() - start[k] for k in end}, ideal_sum)
    else:
        summary[WINDOWED] = None
    if windows:
        summary["windowed_by_batches"] = {str(k): by_window[k] for k in sorted(set(windows))}
    summary["saturated"] = sum(b["saturated"] for b in per_batch)
    summary["per_batch"] = per_batch
    return summary


def run_fidelity(cfg: Config, run_dir: Path, batches: int, windows: Sequence[int] = ()) -> dict:
    """Fidelity of a trained run, measured on a freshly opened target holding its best-validation weights."""
    weights = checkpoint.load(RunDir(run_dir).best_checkpoint)["weights"]
    splits = load_splits(cfg)
    with open_target(cfg) as target:
        target.program(weights)
        return measure_fidelity(cfg, target, splits, cfg.seed, batches, windows)
