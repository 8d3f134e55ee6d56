"""Validation and test predictions of the fusion model and of each single-modality model."""

import dagster as dg
import joblib
import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import MODALITIES
from clinfuse.assets.training.assets import TRAINING_INS, cohort_source
from clinfuse.orchestration.resources import PipelineSettings

GROUP = "evaluation"
SCORED_SPLITS = ("validation", "test")


@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn", "parquet"},
    owners=["team:clinical-ml"],
    ins={name: dg.AssetIn() for name in (*TRAINING_INS, "fusion_model")},
)
def predictions(settings: PipelineSettings, **tables) -> pd.DataFrame:
    """One row per validation and test admission: label, p_fusion, p_<modality>, ablations.

    Validation rows choose the decision threshold; test rows are what every metric reports.
    Every probability is calibrated on validation. A single-modality model scores every
    admission, also those without its modality (it then gives its calibrated prior), so all
    models are compared on the same admissions. p_fusion_without_<modality> is the fusion model
    with that modality marked missing.
    """
    fused = joblib.load(tables.pop("fusion_model")["checkpoint"])
    cohort, source = cohort_source(settings, tables)
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
