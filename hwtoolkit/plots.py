"""PNG plots of runs and diagnostics (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from hwtoolkit.diagnostics.gdu import GDUResult

# the cosines of hwtoolkit.diagnostics.fidelity.COSINES, in the order they are drawn
COSINE_LABELS = {"applied_vs_ideal": "applied vs ideal EP (lr-scaled)", "device_vs_ideal": "device EP vs ideal EP",
                 "ideal_vs_bptt": "ideal EP vs -BPTT"}


def plot_training(metrics: list[dict], path: Path, title: str = "") -> Path:
    """Accuracy, loss and free-phase residual per epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [100 * m["train_accuracy"] for m in metrics], "o-", label="train")
    if metrics and "val_accuracy" in metrics[0]:
        axes[0].plot(epochs, [100 * m["val_accuracy"] for m in metrics], "s--", label="validation")
    axes[0].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    axes[0].legend()
    axes[1].plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    if metrics and "val_loss" in metrics[0]:
        axes[1].plot(epochs, [m["val_loss"] for m in metrics], "s--", label="validation")
    axes[1].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].legend()
    axes[2].semilogy(epochs, [max(m["train_residual_max"], 1e-17) for m in metrics], "o-", label="max")
    axes[2].semilogy(epochs, [max(m["train_residual_mean"], 1e-17) for m in metrics], "s--", label="mean")
    axes[2].set(xlabel="epoch", ylabel="max |s(T) - s(T-1)|", title="free-phase residual (0 drawn at 1e-17)")
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_costs(costs: dict, path: Path, title: str = "") -> Path:
    """Energy and latency per training example by part, EP beside backprop on the same device (a target's
    ``cost_report()``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = [m for m in ("ep", "backprop", "inference") if m in costs["per_example"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, figure, unit, scale in ((axes[0], "energy_pj", "nJ", 1e-3), (axes[1], "latency_ns", "us", 1e-3)):
        parts = [k for k in costs["per_example"][methods[0]][figure] if k != "total"]
        bottom = [0.0] * len(methods)
        for part in parts:
            values = [scale * costs["per_example"][m][figure][part] for m in methods]
            ax.bar(methods, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set(ylabel=f"{figure.split('_')[0]} per example ({unit})", title=figure.split("_")[0])
        ax.legend(fontsize=8)
    ratio = costs["ep_over_backprop_energy"]
    fig.suptitle(f"{title}: EP / backprop energy {ratio:.3g} (inference: one free phase)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gdu(result: "GDUResult", path: Path, units: int = 3) -> Path:
    """EP updates (solid) and -BPTT gradients (dashed, markers) over t, for a few units of each layer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(result.ep)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    t = range(result.steps)
    for ax, name in zip(axes.flat, names):
        ep = result.ep[name].flatten(1)
        g = result.neg_bptt[name].flatten(1)
        picks = g.abs().sum(0).argsort(descending=True)[:units]  # the units BPTT gives most to
        for k, unit in enumerate(picks.tolist()):
            color = f"C{k}"
            ax.plot(t, ep[:, unit].cpu(), "-", color=color, lw=2.5, alpha=0.45, label="EP" if k == 0 else None)
            ax.plot(t, g[:, unit].cpu(), "--", color=color, lw=1, marker="x", ms=4, label="-BPTT" if k == 0 else None)
        f = result.fidelity[name]
        ax.set_title(f"{name}: rel.err {f.relative_error:.1e}, cos {f.cosine:.4f}", fontsize=9)
        ax.set_xlabel("t (steps before the end)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"GDU: {result.estimator} EP, beta = {result.beta:g}, K = {result.steps}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(report: dict, path: Path) -> Path:
    """Test accuracy against the swept value (mean over seeds, bars min-max, dots per seed) and fidelity cosines.

    ``report`` is what ``hwtoolkit.sweep.run_sweep`` writes to ``sweep.json``. Numbers go on a numeric axis
    (logarithmic when all are positive and span two decades or more); strings, lists and booleans are
    categories in the order given.
    """
    from hwtoolkit.sweep.values import is_numeric

    path.parent.mkdir(parents=True, exist_ok=True)
    agg = report["aggregate"]
    values = [a["value"] for a in agg]
    numeric = is_numeric(values)
    if numeric:
        order = sorted(range(len(agg)), key=lambda i: values[i])
        xs = [float(values[i]) for i in order]
    else:
        order = list(range(len(agg)))
        xs = list(range(len(agg)))
    agg = [agg[i] for i in order]
    position = {a["label"]: x for a, x in zip(agg, xs)}
    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 100

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    mean = [100 * a["test_accuracy"]["mean"] for a in agg]
    low = [m - 100 * a["test_accuracy"]["min"] for m, a in zip(mean, agg)]
    high = [100 * a["test_accuracy"]["max"] - m for m, a in zip(mean, agg)]
    line = "-" if numeric else ""  # categories are not joined by lines
    ax.errorbar(xs, mean, yerr=[low, high], fmt="o" + line, capsize=4, label="mean, bars min-max over seeds")
    rows = [r for r in report["rows"] if r["label"] in position and r.get("status", "ok") == "ok"]
    ax.plot([position[r["label"]] for r in rows], [100 * r["test_accuracy"] for r in rows], ".", color="0.45",
            label="one seed")
    ax.set(xlabel=report["key"], ylabel="test accuracy (%)",
           title=f"test accuracy ({report['seeds']} seed(s) per value)")
    ax.legend(fontsize=8)

    ax = axes[1]
    drawn = False
    for k, (name, label) in enumerate(COSINE_LABELS.items()):
        pts = [(x, a[name]) for x, a in zip(xs, agg) if a.get(name)]
        if not pts:
            continue
        drawn = True
        px = [x for x, _ in pts]
        m = [s["mean"] for _, s in pts]
        bars = [[v - s["min"] for v, (_, s) in zip(m, pts)], [s["max"] - v for v, (_, s) in zip(m, pts)]]
        ax.errorbar(px, m, yerr=bars, fmt="os^"[k] + line, capsize=3, label=label)
    if drawn:
        ax.axhline(1.0, color="0.7", lw=0.8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no fidelity measured (--fidelity-batches 0)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xlabel=report["key"], ylabel="cosine", title="gradient fidelity (mean, bars min-max over seeds)")

    for ax in axes:
        if log_x:
            ax.set_xscale("log")
        if not numeric:
            rotate = max((len(a["label"]) for a in agg), default=0) > 8
            ax.set_xticks(xs)
            ax.set_xlim(-0.5, len(xs) - 0.5)
            ax.set_xticklabels([a["label"] for a in agg], rotation=30 if rotate else 0,
                               ha="right" if rotate else "center")
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep of {report['key']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
