"""Pictures: training curves, image grids, confusion matrices.  Headless-safe (Agg) everywhere."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    # No window is ever opened by cnnlab; a notebook keeps its inline backend.
    import os

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: Sequence[dict[str, Any]], epochs: int | None = None, ax=None):
    """The book's figure: train loss, train acc and test acc against epoch (x from 1 to ``epochs``)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.5))
    series = [("train_loss", "train loss", "-", "C0"), ("train_acc", "train acc", "--", "C1"),
              ("test_acc", "test acc", "-.", "C2")]
    for key, label, style, color in series:
        pts = [(p["epoch"], p[key]) for p in history if p.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, color=color, label=label, marker="o" if key == "test_acc" else None,
                    markersize=3)
    ax.set_xlabel("epoch")
    if epochs:
        ax.set_xlim(1, max(epochs, 1 + 1e-9))
    ax.grid(True, alpha=0.4)
    ax.legend()
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def plot_confusion(confusion, classes: Sequence[str], title: str | None = None):
    """A confusion matrix (rows: true class, columns: predicted) with class names and counts."""
    import numpy as np

    cm = np.asarray(confusion)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
