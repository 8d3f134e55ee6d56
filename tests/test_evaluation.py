"""Metrics, threshold choice, bootstrap, subgroups, plots and the model card on small inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from clinfuse.assets.evaluation.assets import calibration_table
from clinfuse.assets.evaluation.metrics import (
    METRIC_KEYS,
    SUBGROUP_COLUMNS,
    _patient_members,
    _resample_rows,
    age_band,
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    expected_calibration_error,
    ranking_metrics,
    subgroup_metrics,
)
from clinfuse.assets.evaluation.model_card import model_card
from clinfuse.assets.evaluation.plots import (
    calibration_plot,
    confusion_matrix_plot,
    pr_plot,
    roc_plot,
)
from clinfuse.models.calibration import calibration_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _noisy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)


# --- ECE -------------------------------------------------------------------------------------


def test_ece_by_hand():
    y, p = [0, 1, 1, 1], [0.2, 0.4, 0.7, 1.0]
    # 2 bins: [0, .5) holds p .2 .4 (mean .3, labels .5) and [.5, 1] holds .7 1.0 (mean .85,
    # labels 1; p == 1 goes to the last bin): (2 * .2 + 2 * .15) / 4
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.175)
    # 10 bins: each alone: (.2 + .6 + .3 + 0) / 4
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.275)


def test_ece_is_zero_when_calibrated_and_nan_when_empty():
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error([], []))


# --- threshold -------------------------------------------------------------------------------


def test_threshold_maximises_f1():
    y = [1, 1, 0, 0, 1, 0]
    p = [0.9, 0.8, 0.7, 0.4, 0.35, 0.1]
    # F1 at 0.9 .. 0.1: 2/4, 4/5, 4/6, 4/7, 6/8, 6/9 -> 0.8 wins
    assert choose_threshold(y, p) == 0.8


def test_threshold_ties_go_to_the_lower_threshold():
    # F1 is 2/3 at both 0.9 (tp 1, fn 1) and 0.2 (tp 2, fp 2): the lower one wins
    assert choose_threshold([1, 0, 0, 1], [0.9, 0.6, 0.5, 0.2]) == 0.2


def test_threshold_defaults_to_half_for_one_class_or_nothing():
    assert choose_threshold([0, 0, 0], [0.1, 0.7, 0.2]) == 0.5
    assert choose_threshold([], []) == 0.5
    assert choose_threshold([1, 0], [np.nan, 0.3]) == 0.5  # one class left after NaN rows


def test_threshold_brute_force_agrees():
    y, p = _noisy(60, seed=3)
    p = np.round(p, 1)  # many ties
    best = max(
        sorted(set(p)), key=lambda t: (binary_metrics(y, p, t)["f1"], -t)
    )  # highest F1, then lowest threshold
    assert choose_threshold(y, p) == best


# --- point metrics ---------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], threshold=0.5)
    # predictions 0 1 0 1: one of each cell
    for key in ("accuracy", "recall", "precision", "specificity", "f1"):
        assert m[key] == pytest.approx(0.5)
    assert m["auroc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    assert (m["n"], m["positives"]) == (4, 2)


def test_threshold_is_inclusive():
    assert binary_metrics([1, 0], [0.5, 0.2], threshold=0.5)["recall"] == 1.0


def test_ranking_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        p = np.round(rng.random(n), 1)  # ties included
        auroc, auprc = ranking_metrics(y, p)
        assert auroc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert auprc == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_single_class_and_missing_rows_are_safe():
    m = binary_metrics([0, 0, 0], [0.2, 0.9, np.nan], threshold=0.5)
    assert m["n"] == 2  # the NaN row (model not trained) is not scored
    assert m["auroc"] is None and m["auprc"] is None and m["recall"] is None
    assert m["specificity"] == pytest.approx(0.5)
    empty = binary_metrics([1, 0], [np.nan, np.nan], threshold=0.5)
    assert empty["n"] == 0 and all(empty[k] is None for k in METRIC_KEYS)


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_contains_estimate_and_is_reproducible():
    y, p = _noisy(200)
    point = binary_metrics(y, p, 0.5)
    first = bootstrap_intervals(y, p, 0.5, n_boot=200, seed=7)
    assert first == bootstrap_intervals(y, p, 0.5, n_boot=200, seed=7)
    assert first != bootstrap_intervals(y, p, 0.5, n_boot=200, seed=8)
    assert set(first) == set(METRIC_KEYS)
    for key, (low, high) in first.items():
        assert low <= point[key] <= high, key


def test_patient_bootstrap_keeps_patients_whole():
    groups = np.array([5, 5, 9, 7, 7, 7])
    members = _patient_members(groups)
    rows = _resample_rows(np.random.default_rng(0), groups.size, groups, members)
    picked = pd.Series(groups[rows]).value_counts()
    sizes = pd.Series(groups).value_counts()
    assert all(count % sizes[group] == 0 for group, count in picked.items())


def test_patient_bootstrap_is_wider_when_admissions_correlate():
    # 30 patients with 8 identical admissions each: 30 independent units, not 240
    y, p = _noisy(30, seed=2)
    y, p, groups = np.repeat(y, 8), np.repeat(p, 8), np.repeat(np.arange(30), 8)
    by_admission = bootstrap_intervals(y, p, 0.5, n_boot=200)["auroc"]
    by_patient = bootstrap_intervals(y, p, 0.5, n_boot=200, groups=groups)["auroc"]
    assert by_patient[1] - by_patient[0] > 1.5 * (by_admission[1] - by_admission[0])


def test_bootstrap_undefined_metric_is_none():
    intervals = bootstrap_intervals([0, 0, 0], [0.1, 0.5, 0.9], 0.5, n_boot=20)
    assert intervals["auroc"] == (None, None)
    assert intervals["accuracy"][0] is not None


# --- subgroups -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [(17, "<18"), (18, "18-39"), (39.9, "18-39"), (40, "40-64"), (64, "40-64"), (65, "65-79")]
    + [(79, "65-79"), (80, "80+"), (91, "80+"), (None, "unknown"), (np.nan, "unknown")],
)
def test_age_band(age, band):
    assert age_band(age) == band


def test_subgroup_table():
    y, p = _noisy(40)
    frame = pd.DataFrame(
        {
            "sex": pd.array(["F", "M"] * 19 + [None, "F"], dtype="string"),
            "age_band": [age_band(a) for a in np.linspace(20, 95, 40)],
        },
        index=range(100, 140),  # not aligned by index: by position
    )
    table = subgroup_metrics(y, p, 0.5, frame)
    assert list(table.columns) == SUBGROUP_COLUMNS
    assert list(table["group"]) == ["F", "M", "unknown", "18-39", "40-64", "65-79", "80+"]
    for attribute in ("sex", "age_band"):
        assert table.loc[table["attribute"] == attribute, "n"].sum() == 40
    women = binary_metrics(np.r_[y[:38:2], y[39]], np.r_[p[:38:2], p[39]], 0.5)
    assert table.iloc[0]["auroc"] == pytest.approx(women["auroc"])


# --- plots and card --------------------------------------------------------------------------


def test_plots_write_png(tmp_path):
    y, p = _noisy(80)
    curves = {"fusion": (y, p), "ehr": (y, 1 - p), "audio": (y, np.full(80, np.nan))}
    paths = [
        roc_plot(curves, tmp_path / "roc.png"),
        pr_plot(curves, tmp_path / "pr.png"),
        calibration_plot(y, p, tmp_path / "calibration.png"),
        confusion_matrix_plot(y, p, 0.4, tmp_path / "deep" / "confusion.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2_000, path


def test_model_card_markdown():
    y, p = _noisy(60)
    metrics = {"fusion": binary_metrics(y, p, 0.5), "audio": binary_metrics(y, y * 0, 0.5)}
    frame = pd.DataFrame({"sex": ["F", "M"] * 30, "age_band": ["40-64"] * 60})
    card = model_card(
        model_name="clinfuse-pneumonia",
        version="3",
        target="pneumonia",
        cohort_summary={"admissions": 400, "positives": 90, "test": 60},
        metrics=metrics,
        intervals=bootstrap_intervals(y, p, 0.5, n_boot=50),
        ablation={"fusion": {"auroc": 0.8}, "without image": {"auroc": 0.75}},
        subgroups=subgroup_metrics(y, p, 0.5, frame),
        limits=["Synthetic data only."],
    )
    assert card.startswith("# Model card: clinfuse-pneumonia v3")
    for heading in ("## Performance", "95% intervals", "## Ablation", "## Subgroups"):
        assert heading in card
    assert "| audio |" in card and "n/a" in card  # audio never predicts positive: precision n/a
    assert "- Synthetic data only." in card and "| without image | 0.750 |" in card


# --- calibration line and the card's calibration section ------------------------------------


def _calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from p itself: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, n)))
    return (rng.random(n) < p).astype(int), p


def test_calibration_line_of_calibrated_and_over_confident_probabilities():
    y, p = _calibrated(20_000)
    slope, intercept = calibration_line(y, p)
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)
    over_confident = 1 / (1 + np.exp(-2 * np.log(p / (1 - p))))  # logit doubled
    slope, intercept = calibration_line(y, over_confident)
    assert slope == pytest.approx(0.5, abs=0.03) and intercept == pytest.approx(0.0, abs=0.05)
    assert all(np.isnan(calibration_line([1, 1, 1], [0.2, 0.5, 0.9])))  # one class


def _predictions_frame(n: int = 400) -> pd.DataFrame:
    """The predictions asset's columns that the calibration needs: audio was not trained."""
    y, p = _calibrated(n, seed=4)
    logit = np.log(p / (1 - p))
    return pd.DataFrame(
        {
            "split": ["validation", "test"] * (n // 2),
            "label": y,
            "p_fusion": p,
            "p_ehr": 1 / (1 + np.exp(-2 * logit)),
            "p_text": 1 / (1 + np.exp(-0.5 * logit)),
            "p_image": p,
            "p_audio": np.full(n, np.nan),
        }
    )


def test_calibration_table_is_on_the_test_split():
    frame = _predictions_frame()
    table = calibration_table(frame)
    assert list(table) == ["fusion", "ehr", "text", "image"]  # audio: no predictions
    test = frame[frame["split"] == "test"]
    slope, intercept = calibration_line(test["label"], test["p_fusion"])
    assert table["fusion"] == {
        "ece": pytest.approx(expected_calibration_error(test["label"], test["p_fusion"])),
        "slope": pytest.approx(slope),
        "intercept": pytest.approx(intercept),
    }
    assert table["ehr"]["slope"] < table["fusion"]["slope"] < table["text"]["slope"]
    one_class = frame.assign(label=1)
    assert calibration_table(one_class)["fusion"]["slope"] is None  # JSON null, card n/a


def test_model_card_calibration_section():
    frame = _predictions_frame()
    calibration = calibration_table(frame)
    test = frame[frame["split"] == "test"]
    y, p = test["label"], test["p_fusion"]
    card = model_card(
        model_name="clinfuse-pneumonia",
        version="3",
        target="pneumonia",
        cohort_summary={"admissions": 400, "positives": 90, "test": 200},
        metrics={"fusion": binary_metrics(y, p, 0.5)},
        intervals=bootstrap_intervals(y, p, 0.5, n_boot=20),
        ablation={"fusion": {"auroc": 0.8}},
        subgroups=pd.DataFrame(),
        limits=["Synthetic data only."],
        calibration=calibration,
        reliability_diagram="calibration.png",
    )
    section = card.split("## Calibration\n\n", 1)[1].split("\n## ", 1)[0]
    assert "| model | ECE | slope | intercept |" in section
    for model, row in calibration.items():
        cells = " | ".join(f"{row[k]:.3f}" for k in ("ece", "slope", "intercept"))
        assert f"| {model} | {cells} |" in section
    assert "| audio |" not in section
    assert "![Reliability diagram](calibration.png)" in section
    assert card.index("## Calibration") < card.index("## Ablation")
