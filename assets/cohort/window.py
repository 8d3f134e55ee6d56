"""The prediction window: only what was charted in [admittime, admittime + window_hours).

Every feature (labs, notes, images, recordings) goes through `in_window`, so the rule of
landing-zone.md lives in one place; `allowed_notes` adds the notes' own rule (never a discharge
summary). Plain code: no Dagster, so serving applies the same rule.

At MIMIC scale the labs' window is cut by DuckDB (`write_window_labs`, `window_lab_admissions`)
from the labevents Parquet straight into Parquet: the same rule (`window_sql`), in the same row
order, and no step holds the window's rows in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clinfuse.assets.ingest.ehr.engine import EngineConfig, connect, quote_literal

# What the lab featurizer and the availability check read; `value` (free text) is left on disk
# because nothing downstream uses it and it is the widest column of MIMIC's labevents.
LAB_COLUMNS = ("subject_id", "hadm_id", "itemid", "charttime", "valuenum")
_ADMIT = "__admittime"  # a private name, so a caller's own admittime column is never clobbered


def _ids(values: pd.Series | pd.Index) -> pd.Series:
    """hadm_id as nullable Int64 whatever it came as (Int64, int64, float64 from Parquet nulls)."""
    return pd.Series(values, copy=False).astype("Int64")


def in_window(
    events: pd.DataFrame, cohort: pd.DataFrame, time_column: str, window_hours: float
) -> pd.DataFrame:
    """Rows of `events` charted inside their admission's window, with `hours_since_admit`.

    Joins on hadm_id with the cohort's admittime and keeps admittime <= t < admittime + window:
    a row at admittime is in, one at the window's end is out. Rows with no hadm_id (outpatient
    labs), an admission outside the cohort, or no time are dropped. All columns of `events`
    are kept (callers sort on their own columns afterwards).
    """
    admit = pd.DataFrame(
        {"hadm_id": _ids(cohort["hadm_id"]).to_numpy(), _ADMIT: cohort["admittime"].to_numpy()}
    )
    rows = events[events["hadm_id"].notna()].copy()
    rows["hadm_id"] = _ids(rows["hadm_id"]).to_numpy()
    joined = rows.merge(admit, on="hadm_id", how="inner", validate="many_to_one")
    when = pd.to_datetime(joined[time_column])
    start = pd.to_datetime(joined[_ADMIT])
    # NaT compares False both ways, so a row without a time is never inside.
    inside = ((when >= start) & (when < start + pd.Timedelta(hours=float(window_hours)))).to_numpy()
    out = joined.loc[inside].drop(columns=_ADMIT)
    out["hours_since_admit"] = ((when - start)[inside] / pd.Timedelta(hours=1)).to_numpy()
    return out.reset_index(drop=True)


def read_window_labs(
    labevents: Path | str | pd.DataFrame, cohort: pd.DataFrame, window_hours: float
) -> pd.DataFrame:
    """Lab rows of cohort admissions inside their window (columns LAB_COLUMNS + hours_since_admit).

    labevents is a DataFrame, or the path of a Parquet file or folder of Parquet files. A path is
    streamed batch by batch: each batch is cut to the cohort's hadm_ids (in pyarrow, before it
    becomes pandas) and to the window, so memory holds only the window's rows, never the table.
    """
    if isinstance(labevents, pd.DataFrame):
        columns = [c for c in LAB_COLUMNS if c in labevents.columns]
        return _lab_frame(in_window(labevents[columns], cohort, "charttime", window_hours))
    return _stream_window_labs(Path(labevents), cohort, window_hours)


def _stream_window_labs(path: Path, cohort: pd.DataFrame, window_hours: float) -> pd.DataFrame:
    dataset = ds.dataset(path, format="parquet")
    columns = [c for c in LAB_COLUMNS if c in dataset.schema.names]
    # Read-ahead of one batch and one file: the point of streaming is a bounded footprint.
    batches = dataset.to_batches(columns=columns, batch_readahead=1, fragment_readahead=1)
    parts = [
        in_window(chosen.to_pandas(), cohort, "charttime", window_hours)
        for chosen in _of_cohort(batches, cohort)
    ]
    if not parts:
        empty = pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES[c]) for c in columns})
        return _lab_frame(empty.assign(hours_since_admit=pd.Series(dtype="float64")))
    return _lab_frame(pd.concat(parts, ignore_index=True))


def _of_cohort(batches: Iterable[pa.RecordBatch], cohort: pd.DataFrame) -> Iterator[pa.RecordBatch]:
    """Each batch's rows of cohort admissions (cut in Arrow, before pandas); empty ones skipped."""
    wanted = pa.array(_ids(cohort["hadm_id"]).dropna().astype("int64").unique())
    for batch in batches:
        hadm = batch.column("hadm_id").cast(pa.int64())
        chosen = batch.filter(pc.fill_null(pc.is_in(hadm, value_set=wanted), False))
        if chosen.num_rows:
            yield chosen


