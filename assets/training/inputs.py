"""From feature tables and shard indexes to the tensors' sources, in cohort order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import MODALITIES, latest_in_window
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.models.data import ModalityInputs


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
