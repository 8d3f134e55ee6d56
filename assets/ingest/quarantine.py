"""The quarantine row: one rejected file or table row, with where it came from and why.

Every ingest stage returns its rejects in this shape so that the `quarantine` asset can
union them and `report.json` can list them (../shared/cli-and-report.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pandas as pd

MODALITIES = ("ehr", "note", "dicom", "audio")
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
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}")


def row_source(table_file: str, row_number: int) -> str:
    """`ehr/labevents.csv.gz:17`: the 1-based data row of a landing-zone table."""
    return f"{table_file}:{row_number}"


def rejects_frame(rejects: Iterable[Reject] = ()) -> pd.DataFrame:
    """A DataFrame with exactly the quarantine columns, empty when there is nothing."""
    rows = [asdict(r) for r in rejects]
    return pd.DataFrame(rows, columns=COLUMNS).astype("string")
