"""The prediction window: only what was charted in [admittime, admittime + window_hours).

Every feature (labs, notes, images, recordings) goes through `in_window`, so the rule of
landing-zone.md lives in one place; `allowed_notes` adds the notes' own rule (never a discharge
summary). Plain code: no Dagster, so serving applies the same rule.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

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
    wanted = pa.array(_ids(cohort["hadm_id"]).dropna().astype("int64").unique())
    # Read-ahead of one batch and one file: the point of streaming is a bounded footprint.
    batches = dataset.to_batches(columns=columns, batch_readahead=1, fragment_readahead=1)
    parts = []
    for batch in batches:
        hadm = batch.column("hadm_id").cast(pa.int64())
        keep = pc.fill_null(pc.is_in(hadm, value_set=wanted), False)
        chosen = batch.filter(keep)
        if chosen.num_rows:
            parts.append(in_window(chosen.to_pandas(), cohort, "charttime", window_hours))
    if not parts:
        empty = pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES[c]) for c in columns})
        return _lab_frame(empty.assign(hours_since_admit=pd.Series(dtype="float64")))
    return _lab_frame(pd.concat(parts, ignore_index=True))


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


FORBIDDEN_NOTE_TYPES = ("DS",)  # discharge summaries state the diagnosis: never a feature


# -- which notes ---------------------------------------------------------------------------------


def allowed_note_rows(notes: pd.DataFrame, cohort: pd.DataFrame, window_hours: float):
    """Note rows an admission may use: charted in its window, and not a discharge summary.

    note_type is compared trimmed and upper-cased ("ds " is "DS"); a note with no note_type is
    left out too, since it cannot be shown not to be a discharge summary.
    """
    kind = notes["note_type"].astype("string").str.strip().str.upper()
    usable = notes[(kind.notna() & ~kind.isin(FORBIDDEN_NOTE_TYPES)).to_numpy(dtype=bool)]
    return in_window(usable, cohort, "charttime", window_hours)


def allowed_notes(notes: pd.DataFrame, cohort: pd.DataFrame, window_hours: float) -> pd.Series:
    """Per admission with allowed notes: their texts joined in charttime order (index hadm_id)."""
    rows = allowed_note_rows(notes, cohort, window_hours)
    text = rows["text"].astype("string")
    rows = rows[(text.notna() & (text.str.strip() != "")).to_numpy(dtype=bool)]
    order = [c for c in ("hadm_id", "charttime", "note_id") if c in rows]
    rows = rows.sort_values(order, kind="stable")
    joined = rows.groupby("hadm_id", sort=True)["text"].agg(lambda t: "\n\n".join(map(str, t)))
    joined.index = pd.Index(joined.index.astype("Int64"), name="hadm_id")
    return joined.astype("string").rename("text")
