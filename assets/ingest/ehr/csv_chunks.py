"""Landing-zone CSV tables, found and read in chunks of text cells with exact data-row numbers.

Row numbers are 1-based data-record numbers, header not counted: a quoted note text that spans
ten physical lines is still one record, and a blank line is a record (an empty one), exactly as
Python's csv module counts them (counting.py, the independent accounting check).

Every file is inspected before a row is read (`inspect_table`): a link resolving outside the
landing zone is never opened (paths.py), and the encoding is detected once for the whole file
(encodings.py: UTF-8 with or without a byte-order mark, else cp1252, else latin-1), so every
chunk and the counter decode it alike. A file with no header at all (0 bytes) reads as 0 rows.

Two tokenizers, one result. `raw_chunks` is pandas' (C engine, python engine from a row with
too many fields on). `engine_chunks` is DuckDB's (engine.py), several times faster on a big
table, but it drops blank lines (a record for csv.reader), trims blanks around a quoted value
and reads a file whose lines end in both LF and CRLF otherwise, so it is used only on a file
that the same pass as the encoding detection found free of all of that (`Layout.engine`), in
UTF-8 or latin-1, and it gives up (`EngineUnsure`) on anything its strict mode rejects; the
caller then reads that file with `raw_chunks` instead. Both yield the same cells for the
files the engine takes (tests/test_tables_engine.py compares them on generated odd files).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from clinfuse.assets.ingest.ehr.engine import EngineConfig, connect, quote_literal, quote_name
from clinfuse.assets.ingest.encodings import (
    BLOCK,
    LATIN1,
    UTF8,
    UTF8_SIG,
    detect_encoding,
    is_compressed,
    open_binary,
)
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
class Layout:
    """What the engine tokenizer needs to know of a file: its line end, when it may read it.

    `newline` is "\\n" or "\\r\\n" for a file in which every line ends the same way, no line is
    blank, no quote touches a blank or a tab and no NUL byte occurs; None otherwise (the file is
    read by pandas, which takes all of that as csv.reader does).
    """

    newline: str | None
    # Data records (header not counted) as the line ends outside quotes count them; DuckDB must
    # hand over exactly this many rows (it has been seen to return none, silently, from a
    # CRLF file in strict mode), else its reading is not trusted.
    records: int | None = None

    @property
    def engine(self) -> bool:
        return self.newline is not None and self.records is not None


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
    layout: Layout | None = None  # inspect_table(layout=True) only

    @property
    def engine_readable(self) -> bool:
        """Whether engine_chunks may read it: a known regular layout in an encoding it has."""
        return self.layout is not None and self.layout.engine and self.encoding in ENGINE_ENCODINGS

    @property
    def outside(self) -> bool:
        return self.real is None

    def read_options(self) -> dict:
        return {"compression": "gzip" if self.compressed else None, "encoding": self.encoding}


def inspect_table(landing: Path, path: Path, layout: bool = False) -> TableFile:
    """Confine, then detect the encoding (one pass over the file's bytes).

    With `layout`, the same pass also finds whether the engine tokenizer may read the file
    (`scan_file`); the encoding found is the same either way.
    """
    label = relative(Path(landing), path)
    compressed = is_compressed(path.name)
    real = Zone.of(landing).real(path)
    if real is None:
        return TableFile(label, None, "", compressed)
    try:
        if layout:
            encoding, found = scan_file(real, compressed)
            return TableFile(label, real, encoding, compressed, found)
        encoding = detect_encoding(real, compressed)
    except _READ_ERRORS as error:
        raise UnreadableTableError(f"{label}: {error}") from error
    return TableFile(label, real, encoding, compressed)


# Byte pairs that make a file irregular for the engine (Layout): a blank line (LF LF, LF CR LF,
# CR CR), a quote beside a blank or a tab (DuckDB trims those, pandas keeps them), NUL. Each
# group is searched only where its first test finds the byte it needs (quotes and CRs are rare).
_BLANK_LF = (b"\n\n", b"\x00")
_BLANK_CR = (b"\n\r\n", b"\r\r")
_QUOTED = (b' "', b'" ', b'\t"', b'"\t')
ENGINE_ENCODINGS = (UTF8, UTF8_SIG, LATIN1)  # built into DuckDB's reader; cp1252 is not


def scan_file(path: Path, compressed: bool) -> tuple[str, Layout]:
    """The file's encoding (exactly encodings.detect_encoding's) and its Layout, in one pass.

    The UTF-8 test is detect_encoding's own (a strict incremental decoder over BLOCK-sized
    reads); only a file that is not UTF-8 is read again, by detect_encoding's fallback chain.
    """
    decoder = codecs.getincrementaldecoder(UTF8)(errors="strict")
    utf8, irregular, started, bom = True, False, False, False
    carry = b""  # the previous block's last bytes: a pattern may straddle two blocks
    lf = cr = crlf = 0
    bare_lf = False
    lines = _LineCounter()
    with open_binary(path, compressed) as handle:
        while block := handle.read(BLOCK):
            if not started:
                started = True
                bom = block.startswith(codecs.BOM_UTF8)
                first = block[len(codecs.BOM_UTF8) :] if bom else block
                irregular = first.startswith((b"\n", b"\r"))  # a blank first line
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
            probe = carry + block
            crs = block.count(b"\r")
            if not irregular:
                irregular = (
                    any(p in probe for p in _BLANK_LF)
                    or (bool(crs or b"\r" in carry) and any(p in probe for p in _BLANK_CR))
                    or (b'"' in probe and any(p in probe for p in _QUOTED))
                )
            lines.add(block)
            cr += crs
            if crs or b"\r" in carry:
                lf += block.count(b"\n")
                crlf += probe.count(b"\r\n") - carry.count(b"\r\n")
            elif b"\n" in block:
                bare_lf = True  # an LF in a block without CR: not a CRLF file
            carry = probe[-2:]
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    encoding = (UTF8_SIG if bom else UTF8) if utf8 else detect_encoding(path, compressed)
    newline = None
    if not irregular and cr == 0:
        newline = "\n"
    elif not irregular and not bare_lf and cr == crlf == lf:
        newline = "\r\n"
    return encoding, Layout(newline, lines.records())


class _LineCounter:
    """Records of a CSV whose quotes are RFC 4180's: line ends outside quotes, plus a last line
    without one. A quote inside an unquoted field throws the count off, which only means the
    engine's count will not match and pandas reads the file."""

    def __init__(self) -> None:
        self.ends = 0
        self.inside = False  # within a quoted field at the end of the last block
        self.last = b""

    def add(self, block: bytes) -> None:
        self.last = block[-1:]
        if b'"' not in block:
            if not self.inside:
                self.ends += block.count(b"\n")
            return
        data = np.frombuffer(block, dtype=np.uint8)
        quotes = np.flatnonzero(data == ord('"'))
        ends = np.flatnonzero(data == ord("\n"))
        before = np.searchsorted(quotes, ends) + int(self.inside)
        self.ends += int(np.count_nonzero(before % 2 == 0))
        self.inside = bool((len(quotes) + int(self.inside)) % 2)

    def records(self) -> int | None:
        if self.inside:
            return None  # an unclosed quote
        lines = self.ends + (1 if self.last not in (b"", b"\n") else 0)
        return max(lines - 1, 0)


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


