"""Data-quality expectations (GX Core 1.x) over the pipeline's tables, as plain verdicts.

Each function builds an expectation suite, validates a pandas DataFrame in an ephemeral GX
context (gx_runner.py) and returns a `QualityOutcome`: passed, blocking (a failed blocking check
stops the run), a one-line description naming the failed expectations, and small JSON-able
metadata (counts and aggregates, never a row's value). Asset checks wrap these; the rules live
here so that they are tested without Dagster.

Where a rule spans rows (a patient in two splits, positives in train, a feature row outside its
admission's window) the suite runs on a derived frame holding one column that states the rule
per row, so the expectation that fails names that rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from clinfuse.assets.checks.gx_runner import (
    QualityOutcome,
    gx_expectations,
    merged_outcome,
    run_suite,
)
from clinfuse.assets.ingest.ehr import table_schema as ts
from clinfuse.models.modalities import MODALITIES

__all__ = [
    "QualityOutcome",
    "validate_cohort",
    "validate_dicom_index",
    "validate_lab_ranges",
    "validate_modality_coverage",
    "validate_table",
    "validate_table_batches",
    "validate_window",
]

SPLITS = ("train", "validation", "test")
MIN_COVERAGE = 0.5
RANGE_MOSTLY = 0.99

# Transfer syntaxes the image reader decodes (pydicom + pylibjpeg / pyjpegls plugins).
EXPECTED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still met)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
EXPECTED_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
)


# -- ingested tables (blocking) ----------------------------------------------------------------


@dataclass(frozen=True)
class TableRules:
    required: tuple[str, ...]
    not_null: tuple[str, ...]
    unique: tuple[str, ...] = ()
    min_rows: int = 0
    in_sets: dict[str, tuple] = field(default_factory=dict)
    later_than: tuple[tuple[str, str], ...] = ()  # (a, b): a >= b where both are given


TABLE_RULES: dict[str, TableRules] = {
    "patients": TableRules(
        tuple(ts.PATIENTS.required), ("subject_id",), unique=("subject_id",), min_rows=1
    ),
    "admissions": TableRules(
        tuple(ts.ADMISSIONS.required),
        ("subject_id", "hadm_id", "admittime", "dischtime"),
        unique=("hadm_id",),
        min_rows=1,
        later_than=(("dischtime", "admittime"),),
    ),
    # Empty hadm_id (outpatient) and valuenum (text result) are good rows: not checked here.
    "labevents": TableRules(tuple(ts.LABEVENTS.required), ("subject_id", "itemid", "charttime")),
    "d_labitems": TableRules(tuple(ts.D_LABITEMS.required), ("itemid",), unique=("itemid",)),
    "diagnoses_icd": TableRules(
        tuple(ts.DIAGNOSES_ICD.required),
        ("subject_id", "hadm_id", "icd_code", "icd_version"),
        in_sets={"icd_version": (9, 10)},  # the label rule knows only these two
    ),
    "notes": TableRules(
        tuple(ts.NOTES.required),
        ("note_id", "subject_id", "note_type", "charttime", "text"),
        unique=("note_id",),
    ),
}
TABLE_RULES["note"] = TABLE_RULES["notes"]


def validate_table_batches(name: str, batches: Iterable[pd.DataFrame]) -> QualityOutcome:
    """validate_table over a table too big to hold, one batch at a time, as one verdict.

    Only for tables whose rules all look at one row at a time (no uniqueness, no row count):
    then the table passes exactly when every batch does. At least one batch must come (an
    empty table as an empty frame).
    """
    rules = TABLE_RULES[name]
    if rules.unique or rules.min_rows:
        raise ValueError(f"{name}: uniqueness and row counts need the whole table")
    return merged_outcome(f"table_{name}", [validate_table(name, batch) for batch in batches])


def validate_table(name: str, df: pd.DataFrame) -> QualityOutcome:
    """Blocking: required columns present, ids and times not null, keys unique, order of times.

    Tables: patients, admissions, labevents (any subset of rows, e.g. a Parquet sample),
    d_labitems, diagnoses_icd, notes.
    """
    if name not in TABLE_RULES:
        raise ValueError(f"no rules for table {name!r}; known: {sorted(TABLE_RULES)}")
    rules = TABLE_RULES[name]
    gxe = gx_expectations()
    present = set(df.columns)
    checks: list = [gxe.ExpectColumnToExist(column=c) for c in rules.required]
    if rules.min_rows:
        checks.append(gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows))
    checks += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in rules.not_null if c in present]
    checks += [gxe.ExpectColumnValuesToBeUnique(column=c) for c in rules.unique if c in present]
    for column, allowed in rules.in_sets.items():
        if column in present:
            checks.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(allowed)))
    for later, earlier in rules.later_than:
        if {later, earlier} <= present:
            checks.append(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=later,
                    column_B=earlier,
                    or_equal=True,
                    ignore_row_if="either_value_is_missing",
                )
            )
    return run_suite(f"table_{name}", df, checks, blocking=True)


# -- lab values (warning) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Analyte:
    itemids: tuple[int, ...]  # MIMIC-IV's own ids
    label: str  # a regex for d_labitems.label (blood only), for exports with other itemids
    low: float
    high: float
    unit: str


# Physiologically possible, not normal: a value outside is a unit mix-up or a typo. Wide on
# purpose (leukaemia, rhabdo, DKA all stay inside); MIMIC's demo is inside for every analyte.
ANALYTES: dict[str, Analyte] = {
    "wbc": Analyte((51301, 51300), r"white blood cells|wbc count", 0.0, 500.0, "K/uL"),
    "crp": Analyte((50889,), r"c-reactive protein", 0.0, 1000.0, "mg/L"),
    "creatinine": Analyte((50912,), r"creatinine", 0.0, 40.0, "mg/dL"),
    "sodium": Analyte((50983, 50824), r"sodium(, whole blood)?", 90.0, 200.0, "mEq/L"),
    "potassium": Analyte((50971, 50822), r"potassium(, whole blood)?", 1.0, 12.0, "mEq/L"),
    "hemoglobin": Analyte((51222, 50811), r"hemoglobin", 1.0, 25.0, "g/dL"),
    "platelets": Analyte((51265,), r"platelet count", 0.0, 2500.0, "K/uL"),
    "lactate": Analyte((50813,), r"lactate", 0.0, 40.0, "mmol/L"),
    "temperature": Analyte((50825,), r"temperature", 25.0, 45.0, "C"),
}


def validate_lab_ranges(labs: pd.DataFrame, d_labitems: pd.DataFrame) -> QualityOutcome:
    """Warning: each well-known analyte's values mostly (99%) inside a plausible range.

    labs needs itemid and valuenum (a sample is fine); d_labitems adds items whose label names
    a known analyte in blood. Analytes absent from labs are reported, not failed.
    """
    gxe = gx_expectations()
    itemids = _analyte_itemids(d_labitems)
    values = _analyte_values(labs, itemids)
    checks = [
        gxe.ExpectColumnValuesToBeBetween(
            column=name,
            min_value=ANALYTES[name].low,
            max_value=ANALYTES[name].high,
            mostly=RANGE_MOSTLY,
        )
        for name in values.columns
    ]
    counts = {f"{name} values": int(values[name].notna().sum()) for name in values.columns}
    absent = sorted(set(ANALYTES) - set(values.columns))
    extra = {**counts, "analytes_absent": ", ".join(absent) or "none"}
    return run_suite("lab_ranges", values, checks, blocking=False, metadata=extra)


def _analyte_itemids(d_labitems: pd.DataFrame | None) -> dict[str, set[int]]:
    ids = {name: set(a.itemids) for name, a in ANALYTES.items()}
    if d_labitems is None or d_labitems.empty or "label" not in d_labitems:
        return ids
    items = d_labitems.dropna(subset=["itemid", "label"])
    if "fluid" in items:
        items = items[
            items["fluid"].astype("string").str.contains("blood", case=False).fillna(True)
        ]
    labels = items["label"].astype("string").str.strip().str.lower()
    for name, analyte in ANALYTES.items():
        hit = labels.str.fullmatch(analyte.label).fillna(False).to_numpy(dtype=bool)
        ids[name] |= set(items["itemid"][hit].astype("int64").tolist())
    return ids


def _analyte_values(labs: pd.DataFrame, itemids: dict[str, set[int]]) -> pd.DataFrame:
    """One float column per analyte present (NaN-padded): GX counts only the non-null."""
    item = pd.to_numeric(labs["itemid"], errors="coerce")
    value = pd.to_numeric(labs["valuenum"], errors="coerce").astype("float64")
    columns = {}
    for name, ids in itemids.items():
        picked = value[item.isin(ids).to_numpy(dtype=bool)].dropna()
        if len(picked):
            columns[name] = pd.Series(picked.to_numpy(), dtype="float64")
    return pd.DataFrame(columns)


# -- the cohort --------------------------------------------------------------------------------


def validate_cohort(cohort: pd.DataFrame) -> QualityOutcome:
    """Blocking: admissions exist, labels are 0/1, splits known, train has a positive, and no
    patient has admissions in two splits (`splits_of_subject` names that rule)."""
    gxe = gx_expectations()
    frame = _cohort_rules_frame(cohort)
    present = set(frame.columns)
    checks: list = [
        gxe.ExpectColumnToExist(column=c) for c in ("hadm_id", "subject_id", "split", "label")
    ]
    checks.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    for column in ("hadm_id", "subject_id", "split", "label"):
        if column in present:
            checks.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    if "hadm_id" in present:
        checks.append(gxe.ExpectColumnValuesToBeUnique(column="hadm_id"))
    if "label" in present:
        checks.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
    if "split" in present:
        checks.append(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    if "train_label" in present:
        checks.append(gxe.ExpectColumnSumToBeBetween(column="train_label", min_value=1))
    if "splits_of_subject" in present:
        checks.append(gxe.ExpectColumnValuesToBeBetween(column="splits_of_subject", max_value=1))
    return run_suite("cohort", frame, checks, blocking=True)


def _cohort_rules_frame(cohort: pd.DataFrame) -> pd.DataFrame:
    """The cohort's key columns plus one column per cross-row rule."""
    keep = [c for c in ("hadm_id", "subject_id", "split", "label") if c in cohort]
    frame = cohort[keep].copy()
    if {"split", "label"} <= set(keep):
        is_train = (frame["split"] == "train").to_numpy(dtype=bool)
        label = pd.to_numeric(frame["label"], errors="coerce").astype("float64")
        frame["train_label"] = label.where(is_train)  # its sum: positives in train
    if {"subject_id", "split"} <= set(keep):
        splits = frame.groupby("subject_id", dropna=False)["split"].transform("nunique")
        frame["splits_of_subject"] = splits.astype("int64")
    return frame


