"""PNG plots of runs and diagnostics (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from hwtoolkit.diagnostics.gdu import GDUResult


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