class EngineUnsure(Exception):
    """The engine tokenizer will not vouch for this file: read it with raw_chunks instead."""


@dataclass
class ArrowChunk:
    """Text cells of the wanted columns as Arrow arrays (null = empty), and their row numbers.

    With `extra` SQL columns asked for (table_schema.engine_select), `extra` holds them.
    """

    columns: dict[str, pa.Array]
    index: pd.RangeIndex  # 1-based data-row numbers
    extra: dict[str, pa.Array] = field(default_factory=dict)


def engine_chunks(
    table: TableFile,
    wanted: Sequence[str],
    chunksize: int,
    config: EngineConfig | None = None,
    extra: Callable[[list[str]], list[str]] | None = None,
) -> Iterator[ArrowChunk]:
    """The table in chunks of Arrow text cells, tokenized by DuckDB (table.engine_readable).

    Every column of the header is declared VARCHAR and tokenized (a row with a field too many
    or too few is an error, never shifted); only `wanted` ones come back. Rows come in file
    order, so the n-th row is data record n. Raises EngineUnsure when DuckDB rejects the file
    at any point: rows already yielded must then be discarded by the caller. Reading runs on
    a thread of its own, one chunk ahead, so DuckDB tokenizes while the caller parses.
    """
    assert table.engine_readable and table.layout is not None and table.real is not None
    header = read_header(table)
    if header is None:
        return
    keep = [c for c in header if c in set(wanted)]
    more = extra(header) if extra is not None else []
    query = _engine_query(table, header, keep, more)
    done = 0
    for batch in _prefetched(query, chunksize, config):
        n = batch.num_rows
        if not n:
            continue
        columns = {name: batch.column(i) for i, name in enumerate(keep)}
        added = {name: batch.column(name) for name in batch.schema.names[len(keep) :]}
        yield ArrowChunk(columns, pd.RangeIndex(done + 1, done + 1 + n, name="row"), added)
        done += n


