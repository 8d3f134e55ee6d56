"""benchmarks/quality.py's pure scoring on small synthetic arrays: no pipeline run, seconds."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.assets.evaluation.metrics import expected_calibration_error

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _load():
    spec = importlib.util.spec_from_file_location("quality_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


quality = _load()


def _test_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Test admissions whose labels are drawn from p_oracle; text has no signal."""
    rng = np.random.default_rng(seed)
    p_oracle = rng.uniform(0.02, 0.98, n)
    label = (rng.random(n) < p_oracle).astype(int)

    def noise(scale: float) -> np.ndarray:
        return np.clip(p_oracle + rng.normal(0, scale, n), 0, 1)

    frame = pd.DataFrame(
        {"hadm_id": np.arange(n), "label": label, "p_fusion": p_oracle, "p_oracle": p_oracle}
    )
    for m, scale in {"ehr": 0.1, "image": 0.2, "audio": 0.3}.items():
        frame[f"p_{m}"] = noise(scale)
        frame[f"p_oracle_{m}"] = noise(scale / 2)
    frame["p_text"] = rng.random(n)
    frame["p_oracle_text"] = 0.3  # constant: the modality has no signal in this task
    return frame


def test_auroc_matches_sklearn_and_handles_edge_cases():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 300), rng.random(300).round(1)  # with ties
    assert quality.auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert math.isnan(quality.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert quality.auroc([0, 1, 1], [0.1, np.nan, 0.9]) == 1.0


def test_calibrated_eces_equal_expected_calibration_error():
    p = np.random.default_rng(2).random(250)
    eces = quality.calibrated_eces(p, draws=5, seed=7)
    labels = np.random.default_rng(7).random((5, p.size)) < p
    expected = [expected_calibration_error(y.astype(int), p) for y in labels]
    np.testing.assert_allclose(eces, expected)


def test_bound_contains_a_calibrated_models_ece_99_percent_of_the_time():
    rng = np.random.default_rng(3)
    p = rng.beta(2, 5, 500)
    bound = quality.ece_bound(p, draws=1000, seed=0)
    trials = 2000
    labels = rng.random((trials, p.size)) < p
    eces = np.array([expected_calibration_error(y.astype(int), p) for y in labels])
    assert 0.97 <= (eces <= bound).mean() <= 1.0
    # A model that is off by 0.15 everywhere is outside it.
    shifted = np.clip(p + 0.15, 0, 1)
    assert expected_calibration_error((rng.random(p.size) < p).astype(int), shifted) > bound


def test_score_run_of_the_oracle_itself():
    frame = _test_frame()
    row = quality.score_run(frame, draws=200)
    assert row["fusion_over_oracle"] == 1.0
    assert row["auroc_fusion"] == row["auroc_oracle"]
    assert row["text_over_ceiling"] is None  # ceiling at 0.5: n/a, the raw AUROC is kept
    assert 0.4 < row["auroc_text"] < 0.6
    assert row["ehr_over_ceiling"] == pytest.approx(row["auroc_ehr"] / row["ceiling_ehr"])
    assert row["best_single"] == "ehr"
    assert row["fusion_minus_best"] > 0
    assert row["ece"] == expected_calibration_error(frame["label"], frame["p_fusion"])
    assert row["ece_within_bound"] == (row["ece"] <= row["ece_bound"])


def test_join_truth_keeps_test_rows_and_the_pipeline_label():
    truth = _test_frame()[["hadm_id", "label", "p_oracle", "p_oracle_ehr"]]
    predictions = pd.DataFrame(
        {"hadm_id": [3, 5, 8], "split": ["test", "validation", "test"], "label": [1, 0, 0]}
    )
    joined = quality.join_truth(predictions, truth)
    assert joined["hadm_id"].tolist() == [3, 8]
    assert {"label", "label_truth", "p_oracle", "p_oracle_ehr"} <= set(joined.columns)
    with pytest.raises(ValueError, match="not in the truth"):
        quality.join_truth(pd.DataFrame({"hadm_id": [10_000], "label": [1]}), truth)


def _row(task: str, admissions: int, seed: int, ratio: float, **extra) -> dict:
    base = {
        "task": task,
        "admissions": admissions,
        "seed": seed,
        "fusion_over_oracle": ratio,
        "fusion_minus_best": 0.02,
        "ece": 0.03,
        "ece_bound": 0.04,
        "ece_within_bound": True,
        **{f"{m}_over_ceiling": 0.9 for m in quality.MODALITIES},
    }
    return {**base, **extra}


def test_summary_mean_and_min_over_tasks_of_the_seed_means():
    rows = [
        _row("a", 1500, 0, 0.96),
        _row("a", 1500, 1, 0.94),  # a: 0.95
        _row("b", 1500, 0, 0.89, text_over_ceiling=None),  # b: 0.89
        _row("b", 1500, 1, 0.89, ece=0.06, ece_within_bound=False),
        _row("a", 5000, 0, 0.97, ece=0.06),
    ]
    by_size = {s["admissions"]: s for s in quality.summarize(rows)}
    small = by_size[1500]
    assert small["mean_fusion_over_oracle"] == pytest.approx(0.92)
    assert small["min_fusion_over_oracle"] == pytest.approx(0.89)
    assert small["min_task"] == "b"
    assert set(small["misses"]) == {"b", "(mean over tasks)"}
    assert any("bound" in why for why in small["misses"]["b"])
    assert any("ECE 0.060 > 0.05" in why for why in by_size[5000]["misses"]["a"])


def test_markdown_row_shows_na_with_the_raw_auroc():
    row = quality.score_run(_test_frame(), draws=100)
    row.update(task="t", admissions=400, seed=0, train_seconds=1.0, pipeline_seconds=2.0)
    row.update(peak_rss_mib=3.0)
    line = quality.markdown_table([row]).splitlines()[-1]
    assert f"n/a ({row['auroc_text']:.3f})" in line
    assert line.count("|") == len(quality.COLUMNS) + 1


@dataclass(frozen=True)
class _Target:
    name: str
    icd10_prefixes: tuple[str, ...]
    icd9_prefixes: tuple[str, ...]


def test_as_target_accepts_dataclass_mapping_and_object():
    expected = {"name": "sepsis", "icd10_prefixes": ["A41"], "icd9_prefixes": ["038"]}
    assert quality.as_target(_Target("sepsis", ("A41",), ("038",))) == expected
    assert quality.as_target(dict(expected)) == expected

    class Plain:
        name, icd10_prefixes, icd9_prefixes = "sepsis", ("A41",), ("038",)

    assert quality.as_target(Plain()) == expected


def test_pipeline_config_carries_the_tasks_target_and_seed():
    tasks = pytest.importorskip("clinfuse.synthetic.tasks")
    name = next(iter(tasks.TASKS))
    config = quality.pipeline_config(name, seed=2)
    assert config["seed"] == 2
    assert config["target"] == quality.as_target(tasks.get_task(name).target)
    assert quality.task_names(["all"]) == list(tasks.TASKS)
