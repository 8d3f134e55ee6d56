"""The study index: every decoded DICOM file of every delivery linked to an admission, or rejected.

Plain code (no Dagster). Accounting: `seen` is the number of files (the records of every
delivery: all files under dicom/ except dicom/manifest.csv), and every one of them ends either in
`index` or in `rejects` with its path as source. Rejected manifest rows (source
`dicom/manifest.csv:N`) are in `rejects` too but are not files: they do not count in seen.

A file is rejected, in this order, when it
- was rejected by its decoder (reader.py: outside the landing zone, unreadable, undecodable...);
- cannot be linked (`link_to_admissions`): "unknown patient" (PatientID not an integer or not
  in patients; a manifest row overrides it), "unknown admission" (a manifest hadm_id that is not
  the patient's), "no admission" (no admission of the patient holds the study time, or there is
  neither a study time nor a hadm_id);
- repeats an ingested file: "duplicate instance" (same SOPInstanceUID, or the same bytes when it
  has none). The file kept is the first of the earliest delivery, in path order within one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.decoded import DecodeStore, is_missing, typed
from clinfuse.assets.ingest.dicom.delivery import RECORD_DTYPES, decode_delivery
from clinfuse.assets.ingest.dicom.manifest import ManifestEntry, read_manifest
from clinfuse.assets.ingest.dicom.pixels import DEFAULT_MAX_IMAGE_MB
from clinfuse.assets.ingest.dicom.reader import SHARD_PREFIX, Decoding, discover
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.ingest.quarantine import DUPLICATE_INSTANCE, Reject, rejects_frame


def _index_dtypes() -> dict[str, str]:
    """The records' columns, less the decoder's reason, plus the linked admission."""
    dtypes: dict[str, str] = {}
    for name, dtype in RECORD_DTYPES.items():
        if name != "reason":
            dtypes[name] = dtype
        if name == "subject_id":
            dtypes["hadm_id"] = "Int64"
    return dtypes


INDEX_DTYPES = _index_dtypes()
LINK_BATCH = 256  # records linked to admissions per call (link_to_admissions is vectorised)


@dataclass
class DicomIngest:
    index: pd.DataFrame  # INDEX_DTYPES, one row per ingested file
    rejects: pd.DataFrame  # quarantine columns: manifest rows first, then files in path order
    seen: int
    shards: list[str]


def link_studies(
    landing: Path, records: pd.DataFrame, admissions: pd.DataFrame, known_subjects: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, rejects) of the records of every delivery, in delivery order then path order.

    admissions: subject_id, hadm_id, admittime, dischtime; known_subjects: patients' subject_id.
    """
    dicom_dir = Path(landing) / "dicom"
    relatives = {p.removeprefix("dicom/") for p in records["path"]}
    manifest, manifest_rejects = read_manifest(dicom_dir, relatives)
    decider = _Decider(manifest, admissions, known_subjects)
    decider.add(records.to_dict("records"))
    decider.flush()
    rejects = manifest_rejects + sorted(decider.rejects, key=lambda r: r.source)
    return decider.index(), rejects_frame(rejects)


def ingest_dicom(
    landing: Path,
    shard_dir: Path,
    admissions: pd.DataFrame,
    known_subjects: pd.Series,
    image_size: int,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
) -> DicomIngest:
    """Every file under <landing>/dicom/ as one delivery, decoded into `shard_dir` and linked.

    What the assets do delivery by delivery, at once: for tests, benchmarks and scripts.
    """
    files = [f"dicom/{p}" for p in discover(Path(landing) / "dicom")]
    store = DecodeStore(Path(shard_dir), (1, image_size, image_size), SHARD_PREFIX)
    Path(shard_dir).mkdir(parents=True, exist_ok=True)
    decoding = Decoding(image_size, max_image_mb)
    decoded = decode_delivery(
        landing, files, store, "all", decoding, workers or os.cpu_count() or 1, progress
    )
    store.save("all", decoded.records)
    index, rejects = link_studies(landing, decoded.records, admissions, known_subjects)
    return DicomIngest(index, rejects, len(files), list(store.shards_of(decoded.records)))


@dataclass
class _Decider:
    """Turns records, in order, into index rows (their image already in a shard) or rejects."""

    manifest: dict[str, ManifestEntry]
    admissions: pd.DataFrame
    known_subjects: pd.Series
    rejects: list[Reject] = field(default_factory=list)
    _rows: list[dict[str, object]] = field(default_factory=list)
    _waiting: list[dict[str, object]] = field(default_factory=list)
    _kept_keys: set[str] = field(default_factory=set)

    def add(self, records: Iterable[dict[str, object]]) -> None:
        for record in records:
            if not pd.isna(record["reason"]):
                self._reject(str(record["path"]), str(record["reason"]))
            else:
                self._waiting.append(self._row(record))
            if len(self._waiting) >= LINK_BATCH:
                self.flush()

    def flush(self) -> None:
        if not self._waiting:
            return
        linked = link_to_admissions(
            _typed(pd.DataFrame(self._waiting), ["subject_id", "hadm_id", "study_datetime"]),
            self.admissions,
            self.known_subjects,
            "study_datetime",
        )
        for row, hadm, problem in zip(
            self._waiting, linked["linked_hadm_id"], linked["link_problem"], strict=True
        ):
            if not pd.isna(problem):
                self._reject(str(row["path"]), str(problem))
            else:
                self._keep(row, int(hadm))
        self._waiting.clear()

    def _row(self, record: dict[str, object]) -> dict[str, object]:
        row = {column: record.get(column) for column in INDEX_DTYPES}
        row = {k: (None if is_missing(v) else v) for k, v in row.items()}
        row["hadm_id"] = None
        entry = self.manifest.get(str(record["path"]).removeprefix("dicom/"))
        if entry is not None:  # the manifest overrides the tags for the files it names
            row["subject_id"] = entry.subject_id
            row["hadm_id"] = entry.hadm_id
            if entry.study_datetime is not None:
                row["study_datetime"] = entry.study_datetime
        return row

    def _keep(self, row: dict[str, object], hadm_id: int) -> None:
        keys = {f"sha256:{row['sha256']}"}
        if row["instance_key"] is not None:
            keys.add(f"uid:{row['instance_key']}")
        if keys & self._kept_keys:
            self._reject(str(row["path"]), DUPLICATE_INSTANCE)
            return
        self._kept_keys |= keys
        self._rows.append({**row, "hadm_id": hadm_id})

    def _reject(self, path: str, reason: str) -> None:
        self.rejects.append(Reject("dicom", path, reason))

    def index(self) -> pd.DataFrame:
        return _typed(pd.DataFrame(self._rows, columns=list(INDEX_DTYPES)), list(INDEX_DTYPES))


def _typed(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    dtypes = {**RECORD_DTYPES, **INDEX_DTYPES}
    return typed(frame, {column: dtypes[column] for column in columns})
