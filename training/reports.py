"""Training reports as PNG files: learning curves, confusion matrix, reliability diagram.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state, no
display), so a trainer thread can draw while another trains. Reports live beside the bundle, in
a `reports/` directory: the bundle format verifies an exact list of files and ships no extras.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from training.evaluation import Evaluation, Reliability
from training.training_loop import EpochStats

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
RELIABILITY = "reliability.png"
DETECTIONS = "detections.png"
METRICS_JSON = "metrics.json"
DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_learning_curves(history: Sequence[EpochStats], path: Path, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, training (augmented batches) against validation."""
    epochs = [e.epoch + 1 for e in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [e.train_loss for e in history], marker="o", label="train")
    loss_ax.plot(epochs, [e.val_loss for e in history], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    acc_ax.plot(epochs, [e.train_accuracy for e in history], marker="o", label="train")
    acc_ax.plot(epochs, [e.val_accuracy for e in history], marker="o", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        if best_epoch is not None and 0 <= best_epoch < len(history):
            ax.axvline(best_epoch + 1, color="grey", linestyle=":", label="kept weights")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(evaluation: Evaluation, path: Path, title: str = "Confusion matrix (test)") -> Path:
    """Counts, coloured by the row-normalised rate (each true label's row sums to 1)."""
    counts = np.asarray(evaluation.confusion, dtype=np.int64)
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    side = min(14.0, 3.0 + 0.45 * k)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true label")
    ticks = np.arange(k)
    labels = list(evaluation.labels)
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}, n={evaluation.n}")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if rates[i, j] > 0.6 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return _save(fig, path)


def plot_reliability(curves: Sequence[tuple[str, Reliability, float]], path: Path) -> Path:
    """Accuracy against confidence per bin for each (name, bins, ECE); the diagonal is perfect calibration."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    diag_ax, hist_ax = fig.subplots(1, 2)
    diag_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    for name, bins, ece in curves:
        xs = [
            c for c, a in zip(bins.confidence, bins.accuracy, strict=True) if c is not None and a is not None
        ]
        ys = [
            a for c, a in zip(bins.confidence, bins.accuracy, strict=True) if c is not None and a is not None
        ]
        diag_ax.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.4f})")
        edges = np.linspace(0.0, 1.0, bins.n_bins + 1)
        hist_ax.stairs(list(bins.counts), edges, label=name)
    diag_ax.set(
        xlabel="confidence (top class)",
        ylabel="accuracy",
        title="Reliability (test)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    hist_ax.set(xlabel="confidence (top class)", ylabel="items", title="Confidence histogram", yscale="log")
    for ax in (diag_ax, hist_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    return _save(fig, path)


# (left, top, right, bottom) normalised, as detection heads answer and reviewers draw.
NormBox = tuple[float, float, float, float]


def plot_detections(
    examples: Sequence[tuple[np.ndarray, Sequence[NormBox], Sequence[NormBox], str]],
    path: Path,
    columns: int = 4,
) -> Path:
    """Held-out images with true boxes (green, solid) and predicted ones (orange, dashed); each
    title says the true and the predicted count, so a wrong count is seen at a glance."""
    from matplotlib.patches import Rectangle

    n = max(1, len(examples))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.4 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax in axes:
        ax.set_axis_off()
    for ax, (image, truth, predicted, title) in zip(axes, examples, strict=False):
        h, w = image.shape[:2]
        ax.imshow(image)
        for boxes, colour, style in ((truth, "#1a9850", "-"), (predicted, "#f46d43", "--")):
            for left, top, right, bottom in boxes:
                ax.add_patch(
                    Rectangle(
                        (left * w, top * h),
                        (right - left) * w,
                        (bottom - top) * h,
                        fill=False,
                        edgecolor=colour,
                        linewidth=1.6,
                        linestyle=style,
                    )
                )
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return path
