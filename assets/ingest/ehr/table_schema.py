"""The landing zone's tables as typed columns: what each holds, and how a text cell is parsed.

landing-zone.md names each table's required and [optional] columns. Every cell arrives as text
(read with dtype=str, keep_default_na=False) and is parsed here, so that a bad cell becomes a
reject with its reason, never a value silently guessed by pandas' type inference.

Types: ids and integers Int64, times datetime64[ns] (naive), numbers float64, text `string`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clinfuse.assets.ingest.ehr.engine import quote_literal, quote_name
from clinfuse.assets.ingest.quarantine import BAD_VALUE, MISSING_VALUE

Kind = Literal["id", "int", "time", "number", "text"]

PANDAS_DTYPES: dict[str, str] = {
    "id": "Int64",
    "int": "Int64",
    "time": "datetime64[ns]",
    "number": "float64",
    "text": "string",
    "bool": "bool",
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(),
    "int": pa.int64(),
    "time": pa.timestamp("ns"),
    "number": pa.float64(),
    "text": pa.string(),
    "bool": pa.bool_(),
}

# Naive ISO-8601, date or date + time. Anything else (a zone offset, "07/23/2180") is a bad time
# rather than a guess: the contract says ISO-8601 and MIMIC's times are naive.
_ISO_TIME = r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
_DIGITS = r"[+-]?\d{1,18}"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# datetime64[ns] holds 1677-09-21 .. 2262-04-11; MIMIC's shifted years (2100-2210) fit.
_NS_MIN = pd.Timestamp.min.as_unit("us")
_NS_MAX = pd.Timestamp.max.as_unit("us")
_DETAIL_CHARS = 40  # a bad cell is quoted in its reason, cut short: ids and times, never notes


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = True
    # A required column whose empty cell is still a good row (labevents hadm_id and valuenum).
    nullable: bool = False

    @property
    def dtype(self) -> str:
        return PANDAS_DTYPES[self.kind]


def req(name: str, kind: Kind, nullable: bool = False) -> Column:
    return Column(name, kind, required=True, nullable=nullable)


def opt(name: str, kind: Kind) -> Column:
    return Column(name, kind, required=False, nullable=True)


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    extra: dict[str, str] = field(default_factory=dict)  # columns a reader adds: name -> kind

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def output_kinds(self) -> dict[str, str]:
        return {**{c.name: c.kind for c in self.columns}, **self.extra}

    def empty_frame(self) -> pd.DataFrame:
        """No rows, every output column with its dtype: what an absent table reads as."""
        kinds = self.output_kinds()
        return pd.DataFrame({n: pd.Series(dtype=PANDAS_DTYPES[k]) for n, k in kinds.items()})

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(n, ARROW_TYPES[k]) for n, k in self.output_kinds().items()])


PATIENTS = TableSchema(
    "patients",
    (
        req("subject_id", "id"),
        req("gender", "text"),
        req("anchor_age", "int"),
        opt("anchor_year", "int"),
        opt("anchor_year_group", "text"),
        opt("dod", "time"),
    ),
)
ADMISSIONS = TableSchema(
    "admissions",
    (
        req("subject_id", "id"),
        req("hadm_id", "id"),
        req("admittime", "time"),
        req("dischtime", "time"),
        opt("deathtime", "time"),
        opt("admission_type", "text"),
        opt("admission_location", "text"),
        opt("discharge_location", "text"),
        opt("insurance", "text"),
        opt("language", "text"),
        opt("marital_status", "text"),
        opt("race", "text"),
        opt("hospital_expire_flag", "int"),
    ),
)
LABEVENTS = TableSchema(
    "labevents",
    (
        req("subject_id", "id"),
        # Empty hadm_id: linked by charttime, else an outpatient lab (landing-zone.md).
        req("hadm_id", "id", nullable=True),
        req("itemid", "id"),
        req("charttime", "time"),
        # Empty valuenum: a text result in `value` or `comments`; MIMIC has ~10% of those.
        req("valuenum", "number", nullable=True),
        opt("labevent_id", "id"),
        opt("specimen_id", "id"),
        opt("value", "text"),
        opt("valueuom", "text"),
        opt("ref_range_lower", "number"),
        opt("ref_range_upper", "number"),
        opt("flag", "text"),
        opt("priority", "text"),
    ),
    extra={"hadm_id_given": "bool"},
)
D_LABITEMS = TableSchema(
    "d_labitems",
    (
        req("itemid", "id"),
        req("label", "text", nullable=True),  # MIMIC-IV's own d_labitems has 3 empty labels
        opt("fluid", "text"),
        opt("category", "text"),
    ),
)
DIAGNOSES_ICD = TableSchema(
    "diagnoses_icd",
    (
        req("subject_id", "id"),
        req("hadm_id", "id"),
        req("seq_num", "int"),
        req("icd_code", "text"),  # text: ICD-9 "0389" keeps its leading zero
        req("icd_version", "int"),
    ),
)
NOTES = TableSchema(
    "notes",
    (
        req("note_id", "text"),
        req("subject_id", "id"),
        req("hadm_id", "id", nullable=True),  # empty: linked by charttime
        req("note_type", "text"),
        req("charttime", "time"),
        req("text", "text"),
    ),
    extra={"hadm_id_given": "bool", "source_table": "text"},
)


# -- parsing one chunk -------------------------------------------------------------------------


@dataclass
class ParsedChunk:
    """A chunk's typed columns and, per row, the first reason it cannot be ingested.

    Both are indexed by the 1-based data row number, so a reject's source needs no bookkeeping.
    """

    frame: pd.DataFrame
    reasons: pd.Series  # string; NA where the row is good (so far)
    coerced: dict[str, int]  # optional column -> cells that did not parse and became NA


def parse_chunk(
    cells: pd.DataFrame, schema: TableSchema, malformed: np.ndarray | None = None
) -> ParsedChunk:
    """Typed columns of `cells` (text, "" = empty) with a reason per unparseable row.

    A required column's empty cell is "missing <column>" (unless the column is nullable), an
    unparseable one "bad <column>: '<cell>'". An optional column's unparseable cell becomes NA
    and is counted in `coerced`: rejecting a patient for a garbled `dod` would orphan all their
    admissions. An absent optional column comes back all NA (a fixed schema downstream).
    """
    columns = {
        name: pa.array(cells[name].array, type=pa.large_string())
        for name in schema.names
        if name in cells.columns
    }
    return parse_columns(columns, cells.index, schema, malformed)


def parse_columns(
    columns: dict[str, pa.Array],
    index: pd.Index,
    schema: TableSchema,
    malformed: np.ndarray | None = None,
) -> ParsedChunk:
    """parse_chunk on Arrow text columns (null or "" = empty), rows numbered by `index`.

    What the engine tokenizer hands over (csv_chunks.engine_chunks); the parsing is the same.
    """
    reasons = pd.Series(pd.NA, index=index, dtype="string")
    if malformed is not None and malformed.any():
        reasons[malformed] = f"{BAD_VALUE} row: wrong number of fields"
    out: dict[str, pd.Series] = {}
    coerced: dict[str, int] = {}
    for column in schema.columns:
        raw, present = _cells(columns, column.name, len(index))
        values, ok = parse_cells(raw, present, column.kind)
        bad = present & ~ok
        if column.required:
            if not column.nullable:
                reasons = first_reason(reasons, ~present, f"{MISSING_VALUE} {column.name}")
            if bad.any():
                reasons = first_reason(reasons, bad, _bad_reason(column.name, raw, bad, index))
        elif bad.any():
            coerced[column.name] = int(bad.sum())
        values.index = index
        out[column.name] = values
    frame = pd.DataFrame(out, index=index)
    return ParsedChunk(frame=frame, reasons=reasons, coerced=coerced)


def first_reason(
    reasons: pd.Series, mask: np.ndarray | pd.Series, reason: str | pd.Series
) -> pd.Series:
    """`reason` where `mask` holds and the row has no reason yet: a row keeps its first one."""
    take = reasons.isna().to_numpy() & np.asarray(mask, dtype=bool)
    if not take.any():
        return reasons
    out = reasons.copy()
    if isinstance(reason, pd.Series):  # per-row reasons, possibly for a subset of the rows
        reason = reason.reindex(reasons.index).to_numpy()[take]
    out[take] = reason
    return out


def _bad_reason(name: str, raw: pa.Array, bad: np.ndarray, index: pd.Index) -> pd.Series:
    """The reason of each bad cell, quoting it cut short (ids and times, never note text)."""
    shown = pd.Series(raw.filter(pa.array(bad)).to_pylist(), index=index[bad])
    return f"{BAD_VALUE} {name}: '" + shown.str.slice(0, _DETAIL_CHARS) + "'"


def _cells(columns: dict[str, pa.Array], name: str, rows: int) -> tuple[pa.Array, np.ndarray]:
    """One column as Arrow text, null where empty ("" is MIMIC's NULL), and where present.

    An absent (optional) column is all null.
    """
    if name not in columns:
        return pa.nulls(rows, pa.large_string()), np.zeros(rows, dtype=bool)
    raw = columns[name]
    if raw.type != pa.large_string():
        raw = pc.cast(raw, pa.large_string())
    blank = pc.equal(pc.utf8_trim_whitespace(raw), "")
    present = ~np.asarray(blank.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)
    return _only(raw, present), present


def parse_cells(raw: pa.Array, present: np.ndarray, kind: str) -> tuple[pd.Series, np.ndarray]:
    """Values of one kind (NA where absent or unparseable) and where the cell parsed.

    Arrow's casts are the fast path (one pass per column over MIMIC's 118M lab rows); they
    fail a whole array on one bad cell, so a chunk holding one falls back to pandas, which
    coerces cell by cell.
    """
    if kind == "text":
        return pd.Series(pd.arrays.ArrowStringArray(raw)), present
    trimmed = pc.utf8_trim_whitespace(raw)
    try:
        return _ARROW_PARSERS[kind](trimmed, present)
    except (pa.ArrowInvalid, _NotFast):
        text = pd.Series(pd.arrays.ArrowStringArray(trimmed))
        return _PANDAS_PARSERS[kind](text, present)


class _NotFast(Exception):
    """A chunk the arrow path leaves to pandas (e.g. an id written as "24181354.0")."""


def _shaped(arrow: pa.Array, present: np.ndarray, pattern: str) -> np.ndarray:
    matched = pc.match_substring_regex(arrow, f"^(?:{pattern})$").fill_null(False)
    return present & np.asarray(matched.to_numpy(zero_copy_only=False), dtype=bool)


def _only(arrow: pa.Array, keep: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(keep), arrow, pa.scalar(None, arrow.type))


def _arrow_number(arrow: pa.Array, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    shaped = _shaped(arrow, present, _NUMBER)
    number = pc.cast(_only(arrow, shaped), pa.float64()).to_numpy(zero_copy_only=False)
    ok = shaped & np.isfinite(number)  # "1e999" casts to inf: not a number either
    return pd.Series(np.where(ok, number, np.nan), dtype="float64"), ok


def _arrow_integer(arrow: pa.Array, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    shaped = _shaped(arrow, present, _DIGITS)
    if (present & ~shaped).any():
        raise _NotFast  # "24181354.0" is a whole number too; pandas decides cell by cell
    values = pc.cast(_only(arrow, shaped), pa.int64()).fill_null(0)
    data = np.asarray(values.to_numpy(zero_copy_only=False), dtype="int64")
    return pd.Series(pd.arrays.IntegerArray(data, ~shaped)), shaped


def _arrow_time(arrow: pa.Array, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    shaped = _shaped(arrow, present, _ISO_TIME)
    # Out of datetime64[ns] range or an impossible date (month 13): ArrowInvalid -> pandas.
    values = pc.cast(_only(arrow, shaped), pa.timestamp("ns")).to_pandas()
    return pd.Series(values.to_numpy(dtype="datetime64[ns]")), shaped


def _pandas_number(text: pd.Series, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    stripped = text.str.strip().astype(object)
    number = pd.to_numeric(stripped, errors="coerce").astype("float64").to_numpy()
    ok = present & np.isfinite(number)  # NaN (unparseable) and +-inf are not numbers
    return pd.Series(np.where(ok, number, np.nan), dtype="float64"), ok


def _pandas_integer(text: pd.Series, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Whole numbers; "24181354.0" (a pandas export of a column with nulls) counts as whole.

    Plain digits are converted exactly (no float64 round trip for long ids).
    """
    stripped = text.str.strip().reset_index(drop=True)
    # ASCII digits only, as in the Arrow path: Python's \d also takes "٣", which no cast reads.
    digits = stripped.str.fullmatch(_DIGITS, flags=re.ASCII)
    digits = digits.fillna(False).to_numpy(dtype=bool) & present
    # "+5" matches _DIGITS but no cast to Int64 takes its sign: drop it first
    values = stripped.where(digits).str.removeprefix("+").astype("Int64")
    rest = present & ~digits
    if rest.any():
        number = pd.to_numeric(stripped[rest].astype(object), errors="coerce").astype("float64")
        whole = np.isfinite(number) & (number == np.floor(number)) & (number.abs() < 2**53)
        values[number.index[whole]] = number[whole].astype("int64")
        digits = digits.copy()
        digits[np.flatnonzero(rest)[whole.to_numpy()]] = True
    return values, digits


