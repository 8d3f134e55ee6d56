"""dicom/manifest.csv: per-file overrides of the patient, the admission and the study time.

landing-zone.md: `path` (relative to dicom/), `subject_id` [, `hadm_id`, `study_datetime`].
A row that cannot be used is quarantined with source `dicom/manifest.csv:N` (1-based data row)
and the file it names, if any, is read as if the manifest did not mention it (its tags decide).
Manifest rows are not files, so these rejects do not count in the DICOM `seen`.

A row whose path leaves dicom/ (`../x.dcm`, `/etc/x`) is "outside landing zone", and so is the
manifest itself when it is a link resolving outside the zone (never opened; source
`dicom/manifest.csv`). The manifest is decoded in its detected encoding (encodings.py).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.dicom.header import parse_integer
from clinfuse.assets.ingest.encodings import detect_encoding
from clinfuse.assets.ingest.paths import Zone
from clinfuse.assets.ingest.quarantine import (
    BAD_VALUE,
    MISSING_FILE,
    MISSING_VALUE,
    OUTSIDE_LANDING_ZONE,
    Reject,
    row_source,
)

MANIFEST = "manifest.csv"
SOURCE = f"dicom/{MANIFEST}"
REQUIRED = ("path", "subject_id")


@dataclass(frozen=True)
class ManifestEntry:
    subject_id: int
    hadm_id: int | None
    study_datetime: datetime | None


class _RowError(Exception):
    pass


def read_manifest(
    dicom_dir: Path, files: set[str]
) -> tuple[dict[str, ManifestEntry], list[Reject]]:
    """Entries by path relative to dicom/, and the rejected rows.

    `files` are the paths (relative to dicom/, posix) that exist: a row naming anything else is
    "missing file". A path named twice keeps its first row.
    """
    table, problem = _load(Path(dicom_dir))
    if table is None:
        return {}, [problem] if problem is not None else []
    table.columns = [str(c).strip().lower() for c in table.columns]
    absent = [c for c in REQUIRED if c not in table.columns]
    if absent:
        return {}, [Reject("dicom", SOURCE, f"{MISSING_VALUE} {absent[0]} column")]
    entries: dict[str, ManifestEntry] = {}
    rejects: list[Reject] = []
    for number, row in enumerate(table.to_dict("records"), start=1):
        try:
            relative, entry = _entry(row, files)
            if relative in entries:
                raise _RowError(f"{BAD_VALUE} path: named by an earlier row")
            entries[relative] = entry
        except _RowError as error:
            rejects.append(Reject("dicom", row_source(SOURCE, number), str(error)))
    return entries, rejects


def _load(dicom_dir: Path) -> tuple[pd.DataFrame | None, Reject | None]:
    """The manifest's cells as text; (None, why) when there is no table to use."""
    path = dicom_dir / MANIFEST
    if not path.is_file():
        return None, None
    real = Zone.of(dicom_dir.parent).real(path)
    if real is None:
        return None, Reject("dicom", SOURCE, OUTSIDE_LANDING_ZONE)
    try:
        encoding = detect_encoding(real, compressed=False)
        return pd.read_csv(real, dtype=str, keep_default_na=False, encoding=encoding), None
    except pd.errors.EmptyDataError:  # 0 bytes: no row, so nothing to override
        return None, None
    except Exception:  # binary, unbalanced quotes
        return None, Reject("dicom", SOURCE, f"{BAD_VALUE} manifest")


def _entry(row: dict[str, str], files: set[str]) -> tuple[str, ManifestEntry]:
    relative = _relative_path(row.get("path", ""))
    if relative not in files:
        raise _RowError(MISSING_FILE)
    subject = _required_id(row, "subject_id")
    hadm = _optional_id(row, "hadm_id")
    when = _optional_time(row, "study_datetime")
    return relative, ManifestEntry(subject, hadm, when)


def _relative_path(text: str) -> str:
    text = (text or "").strip().replace("\\", "/")
    if not text:
        raise _RowError(f"{MISSING_VALUE} path")
    normal = posixpath.normpath(text)
    if normal.startswith(("/", "../")) or normal == "..":
        raise _RowError(OUTSIDE_LANDING_ZONE)  # resolved against dicom/, it leaves dicom/
    if normal == ".":
        raise _RowError(f"{BAD_VALUE} path")
    return normal


def _required_id(row: dict[str, str], column: str) -> int:
    text = (row.get(column) or "").strip()
    if not text:
        raise _RowError(f"{MISSING_VALUE} {column}")
    value = parse_integer(text)
    if value is None:
        raise _RowError(f"{BAD_VALUE} {column}")
    return value


def _optional_id(row: dict[str, str], column: str) -> int | None:
    if not (row.get(column) or "").strip():
        return None
    return _required_id(row, column)


def _optional_time(row: dict[str, str], column: str) -> datetime | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        raise _RowError(f"{BAD_VALUE} {column}") from None
    if pd.isna(stamp):
        raise _RowError(f"{BAD_VALUE} {column}")
    if stamp.tzinfo is not None:  # wall-clock time kept, as for DICOM's DT offsets
        stamp = stamp.tz_localize(None)
    return stamp.to_pydatetime()
