"""audio/manifest.csv -> one parsed row per data row, with the first problem of each.

Kept apart from audio_reader so that the row rules (what is "missing", what is "bad") can be read
in one place. Only the row's own fields are judged here; the file and the link are judged by
audio_reader.ingest_audio, which asks `file_problem` before a file is opened.

Confinement (landing-zone.md, paths.py): a path that leaves audio/ (`../../x.wav`, `/x.wav`) and
a path that resolves, through a link, outside the landing zone are "outside landing zone" and
never opened. The manifest itself is decoded in its detected encoding (encodings.py); a manifest
that is a link out of the zone is never opened and reads as one row with that problem.
"""

from __future__ import annotations

import csv
import math
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

from clinfuse.assets.ingest.encodings import detect_encoding, open_text
from clinfuse.assets.ingest.paths import Zone
from clinfuse.assets.ingest.quarantine import (
    BAD_VALUE,
    MISSING_FILE,
    MISSING_VALUE,
    OUTSIDE_LANDING_ZONE,
)

# The one row an unopened manifest reads as (counting.py counts such a manifest as 1).
_OUTSIDE_MANIFEST = f"{OUTSIDE_LANDING_ZONE}: the manifest itself links out of the zone"


def read_manifest(path: Path) -> pd.DataFrame:
    """Every data row of audio/manifest.csv, parsed, with `problem` set where a field is bad.

    csv.reader, like the accounting's count (counting.py), so a blank line is a row (with a
    missing path) and row numbers agree. Missing optional columns are empty; a missing required
    column makes every row "missing <column>". Columns: manifest_row, path (normalised, relative
    to audio/), subject_id, hadm_id (Int64), recorded_at (datetime64[ns]), site, problem.
    """
    real = Zone.of(Path(path).parent.parent).real(path)
    if real is None:
        return _outside_manifest()
    with open_text(real, detect_encoding(real, compressed=False), compressed=False) as handle:
        return read_manifest_records(list(csv.reader(handle)))


def _outside_manifest() -> pd.DataFrame:
    table = read_manifest_records([["path"], [""]])
    table["problem"] = pd.array([_OUTSIDE_MANIFEST], dtype="string")
    return table


def file_problem(audio_root: Path, relative: str, zone: Zone | None = None) -> str | None:
    """Why the file a row names cannot be read, checked without opening it; None when it can.

    Outside first: a link out of the zone is never looked at beyond resolving it. `zone`: the
    landing zone's, resolved once by a caller asking for many files.
    """
    path = Path(audio_root) / relative
    if not (zone or Zone.of(Path(audio_root).parent)).contains(path):
        return OUTSIDE_LANDING_ZONE
    return None if path.is_file() else MISSING_FILE


def read_manifest_records(records: list[list[str]]) -> pd.DataFrame:
    """read_manifest on already split CSV records (header first)."""
    header = [name.strip() for name in records[0]] if records else []
    rows = records[1:]

    def column(name: str) -> list[str]:
        if name not in header:
            return [""] * len(rows)
        at = header.index(name)
        return [row[at].strip() if at < len(row) else "" for row in rows]

    paths = [_normalise(text) for text in column("path")]
    subjects = [_parse_id(text) for text in column("subject_id")]
    admissions = [_parse_id(text) for text in column("hadm_id")]
    times_text = column("recorded_at")
    times = _parse_times(times_text)
    problems = [
        _first_problem(p, s, t_text, t, h)
        for p, s, t_text, t, h in zip(
            paths, subjects, times_text, times.tolist(), admissions, strict=True
        )
    ]
    table = pd.DataFrame(
        {
            "manifest_row": np.arange(1, len(rows) + 1, dtype="int64"),
            "path": pd.array([p or pd.NA for p in paths], dtype="string"),
            "subject_id": pd.array([_valid_id(s) for s in subjects], dtype="Int64"),
            "hadm_id": pd.array([_valid_id(h) for h in admissions], dtype="Int64"),
            "recorded_at": times.to_numpy(),
            "site": pd.array([s or pd.NA for s in column("site")], dtype="string"),
            "problem": pd.array(problems, dtype="string"),
        }
    )
    return table


_EMPTY, _BAD = "empty", "bad"


def _normalise(text: str) -> str | None:
    """`a/./b.wav` -> `a/b.wav`; "" for an empty cell; None for a path that leaves audio/."""
    if not text:
        return ""
    normal = posixpath.normpath(text.replace("\\", "/"))
    if normal.startswith(("/", "../")) or normal in ("..", "."):
        return None
    return normal


def _parse_id(text: str) -> int | str:
    """An integer id; `12.0` (a float-typed export) is accepted, `12.5` and `abc` are not."""
    if not text:
        return _EMPTY
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return _BAD
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return _BAD


def _valid_id(value: int | str) -> int | None:
    return value if isinstance(value, int) else None


def _parse_times(texts: list[str]) -> pd.Series:
    """ISO-8601 (the contract) -> naive datetime64[ns]; NaT where unparseable or out of range.

    An offset (`...+02:00`) is dropped, keeping the wall-clock time: MIMIC times are naive local
    times. Vectorised; a column mixing naive and offset values falls back to one at a time.
    """
    try:
        parsed = _naive(
            pd.to_datetime(pd.Series(texts, dtype="object"), format="ISO8601", errors="coerce")
        )
    except (ValueError, TypeError):
        parsed = pd.Series([_one_time(text) for text in texts], dtype="object")
        parsed = pd.to_datetime(parsed)
    low, high = pd.Timestamp.min.as_unit("ns"), pd.Timestamp.max.as_unit("ns")
    parsed = parsed.where(parsed.notna() & (parsed >= low) & (parsed <= high))
    return parsed.astype("datetime64[ns]")


def _naive(times: pd.Series) -> pd.Series:
    return times.dt.tz_localize(None) if times.dt.tz is not None else times


def _one_time(text: str) -> pd.Timestamp | None:
    try:
        stamp = pd.to_datetime(text, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return None
    if pd.isna(stamp):
        return None
    return stamp.tz_localize(None) if stamp.tzinfo else stamp


def _first_problem(
    path: str | None, subject: int | str, time_text: str, time: object, hadm: int | str
) -> str | None:
    if path == "":
        return f"{MISSING_VALUE} path"
    if path is None:
        return OUTSIDE_LANDING_ZONE
    if subject == _EMPTY:
        return f"{MISSING_VALUE} subject_id"
    if subject == _BAD:
        return f"{BAD_VALUE} subject_id"
    if not time_text:
        return f"{MISSING_VALUE} recorded_at"
    if pd.isna(time):
        return f"{BAD_VALUE} recorded_at"
    if hadm == _BAD:
        return f"{BAD_VALUE} hadm_id"
    return None
