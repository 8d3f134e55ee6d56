"""The note/ tables of a landing zone (MIMIC-IV-Note layout) as one typed table with rejects.

Every note/*.csv and note/*.csv.gz is read (sorted by name) and tagged with `source_table`
("note/discharge.csv.gz"). A note without hadm_id is linked to the admission holding its
charttime; one in no admission is kept with hadm_id NA, like an outpatient lab (MIMIC's
radiology reports include outpatient studies), and used by no admission.

Row numbers in a reject's source (`note/radiology.csv:12`) are data-record numbers, header not
counted: a note text with embedded newlines is one record however many lines it spans.
Each table file is read as reader.load_table reads it: a link out of the landing zone is one
quarantined input, a legacy encoding is read by fallback, an empty file holds 0 rows; the
result names every file's encoding and every empty file.

Files are read chunk by chunk (reader.read_table_chunks): every check is row by row (a note_id
is a duplicate of one kept earlier, in this or an earlier chunk or file), and `keep` (the notes
asset's de-identification) turns each chunk's kept rows into what is stored before the next
chunk is read, so the raw text of one chunk is all the raw text ever in memory. Given `out`,
each chunk's stored rows are appended to that Parquet file as soon as they are made, so no step
holds the table (MIMIC-IV-Note is ~2.6M notes); without it, the result is one DataFrame.
Plain code: no Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.ehr import table_schema as ts
from clinfuse.assets.ingest.ehr.csv_chunks import relative, table_files
from clinfuse.assets.ingest.ehr.parquet_sink import ParquetSink
from clinfuse.assets.ingest.ehr.reader import (
    Loaded,
    TableRead,
    add_counts,
    admissions_for_linking,
    link_events,
    read_table_chunks,
    subject_ids,
)
from clinfuse.assets.ingest.quarantine import rejects_frame

NOTE_COLUMNS = list(ts.NOTES.output_kinds())
DUPLICATE_NOTE = "duplicate note_id"


def read_notes(
    landing: Path,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
    chunksize: int = 100_000,
    keep: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    out: Path | None = None,
) -> TableRead:
    """Every note table, linked to admissions; `file` is "note/" when any table exists.

    A note_id already seen (in this or an earlier table) is quarantined as a duplicate. `keep`,
    when given, is applied to each chunk's kept rows (NOTE_COLUMNS less source_table) before
    they are stored. With `out`, the stored rows go to that Parquet file (written whole even
    when no note table exists) and the result's `rows` is empty, `ingested` their count.
    """
    landing = Path(landing)
    files = table_files(landing, "note")
    with ParquetSink(out, _typed(ts.NOTES.empty_frame())) as sink:
        if not files:
            return sink.result(TableRead(_typed(ts.NOTES.empty_frame()), rejects_frame(), 0, None))
        known = pd.Series(sorted(subject_ids(patients)), dtype="Int64")
        admissions = admissions_for_linking(admissions)
        seen_ids: set[str] = set()
        reads = []
        for path in files:
            check = _checks(admissions, known, seen_ids)
            stored = sink.storing(_stored(relative(landing, path), keep))
            reads.append(
                read_table_chunks(landing, path, ts.NOTES, "note", chunksize, check, stored)
            )
        return sink.result(_combined(reads))


def _stored(label: str, keep: Callable[[pd.DataFrame], pd.DataFrame] | None):
    """A chunk's kept rows as stored: `keep` (de-identification), then their table's name."""

    def stored(rows: pd.DataFrame) -> pd.DataFrame:
        rows = keep(rows) if keep is not None else rows
        return _typed(rows.assign(source_table=label))

    return stored


def _typed(rows: pd.DataFrame) -> pd.DataFrame:
    if "source_table" not in rows:
        rows = rows.assign(source_table=pd.Series(dtype="string"))
    return rows[NOTE_COLUMNS].astype({"source_table": "string", "hadm_id_given": "bool"})


def _checks(admissions: pd.DataFrame, known: pd.Series, seen_ids: set[str]):
    """A chunk's checks: linked, de-duplicated against `seen_ids` (updated with what it keeps)."""

    def check(part: Loaded) -> pd.DataFrame:
        rows = _link(part, admissions, known)
        duplicate = rows["note_id"].isin(seen_ids) | rows["note_id"].duplicated()
        part.reject(duplicate, DUPLICATE_NOTE)
        rows = rows[~duplicate.to_numpy()]
        seen_ids.update(rows["note_id"].dropna().tolist())
        return rows

    return check


def _combined(reads: list[TableRead]) -> TableRead:
    rows = pd.concat([r.rows for r in reads], ignore_index=True)
    coerced: dict[str, int] = {}
    for read in reads:
        add_counts(coerced, read.coerced)
    return TableRead(
        rows=_typed(rows),
        rejects=pd.concat([r.rejects for r in reads], ignore_index=True),
        seen=sum(r.seen for r in reads),
        file="note/",
        coerced=coerced,
        encodings={f: e for r in reads for f, e in r.encodings.items()},
        empty_files={f: k for r in reads for f, k in r.empty_files.items()},
    )


def _link(loaded: Loaded, admissions: pd.DataFrame, known: pd.Series) -> pd.DataFrame:
    """The table's good rows linked to admissions; unknown patient / admission rejected."""
    good = loaded.good
    linked, problem = link_events(good, admissions, known, "charttime")
    loaded.reject(problem.notna(), problem)
    return linked[problem.isna().to_numpy()]
