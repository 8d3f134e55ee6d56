"""The cohort: one row per admission with its label, split and modalities in the window."""

from pathlib import Path

import dagster as dg
import pandas as pd

from clinfuse.assets.checks import expectations
from clinfuse.assets.checks.results import outcome_result
from clinfuse.assets.cohort.availability import modality_availability
from clinfuse.assets.cohort.labels import label_admissions
from clinfuse.assets.cohort.splits import assign_splits, patients_in_two_splits, split_summary
from clinfuse.assets.resources import PipelineSettings
from clinfuse.models.modalities import MODALITIES

GROUP = "cohort"
COHORT_COLUMNS = [
    "hadm_id",
    "subject_id",
    "admittime",
    "dischtime",
    "window_end",
    "label",
    "split",
    "gender",
    "anchor_age",
    "anchor_year",
    *[f"has_{m}" for m in MODALITIES],
]


def build_cohort(
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
    diagnoses: pd.DataFrame | Path,
    settings,
) -> pd.DataFrame:
    """Admissions with a usable admittime, their label and their patient-level split."""
    base = admissions.dropna(subset=["admittime"])[
        ["hadm_id", "subject_id", "admittime", "dischtime"]
    ]
    base = base.merge(
        patients[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id", how="left"
    )
    base["window_end"] = base["admittime"] + pd.to_timedelta(settings.window_hours, unit="h")
    base["label"] = label_admissions(base, diagnoses, settings.target)
    base["split"] = assign_splits(base, settings.seed)
    return base.sort_values("hadm_id").reset_index(drop=True)


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=["team:clinical-ml"])
def cohort(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
    diagnoses_icd: Path,
    labevents: Path,
    notes: Path,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
) -> pd.DataFrame:
    """One row per admission: label for the configured target, split, modalities in the window."""
    run = settings.value
    table = build_cohort(admissions, patients, diagnoses_icd, run)
    available = modality_availability(
        table, labevents, notes, dicom_index, recording_index, run.window_hours
    )
    table = pd.concat([table, available], axis=1)[COHORT_COLUMNS]
    context.add_output_metadata(
        {
            "admissions": len(table),
            "positives": int(table["label"].sum()),
            "patients": int(table["subject_id"].nunique()),
            **{f"split_{k}": v for k, v in split_summary(table).items()},
            **{
                f"coverage_{m}": float(table[f"has_{m}"].mean()) if len(table) else 0.0
                for m in MODALITIES
            },
        }
    )
    return table


@dg.asset_check(asset=cohort, blocking=True)
def cohort_is_trainable(cohort: pd.DataFrame) -> dg.AssetCheckResult:
    """Blocking: admissions exist, train has positives, labels are 0/1, no patient in two splits."""
    result = outcome_result(expectations.validate_cohort(cohort))
    leaked = patients_in_two_splits(cohort)
    if len(leaked):
        return dg.AssetCheckResult(
            passed=False,
            description=f"{len(leaked)} patients have admissions in two splits",
            metadata={"patients_in_two_splits": len(leaked)},
        )
    return result


@dg.asset_check(asset=cohort)
def modalities_mostly_present(cohort: pd.DataFrame) -> dg.AssetCheckResult:
    """Warning: a modality present for under half of the admissions."""
    return outcome_result(expectations.validate_modality_coverage(cohort))
