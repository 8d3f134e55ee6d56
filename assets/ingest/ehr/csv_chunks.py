"""Landing-zone CSV tables, found and read in chunks of text cells with exact data-row numbers.

Row numbers are 1-based data-record numbers, header not counted: a quoted note text that spans
ten physical lines is still one record, and a blank line is a record (an empty one), exactly as
Python's csv module counts them (counting.py, the independent accounting check).

Every file is inspected before a row is read (`inspect_table`): a link resolving outside the
landing zone is never opened (paths.py), and the encoding is detected once for the whole file
(encodings.py: UTF-8 with or without a byte-order mark, else cp1252, else latin-1), so every
chunk and the counter decode it alike. A file with no header at all (0 bytes) reads as 0 rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinfuse.assets.ingest.encodings import detect_encoding, is_compressed
from clinfuse.assets.ingest.paths import Zone, is_file_like

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
    """The file itself cannot be read to its end (truncated gzip, unclosed quote)."""


# What reading a file's bytes raises when the file itself is bad (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def find_table(landing: Path, name: str, folder: str = "ehr") -> Path | None:
    """ehr/<name>.csv or ehr/<name>.csv.gz; None when neither exists."""
    found = [landing / folder / f"{name}{s}" for s in SUFFIXES]
    found = [p for p in found if is_file_like(p)]
    if len(found) > 1:
        both = " and ".join(f"{folder}/{p.name}" for p in found)
        raise AmbiguousTableError(f"both {both} exist; keep only one")
    return found[0] if found else None


def table_files(landing: Path, folder: str) -> list[Path]:
    """Every .csv / .csv.gz directly in `folder`, sorted; an error if a table comes in both."""
    root = landing / folder
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.name.endswith(SUFFIXES) and is_file_like(p))
    stems = [p.name.removesuffix(".gz").removesuffix(".csv") for p in files]
    for stem in sorted({s for s in stems if stems.count(s) > 1}):
        raise AmbiguousTableError(f"both {folder}/{stem}.csv and {folder}/{stem}.csv.gz exist")
    return files


def relative(landing: Path, path: Path) -> str:
    """`ehr/labevents.csv.gz`: a file as the quarantine and the report name it."""
    return path.relative_to(landing).as_posix()


@dataclass(frozen=True)
class TableFile:
    """A table file as found, before any row is read: what to open and how to decode it.

    `real` is the file opened (a link resolved); None when the path resolves outside the landing
    zone, and then nothing of it is ever opened. Compression follows the name in the landing
    zone (`.csv.gz`), not the name of a link's target.
    """

    label: str  # relative to the landing zone: ehr/labevents.csv.gz
    real: Path | None
    encoding: str  # encodings.py; "" when outside
    compressed: bool

    @property
    def outside(self) -> bool:
        return self.real is None

    def read_options(self) -> dict:
        return {"compression": "gzip" if self.compressed else None, "encoding": self.encoding}


def inspect_table(landing: Path, path: Path) -> TableFile:
    """Confine, then detect the encoding (one pass over the file's bytes)."""
    label = relative(Path(landing), path)
    compressed = is_compressed(path.name)
    real = Zone.of(landing).real(path)
    if real is None:
        return TableFile(label, None, "", compressed)
    try:
        encoding = detect_encoding(real, compressed)
    except _READ_ERRORS as error:
        raise UnreadableTableError(f"{label}: {error}") from error
    return TableFile(label, real, encoding, compressed)


def read_header(table: TableFile) -> list[str] | None:
    """The column names; None when the file holds no header at all (0 bytes, blank lines)."""
    assert table.real is not None, "never opened: outside the landing zone"
    try:
        frame = pd.read_csv(table.real, nrows=0, dtype=str, **table.read_options())
    except pd.errors.EmptyDataError:
        return None
    except _READ_ERRORS as error:
        raise UnreadableTableError(f"{table.label}: {error}") from error
    return [str(c) for c in frame.columns]


def require_columns(header: Sequence[str], required: Sequence[str], label: str) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise MissingColumnsError(label, missing)


@dataclass
class RawChunk:
    """Text cells ("" = empty) of the wanted columns, indexed by 1-based data-row number."""

    cells: pd.DataFrame
    malformed: np.ndarray  # bool per row: more fields than the header


def raw_chunks(table: TableFile, wanted: Sequence[str], chunksize: int) -> Iterator[RawChunk]:
    """The table in chunks of text cells; only `wanted` columns are kept.

    Every column is tokenized, not only the wanted ones (no `usecols`): with usecols, pandas takes
    a row with an extra field (an unquoted comma) positionally and silently shifts its values.
    Without, the fast C engine stops at such a row; the file is then read again from where it
    stopped with the python engine, which hands the row back so it is quarantined in place.
    Measured on MIMIC's labevents, reading every column costs about the same as usecols.
    """
    header = read_header(table)
    if header is None:
        return
    keep = [c for c in header if c in set(wanted)]
    done = 0
    try:
        for chunk in _reader(table, chunksize, "c", len(header)):
            yield _raw(chunk, keep, done)
            done += len(chunk)
        return
    except pd.errors.ParserError:
        pass  # a row with too many fields: carry on with the engine that can hand it back
    skip = done
    for chunk in _reader(table, chunksize, "python", len(header)):
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


def _reader(table: TableFile, chunksize: int, engine: str, n_fields: int) -> Iterator[pd.DataFrame]:
    options: dict = {}
    if engine == "python":
        options["on_bad_lines"] = lambda _fields: [_MALFORMED] * n_fields
    try:
        with pd.read_csv(
            table.real,
            dtype=str,
            keep_default_na=False,  # "" stays "", "NA" stays "NA": we decide what is empty
            na_filter=False,
            skip_blank_lines=False,  # a blank line is a record for csv.reader: count it too
            chunksize=chunksize,
            engine=engine,
            **table.read_options(),
            **options,
        ) as reader:
            yield from reader
    except pd.errors.ParserError:
        if engine == "python":
            raise UnreadableTableError(f"{table.label}: cannot be parsed as CSV") from None
        raise
    except _READ_ERRORS as error:
        raise UnreadableTableError(f"{table.label}: {error}") from error
