"""report.json, exactly as ../shared/cli-and-report.md lays it out, from the run's asset values.

Plain code: `build_report` takes the values the `run_report` asset is given (accounting,
quarantine, cohort, predictions, evaluation, the registry's answer) and never reads storage.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from clinfuse.models.modalities import MODALITIES

METRIC_KEYS = ("auroc", "auprc", "accuracy", "recall", "f1", "brier", "ece")
PREDICTION_COLUMNS = ["hadm_id", "subject_id", "label", "p_fusion", *[f"p_{m}" for m in MODALITIES]]
REGISTRY_KEYS = {"tracking_uri": "", "model_name": "", "version": "", "aliases": [], "run_id": ""}
COUNT_KEYS = ("seen", "ingested", "quarantined")


def build_report(
    input_accounting: pd.DataFrame,
    quarantine: pd.DataFrame,
    cohort: pd.DataFrame,
    evaluation: dict,
    champion: dict,
    splits_path: str,
    predictions_path: str,
) -> dict[str, Any]:
    split_counts = cohort["split"].value_counts()
    return {
        "inputs": _inputs(input_accounting),
        "quarantine": quarantine[["modality", "source", "reason"]].to_dict(orient="records"),
        "cohort": {
            "admissions": len(cohort),
            "positives": int(cohort["label"].sum()),
            **{s: int(split_counts.get(s, 0)) for s in ("train", "validation", "test")},
        },
        "splits_path": splits_path,
        "predictions_path": predictions_path,
        "metrics": _metrics(evaluation),
        "mlflow": {k: champion.get(k, v) for k, v in REGISTRY_KEYS.items()},
    }


def reported_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """The rows of predictions.parquet: the test split, the contract's columns."""
    return predictions[predictions["split"] == "test"][PREDICTION_COLUMNS]


def _inputs(accounting: pd.DataFrame) -> dict[str, Any]:
    by_source = {
        row["source"]: {k: int(row[k]) for k in COUNT_KEYS} for row in accounting.to_dict("records")
    }
    empty = dict.fromkeys(COUNT_KEYS, 0)
    inputs: dict[str, Any] = {m: dict(by_source.get(m, empty)) for m in ("dicom", "audio")}
    for modality in ("dicom", "audio"):
        inputs[modality]["decoded"] = _decoded(accounting, modality)
    inputs["ehr"] = {
        s.removeprefix("ehr/"): counts for s, counts in by_source.items() if s.startswith("ehr/")
    }
    inputs["note"] = dict(by_source.get("note", empty))
    return inputs


def _decoded(accounting: pd.DataFrame, modality: str) -> int:
    """Files this run decoded: those of the deliveries decoded since the index was last built
    (a rerun with nothing new: 0; assets/ingest/progress.py `newly_decoded`)."""
    rows = accounting[accounting["source"] == modality]
    if rows.empty or pd.isna(rows["decoded"].iloc[0]):
        return 0
    return int(rows["decoded"].iloc[0])


def _clean(value: Any) -> Any:
    """JSON has no NaN: a metric that cannot be computed (one class only) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metrics(evaluation: dict) -> dict[str, dict[str, float]]:
    found = evaluation.get("metrics", {})
    return {
        model: {k: _clean(found[model].get(k)) for k in METRIC_KEYS} if found.get(model) else {}
        for model in ("fusion", *MODALITIES)
    }