def _engine_query(
    table: TableFile, header: list[str], keep: list[str], extra: Sequence[str] = ()
) -> str:
    assert table.layout is not None and table.layout.newline is not None
    declared = ", ".join(f"{quote_literal(name)}: 'VARCHAR'" for name in header)
    options = {
        "delim": "','",
        "quote": "'\"'",
        "escape": "'\"'",
        "header": "true",
        "auto_detect": "false",
        "null_padding": "false",
        "ignore_errors": "false",
        "encoding": quote_literal("latin-1" if table.encoding == LATIN1 else "utf-8"),
        "new_line": quote_literal(table.layout.newline.replace("\r", "\\r").replace("\n", "\\n")),
        "compression": quote_literal("gzip" if table.compressed else "none"),
        "columns": "{" + declared + "}",
    }
    # strict_mode is DuckDB's default (a row with a field too many or too few is an error), and
    # is not set: DuckDB 2.0.1 set explicitly to true with new_line '\\r\\n' returns no row at all.
    args = ", ".join(f"{k} = {v}" for k, v in options.items())
    selected = ", ".join([*(quote_name(name) for name in keep), *extra]) or "NULL AS _none"
    return f"SELECT {selected} FROM read_csv({quote_literal(str(table.real))}, {args})"


_DONE = object()


def _prefetched(
    query: str, chunksize: int, config: EngineConfig | None
) -> Iterator[pa.RecordBatch]:
    """The query's record batches, fetched on a thread one batch ahead (DuckDB frees the GIL)."""
    out: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch() -> None:
        try:
            con = connect(config)
            try:
                reader = con.sql(query).to_arrow_reader(chunksize)
                for batch in reader:
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            finally:
                con.close()
            out.put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            out.put(error)

    worker = threading.Thread(target=fetch, name="engine-csv", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                import duckdb

                if isinstance(item, duckdb.Error):
                    raise EngineUnsure(str(item).splitlines()[0]) from item
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                out.get_nowait()
            worker.join(timeout=0.05)


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
    except (pd.errors.ParserError, csv.Error):
        # csv.Error: the python engine's csv module on a quote it cannot place ("x" y)
        if engine == "python":
            raise UnreadableTableError(f"{table.label}: cannot be parsed as CSV") from None
        raise
    except _READ_ERRORS as error:
        raise UnreadableTableError(f"{table.label}: {error}") from error