def _pandas_time(text: pd.Series, present: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    stripped = text.str.strip().reset_index(drop=True)
    shaped = stripped.str.fullmatch(_ISO_TIME).fillna(False).to_numpy(dtype=bool) & present
    candidates = stripped.where(shaped).astype(object)
    parsed = pd.to_datetime(candidates, format="ISO8601", errors="coerce")
    parsed = parsed.astype("datetime64[us]")  # a common unit before the range test
    ok = (parsed.notna() & (parsed >= _NS_MIN) & (parsed <= _NS_MAX)).to_numpy()
    return parsed.where(ok).astype("datetime64[ns]"), ok


_ARROW_PARSERS = {
    "id": _arrow_integer,
    "int": _arrow_integer,
    "time": _arrow_time,
    "number": _arrow_number,
}
_PANDAS_PARSERS = {
    "id": _pandas_integer,
    "int": _pandas_integer,
    "time": _pandas_time,
    "number": _pandas_number,
}


# -- the engine's share of the parsing ---------------------------------------------------------
#
# DuckDB tokenizes labevents (csv_chunks.engine_chunks) and, in the same query, types the cells
# whose text leaves no room for doubt: no blank around them, in the commonest shape of their
# kind, values every cast agrees on (an integer of at most 18 digits without "+"; a decimal
# number; "YYYY-MM-DD HH:MM:SS" of a real date in 1700-2261, inside datetime64[ns]; text that
# starts and ends with a printable ASCII character, so trimming leaves it as it is). A chunk all
# of whose cells are such, or empty, is "clean" and taken from DuckDB's typed columns
# (parse_clean); any other chunk is parsed from its text by parse_columns, as pandas' chunks
# are. So the engine only ever decides what parse_columns would decide the same way.

_FAST_PATTERNS = {
    "id": r"-?[0-9]{1,18}",
    "int": r"-?[0-9]{1,18}",
    "number": r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?",
    "time": r"(?:1[7-9][0-9]{2}|2[01][0-9]{2}|22[0-5][0-9]|226[01])-(?:0[1-9]|1[0-2])"
    r"-(?:0[1-9]|[12][0-9]|3[01]) (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]",
    "text": r"(?s)[!-~](?:.*[!-~])?",
}
_FAST_TYPES = {"id": "BIGINT", "int": "BIGINT", "number": "DOUBLE", "time": "TIMESTAMP"}
CLEAN = "__clean"  # the query's column: every cell of the row is clean


def typed_name(name: str) -> str:
    return f"__typed_{name}"


def engine_select(schema: TableSchema, header: list[str]) -> list[str]:
    """The SQL expressions engine_chunks adds for `schema`: typed columns and CLEAN."""
    clean, typed = [], []
    for column in schema.columns:
        if column.name not in header:
            continue  # absent: all empty, as parse_columns makes it
        cell = quote_name(column.name)
        empty = f"({cell} IS NULL OR {cell} = '')"
        shaped = f"regexp_full_match({cell}, {quote_literal(_FAST_PATTERNS[column.kind])})"
        if column.kind == "text":
            clean.append(f"({empty} OR {shaped})")
            continue
        cast = f"TRY_CAST({cell} AS {_FAST_TYPES[column.kind]})"
        parsed = f"({cast} IS NOT NULL)"
        if column.kind == "number":
            parsed = f"coalesce(isfinite({cast}), false)"
        clean.append(f"({empty} OR ({shaped} AND {parsed}))")
        value = f"TRY_CAST({cast} AS TIMESTAMP_NS)" if column.kind == "time" else cast
        typed.append(f"{value} AS {quote_name(typed_name(column.name))}")
    every = " AND ".join(clean) if clean else "true"
    return [*typed, f"coalesce({every}, false) AS {quote_name(CLEAN)}"]


def parse_clean(
    columns: dict[str, pa.Array], typed: dict[str, pa.Array], index: pd.Index, schema: TableSchema
) -> ParsedChunk:
    """parse_columns' result for a clean chunk, from DuckDB's typed columns."""
    rows = len(index)
    reasons = pd.Series(pd.NA, index=index, dtype="string")
    out: dict[str, pd.Series] = {}
    for column in schema.columns:
        raw = columns.get(column.name)
        if raw is None:  # absent optional column: exactly what parse_columns makes of it
            raw_cells, present = _cells(columns, column.name, rows)
            values, _ = parse_cells(raw_cells, present, column.kind)
        else:
            present = np.asarray(
                pc.fill_null(pc.not_equal(raw, ""), False).to_numpy(zero_copy_only=False),
                dtype=bool,
            )
            values = _clean_values(column.kind, raw, typed.get(column.name), present)
        if column.required and not column.nullable:
            reasons = first_reason(reasons, ~present, f"{MISSING_VALUE} {column.name}")
        values.index = index
        out[column.name] = values
    return ParsedChunk(frame=pd.DataFrame(out, index=index), reasons=reasons, coerced={})


def _clean_values(
    kind: str, raw: pa.Array, typed: pa.Array | None, present: np.ndarray
) -> pd.Series:
    """One clean column as parse_cells types it (the same dtypes, NA where empty)."""
    if kind == "text":
        text = raw if raw.type == pa.large_string() else pc.cast(raw, pa.large_string())
        return pd.Series(pd.arrays.ArrowStringArray(_only(text, present)))
    assert typed is not None
    if kind in ("id", "int"):
        data = np.asarray(typed.fill_null(0).to_numpy(zero_copy_only=False), dtype="int64")
        return pd.Series(pd.arrays.IntegerArray(data, ~present))
    if kind == "time":
        values = pc.cast(typed, pa.timestamp("ns")).to_pandas()
        return pd.Series(values.to_numpy(dtype="datetime64[ns]"))
    number = np.asarray(typed.to_numpy(zero_copy_only=False), dtype=np.float64)
    return pd.Series(np.where(present, number, np.nan), dtype="float64")
