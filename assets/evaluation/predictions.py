"""Validation and test predictions of the fusion model and of each single-modality model."""

from pathlib import Path

import dagster as dg
import joblib
import numpy as np
import pandas as pd

from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.assets.resources import PipelineSettings
from clinfuse.assets.training.inputs import CohortTables, cohort_source
from clinfuse.models.modalities import MODALITIES

GROUP = "evaluation"
SCORED_SPLITS = ("validation", "test")


@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn", "parquet"},
    owners=["team:clinical-ml"],
)
def predictions(
    settings: PipelineSettings,
    cohort: pd.DataFrame,
    notes: Path,
    lab_features: pd.DataFrame,
    note_features: pd.DataFrame,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    study_images: ShardSet,
    recording_spectrograms: ShardSet,
    fusion_model: dict,
) -> pd.DataFrame:
    """One row per validation and test admission: label, p_fusion, p_<modality>, ablations.

    Validation rows choose the decision threshold; test rows are what every metric reports.
    Every probability is calibrated on validation. A single-modality model scores every
    admission, also those without its modality (it then gives its calibrated prior), so all
    models are compared on the same admissions. p_fusion_without_<modality> is the fusion model
    with that modality marked missing.
    """
    fused = joblib.load(fusion_model["checkpoint"])
    tables = CohortTables(
        cohort,
        notes,
        lab_features,
        note_features,
        dicom_index,
        recording_index,
        study_images,
        recording_spectrograms,
    )
    source = cohort_source(tables, settings.value.window_hours)
    rows = np.flatnonzero(cohort["split"].isin(SCORED_SPLITS).to_numpy())
    table = cohort.iloc[rows][["hadm_id", "subject_id", "split", "label", "gender", "anchor_age"]]
    table = table.reset_index(drop=True)
    logits = fused.logits(source, rows)
    table["p_fusion"] = fused.predict_proba(source, rows, logits)
    for modality in MODALITIES:
        fitted = modality in fused.modalities
        table[f"p_{modality}"] = fused.single_proba(modality, logits) if fitted else np.nan
    for modality in MODALITIES:
        table[f"has_{modality}"] = source.present(modality)[rows]
        table[f"p_fusion_without_{modality}"] = fused.without(modality, logits, source, rows)
    return table
