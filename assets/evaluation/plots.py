"""Evaluation figures as PNG files: ROC, precision-recall, calibration, confusion matrix.

Figures are built on `matplotlib.figure.Figure` and rendered by the Agg canvas directly, never
through pyplot: no display is needed, no global backend is switched, and figures are not kept
in pyplot's registry (assets may run in threads of one process).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from clinfuse.assets.evaluation.metrics import (
    drop_unscored,
    expected_calibration_error,
    ranking_metrics,
)

Curves = dict[str, tuple[object, object]]
SIZE = (5.0, 5.0)
DPI = 120


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and y.min() != y.max()


def _label(name: str, value: float | None, metric: str) -> str:
    return f"{name} ({metric} {value:.3f})" if value is not None else f"{name} ({metric} n/a)"


def roc_plot(curves: Curves, path: str | Path) -> Path:
    """One ROC curve per model, e.g. {'fusion': (y, p_fusion), 'ehr': (y, p_ehr)}.

    A model whose scored rows hold one class only has no curve; it is named in the legend.
    """
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for name, (y, p) in curves.items():
        y_arr, p_arr = drop_unscored(y, p)
        if not _two_classes(y_arr):
            axes.plot([], [], label=f"{name} (one class: no curve)")
            continue
        fpr, tpr, _ = roc_curve(y_arr, p_arr)
        auroc, _ = ranking_metrics(y_arr, p_arr)
        axes.plot(fpr, tpr, label=_label(name, auroc, "AUROC"))
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def pr_plot(curves: Curves, path: str | Path) -> Path:
    """One precision-recall curve per model; the horizontal line is the first model's prevalence."""
    figure, axes = _figure()
    prevalence_drawn = False
    for name, (y, p) in curves.items():
        y_arr, p_arr = drop_unscored(y, p)
        if not _two_classes(y_arr):
            axes.plot([], [], label=f"{name} (one class: no curve)")
            continue
        if not prevalence_drawn:
            prevalence = float(y_arr.mean())
            axes.axhline(
                prevalence, linestyle=":", color="grey", label=f"prevalence {prevalence:.2f}"
            )
            prevalence_drawn = True
        precision, recall, _ = precision_recall_curve(y_arr, p_arr)
        _, auprc = ranking_metrics(y_arr, p_arr)
        axes.step(recall, precision, where="post", label=_label(name, auprc, "AUPRC"))
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1))
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower left", fontsize="small")
    return _save(figure, path)


def calibration_plot(y, p, path: str | Path, bins: int = 10) -> Path:
    """Reliability diagram on the same equal-width bins as the ECE, with bin sizes underneath."""
    y_arr, p_arr = drop_unscored(y, p)
    figure = Figure(figsize=(SIZE[0], SIZE[1] * 1.3), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    curve_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    curve_axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    index = np.clip((p_arr * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = counts > 0
    if used.any():
        mean_p = np.bincount(index, weights=p_arr, minlength=bins)[used] / counts[used]
        mean_y = np.bincount(index, weights=y_arr, minlength=bins)[used] / counts[used]
        ece = expected_calibration_error(y_arr, p_arr, bins)
        curve_axes.plot(mean_p, mean_y, marker="o", label=_label("model", ece, "ECE"))
    curve_axes.set(ylabel="observed frequency", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    curve_axes.legend(loc="upper left", fontsize="small")
    edges = np.linspace(0, 1, bins + 1)
    count_axes.bar(edges[:-1], counts, width=1 / bins, align="edge", edgecolor="white")
    count_axes.set(xlabel="predicted probability", ylabel="admissions")
    return _save(figure, path)


def confusion_matrix_plot(y, p, threshold: float, path: str | Path) -> Path:
    """2 x 2 counts at the chosen threshold (rows: truth, columns: prediction)."""
    y_arr, p_arr = drop_unscored(y, p)
    matrix = confusion_matrix(y_arr, (p_arr >= threshold).astype(int), labels=[0, 1])
    figure, axes = _figure()
    axes.imshow(matrix, cmap="Blues", vmin=0)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=14)
    ticks = ["negative", "positive"]
    axes.set_xticks([0, 1], ticks)
    axes.set_yticks([0, 1], ticks)
    axes.set(
        xlabel="predicted", ylabel="true", title=f"Confusion matrix (threshold {threshold:.3f})"
    )
    return _save(figure, path)
