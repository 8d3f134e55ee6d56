"""Dagster asset checks that run the GX Core expectation suites of expectations.py.

Blocking checks stop the run before training on something meaningless; warning checks flag what
a person should look at. Results appear in the UI as check metadata.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinfuse.assets.checks import expectations
from clinfuse.assets.checks.results import outcome_result
from clinfuse.assets.cohort.window import NOTE_BATCH_ROWS, allowed_note_rows
from clinfuse.assets.resources import PipelineSettings

LAB_SAMPLE_ROWS = 500_000  # labevents is checked on its first rows: MIMIC's is tens of GB


@dg.asset_check(asset="patients", blocking=True)
def patients_are_well_formed(patients: pd.DataFrame) -> dg.AssetCheckResult:
    """Blocking: patients has its required columns and unique, non-null subject_ids (GX)."""
    return outcome_result(expectations.validate_table("patients", patients))


@dg.asset_check(asset="admissions", blocking=True)
def admissions_are_well_formed(admissions: pd.DataFrame) -> dg.AssetCheckResult:
    """Blocking: admissions exist, with ids, admit and discharge times in order (GX)."""
    return outcome_result(expectations.validate_table("admissions", admissions))


@dg.asset_check(asset="diagnoses_icd", blocking=True)
def diagnoses_are_well_formed(diagnoses_icd: Path) -> dg.AssetCheckResult:
    """Blocking: diagnoses have ids, codes and an ICD version (GX), every row, batch by batch."""
    outcome = expectations.validate_table_batches("diagnoses_icd", _batches(diagnoses_icd))
    return outcome_result(outcome)


def _batches(
    table: Path, columns: list[str] | None = None, rows: int = 500_000
) -> Iterator[pd.DataFrame]:
    """A Parquet table (those columns) as DataFrames of up to `rows` rows; an empty table as one
    empty frame."""
    parquet = pq.ParquetFile(table)
    schema = parquet.schema_arrow
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns], schema.metadata)
    if parquet.metadata.num_rows == 0:
        yield schema.empty_table().to_pandas()
        return
    for batch in parquet.iter_batches(batch_size=rows, columns=columns):
        yield pa.Table.from_batches([batch], schema=schema).to_pandas()


@dg.asset_check(asset="notes", blocking=True)
def notes_are_well_formed(notes: Path) -> dg.AssetCheckResult:
    """Blocking: notes have ids, a type and a time (GX), and every note a text.

    Every row is checked, but the texts (most of the table's bytes) are read one batch at a
    time and kept only as "present or not", which is all the not-null expectation looks at.
    """
    return outcome_result(expectations.validate_table("notes", _notes_without_text(notes)))


def _notes_without_text(notes: Path) -> pd.DataFrame:
    parquet = pq.ParquetFile(notes)
    others = [name for name in parquet.schema_arrow.names if name != "text"]
    frame = parquet.read(columns=others).to_pandas()
    if "text" in parquet.schema_arrow.names:
        present = [
            pc.is_valid(batch.column("text")).to_numpy(zero_copy_only=False)
            for batch in parquet.iter_batches(batch_size=NOTE_BATCH_ROWS, columns=["text"])
        ]
        has_text = np.concatenate(present) if present else np.zeros(0, dtype=bool)
        frame["text"] = pd.Series(np.where(has_text, "", None), dtype="string")
    return frame


def _lab_sample(labevents: Path) -> pd.DataFrame:
    parquet = pq.ParquetFile(labevents)
    frames, rows = [], 0
    for group in range(parquet.num_row_groups):
        frames.append(parquet.read_row_group(group).to_pandas())
        rows += len(frames[-1])
        if rows >= LAB_SAMPLE_ROWS:
            break
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else parquet.schema_arrow.empty_table().to_pandas()
    )


@dg.asset_check(asset="labevents", blocking=True, additional_ins={"d_labitems": dg.AssetIn()})
def labevents_are_well_formed(labevents: Path, d_labitems: pd.DataFrame) -> dg.AssetCheckResult:
    """Blocking: labevents (its first rows) has its columns, ids and times (GX)."""
    return outcome_result(expectations.validate_table("labevents", _lab_sample(labevents)))


@dg.asset_check(asset="labevents", additional_ins={"d_labitems": dg.AssetIn()})
def lab_values_are_plausible(labevents: Path, d_labitems: pd.DataFrame) -> dg.AssetCheckResult:
    """Warning: well-known analytes (WBC, CRP, sodium, ...) mostly inside plausible ranges."""
    return outcome_result(expectations.validate_lab_ranges(_lab_sample(labevents), d_labitems))


@dg.asset_check(asset="dicom_index")
def transfer_syntaxes_are_expected(dicom_index: pd.DataFrame) -> dg.AssetCheckResult:
    """Warning: transfer syntaxes or photometric interpretations outside the expected sets."""
    return outcome_result(expectations.validate_dicom_index(dicom_index))


@dg.asset_check(
    asset="lab_features",
    blocking=True,
    additional_ins={"cohort": dg.AssetIn(), "window_labs": dg.AssetIn()},
)
def lab_features_come_from_the_window(
    settings: PipelineSettings, cohort: pd.DataFrame, window_labs: Path
) -> dg.AssetCheckResult:
    """Blocking: every lab row behind the features was charted inside its window.

    Every row is checked; only its admission and time are read, one batch at a time, and GX
    sees one number a row (hours since admission), not the window's table.
    """
    frames = window_lab_times(window_labs)
    window_hours = settings.value.window_hours
    return outcome_result(expectations.validate_window(frames, cohort, window_hours, "charttime"))


def window_lab_times(window_labs: Path) -> Iterator[pd.DataFrame]:
    """The admission and time of every window_labs row, a Parquet batch at a time."""
    return _batches(window_labs, ["hadm_id", "charttime"])


@dg.asset_check(
    asset="note_features",
    blocking=True,
    additional_ins={"cohort": dg.AssetIn(), "notes": dg.AssetIn()},
)
def note_features_come_from_the_window(
    settings: PipelineSettings, cohort: pd.DataFrame, notes: Path
) -> dg.AssetCheckResult:
    """Blocking: every note behind the text features is in its window and none is a "DS"."""
    rows = allowed_note_rows(notes, cohort, settings.value.window_hours)
    outcome = expectations.validate_window(rows, cohort, settings.value.window_hours, "charttime")
    discharge = int(rows["note_type"].astype("string").str.strip().str.upper().eq("DS").sum())
    if discharge:
        return dg.AssetCheckResult(
            passed=False, description=f"{discharge} discharge summaries reached the features"
        )
    return outcome_result(outcome)
