"""Streaming CSV tables that count their rows, byte-identical for a seed.

Rows go to disk as they are made (memory stays flat in the number of admissions) and every
write returns the row's 1-based data row number, which is how the truth names a bad row
(`ehr/labevents.csv.gz:17`, ../shared/cli-and-report.md).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime(TIME_FORMAT)


def open_deterministic(
    path: Path, compresslevel: int = 9
) -> tuple[io.TextIOWrapper, io.BufferedWriter]:
    """A text handle and the file below it; .gz files get mtime 0 and no name in the header,
    so the bytes repeat. Close the text handle first, then the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = open(path, "wb")  # noqa: SIM115 - the caller closes it
    binary: io.BufferedIOBase = raw
    if path.name.endswith(".gz"):
        binary = gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel
        )
    return io.TextIOWrapper(binary, encoding="utf-8", newline=""), raw


class Table:
    """One landing-zone table file; `source` is its path relative to the landing zone."""

    def __init__(
        self, root: Path, source: str, columns: Sequence[str], compresslevel: int = 9
    ) -> None:
        self.source = source
        self.columns = tuple(columns)
        self.rows = 0
        self._handle, self._file = open_deterministic(root / source, compresslevel)
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(self.columns)

    def write(self, row: dict[str, Any]) -> int:
        """Writes one row (missing or None values are empty); returns its data row number."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.source}: no columns {sorted(unknown)}")
        self._writer.writerow([_cell(row.get(c)) for c in self.columns])
        self.rows += 1
        return self.rows

    def write_block(self, text: str, rows: int) -> int:
        """Writes `rows` ready-made CSV rows ("\\n"-ended, in this table's columns); returns the
        data row number of the first."""
        self._handle.write(text)
        first = self.rows + 1
        self.rows += rows
        return first

    def where(self, row_number: int) -> str:
        return f"{self.source}:{row_number}"

    def close(self) -> None:
        self._handle.close()  # flushes the gzip trailer into the file
        self._file.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value)
    return str(value)
