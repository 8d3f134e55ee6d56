"""Landing-zone CSV tables, found and read in chunks of text cells with exact data-row numbers.

Row numbers are 1-based data-record numbers, header not counted: a quoted note text that spans
ten physical lines is still one record, and a blank line is a record (an empty one), exactly as
Python's csv module counts them (counting.py, the independent accounting check).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SUFFIXES = (".csv", ".csv.gz")
# What a row with too many fields is replaced by (python engine), so it keeps its place and its
# row number and is quarantined instead of vanishing. NUL never occurs in a text CSV.
_MALFORMED = "\x00"


class MissingColumnsError(ValueError):
    """A table lacks required columns: a blocking problem with the export, not a row reject."""

    def __init__(self, table: str, missing: Sequence[str]) -> None:
        self.table = table
        self.missing = tuple(missing)
        super().__init__(f"{table} lacks required columns: {', '.join(self.missing)}")


class AmbiguousTableError(ValueError):
    """Both ehr/<name>.csv and ehr/<name>.csv.gz exist: which one is the export is unknowable."""


class UnreadableTableError(ValueError):
    """The file itself cannot be read to its end (truncated gzip, not UTF-8, unclosed quote)."""


def find_table(landing: Path, name: str, folder: str = "ehr") -> Path | None:
    """ehr/<name>.csv or ehr/<name>.csv.gz; None when neither exists."""
    found = [landing / folder / f"{name}{s}" for s in SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        both = " and ".join(f"{folder}/{p.name}" for p in found)
        raise AmbiguousTableError(f"both {both} exist; keep only one")
    return found[0] if found else None


def table_files(landing: Path, folder: str) -> list[Path]:
    """Every .csv / .csv.gz directly in `folder`, sorted; an error if a table comes in both."""
    root = landing / folder
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    stems = [p.name.removesuffix(".gz").removesuffix(".csv") for p in files]
    for stem in sorted({s for s in stems if stems.count(s) > 1}):
        raise AmbiguousTableError(f"both {folder}/{stem}.csv and {folder}/{stem}.csv.gz exist")
    return files


def relative(landing: Path, path: Path) -> str:
    """`ehr/labevents.csv.gz`: a file as the quarantine and the report name it."""
    return path.relative_to(landing).as_posix()


def read_header(path: Path, label: str) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0, dtype=str).columns]
    except pd.errors.EmptyDataError as error:
        raise UnreadableTableError(f"{label}: empty file, no header") from error
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise UnreadableTableError(f"{label}: {error}") from error


def require_columns(header: Sequence[str], required: Sequence[str], label: str) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise MissingColumnsError(label, missing)


@dataclass
class RawChunk:
    """Text cells ("" = empty) of the wanted columns, indexed by 1-based data-row number."""

    cells: pd.DataFrame
    malformed: np.ndarray  # bool per row: more fields than the header


def raw_chunks(path: Path, wanted: Sequence[str], chunksize: int, label: str) -> Iterator[RawChunk]:
    """The table in chunks of text cells; only `wanted` columns are kept.

    Every column is tokenized, not only the wanted ones (no `usecols`): with usecols, pandas takes
    a row with an extra field (an unquoted comma) positionally and silently shifts its values.
    Without, the fast C engine stops at such a row; the file is then read again from where it
    stopped with the python engine, which hands the row back so it is quarantined in place.
    Measured on MIMIC's labevents, reading every column costs about the same as usecols.
    """
    header = read_header(path, label)
    keep = [c for c in header if c in set(wanted)]
    done = 0
    try:
        for chunk in _reader(path, chunksize, "c", len(header), label):
            yield _raw(chunk, keep, done)
            done += len(chunk)
        return
    except pd.errors.ParserError:
        pass  # a row with too many fields: carry on with the engine that can hand it back
    skip = done
    for chunk in _reader(path, chunksize, "python", len(header), label):
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk.iloc[dropped:], skip - dropped
            if chunk.empty:
                continue
        yield _raw(chunk, keep, done)
        done += len(chunk)


def _raw(chunk: pd.DataFrame, keep: list[str], done: int) -> RawChunk:
    cells = chunk[keep]
    cells.index = pd.RangeIndex(done + 1, done + 1 + len(chunk), name="row")
    if not keep:
        return RawChunk(cells, np.zeros(len(cells), dtype=bool))
    malformed = (chunk.iloc[:, 0] == _MALFORMED).to_numpy(dtype=bool)
    if malformed.any():
        cells = cells.copy()
        cells.loc[malformed, :] = ""
    return RawChunk(cells, malformed)


def _reader(
    path: Path, chunksize: int, engine: str, n_fields: int, label: str
) -> Iterator[pd.DataFrame]:
    options: dict = {}
    if engine == "python":
        options["on_bad_lines"] = lambda _fields: [_MALFORMED] * n_fields
    try:
        with pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,  # "" stays "", "NA" stays "NA": we decide what is empty
            na_filter=False,
            skip_blank_lines=False,  # a blank line is a record for csv.reader: count it too
            chunksize=chunksize,
            engine=engine,
            encoding="utf-8",
            **options,
        ) as reader:
            yield from reader
    except pd.errors.ParserError:
        if engine == "python":
            raise UnreadableTableError(f"{label}: cannot be parsed as CSV") from None
        raise
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, gzip.BadGzipFile) as error:
        raise UnreadableTableError(f"{label}: {error}") from error