_EMPTY_DTYPES = {
    "subject_id": "Int64",
    "hadm_id": "Int64",
    "itemid": "Int64",
    "charttime": "datetime64[ns]",
    "valuenum": "float64",
}


def _lab_frame(labs: pd.DataFrame) -> pd.DataFrame:
    """One set of dtypes whichever way the rows came (pandas vs Parquet nulls as float)."""
    out = labs.copy()
    for column in ("subject_id", "hadm_id", "itemid"):
        if column in out:
            out[column] = out[column].astype("Int64")
    if "valuenum" in out:
        out["valuenum"] = pd.to_numeric(out["valuenum"], errors="coerce").astype("float64")
    if "charttime" in out:
        out["charttime"] = pd.to_datetime(out["charttime"])
    return out.reset_index(drop=True)


# -- the window in the engine -------------------------------------------------------------------


def parquet_source(path: Path | str, row_numbers: bool = False) -> str:
    """`read_parquet(...)` of a Parquet file or of every Parquet file under a folder (sorted, as
    pyarrow.dataset lists them); `row_numbers` adds `filename` and `file_row_number`, which
    give the rows' order."""
    path = Path(path)
    if not row_numbers:
        target = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
        return f"read_parquet({quote_literal(target)})"
    if path.is_dir():
        target = quote_literal(str(path / "**" / "*.parquet"))
        return f"read_parquet({target}, filename = true, file_row_number = true)"
    # One file: a constant `filename`, so that sorts do not carry its path in every row.
    target = quote_literal(str(path))
    return f"(SELECT *, '' AS filename FROM read_parquet({target}, file_row_number = true))"


def register_cohort(con, cohort: pd.DataFrame, name: str = "cohort_window") -> None:
    """The cohort's hadm_id and admittime as a table the engine joins on."""
    table = pa.table(
        {
            "hadm_id": pa.array(_ids(cohort["hadm_id"]), type=pa.int64()),
            "admittime": pa.array(
                pd.to_datetime(cohort["admittime"]).astype("datetime64[ns]").to_numpy(),
                pa.timestamp("ns"),
            ),
        }
    )
    con.register(name, table)


def window_sql(labs: str, window_hours: float, cohort: str = "cohort_window") -> str:
    """The window rows (LAB_COLUMNS, hours_since_admit, and `filename`/`file_row_number`, the
    file order) of `labs`, a read_parquet(..., row numbers) source: in_window's rule, in SQL.

    admittime <= charttime < admittime + window_hours, compared in whole nanoseconds as pandas
    does (the window's length is pd.Timedelta(hours=window_hours)); hours_since_admit is the
    difference in nanoseconds divided by an hour's, in float64, as in_window computes it.
    """
    window_ns = int(pd.Timedelta(hours=float(window_hours)).value)
    return f"""
        SELECT l.subject_id, l.hadm_id, l.itemid, l.charttime, l.valuenum,
               CAST(epoch_ns(l.charttime) - epoch_ns(c.admittime) AS DOUBLE)
                   / 3600000000000.0 AS hours_since_admit,
               l.filename, l.file_row_number
        FROM {labs} AS l
        JOIN {cohort} AS c ON l.hadm_id = c.hadm_id
        WHERE epoch_ns(l.charttime) >= epoch_ns(c.admittime)
          AND epoch_ns(l.charttime) < epoch_ns(c.admittime) + {window_ns}
    """