def validate_modality_coverage(cohort: pd.DataFrame) -> QualityOutcome:
    """Warning: a modality present (in the window) for under half of the admissions."""
    gxe = gx_expectations()
    columns = [f"has_{m}" for m in MODALITIES]
    present = [c for c in columns if c in cohort]
    frame = pd.DataFrame({c: cohort[c].astype("float64") for c in present})
    checks: list = [gxe.ExpectColumnToExist(column=c) for c in columns]
    checks += [gxe.ExpectColumnMeanToBeBetween(column=c, min_value=MIN_COVERAGE) for c in present]
    coverage = {f"coverage_{c[4:]}": _mean(frame[c]) for c in present}
    return run_suite("modality_coverage", frame, checks, blocking=False, metadata=coverage)


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


# -- images (warning) --------------------------------------------------------------------------


def validate_dicom_index(index: pd.DataFrame) -> QualityOutcome:
    """Warning: transfer syntaxes or photometric interpretations outside what is expected."""
    gxe = gx_expectations()
    sets = {
        "transfer_syntax_uid": EXPECTED_TRANSFER_SYNTAXES,
        "photometric_interpretation": EXPECTED_PHOTOMETRIC,
    }
    checks: list = []
    for column, allowed in sets.items():
        if column in index:
            checks.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(allowed)))
        elif len(index):
            checks.append(gxe.ExpectColumnToExist(column=column))
    frame = index[[c for c in sets if c in index]]
    return run_suite("dicom_index", frame, checks, blocking=False)


