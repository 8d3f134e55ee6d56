"""One admission per row in, tensors out: the preprocessing the served model shares with the
pipeline. The registered pyfunc and the round-trip test both go through here.

Input columns (any of them may be missing: null / empty / absent; only hadm_id must be a column):
  hadm_id, subject_id, admittime, gender, anchor_age, anchor_year (MIMIC: age at anchor_year)
  labs            JSON list of {"itemid", "charttime", "valuenum"} charted in the admission
  notes           the admission's note text (the pipeline passes its allowed notes: no "DS")
  image_b64       a DICOM file's bytes as base64, or
  image_path      a DICOM file inside CLINFUSE_SERVE_ROOT
  recording_b64   an audio file's bytes as base64, or
  recording_path  an audio file inside CLINFUSE_SERVE_ROOT
Output, one row per input row: p_fusion, and errors (a sentence per input that was refused or
could not be read; serve_inputs.py reads each row's inputs and says what they are).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from clinfuse.assets.cohort.availability import latest_in_window
from clinfuse.assets.cohort.window import (
    allowed_note_rows,
    allowed_notes,
    in_window,
    read_window_labs,
    write_window_labs,
)
from clinfuse.assets.evaluation.serve_inputs import (
    RowInputs,
    read_row,
    request_refusal,
    serve_root,
)
from clinfuse.assets.features.labs import LabFeaturizer
from clinfuse.assets.features.text import NoteEmbedder
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.settings import Settings
from clinfuse.models.modalities import MODALITIES

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

INPUT_COLUMNS = [
    "hadm_id",
    "subject_id",
    "admittime",
    "gender",
    "anchor_age",
    "anchor_year",
    "labs",
    "notes",
    "image_b64",
    "image_path",
    "recording_b64",
    "recording_path",
]
OUTPUT_COLUMNS = ["p_fusion", "errors"]
LAB_COLUMNS = ["hadm_id", "subject_id", "itemid", "charttime", "valuenum"]


@dataclass
class ServingRequest:
    batch: dict | None  # the model's batch (serving_batch); None when the request was refused
    errors: list[list[str]]  # per row: a sentence per input it could not use

    @property
    def refused(self) -> bool:
        """The whole request was over limits.max_request_mb: no row is scored."""
        return self.batch is None


def serving_signature() -> ModelSignature:
    """Every column of any type, only hadm_id required (so that MLflow keeps every row).

    Typed columns would let MLflow refuse the whole batch for one row's null subject_id or
    textual age; the contract wants that row alone to say so, in its errors.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType, Array

    inputs = Schema([ColSpec(AnyType(), c, required=c == "hadm_id") for c in INPUT_COLUMNS])
    outputs = Schema(
        [ColSpec(DataType.double, "p_fusion"), ColSpec(Array(DataType.string), "errors")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def serving_request(
    rows: pd.DataFrame, lab_state: dict, text_state: dict, settings: Settings
) -> ServingRequest:
    """Each row's inputs read on its own (what it cannot use is in its errors), then the batch;
    nothing is read of a request over limits.max_request_mb (serve_inputs.request_refusal)."""
    root = serve_root()
    records = rows.reindex(columns=INPUT_COLUMNS).to_dict("records")
    refusal = request_refusal(records, settings.limits.max_request_mb)
    if refusal is not None:
        return ServingRequest(None, [[refusal] for _ in records])
    inputs = [read_row(record, settings, root) for record in records]
    batch = _batch(inputs, lab_state, text_state, settings)
    return ServingRequest(batch, [row.errors for row in inputs])


def serving_batch(
    rows: pd.DataFrame, lab_state: dict, text_state: dict, settings: Settings
) -> dict:
    """The model's batch for these admissions, preprocessed exactly as in the pipeline: a
    tensor per modality, the mask, and `notes` (each admission's text, or None)."""
    request = serving_request(rows, lab_state, text_state, settings)
    if request.batch is None:
        raise ValueError(request.errors[0][0])
    return request.batch


def _batch(inputs: list[RowInputs], lab_state: dict, text_state: dict, settings: Settings) -> dict:
    # Row positions, not the request's ids, key the frames: a row is scored on its own even
    # when two rows share a hadm_id or a subject_id, or a row has none.
    keys = pd.Series(np.arange(len(inputs), dtype=np.int64))
    cohort, patients = _admissions(inputs, keys)
    window_labs = in_window(_labs(inputs), cohort, "charttime", settings.window_hours)
    ehr = LabFeaturizer.from_dict(lab_state).transform(window_labs, cohort, patients)
    from clinfuse.assets.ingest.ehr.deid import deidentify_texts  # Presidio: ~1 s to import

    notes = deidentify_texts([row.notes for row in inputs])  # before any use (docs/privacy.md)
    text = NoteEmbedder.from_state(text_state).transform(
        pd.Series(notes, index=keys, dtype=object).dropna(), keys
    )
    size = settings.image_size
    image, has_image = _stack([row.image for row in inputs], (1, size, size))
    audio_shape = (1, settings.audio.n_mels, settings.audio.frames)
    audio, has_audio = _stack([row.recording for row in inputs], audio_shape)
    has_ehr = keys.isin(window_labs["hadm_id"].dropna().astype("int64")).to_numpy()
    has_text = np.array([t is not None for t in notes], dtype=bool)
    mask = np.stack([has_ehr, has_text, has_image, has_audio], axis=1).reshape(-1, len(MODALITIES))
    return {
        "ehr": torch.from_numpy(ehr.to_numpy(dtype=np.float32, copy=True)),
        "text": torch.from_numpy(np.asarray(text, dtype=np.float32)),
        "image": torch.from_numpy(image),
        "audio": torch.from_numpy(audio),
        "mask": torch.from_numpy(mask),
        "notes": notes,
    }


def _admissions(inputs: list[RowInputs], keys: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    admit = [pd.NaT if row.admittime is None else row.admittime for row in inputs]
    cohort = pd.DataFrame(
        {
            "hadm_id": keys.to_numpy(),
            "subject_id": keys.to_numpy(),
            "admittime": pd.to_datetime(pd.Series(admit, dtype=object)).astype("datetime64[ns]"),
        }
    )
    patients = pd.DataFrame(
        {
            "subject_id": keys.to_numpy(),
            "gender": pd.array([row.gender for row in inputs], dtype="string"),
            "anchor_age": [_float(row.anchor_age) for row in inputs],
            "anchor_year": [_float(row.anchor_year) for row in inputs],
        }
    )
    return cohort, patients


def _float(value: float | None) -> float:
    return np.nan if value is None else value


def _labs(inputs: list[RowInputs]) -> pd.DataFrame:
    labs = [
        (key, key, itemid, charttime, valuenum)
        for key, row in enumerate(inputs)
        for itemid, charttime, valuenum in row.labs or []
    ]
    frame = pd.DataFrame(labs, columns=LAB_COLUMNS)
    frame = frame.astype({"hadm_id": "Int64", "subject_id": "Int64", "itemid": "Int64"})
    frame["charttime"] = pd.to_datetime(frame["charttime"]).astype("datetime64[ns]")
    frame["valuenum"] = frame["valuenum"].astype("float64")
    return frame


def _stack(items: list[np.ndarray | None], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked items (float16-rounded like the shards) and which rows have one."""
    out = np.zeros((len(items), *shape), dtype=np.float32)
    present = np.array([item is not None for item in items], dtype=bool)
    for row, item in enumerate(items):
        if item is not None:
            # The pipeline stores float16 shards; round the same way so both agree.
            out[row] = item.astype(np.float16).astype(np.float32)
    return out, present


def serving_frame(
    cohort: pd.DataFrame,
    labevents: Path | pd.DataFrame,
    notes: pd.DataFrame | Path,
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


def serving_frames(
    cohort: pd.DataFrame,
    window_labs: Path,
    notes: pd.DataFrame | Path,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    landing: Path,
    window_hours: float,
    scratch: Path,
    block: int,
    engine: EngineConfig | None = None,
) -> Iterator[pd.DataFrame]:
    """serving_frame of `cohort`'s rows, `block` admissions at a time, each input read once.

    The notes the admissions may use are cut in one pass (what training holds for every
    admission anyway); their window labs are written once, by DuckDB, into a Parquet file under
    `scratch` ordered by admission, from which each block reads only its own row groups. So a
    block's requests are all that is built at once, and no input is scanned once a block.
    """
    allowed = allowed_note_rows(notes, cohort, window_hours)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="serving-") as folder:
        labs = Path(folder) / "window_labs.parquet"
        write_window_labs(window_labs, cohort, window_hours, labs, engine, by_admission=True)
        for start in range(0, len(cohort), block):
            rows = cohort.iloc[start : start + block]
            wanted = [int(h) for h in rows["hadm_id"]]
            own = pq.read_table(labs, filters=[("hadm_id", "in", wanted)]).to_pandas()
            yield serving_frame(
                rows, own, allowed, dicom_index, recording_index, landing, window_hours
            )


def _text_or_none(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _paths_by_admission(index: pd.DataFrame, chosen: pd.DataFrame, landing: Path) -> dict:
    if chosen.empty:
        return {}
    keyed = index.merge(chosen, on=["hadm_id", "shard", "slot"])
    return {int(h): str(landing / p) for h, p in keyed[["hadm_id", "path"]].itertuples(index=False)}


__all__ = [
    "INPUT_COLUMNS",
    "MODALITIES",
    "OUTPUT_COLUMNS",
    "ServingRequest",
    "serving_batch",
    "serving_frame",
    "serving_frames",
    "serving_request",
    "serving_signature",
]
