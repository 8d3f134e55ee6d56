"""Which modalities an admission has inside its prediction window, and which item to use."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clinfuse.assets.cohort.window import (
    allowed_notes,
    in_window,
    read_window_labs,
    window_lab_admissions,
)
from clinfuse.models.modalities import MODALITIES


def latest_in_window(
    index: pd.DataFrame, cohort: pd.DataFrame, time_column: str, window_hours: float
) -> pd.DataFrame:
    """The last image or recording of each admission charted inside its window.

    One item per admission keeps the encoders simple; the latest is the one closest to the
    prediction time. index needs hadm_id, time_column, shard, slot.
    """
    if index.empty:
        return pd.DataFrame(columns=["hadm_id", "shard", "slot"])
    inside = in_window(index, cohort, time_column, window_hours)
    inside = inside.sort_values([time_column, "path"]).groupby("hadm_id").tail(1)
    return inside[["hadm_id", "shard", "slot"]].reset_index(drop=True)


def modality_availability(
    cohort: pd.DataFrame,
    labevents: Path | pd.DataFrame,
    notes: pd.DataFrame | Path,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    window_hours: float,
) -> pd.DataFrame:
    """has_ehr, has_text, has_image, has_audio per cohort row (aligned to cohort's index)."""
    ids = cohort["hadm_id"].astype("int64")
    present = {
        "ehr": _with_window_labs(labevents, cohort, window_hours),
        "text": set(allowed_notes(notes, cohort, window_hours).index.astype("int64")),
        "image": set(
            latest_in_window(dicom_index, cohort, "study_datetime", window_hours)["hadm_id"]
        ),
        "audio": set(
            latest_in_window(recording_index, cohort, "recorded_at", window_hours)["hadm_id"]
        ),
    }
    return pd.DataFrame(
        {f"has_{m}": ids.isin({int(h) for h in present[m]}) for m in MODALITIES},
        index=cohort.index,
    )


def _with_window_labs(
    labevents: Path | pd.DataFrame, cohort: pd.DataFrame, window_hours: float
) -> set[int]:
    """Admissions with a lab row in their window; for a Parquet path counted in DuckDB, so the
    window's rows (GBs at MIMIC scale) are never held here."""
    if isinstance(labevents, pd.DataFrame):
        labs = read_window_labs(labevents, cohort, window_hours)
        return set(labs["hadm_id"].dropna().astype("int64"))
    return window_lab_admissions(labevents, cohort, window_hours)
