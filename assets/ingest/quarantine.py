"""The quarantine row: one rejected file or table row, with where it came from and why.

Every ingest stage returns its rejects in this shape so that the `quarantine` asset can
union them and `report.json` can list them (../shared/cli-and-report.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pandas as pd

SOURCES = ("ehr", "note", "dicom", "audio")  # the landing zone's folders
COLUMNS = ["modality", "source", "reason"]


@dataclass(frozen=True)
class Reject:
    """A file or row that was not ingested.

    source is relative to the landing zone: `dicom/a/b.dcm` for a file, `ehr/labevents.csv.gz:17`
    for the 17th data row of a table (1-based, header not counted).
    """

    modality: str
    source: str
    reason: str

    def __post_init__(self) -> None:
        if self.modality not in SOURCES:
            raise ValueError(f"unknown modality {self.modality!r}")


def row_source(table_file: str, row_number: int) -> str:
    """`ehr/labevents.csv.gz:17`: the 1-based data row of a landing-zone table."""
    return f"{table_file}:{row_number}"


def rejects_frame(rejects: Iterable[Reject] = ()) -> pd.DataFrame:
    """A DataFrame with exactly the quarantine columns, empty when there is nothing."""
    rows = [asdict(r) for r in rejects]
    return pd.DataFrame(rows, columns=COLUMNS).astype("string")


# The reasons, in plain words. A reason may add detail after ": " ("bad charttime: '2180-13-01'"
# for a table row, never a DICOM attribute's value), but always starts with one of these, so the
# generator's truth and the tests compare on the prefix.
UNKNOWN_PATIENT = "unknown patient"
UNKNOWN_ADMISSION = "unknown admission"
NO_ADMISSION = "no admission"
DUPLICATE_SUBJECT = "duplicate subject_id"
DUPLICATE_ADMISSION = "duplicate hadm_id"
DUPLICATE_INSTANCE = "duplicate instance"
DUPLICATE_RECORDING = "duplicate recording"
BAD_VALUE = "bad"  # "bad <column>": an unparseable time, a non-numeric id
MISSING_VALUE = "missing"  # "missing <column>": a required value is empty
TRUNCATED_FILE = "truncated file"
NOT_DICOM = "not a DICOM file"
NO_PIXEL_DATA = "no pixel data"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported transfer syntax"
UNDECODABLE_PIXELS = "undecodable pixel data"
# A DICOM whose header declares more pixel data than limits.max_image_mb: never decoded.
IMAGE_TOO_LARGE = "image too large"
DECODER_CRASHED = "decoder crashed"  # the worker process died decoding the file (a segfault, OOM)
NOT_AUDIO = "not an audio file"
EMPTY_RECORDING = "empty recording"
MISSING_FILE = "missing file"
# A link or a manifest path that resolves outside the landing zone: never opened (paths.py).
OUTSIDE_LANDING_ZONE = "outside landing zone"