# -- the prediction window (blocking) ------------------------------------------------------------


def validate_window(
    features: pd.DataFrame | Iterable[pd.DataFrame],
    cohort: pd.DataFrame,
    window_hours: float,
    time_column: str,
) -> QualityOutcome:
    """Blocking: every feature row was charted in [admittime, admittime + window_hours).

    features needs hadm_id and time_column, cohort hadm_id and admittime; it may come as batches
    (a table too big to hold: only one float a row is kept). A row whose admission is not in
    the cohort, or with no time, has no `hours_since_admit` and fails too.
    """
    gxe = gx_expectations()
    batches = [features] if isinstance(features, pd.DataFrame) else features
    hours = [_hours_since_admit(batch, cohort, time_column) for batch in batches]
    frame = (
        pd.concat(hours, ignore_index=True)
        if hours
        else pd.DataFrame({"hours_since_admit": pd.Series(dtype="float64")})
    )
    checks = [
        gxe.ExpectColumnValuesToNotBeNull(column="hours_since_admit"),
        gxe.ExpectColumnValuesToBeBetween(
            column="hours_since_admit",
            min_value=0.0,
            max_value=float(window_hours),
            strict_max=True,  # the window's end is outside it
        ),
    ]
    extra = {"window_hours": float(window_hours), "time_column": time_column}
    return run_suite(f"window_{time_column}", frame, checks, blocking=True, metadata=extra)


def _hours_since_admit(
    features: pd.DataFrame, cohort: pd.DataFrame, time_column: str
) -> pd.DataFrame:
    admit = pd.DataFrame(
        {
            "hadm_id": cohort["hadm_id"].astype("Int64").to_numpy(),
            "_admit": pd.to_datetime(cohort["admittime"]).to_numpy(),
        }
    ).drop_duplicates("hadm_id")
    rows = pd.DataFrame(
        {
            "hadm_id": features["hadm_id"].astype("Int64").to_numpy(),
            "_time": pd.to_datetime(features[time_column]).to_numpy(),
        }
    )
    joined = rows.merge(admit, on="hadm_id", how="left")
    hours = (joined["_time"] - joined["_admit"]) / pd.Timedelta(hours=1)
    return pd.DataFrame({"hours_since_admit": hours.astype("float64").to_numpy()})
