"""What the landing zone holds, counted straight from the files, independently of the readers.

The accounting check compares these counts with what the readers say they saw, so a reader that
skips rows silently (a bad quote, a stray header) is caught rather than trusted.

Files as hospitals export them are counted as the readers must take them (landing-zone.md): a
table or manifest that is a link resolving outside the landing zone is never opened and counts
as 1 (one input, quarantined whole); a file's encoding is detected as the readers detect it
(encodings.py); a file with no header, or a header and no row, holds 0 rows. DICOM files are
listed with paths.walk_entries, which never enters a linked folder: a link counts as one file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from clinfuse.assets.ingest.encodings import detect_encoding
from clinfuse.assets.ingest.encodings import open_text as _open_text
from clinfuse.assets.ingest.paths import Zone, is_file_like, walk_entries

EHR_TABLES = ("patients", "admissions", "labevents", "d_labitems", "diagnoses_icd")
SUFFIXES = (".csv", ".csv.gz")


def open_text(path: Path) -> io.TextIOBase:
    """The file as text in its detected encoding, line ends untranslated (csv.reader's wish)."""
    return _open_text(path, detect_encoding(path))


def count_data_rows(path: Path) -> int:
    """Data records of a CSV (header not counted; quoted newlines stay inside their record).

    A file whose records are all blank has no header, so no data row either.
    """
    csv.field_size_limit(1 << 30)
    records = blank = 0
    with open_text(path) as handle:
        for record in csv.reader(handle):
            records += 1
            blank += not record
    return 0 if records == blank else records - 1


def count_file(zone: Zone, path: Path) -> int:
    """count_data_rows, or 1 for a link out of the zone (quarantined whole, never opened)."""
    if not zone.contains(path):
        return 1
    return count_data_rows(path)


def table_files(landing: Path, folder: str) -> list[Path]:
    root = landing / folder
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.endswith(SUFFIXES) and is_file_like(p))


def landing_counts(landing: Path) -> dict[str, int]:
    """seen per table ("ehr/labevents"), per modality ("note", "dicom", "audio")."""
    landing = Path(landing)
    zone = Zone.of(landing)
    counts: dict[str, int] = {}
    for path in table_files(landing, "ehr"):
        name = path.name.removesuffix(".gz").removesuffix(".csv")
        if name in EHR_TABLES:
            counts[f"ehr/{name}"] = counts.get(f"ehr/{name}", 0) + count_file(zone, path)
    counts["note"] = sum(count_file(zone, p) for p in table_files(landing, "note"))
    dicom = landing / "dicom"
    found = walk_entries(dicom) if dicom.is_dir() else iter(())
    counts["dicom"] = sum(1 for p in found if p != dicom / "manifest.csv")
    manifest = landing / "audio" / "manifest.csv"
    counts["audio"] = count_file(zone, manifest) if manifest.is_file() else 0
    return counts
