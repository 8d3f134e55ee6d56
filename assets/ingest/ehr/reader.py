"""The EHR tables of a landing zone (ehr/, MIMIC-IV hosp layout) as typed tables with rejects.

Every table is read in chunks of text cells and parsed column by column (table_schema.py), so a
row is ingested or quarantined with a reason, never coerced silently. Row numbers in a reject's
source (`ehr/labevents.csv.gz:17`) are 1-based data-record numbers, header not counted; a quoted
value spanning several physical lines is one record (csv_chunks.py).

labevents is streamed: chunk by chunk it is parsed, linked to its admission and appended to one
Parquet file, so memory holds one chunk whatever the table's size (MIMIC-IV's is ~118M rows).
Its chunks are tokenized by DuckDB (csv_chunks.engine_chunks) when the file's layout allows,
else, and whenever DuckDB gives up on the file, by pandas: the rows, rejects and row numbers are
the same either way. diagnoses_icd and the notes are parsed and checked chunk by chunk too:
only their good rows are kept, never the whole table's text cells.

Files as hospitals export them (landing-zone.md): a table file that is a link resolving outside
the landing zone is never opened; it counts as one seen input, quarantined "outside landing
zone" with the file as source. A file in a legacy encoding is read by fallback and named in
`encodings`; a 0-byte or header-only file holds 0 rows and is named in `empty_files`.
Plain code: no Dagster.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinfuse.assets.ingest.ehr import table_schema as ts
from clinfuse.assets.ingest.ehr.csv_chunks import (
    AmbiguousTableError,
    EngineUnsure,
    MissingColumnsError,
    TableFile,
    UnreadableTableError,
    engine_chunks,
    inspect_table,
    raw_chunks,
    read_header,
    require_columns,
)
from clinfuse.assets.ingest.ehr.csv_chunks import find_table as _find_table
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.ingest.ehr.parquet_sink import ParquetSink
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.ingest.quarantine import (
    BAD_VALUE,
    DUPLICATE_ADMISSION,
    DUPLICATE_SUBJECT,
    OUTSIDE_LANDING_ZONE,
    UNKNOWN_ADMISSION,
    UNKNOWN_PATIENT,
    Reject,
    rejects_frame,
)

__all__ = [
    "AmbiguousTableError",
    "MissingColumnsError",
    "TableRead",
    "UnreadableTableError",
    "find_table",
    "read_admissions",
    "read_d_labitems",
    "read_diagnoses",
    "read_patients",
    "stream_labevents",
]

CHUNKSIZE = 500_000
DUPLICATE_ITEM = "duplicate itemid"
ENGINE = "duckdb"  # a `tokenizers` value: the file was tokenized by DuckDB's CSV reader
PANDAS = "pandas"  # ... by pandas' (the layout did not allow DuckDB, or DuckDB gave up)
LAB_COLUMNS = list(ts.LABEVENTS.output_kinds())
NO_HEADER = "no header"  # an empty_files value: 0 bytes (or blank lines only), not even a header
HEADER_ONLY = "header only"  # an empty_files value: a header and no data row


@dataclass
class TableRead:
    """One table read: the good rows, the rejects, and the counts the report shows.

    seen = ingested + len(rejects). `file` is relative to the landing zone, None when the table
    is absent. For labevents `rows` is empty (the rows are in the Parquet file) and `ingested`
    counts them. `coerced` counts optional cells that did not parse and were left empty.
    `encodings`: every file read -> its encoding (encodings.py); `empty_files`: every file that
    holds no data row -> NO_HEADER or HEADER_ONLY. Both are for the run log and the metadata.
    `tokenizers`: labevents' file -> ENGINE or PANDAS, which tokenizer read it.
    """

    rows: pd.DataFrame
    rejects: pd.DataFrame
    seen: int
    file: str | None
    ingested: int = -1
    coerced: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)
    empty_files: dict[str, str] = field(default_factory=dict)
    tokenizers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ingested < 0:
            self.ingested = len(self.rows)


def find_table(landing: Path, name: str) -> Path | None:
    """ehr/<name>.csv or ehr/<name>.csv.gz; None when absent, an error when both exist."""
    return _find_table(Path(landing), name, "ehr")


# -- reading one table into memory -----------------------------------------------------------


@dataclass
class Loaded:
    """A table being checked: typed rows and the first reason of each rejected one.

    Both are indexed by data-row number; checks only ever add reasons, so each rejected row
    is reported once with the first problem found.
    """

    frame: pd.DataFrame
    reasons: pd.Series
    seen: int
    file: str | None
    modality: str
    coerced: dict[str, int]
    # Rejects of the file as a whole (a link out of the landing zone); each counts in `seen`.
    file_rejects: list[Reject] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)
    empty_files: dict[str, str] = field(default_factory=dict)

    @property
    def good(self) -> pd.DataFrame:
        return self.frame[self.reasons.isna().to_numpy()]

    def reject(self, mask: pd.Series, reason: str | pd.Series) -> None:
        """Quarantine the rows where mask is True (mask indexed by row number, may be a subset)."""
        full = mask.reindex(self.reasons.index, fill_value=False).to_numpy(dtype=bool)
        if isinstance(reason, pd.Series):
            reason = reason.reindex(self.reasons.index)
        self.reasons = ts.first_reason(self.reasons, full, reason)

    def result(self) -> TableRead:
        rejects = reasons_to_rejects(self.reasons, self.file, self.modality)
        if self.file_rejects:
            rejects = pd.concat([rejects_frame(self.file_rejects), rejects], ignore_index=True)
        return TableRead(
            rows=self.good.reset_index(drop=True),
            rejects=rejects,
            seen=self.seen,
            file=self.file,
            coerced=self.coerced,
            encodings=self.encodings,
            empty_files=self.empty_files,
        )


def reasons_to_rejects(reasons: pd.Series, file: str | None, modality: str) -> pd.DataFrame:
    """The quarantine rows of a table: source `<file>:<row>`, reason."""
    bad = reasons.dropna()
    if bad.empty:
        return rejects_frame()
    frame = pd.DataFrame(
        {
            "modality": modality,
            "source": f"{file}:" + pd.Series(bad.index, dtype="string").astype(str),
            "reason": bad.to_numpy(),
        }
    )
    return frame.astype("string")


def parsed_chunks(
    table: TableFile,
    schema: ts.TableSchema,
    chunksize: int,
    engine: EngineConfig | None = None,
) -> Iterator[ts.ParsedChunk]:
    """The table's chunks, typed; a missing required column stops before any row is read.

    A file with no header at all yields nothing: it holds 0 rows, and no column is missing from
    a file that names none. With `engine`, the file (which must be table.engine_readable) is
    tokenized by DuckDB; EngineUnsure may then come at any chunk.
    """
    header = read_header(table)
    if header is None:
        return
    require_columns(header, schema.required, table.label)
    if engine is not None:
        extra = functools.partial(ts.engine_select, schema)
        for chunk in engine_chunks(table, schema.names, chunksize, engine, extra):
            if pc.all(chunk.extra[ts.CLEAN]).as_py():
                typed = {
                    c.name: chunk.extra[ts.typed_name(c.name)]
                    for c in schema.columns
                    if ts.typed_name(c.name) in chunk.extra
                }
                yield ts.parse_clean(chunk.columns, typed, chunk.index, schema)
            else:
                yield ts.parse_columns(chunk.columns, chunk.index, schema)
        return
    for raw in raw_chunks(table, schema.names, chunksize):
        yield ts.parse_chunk(raw.cells, schema, raw.malformed)


def empty_kind(table: TableFile, seen: int) -> str | None:
    """NO_HEADER / HEADER_ONLY for a file read that held no data row; None otherwise."""
    if table.outside or seen:
        return None
    return NO_HEADER if read_header(table) is None else HEADER_ONLY


def outside_reject(table: TableFile, modality: str) -> Reject:
    """The whole file quarantined, unopened: it is one seen input (counting.py agrees)."""
    return Reject(modality, table.label, OUTSIDE_LANDING_ZONE)


def load_table(
    landing: Path, path: Path | None, schema: ts.TableSchema, modality: str, chunksize: int
) -> Loaded:
    """A whole (small) table in memory; an absent one reads as empty with its schema."""
    empty = schema.empty_frame()[schema.names]
    if path is None:
        return Loaded(empty, pd.Series(dtype="string"), 0, None, modality, {})
    table = inspect_table(Path(landing), path)
    if table.outside:
        loaded = Loaded(empty, pd.Series(dtype="string"), 1, table.label, modality, {})
        loaded.file_rejects.append(outside_reject(table, modality))
        return loaded
    frames: list[pd.DataFrame] = []
    reasons: list[pd.Series] = []
    coerced: dict[str, int] = {}
    for chunk in parsed_chunks(table, schema, chunksize):
        frames.append(chunk.frame)
        reasons.append(chunk.reasons)
        add_counts(coerced, chunk.coerced)
    loaded = Loaded(empty, pd.Series(dtype="string"), 0, table.label, modality, coerced)
    if frames:
        loaded.frame = pd.concat(frames) if len(frames) > 1 else frames[0]
        loaded.reasons = pd.concat(reasons) if len(reasons) > 1 else reasons[0]
        loaded.seen = len(loaded.frame)
    loaded.encodings[table.label] = table.encoding
    if (kind := empty_kind(table, loaded.seen)) is not None:
        loaded.empty_files[table.label] = kind
    return loaded


# A chunk's row-local checks: rejects rows of the chunk (Loaded.reject) and returns the rows it
# keeps (None: its good rows as they are). It never sees another chunk's rows.
ChunkCheck = Callable[[Loaded], "pd.DataFrame | None"]


def read_table_chunks(
    landing: Path,
    path: Path | None,
    schema: ts.TableSchema,
    modality: str,
    chunksize: int,
    check: ChunkCheck,
    keep: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> TableRead:
    """A table whose checks are row by row, read chunk by chunk: only kept rows accumulate.

    The same rows, rejects and counts as load_table followed by the same checks on the whole
    table, for checks that look at one row at a time (unknown patient or admission; a note_id
    seen before, with the ids seen carried by the check itself). `keep` transforms each chunk's
    kept rows before they are stored (the notes' de-identification), so that one chunk's raw
    cells are all of the raw table ever in memory.
    """
    empty = Loaded(
        schema.empty_frame()[schema.names], pd.Series(dtype="string"), 0, None, modality, {}
    )
    if path is None:
        return _checked_whole(empty, check)
    table = inspect_table(Path(landing), path)
    empty.file = table.label
    if table.outside:
        empty.seen = 1
        empty.file_rejects.append(outside_reject(table, modality))
        return _checked_whole(empty, check)
    parts: list[pd.DataFrame] = []
    rejects: list[pd.DataFrame] = []
    coerced: dict[str, int] = {}
    seen = 0
    for chunk in parsed_chunks(table, schema, chunksize):
        part = Loaded(chunk.frame, chunk.reasons, len(chunk.frame), table.label, modality, {})
        rows = check(part)
        rows = part.good if rows is None else rows
        parts.append(keep(rows) if keep is not None else rows)
        rejects.append(reasons_to_rejects(part.reasons, table.label, modality))
        seen += part.seen
        add_counts(coerced, chunk.coerced)
    read = (
        _checked_whole(empty, check)
        if not parts
        else TableRead(
            rows=(pd.concat(parts) if len(parts) > 1 else parts[0]).reset_index(drop=True),
            rejects=pd.concat(rejects, ignore_index=True),
            seen=seen,
            file=table.label,
            coerced=coerced,
        )
    )
    read.encodings[table.label] = table.encoding
    if (kind := empty_kind(table, seen)) is not None:
        read.empty_files[table.label] = kind
    return read


def _checked_whole(loaded: Loaded, check: ChunkCheck) -> TableRead:
    """A table with no data row (absent, empty, or rejected whole), through the same check."""
    kept = check(loaded)
    read = loaded.result()
    if kept is not None:
        read.rows = kept.reset_index(drop=True)
    return read


def add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for name, count in more.items():
        total[name] = total.get(name, 0) + count


def _load(landing: Path, name: str, schema: ts.TableSchema, chunksize: int) -> Loaded:
    return load_table(Path(landing), find_table(landing, name), schema, "ehr", chunksize)


# -- cross-table checks ------------------------------------------------------------------------


def subject_ids(patients: pd.DataFrame) -> set[int]:
    return set(patients["subject_id"].dropna().astype("int64").tolist())


def unknown_patient(frame: pd.DataFrame, known: set[int]) -> pd.Series:
    return ~frame["subject_id"].isin(known).fillna(False).astype(bool)


def unknown_admission(frame: pd.DataFrame, admissions: pd.DataFrame) -> pd.Series:
    """A given hadm_id that is not in admissions or belongs to another patient."""
    owner = admissions.drop_duplicates("hadm_id").set_index("hadm_id")["subject_id"]
    owner.index = owner.index.astype("Int64")
    owners = frame["hadm_id"].map(owner).astype("Int64")
    matches = owners.eq(frame["subject_id"].astype("Int64")).fillna(False).astype(bool)
    return frame["hadm_id"].notna() & ~matches


def later_duplicates(loaded: Loaded, column: str) -> pd.Series:
    """Good rows whose `column` value an earlier good row already has: the first one wins."""
    good = loaded.good
    return good[column].duplicated(keep="first") & good[column].notna()


# -- the tables --------------------------------------------------------------------------------


def read_patients(landing: Path, chunksize: int = CHUNKSIZE) -> TableRead:
    """One row per subject_id: the first row of a subject wins, later ones are duplicates."""
    loaded = _load(landing, "patients", ts.PATIENTS, chunksize)
    loaded.reject(later_duplicates(loaded, "subject_id"), DUPLICATE_SUBJECT)
    return loaded.result()


def read_admissions(landing: Path, patients: pd.DataFrame, chunksize: int = CHUNKSIZE) -> TableRead:
    """Admissions of known patients, discharged no earlier than admitted, one per hadm_id."""
    loaded = _load(landing, "admissions", ts.ADMISSIONS, chunksize)
    loaded.reject(unknown_patient(loaded.good, subject_ids(patients)), UNKNOWN_PATIENT)
    good = loaded.good
    backwards = good["dischtime"] < good["admittime"]
    loaded.reject(backwards, f"{BAD_VALUE} dischtime: before admittime")
    loaded.reject(later_duplicates(loaded, "hadm_id"), DUPLICATE_ADMISSION)
    return loaded.result()


def read_d_labitems(landing: Path, chunksize: int = CHUNKSIZE) -> TableRead:
    """The lab dictionary; a repeated itemid keeps its first label."""
    loaded = _load(landing, "d_labitems", ts.D_LABITEMS, chunksize)
    loaded.reject(later_duplicates(loaded, "itemid"), DUPLICATE_ITEM)
    return loaded.result()


def read_diagnoses(
    landing: Path,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
    chunksize: int = CHUNKSIZE,
    out: Path | None = None,
) -> TableRead:
    """ICD codes of known admissions of known patients (the source of the label).

    Read chunk by chunk (read_table_chunks): every check is row by row. With `out`, each
    chunk's rows are appended to that Parquet file (ParquetSink) and `rows` is empty.
    """
    known = subject_ids(patients)

    def check(part: Loaded) -> None:
        part.reject(unknown_patient(part.good, known), UNKNOWN_PATIENT)
        part.reject(unknown_admission(part.good, admissions), UNKNOWN_ADMISSION)

    path = find_table(landing, "diagnoses_icd")
    schema = ts.DIAGNOSES_ICD
    with ParquetSink(out, schema.empty_frame()[schema.names]) as sink:
        stored = sink.storing()
        return sink.result(
            read_table_chunks(landing, path, schema, "ehr", chunksize, check, stored)
        )


# -- labevents, streamed -----------------------------------------------------------------------


def link_events(
    frame: pd.DataFrame, admissions: pd.DataFrame, known: pd.Series, time_column: str
) -> tuple[pd.DataFrame, pd.Series]:
    """Rows with `hadm_id` set to their admission (given, or by time) and `hadm_id_given`.

    Returns the linked rows and, per row, the reason it cannot be linked (unknown patient or
    admission; NA when fine). A row with no hadm_id in no admission is fine: hadm_id stays NA.

    linking.link_to_admissions' rules; the rows that carry their hadm_id (most of them) are
    checked here with array lookups, and only those to be linked by time go through it.
    """
    subject_na = frame["subject_id"].isna().to_numpy()
    subject = frame["subject_id"].fillna(-1).astype("int64").to_numpy()
    hadm_na = frame["hadm_id"].isna().to_numpy()
    hadm = frame["hadm_id"].fillna(-1).astype("int64").to_numpy()
    known_ids = known.dropna().astype("int64").to_numpy()
    is_known = ~subject_na & np.isin(subject, known_ids)
    owners = pd.Index(admissions["hadm_id"].astype("int64").to_numpy())
    owner_subject = admissions["subject_id"].astype("int64").to_numpy()
    where = owners.get_indexer(hadm)
    found = where >= 0
    given = is_known & ~hadm_na
    matches = given & found & (owner_subject[np.where(found, where, 0)] == subject)
    problem = np.full(len(frame), None, dtype=object)
    problem[~is_known] = UNKNOWN_PATIENT
    problem[given & ~matches] = UNKNOWN_ADMISSION
    linked = pd.array(np.where(matches, hadm, 0), dtype="Int64")
    linked[~matches] = pd.NA
    by_time = is_known & hadm_na
    if by_time.any():
        timed = link_to_admissions(frame[by_time], admissions, known, time_column)
        linked[np.flatnonzero(by_time)] = timed["linked_hadm_id"].astype("Int64").to_numpy()
    out = frame.assign(hadm_id_given=~hadm_na, hadm_id=pd.Series(linked, index=frame.index))
    return out, pd.Series(problem, index=frame.index, dtype="string")


def admissions_for_linking(admissions: pd.DataFrame) -> pd.DataFrame:
    """Only what linking needs, typed once rather than per chunk."""
    return pd.DataFrame(
        {
            "subject_id": admissions["subject_id"].astype("Int64"),
            "hadm_id": admissions["hadm_id"].astype("Int64"),
            "admittime": admissions["admittime"].astype("datetime64[ns]"),
            "dischtime": admissions["dischtime"].astype("datetime64[ns]"),
        }
    ).dropna(subset=["subject_id", "hadm_id"])


def stream_labevents(
    landing: Path,
    out_path: Path,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
    chunksize: int = CHUNKSIZE,
    engine: EngineConfig | None = None,
    use_engine: bool = True,
) -> TableRead:
    """Parse, link and append labevents to one Parquet file at out_path, chunk by chunk.

    Columns and types are fixed (ts.LABEVENTS + hadm_id_given) whatever the export holds, and
    the file is written even when the table is absent or empty, so readers never special-case.
    `hadm_id` is the admission the row belongs to: given, or linked by charttime; NA for an
    outpatient lab. The file appears at out_path only once complete (written beside, renamed).

    The file is tokenized by DuckDB (`engine`: threads, memory; the defaults when None) when
    its layout allows (csv_chunks.Layout); if DuckDB gives up part way, what it wrote is
    dropped and pandas reads the file from the start. `use_engine=False` always reads with
    pandas (the reference the engine is tested against).
    """
    landing, out_path = Path(landing), Path(out_path)
    path = find_table(landing, "labevents")
    table = inspect_table(landing, path, layout=use_engine) if path is not None else None
    links = admissions_for_linking(admissions)
    known = pd.Series(sorted(subject_ids(patients)), dtype="Int64")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        read = None
        if table is not None and use_engine and table.engine_readable:
            try:
                read = _write_labevents(
                    partial, table, links, known, chunksize, engine or EngineConfig()
                )
            except EngineUnsure:
                partial.unlink(missing_ok=True)
        if read is None:
            read = _write_labevents(partial, table, links, known, chunksize, None)
    except BaseException:
        partial.unlink(missing_ok=True)  # no half-written file for the next run to trust
        raise
    partial.replace(out_path)
    return read


def _write_labevents(
    partial: Path,
    table: TableFile | None,
    links: pd.DataFrame,
    known: pd.Series,
    chunksize: int,
    engine: EngineConfig | None,
) -> TableRead:
    """One attempt at the whole file: DuckDB tokenizing when `engine`, else pandas."""
    schema = ts.LABEVENTS.arrow_schema()
    read = TableRead(
        rows=ts.LABEVENTS.empty_frame()[LAB_COLUMNS],
        rejects=rejects_frame(),
        seen=0,
        file=table.label if table is not None else None,
        ingested=0,
    )
    with pq.ParquetWriter(partial, schema) as writer:
        if table is not None:
            _stream_into(writer, schema, table, read, links, known, chunksize, engine)
        if read.ingested == 0:
            writer.write_table(schema.empty_table())
    layout = table.layout if table is not None else None
    if engine is not None and layout is not None and read.seen != layout.records:
        raise EngineUnsure(f"{read.file}: {read.seen} rows, {layout.records} records")
    return read


def _stream_into(
    writer: pq.ParquetWriter,
    schema: pa.Schema,
    table: TableFile,
    read: TableRead,
    links: pd.DataFrame,
    known: pd.Series,
    chunksize: int,
    engine: EngineConfig | None = None,
) -> None:
    """Every chunk of one labevents file, linked and written; its counts added to `read`."""
    if table.outside:
        read.rejects = rejects_frame([outside_reject(table, "ehr")])
        read.seen = 1
        return
    rejects = []
    for chunk in parsed_chunks(table, ts.LABEVENTS, chunksize, engine):
        rows, reasons = _link_chunk(chunk, links, known)
        writer.write_table(pa.Table.from_pandas(rows, schema=schema, preserve_index=False))
        rejects.append(reasons_to_rejects(reasons, table.label, "ehr"))
        read.seen += len(chunk.frame)
        read.ingested += len(rows)
        add_counts(read.coerced, chunk.coerced)
    if rejects:
        read.rejects = pd.concat(rejects, ignore_index=True)
    read.encodings[table.label] = table.encoding
    read.tokenizers[table.label] = PANDAS if engine is None else ENGINE
    if (kind := empty_kind(table, read.seen)) is not None:
        read.empty_files[table.label] = kind


def _link_chunk(
    chunk: ts.ParsedChunk, admissions: pd.DataFrame, known: pd.Series
) -> tuple[pd.DataFrame, pd.Series]:
    """The chunk's ingested rows (LAB_COLUMNS) and every row's reason (NA when ingested)."""
    reasons = chunk.reasons
    good = chunk.frame[reasons.isna().to_numpy()]
    linked, problem = link_events(good, admissions, known, "charttime")
    reasons = ts.first_reason(
        reasons, _on(reasons.index, problem.notna()), problem.reindex(reasons.index)
    )
    kept = linked[problem.isna().to_numpy()]
    return kept[LAB_COLUMNS], reasons


def _on(index: pd.Index, mask: pd.Series) -> np.ndarray:
    """A boolean mask over a subset of rows, spread over the whole chunk's index."""
    return mask.reindex(index, fill_value=False).to_numpy(dtype=bool)
