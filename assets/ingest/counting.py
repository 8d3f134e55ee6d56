"""What the landing zone holds, counted straight from the files, independently of the readers.

The accounting check compares these counts with what the readers say they saw, so a reader that
skips rows silently (a bad quote, a stray header) is caught rather than trusted.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

EHR_TABLES = ("patients", "admissions", "labevents", "d_labitems", "diagnoses_icd")


def open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to the caller


def count_data_rows(path: Path) -> int:
    """Data records of a CSV (header not counted; quoted newlines stay inside their record)."""
    csv.field_size_limit(1 << 30)
    with open_text(path) as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def table_files(landing: Path, folder: str) -> list[Path]:
    root = landing / folder
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.endswith((".csv", ".csv.gz")))


def landing_counts(landing: Path) -> dict[str, int]:
    """seen per table ("ehr/labevents"), per modality ("note", "dicom", "audio")."""
    counts: dict[str, int] = {}
    for path in table_files(landing, "ehr"):
        name = path.name.removesuffix(".gz").removesuffix(".csv")
        if name in EHR_TABLES:
            counts[f"ehr/{name}"] = counts.get(f"ehr/{name}", 0) + count_data_rows(path)
    counts["note"] = sum(count_data_rows(p) for p in table_files(landing, "note"))
    dicom = landing / "dicom"
    counts["dicom"] = sum(
        1 for p in dicom.rglob("*") if p.is_file() and p != dicom / "manifest.csv"
    )
    manifest = landing / "audio" / "manifest.csv"
    counts["audio"] = count_data_rows(manifest) if manifest.is_file() else 0
    return counts
