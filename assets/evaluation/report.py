"""report.json, exactly as ../shared/cli-and-report.md lays it out, from the stored assets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from clinfuse.assets.ingest.counting import EHR_TABLES
from clinfuse.models.modalities import MODALITIES

METRIC_KEYS = ("auroc", "auprc", "accuracy", "recall", "f1", "brier", "ece")
PREDICTION_COLUMNS = ["hadm_id", "subject_id", "label", "p_fusion", *[f"p_{m}" for m in MODALITIES]]
INGEST_ASSETS = {"note": "notes", "dicom": "dicom_index", "audio": "recording_index"}


def _counts(tables: Path, asset: str) -> dict[str, int]:
    path = tables / f"{asset}.counts.json"
    if not path.exists():
        return {"seen": 0, "ingested": 0, "quarantined": 0}
    raw = json.loads(path.read_text())
    return {k: int(raw[k]) for k in ("seen", "ingested", "quarantined")}


def _inputs(tables: Path, quarantine: pd.DataFrame) -> dict[str, Any]:
    inputs: dict[str, Any] = {m: _counts(tables, a) for m, a in INGEST_ASSETS.items()}
    for modality in ("dicom", "audio"):
        inputs[modality]["decoded"] = _decoded(inputs[modality], quarantine, modality)
    inputs["ehr"] = {name: _counts(tables, name) for name in EHR_TABLES}
    return {k: inputs[k] for k in ("dicom", "audio", "ehr", "note")}


def _decoded(counts: dict[str, int], quarantine: pd.DataFrame, modality: str) -> int:
    """Files this run opened to decode. Every run still decodes every file it sees (incremental
    ingest is issue #14), less the manifest rows that never reached a file (missing, bad time):
    those are quarantined by their `TABLE_FILE:ROW` source."""
    rows = quarantine[quarantine["modality"] == modality]["source"].astype(str)
    manifest_rows = int(rows.str.contains(r"manifest\.csv:\d+$", regex=True).sum())
    return max(counts["seen"] - manifest_rows, 0)


def _clean(value: Any) -> Any:
    """JSON has no NaN: a metric that cannot be computed (one class only) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metrics(tables: Path) -> dict[str, dict[str, float]]:
    path = tables / "evaluation.json"
    if not path.exists():
        return {"fusion": {}, **{m: {} for m in MODALITIES}}
    evaluation = json.loads(path.read_text())
    return {
        model: {k: _clean(evaluation["metrics"].get(model, {}).get(k)) for k in METRIC_KEYS}
        if evaluation["metrics"].get(model)
        else {}
        for model in ("fusion", *MODALITIES)
    }


def _mlflow(tables: Path) -> dict[str, Any]:
    # `champion` holds the aliases after the promotion gate; `registered_model` those before.
    path = tables / "champion.json"
    if not path.exists():
        path = tables / "registered_model.json"
    empty = {"tracking_uri": "", "model_name": "", "version": "", "aliases": [], "run_id": ""}
    if not path.exists():
        return empty
    raw = json.loads(path.read_text())
    return {k: raw.get(k, v) for k, v in empty.items()}


def write_report(workdir: Path) -> dict[str, Any]:
    """Writes splits.parquet, predictions.parquet and report.json under workdir."""
    tables = workdir / "tables"
    cohort = pd.read_parquet(tables / "cohort.parquet")
    splits_path = workdir / "splits.parquet"
    cohort[["hadm_id", "subject_id", "split", "label"]].to_parquet(splits_path, index=False)
    predictions = pd.read_parquet(tables / "predictions.parquet")
    test = predictions[predictions["split"] == "test"][PREDICTION_COLUMNS]
    predictions_path = workdir / "predictions.parquet"
    test.to_parquet(predictions_path, index=False)
    quarantine = pd.read_parquet(tables / "quarantine.parquet")
    split_counts = cohort["split"].value_counts()
    report = {
        "inputs": _inputs(tables, quarantine),
        "quarantine": quarantine[["modality", "source", "reason"]].to_dict(orient="records"),
        "cohort": {
            "admissions": len(cohort),
            "positives": int(cohort["label"].sum()),
            **{s: int(split_counts.get(s, 0)) for s in ("train", "validation", "test")},
        },
        "splits_path": str(splits_path),
        "predictions_path": str(predictions_path),
        "metrics": _metrics(tables),
        "mlflow": _mlflow(tables),
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    return report
