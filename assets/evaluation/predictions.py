"""Validation and test predictions of the fusion model and of each single-modality model."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import MODALITIES
from clinfuse.assets.training.assets import TRAINING_INS, _inputs
from clinfuse.assets.training.checkpoints import load_checkpoint
from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.training import predict_proba
from clinfuse.orchestration.resources import PipelineSettings

GROUP = "evaluation"
SCORED_SPLITS = ("validation", "test")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    owners=["team:clinical-ml"],
    ins={name: dg.AssetIn() for name in (*TRAINING_INS, "fusion_model", "modality_models")},
)
def predictions(settings: PipelineSettings, **tables) -> pd.DataFrame:
    """One row per validation and test admission: label, p_fusion, p_<modality>, ablations.

    Validation rows choose the decision threshold; test rows are what every metric reports.
    A single-modality model scores every admission, also those without its modality (it then
    falls back to its learned prior), so all models are compared on the same admissions.
    p_fusion_without_<modality> is the fusion model with that modality marked missing.
    """
    cohort, inputs = _inputs(settings, tables)
    rows = np.flatnonzero(cohort["split"].isin(SCORED_SPLITS).to_numpy())
    dataset = AdmissionDataset(inputs, rows)
    table = cohort.iloc[rows][["hadm_id", "subject_id", "split", "label", "gender", "anchor_age"]]
    table = table.reset_index(drop=True)
    fusion = load_checkpoint(tables["fusion_model"]["checkpoint"])
    table["p_fusion"] = predict_proba(fusion, dataset)
    for modality in MODALITIES:
        trained = tables["modality_models"].get(modality)
        table[f"p_{modality}"] = (
            predict_proba(load_checkpoint(trained["checkpoint"]), dataset) if trained else np.nan
        )
    for position, modality in enumerate(MODALITIES):
        table[f"has_{modality}"] = inputs.mask[rows, position]
        table[f"p_fusion_without_{modality}"] = predict_proba(
            fusion, AdmissionDataset(_without(inputs, position), rows)
        )
    return table


def _without(inputs: ModalityInputs, position: int) -> ModalityInputs:
    """The same admissions with one modality marked missing: the ablation of that modality."""
    mask = inputs.mask.copy()
    mask[:, position] = False
    return dataclasses.replace(inputs, mask=mask)
