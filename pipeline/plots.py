"""The evaluation's PNG plots: confusion matrix, ROC curve and training curves.

Figures are drawn on matplotlib's object API (no pyplot global state, no backend switch), and
each PNG is written aside and renamed, so a reader never opens half an image.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import figure

from pipeline import artifacts

# Columns of a Keras history.csv that are not curves to plot against the epoch.
_NOT_CURVES = ("epoch", "lr", "learning_rate")
_DPI = 100


def _save(fig: figure.Figure, path: str) -> str:
    return artifacts.write_with(
        path, lambda temporary: fig.savefig(temporary, format="png", dpi=_DPI, bbox_inches="tight")
    )


def confusion_matrix(
    path: str, matrix: Sequence[Sequence[int]], labels: Sequence[str], threshold: float
) -> str:
    """Counts with true labels as rows and predicted labels as columns, each cell annotated."""
    counts = np.asarray(matrix)
    fig = figure.Figure(figsize=(4.2, 3.6))
    axes = fig.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=axes)
    ticks = range(len(labels))
    axes.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix (n={int(counts.sum())}, threshold {threshold:.3f})",
    )
    middle = counts.max() / 2 if counts.size else 0
    for row, col in np.ndindex(counts.shape):
        colour = "white" if counts[row, col] > middle else "black"
        axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour)
    return _save(fig, path)


def roc_curve(
    path: str, curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]]
) -> str:
    """One ROC curve per model name: (false positive rates, true positive rates, AUC)."""
    fig = figure.Figure(figsize=(4.5, 4.5))
    axes = fig.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for name, (false_positive_rates, true_positive_rates, area) in curves.items():
        auc_text = "undefined" if area is None else f"{area:.3f}"
        axes.plot(false_positive_rates, true_positive_rates, label=f"{name} (AUC {auc_text})")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (sad called happy)",
        ylabel="true positive rate (happy found)",
        title="ROC curve",
    )
    axes.legend(loc="lower right")
    return _save(fig, path)


def training_curves(path: str, history: Mapping[str, Sequence[float | None]]) -> str:
    """One panel per metric of a Keras history, its `val_` twin beside it.

    Args:
        path: the PNG to write.
        history: column -> one value per epoch (artifacts.read_history; None: no value).

    Raises:
        ValueError: the history holds no metric to plot.
    """
    names = [
        name for name in history if name not in _NOT_CURVES and not name.startswith("val_")
    ] or [name for name in history if name.startswith("val_")]
    if not names:
        raise ValueError("the training history holds no metric to plot")
    epochs = history.get("epoch") or range(len(next(iter(history.values()))))
    epochs = [int(epoch) + 1 for epoch in epochs]
    fig = figure.Figure(figsize=(4.2 * len(names), 3.4))
    for index, name in enumerate(names, start=1):
        axes = fig.add_subplot(1, len(names), index)
        axes.plot(epochs, _values(history[name]), marker=".", label=name)
        if not name.startswith("val_") and f"val_{name}" in history:
            axes.plot(epochs, _values(history[f"val_{name}"]), marker=".", label=f"val_{name}")
        axes.set(xlabel="epoch", title=name)
        axes.grid(alpha=0.3)
        axes.legend()
    fig.suptitle("Training curves")
    return _save(fig, path)


def _values(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)
