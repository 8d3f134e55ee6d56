"""Binary-classification metrics, threshold choice, bootstrap intervals and subgroup tables.

Plain numpy / scipy, no Dagster. Every function takes labels `y` (0/1) and
probabilities `p` aligned by position. Rows whose probability is missing (NaN: a model that was
not trained) are dropped first. A metric that a sample cannot define (AUROC with one class,
recall without positives) is None, never NaN, so that results go into JSON as null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

METRIC_KEYS = (
    "auroc",
    "auprc",
    "accuracy",
    "recall",
    "f1",
    "brier",
    "ece",
    "precision",
    "specificity",
)
AGE_BANDS = ("18-39", "40-64", "65-79", "80+")
DEFAULT_THRESHOLD = 0.5

Metric = float | None


def drop_unscored(
    y: Sequence | np.ndarray, p: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int, probabilities as float) without the rows whose probability is missing."""
    y_arr, p_arr, keep = _scored(y, p)
    return y_arr[keep].astype(int), p_arr[keep]


def _scored(y, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y and p as float arrays, and the mask of rows that have both."""
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y has {y_arr.size} rows but p has {p_arr.size}")
    return y_arr, p_arr, np.isfinite(p_arr) & np.isfinite(y_arr)


def _ratio(numerator: float, denominator: float) -> Metric:
    return float(numerator / denominator) if denominator > 0 else None


def _cut_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tp, fp) at every distinct probability, highest threshold first.

    tp[i] and fp[i] count the rows with p >= thresholds[i]; the shared basis of threshold
    choice and average precision.
    """
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    # The last row of each run of equal probabilities is where that probability cuts.
    last_of_run = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = np.cumsum(1 - y_sorted)[last_of_run]
    return p_sorted[last_of_run], tp, fp


# --- threshold -------------------------------------------------------------------------------


def choose_threshold(y_val, p_val) -> float:
    """The threshold that maximises F1 on the validation split (predict positive when p >= t).

    Candidates are the distinct validation probabilities, so the chosen threshold is one of
    them. Ties go to the lowest threshold: a missed pneumonia costs more than a false alarm, so
    among equally good cut-offs the one with the higher recall wins. A validation split with one
    class (or none) cannot rank anything and gets 0.5.
    """
    y, p = drop_unscored(y_val, p_val)
    if y.size == 0 or y.min() == y.max():
        return DEFAULT_THRESHOLD
    thresholds, tp, fp = _cut_points(y, p)
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    # Thresholds descend, so the last maximum is the lowest threshold among ties.
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


# --- point metrics ---------------------------------------------------------------------------


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE: equal-width probability bins on [0, 1], |mean label - mean p| weighted by bin size.

    Bin i holds i/bins <= p < (i+1)/bins; p == 1 falls into the last bin. NaN when empty.
    """
    y_arr, p_arr = drop_unscored(y, p)
    if y_arr.size == 0:
        return float("nan")
    index = np.clip((p_arr * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    label_sums = np.bincount(index, weights=y_arr, minlength=bins)
    prob_sums = np.bincount(index, weights=p_arr, minlength=bins)
    used = counts > 0
    gaps = np.abs(label_sums[used] - prob_sums[used])  # = n_b * |mean y_b - mean p_b|
    return float(gaps.sum() / y_arr.size)


def ranking_metrics(y, p) -> tuple[Metric, Metric]:
    """(AUROC, average precision); None with one class.

    Written out in numpy rather than calling scikit-learn because the bootstrap calls this
    hundreds of times and sklearn's input validation dominated; the tests check both against
    sklearn.metrics.roc_auc_score / average_precision_score.
    """
    y, p = drop_unscored(y, p)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None, None
    # AUROC = Mann-Whitney U / (P * N), tied probabilities counting one half (average ranks).
    ranks = rankdata(p)
    auroc = (ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    # Average precision as sklearn defines it: sum over cut points of delta-recall x precision.
    _, tp, fp = _cut_points(y, p)
    recall_steps = np.diff(tp, prepend=0) / positives
    average_precision = np.sum(recall_steps * tp / (tp + fp))
    return float(auroc), float(average_precision)


def binary_metrics(y, p, threshold: float) -> dict[str, Metric | int]:
    """auroc, auprc, accuracy, recall, f1, brier, ece, precision, specificity, n, positives.

    Predicted positive when p >= threshold. Undefined metrics are None: auroc/auprc with one
    class, recall without positives, specificity without negatives, precision with no predicted
    positive, f1 with neither positives nor predicted positives.
    """
    y_arr, p_arr = drop_unscored(y, p)
    n, positives = int(y_arr.size), int(y_arr.sum())
    predicted = p_arr >= threshold
    tp = int(np.sum(predicted & (y_arr == 1)))
    fp = int(np.sum(predicted & (y_arr == 0)))
    fn, tn = positives - tp, n - positives - fp
    auroc, auprc = ranking_metrics(y_arr, p_arr)
    return {
        "n": n,
        "positives": positives,
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": _ratio(tp + tn, n),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": float(np.mean((p_arr - y_arr) ** 2)) if n else None,
        "ece": expected_calibration_error(y_arr, p_arr) if n else None,
        "precision": _ratio(tp, tp + fp),
        "specificity": _ratio(tn, tn + fp),
    }


# --- bootstrap -------------------------------------------------------------------------------


def _resample_rows(
    rng: np.random.Generator, n: int, groups: np.ndarray | None, members: list[np.ndarray]
) -> np.ndarray:
    """Row indices of one bootstrap sample: admissions, or whole patients (cluster bootstrap)."""
    if groups is None:
        return rng.integers(0, n, size=n)
    picked = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[i] for i in picked])


def bootstrap_intervals(
    y, p, threshold: float, n_boot: int = 500, seed: int = 0, groups=None
) -> dict[str, tuple[Metric, Metric]]:
    """95% percentile intervals of every metric in METRIC_KEYS, threshold held fixed.

    With `groups` (pass subject_id: that is what the evaluation does) whole patients are
    resampled, because admissions of one patient are correlated and resampling them one by one
    gives intervals that are too narrow. Without it, admissions are resampled. Resamples where a
    metric is undefined (one class drawn) are skipped for that metric; a metric undefined in
    every resample gets (None, None).
    """
    y_all, p_all, keep = _scored(y, p)
    y_arr, p_arr = y_all[keep].astype(int), p_all[keep]
    group_arr = None if groups is None else np.asarray(groups).ravel()[keep]
    members = _patient_members(group_arr) if group_arr is not None else []
    samples: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    rng = np.random.default_rng(seed)
    if y_arr.size:
        for _ in range(n_boot):
            rows = _resample_rows(rng, y_arr.size, group_arr, members)
            values = binary_metrics(y_arr[rows], p_arr[rows], threshold)
            for key in METRIC_KEYS:
                if values[key] is not None and np.isfinite(values[key]):
                    samples[key].append(values[key])
    return {key: _percentile_interval(samples[key]) for key in METRIC_KEYS}


def _patient_members(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct group (patient)."""
    codes, _ = pd.factorize(groups, use_na_sentinel=False)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def _percentile_interval(values: list[float]) -> tuple[Metric, Metric]:
    if not values:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# --- subgroups -------------------------------------------------------------------------------


def age_band(age) -> str:
    """'18-39', '40-64', '65-79', '80+'; '<18' and 'unknown' outside the adult cohort."""
    if age is None or pd.isna(age):
        return "unknown"
    if age < 18:
        return "<18"
    if age < 40:
        return "18-39"
    if age < 65:
        return "40-64"
    if age < 80:
        return "65-79"
    return "80+"


SUBGROUP_COLUMNS = [
    "attribute",
    "group",
    "n",
    "positives",
    "auroc",
    "auprc",
    "recall",
    "specificity",
    "precision",
    "f1",
    "brier",
    "ece",
]


def _group_order(attribute: str, values: pd.Series) -> list:
    present = list(pd.unique(values))
    if attribute == "age_band":
        known = [band for band in ("<18", *AGE_BANDS, "unknown") if band in present]
        return known + sorted(v for v in present if v not in known)
    return sorted(present, key=lambda v: (v == "unknown", str(v)))


def subgroup_metrics(
    y, p, threshold: float, frame: pd.DataFrame, by: Sequence[str] = ("sex", "age_band")
) -> pd.DataFrame:
    """One row per (attribute, group), e.g. ('sex', 'F'), ('age_band', '65-79').

    `frame` is aligned with y and p by position and holds the columns named in `by`. Small
    groups are kept, not hidden: n and positives travel with every row so a reader can tell a
    meaningful AUROC from noise.
    """
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if len(frame) != y_arr.size:
        raise ValueError(f"frame has {len(frame)} rows but y has {y_arr.size}")
    rows = []
    for attribute in by:
        values = frame[attribute].reset_index(drop=True).astype(object)
        values = values.where(values.notna(), "unknown")  # every row lands in one group
        for group in _group_order(attribute, values):
            mask = (values == group).to_numpy(dtype=bool)
            scored = binary_metrics(y_arr[mask], p_arr[mask], threshold)
            rows.append({"attribute": attribute, "group": str(group), **scored})
    return pd.DataFrame(rows, columns=SUBGROUP_COLUMNS)
