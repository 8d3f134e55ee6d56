"""From feature tables and shard indexes to the tensors' sources, in cohort order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import latest_in_window
from clinfuse.assets.cohort.window import allowed_notes
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.models.data import ModalityInputs
from clinfuse.models.modalities import MODALITIES
from clinfuse.models.sources import CohortSource


def _aligned(table: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    values = table.set_index("hadm_id").reindex(ids.to_numpy())
    return values.fillna(0.0).to_numpy(dtype=np.float32)


def _refs(chosen: pd.DataFrame, ids: pd.Series) -> list[tuple[str, int] | None]:
    by_id = {
        int(h): (str(s), int(k))
        for h, s, k in chosen[["hadm_id", "shard", "slot"]].itertuples(index=False)
    }
    return [by_id.get(int(h)) for h in ids]


def modality_inputs(
    cohort: pd.DataFrame,
    lab_features: pd.DataFrame,
    note_features: pd.DataFrame,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    study_images: ShardSet,
    recording_spectrograms: ShardSet,
    window_hours: float,
) -> ModalityInputs:
    """Everything the models read, one row per cohort admission (cohort order)."""
    ids = cohort["hadm_id"].astype("int64")
    images = latest_in_window(dicom_index, cohort, "study_datetime", window_hours)
    recordings = latest_in_window(recording_index, cohort, "recorded_at", window_hours)
    image_refs, audio_refs = _refs(images, ids), _refs(recordings, ids)
    mask = cohort[[f"has_{m}" for m in MODALITIES]].to_numpy(dtype=bool).copy()
    mask[:, MODALITIES.index("image")] &= np.array([r is not None for r in image_refs])
    mask[:, MODALITIES.index("audio")] &= np.array([r is not None for r in audio_refs])
    return ModalityInputs(
        ehr=_aligned(lab_features, ids),
        text=_aligned(note_features, ids),
        image_refs=image_refs,
        image_dir=study_images.directory,
        audio_refs=audio_refs,
        audio_dir=recording_spectrograms.directory,
        image_shape=tuple(study_images.item_shape),
        audio_shape=tuple(recording_spectrograms.item_shape),
        mask=mask,
        labels=cohort["label"].to_numpy(dtype=np.float32),
    )


def split_indices(cohort: pd.DataFrame, split: str) -> np.ndarray:
    return np.flatnonzero(cohort["split"].to_numpy() == split)


@dataclass(frozen=True)
class CohortTables:
    """The asset values every learner reads: the cohort and its feature tables and shards."""

    cohort: pd.DataFrame
    notes: pd.DataFrame | Path
    lab_features: pd.DataFrame
    note_features: pd.DataFrame
    dicom_index: pd.DataFrame
    recording_index: pd.DataFrame
    study_images: ShardSet
    recording_spectrograms: ShardSet


def cohort_source(
    tables: CohortTables, window_hours: float, shuffle_seed: int | None = None
) -> CohortSource:
    """The cohort's inputs as learners read them; with `shuffle_seed`, permuted train labels."""
    cohort = tables.cohort
    inputs = modality_inputs(
        cohort,
        tables.lab_features,
        tables.note_features,
        tables.dicom_index,
        tables.recording_index,
        tables.study_images,
        tables.recording_spectrograms,
        window_hours,
    )
    if shuffle_seed is not None:
        labels = inputs.labels.copy()
        train = split_indices(cohort, "train")
        labels[train] = np.random.default_rng(shuffle_seed).permutation(labels[train])
        inputs = dataclasses.replace(inputs, labels=labels)
    text = allowed_notes(tables.notes, cohort, window_hours)
    notes = [_text(text.get(int(h))) for h in cohort["hadm_id"]]
    groups = cohort["subject_id"].to_numpy(dtype=np.int64)
    return CohortSource(inputs, notes=notes, groups=groups)


def _text(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def flat_params(values: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} as {"a.b": 1}: nested settings as MLflow params."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
