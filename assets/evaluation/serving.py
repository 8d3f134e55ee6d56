"""One admission per row in, tensors out: the preprocessing the served model shares with the
pipeline. The registered pyfunc and the round-trip test both go through here.

Input columns (any modality may be missing: null / empty):
  hadm_id, subject_id, admittime, gender, anchor_age, anchor_year (MIMIC: age at anchor_year)
  labs            JSON list of {"itemid", "charttime", "valuenum"} charted in the admission
  notes           the admission's note text (the pipeline passes its allowed notes: no "DS")
  image_path      a DICOM file
  recording_path  an audio file
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clinfuse.assets.cohort.availability import latest_in_window
from clinfuse.assets.cohort.window import allowed_notes, in_window, read_window_labs
from clinfuse.assets.features.labs import LabFeaturizer
from clinfuse.assets.features.text import NoteEmbedder
from clinfuse.assets.ingest.audio.reader import load_recording
from clinfuse.assets.ingest.dicom.reader import load_image
from clinfuse.models.modalities import MODALITIES
from clinfuse.assets.settings import Settings

INPUT_COLUMNS = [
    "hadm_id",
    "subject_id",
    "admittime",
    "gender",
    "anchor_age",
    "anchor_year",
    "labs",
    "notes",
    "image_path",
    "recording_path",
]


def _present(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _frames(rows: pd.DataFrame, window_hours: float):
    ids = rows["hadm_id"].astype("int64")
    subjects = rows["subject_id"].fillna(rows["hadm_id"]).astype("int64")
    cohort = pd.DataFrame(
        {
            "hadm_id": ids.to_numpy(),
            "subject_id": subjects.to_numpy(),
            "admittime": pd.to_datetime(rows["admittime"]).astype("datetime64[ns]").to_numpy(),
        }
    )
    patients = pd.DataFrame(
        {
            "subject_id": subjects.to_numpy(),
            "gender": rows["gender"].astype("string").to_numpy(),
            "anchor_age": pd.to_numeric(rows["anchor_age"], errors="coerce").to_numpy(),
            "anchor_year": pd.to_numeric(rows["anchor_year"], errors="coerce").to_numpy(),
        }
    ).drop_duplicates("subject_id")
    labs = [
        {**lab, "hadm_id": int(h), "subject_id": int(s)}
        for h, s, raw in zip(ids, subjects, rows["labs"], strict=True)
        if _present(raw)
        for lab in json.loads(raw)
    ]
    lab_frame = pd.DataFrame(
        labs, columns=["hadm_id", "subject_id", "itemid", "charttime", "valuenum"]
    )
    lab_frame = lab_frame.astype({"hadm_id": "Int64", "subject_id": "Int64", "itemid": "Int64"})
    lab_frame["charttime"] = pd.to_datetime(lab_frame["charttime"]).astype("datetime64[ns]")
    lab_frame["valuenum"] = pd.to_numeric(lab_frame["valuenum"], errors="coerce")
    window_labs = in_window(lab_frame, cohort, "charttime", window_hours)
    return cohort, patients, window_labs


def _load_stack(paths: pd.Series, load, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked items (float16-rounded like the shards) and which rows have one."""
    out = np.zeros((len(paths), *shape), dtype=np.float32)
    present = np.zeros(len(paths), dtype=bool)
    for row, path in enumerate(paths):
        if _present(path):
            # The pipeline stores float16 shards; round the same way so both agree.
            out[row] = load(Path(path)).astype(np.float16).astype(np.float32)
            present[row] = True
    return out, present


def serving_batch(
    rows: pd.DataFrame, lab_state: dict, text_state: dict, settings: Settings
) -> dict:
    """The model's batch for these admissions, preprocessed exactly as in the pipeline: a
    tensor per modality, the mask, and `notes` (each admission's text, or None)."""
    rows = rows.reindex(columns=INPUT_COLUMNS)
    cohort, patients, window_labs = _frames(rows, settings.window_hours)
    ehr = LabFeaturizer.from_dict(lab_state).transform(window_labs, cohort, patients)
    notes = (
        pd.Series(rows["notes"].to_numpy(), index=cohort["hadm_id"])
        .where(rows["notes"].map(_present).to_numpy())
        .dropna()
    )
    text = NoteEmbedder.from_state(text_state).transform(notes, cohort["hadm_id"])
    size = settings.image_size
    image, has_image = _load_stack(
        rows["image_path"], lambda p: load_image(p, size), (1, size, size)
    )
    audio_shape = (1, settings.audio.n_mels, settings.audio.frames)
    audio, has_audio = _load_stack(
        rows["recording_path"], lambda p: load_recording(p, settings.audio), audio_shape
    )
    has_ehr = cohort["hadm_id"].isin(window_labs["hadm_id"].dropna().astype("int64")).to_numpy()
    has_text = rows["notes"].map(_present).to_numpy(dtype=bool)
    mask = np.stack([has_ehr, has_text, has_image, has_audio], axis=1)
    return {
        "ehr": torch.from_numpy(ehr.to_numpy(dtype=np.float32, copy=True)),
        "text": torch.from_numpy(np.asarray(text, dtype=np.float32)),
        "image": torch.from_numpy(image),
        "audio": torch.from_numpy(audio),
        "mask": torch.from_numpy(mask),
        "notes": [str(t) if _present(t) else None for t in rows["notes"]],
    }


def serving_frame(
    cohort: pd.DataFrame,
    labevents: Path | pd.DataFrame,
    notes: pd.DataFrame,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    landing: Path,
    window_hours: float,
) -> pd.DataFrame:
    """The served model's input for cohort admissions, built from the pipeline's own tables."""
    ids = cohort["hadm_id"].astype("int64")
    labs = read_window_labs(labevents, cohort, window_hours)
    labs_json = {
        int(h): group[["itemid", "charttime", "valuenum"]]
        .assign(charttime=group["charttime"].astype(str))
        .to_json(orient="records", double_precision=15)
        for h, group in labs.groupby("hadm_id")
    }
    text = allowed_notes(notes, cohort, window_hours)
    image = latest_in_window(dicom_index, cohort, "study_datetime", window_hours)
    recording = latest_in_window(recording_index, cohort, "recorded_at", window_hours)
    paths = {
        "image_path": _paths_by_admission(dicom_index, image, landing),
        "recording_path": _paths_by_admission(recording_index, recording, landing),
    }
    return pd.DataFrame(
        {
            "hadm_id": ids.to_numpy(),
            "subject_id": cohort["subject_id"].astype("int64").to_numpy(),
            "admittime": cohort["admittime"].astype(str).to_numpy(),
            "gender": cohort["gender"].astype("string").to_numpy(),
            "anchor_age": pd.to_numeric(cohort["anchor_age"]).astype(float).to_numpy(),
            "anchor_year": pd.to_numeric(cohort["anchor_year"]).astype(float).to_numpy(),
            "labs": [labs_json.get(int(h)) for h in ids],
            "notes": [_text_or_none(text.get(int(h))) for h in ids],
            **{k: [v.get(int(h)) for h in ids] for k, v in paths.items()},
        }
    )


def _text_or_none(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _paths_by_admission(index: pd.DataFrame, chosen: pd.DataFrame, landing: Path) -> dict:
    if chosen.empty:
        return {}
    keyed = index.merge(chosen, on=["hadm_id", "shard", "slot"])
    return {int(h): str(landing / p) for h, p in keyed[["hadm_id", "path"]].itertuples(index=False)}


__all__ = ["INPUT_COLUMNS", "MODALITIES", "serving_batch", "serving_frame"]