def write_window_labs(
    labevents: Path | str,
    cohort: pd.DataFrame,
    window_hours: float,
    out_path: Path,
    engine: EngineConfig | None = None,
    by_admission: bool = False,
) -> int:
    """read_window_labs(labevents, ...) written to out_path as Parquet by DuckDB; returns rows.

    Same rows, columns and order as read_window_labs gives (labevents' file order), Int64 ids
    as int64. The window's rows are joined, sorted and written out of core: memory holds
    DuckDB's limit, not the rows. The file appears at out_path only once complete.
    `by_admission` sorts by hadm_id first (file order within one) in row groups of 100,000, so
    a reader of a few admissions (a filter on hadm_id) skips the rest of the file.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    con = connect(engine)
    try:
        register_cohort(con, cohort)
        rows = window_sql(parquet_source(labevents, row_numbers=True), window_hours)
        order = (
            "hadm_id, filename, file_row_number" if by_admission else "filename, file_row_number"
        )
        query = f"""
            SELECT subject_id, hadm_id, itemid, charttime, valuenum, hours_since_admit
            FROM ({rows}) ORDER BY {order}
        """
        target = quote_literal(str(partial))
        groups = 100_000 if by_admission else 500_000
        con.execute(f"COPY ({query}) TO {target} (FORMAT parquet, ROW_GROUP_SIZE {groups})")
        count = con.execute(f"SELECT count(*) FROM read_parquet({quote_literal(str(partial))})")
        written = int(count.fetchone()[0])
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    partial.replace(out_path)
    return written


def window_lab_admissions(
    labevents: Path | str, cohort: pd.DataFrame, window_hours: float, engine=None
) -> set[int]:
    """hadm_ids with at least one lab row in their window: read_window_labs' ids, in DuckDB."""
    con = connect(engine)
    try:
        register_cohort(con, cohort)
        rows = window_sql(parquet_source(labevents, row_numbers=True), window_hours)
        found = con.execute(f"SELECT DISTINCT hadm_id FROM ({rows})").fetchall()
    finally:
        con.close()
    return {int(h) for (h,) in found}


FORBIDDEN_NOTE_TYPES = ("DS",)  # discharge summaries state the diagnosis: never a feature


# -- which notes ---------------------------------------------------------------------------------


NOTE_BATCH_ROWS = 5_000  # a MIMIC discharge summary is ~10 KB: a batch stays ~50 MB


def allowed_note_rows(
    notes: pd.DataFrame | Path, cohort: pd.DataFrame, window_hours: float
) -> pd.DataFrame:
    """Note rows an admission may use: charted in its window, and not a discharge summary.

    note_type is compared trimmed and upper-cased ("ds " is "DS"); a note with no note_type is
    left out too, since it cannot be shown not to be a discharge summary. `notes` is the table,
    or the path of the notes asset's Parquet file: then it is read batch by batch, each cut to
    the cohort's admissions before it becomes pandas, so memory holds the allowed notes only.
    """
    if not isinstance(notes, pd.DataFrame):
        return _stream_allowed_note_rows(Path(notes), cohort, window_hours)
    kind = notes["note_type"].astype("string").str.strip().str.upper()
    usable = notes[(kind.notna() & ~kind.isin(FORBIDDEN_NOTE_TYPES)).to_numpy(dtype=bool)]
    return in_window(usable, cohort, "charttime", window_hours)


def allowed_notes(
    notes: pd.DataFrame | Path, cohort: pd.DataFrame, window_hours: float
) -> pd.Series:
    """Per admission with allowed notes: their texts joined in charttime order (index hadm_id)."""
    rows = allowed_note_rows(notes, cohort, window_hours)
    text = rows["text"].astype("string")
    rows = rows[(text.notna() & (text.str.strip() != "")).to_numpy(dtype=bool)]
    order = [c for c in ("hadm_id", "charttime", "note_id") if c in rows]
    rows = rows.sort_values(order, kind="stable")
    joined = rows.groupby("hadm_id", sort=True)["text"].agg(lambda t: "\n\n".join(map(str, t)))
    joined.index = pd.Index(joined.index.astype("Int64"), name="hadm_id")
    return joined.astype("string").rename("text")


def _stream_allowed_note_rows(path: Path, cohort: pd.DataFrame, window_hours: float):
    parquet = pq.ParquetFile(path)
    batches = parquet.iter_batches(batch_size=NOTE_BATCH_ROWS)
    parts = [
        allowed_note_rows(
            pa.Table.from_batches([chosen], schema=parquet.schema_arrow).to_pandas(),
            cohort,
            window_hours,
        )
        for chosen in _of_cohort(batches, cohort)
    ]
    if not parts:
        empty = parquet.schema_arrow.empty_table().to_pandas()
        return allowed_note_rows(empty, cohort, window_hours)
    return pd.concat(parts, ignore_index=True)
