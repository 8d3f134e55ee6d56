"""One request row of the served model -> the inputs it may use, each read on its own.

An input that is refused or cannot be read becomes a plain sentence in the row's `errors` and
counts as missing; nothing here raises for a bad value (../shared/cli-and-report.md, "The served
model"). Sentences never quote a decoder's own message: it may carry attribute values (PHI).

Files come as base64 (`image_b64`, `recording_b64`) or as a path (`image_path`,
`recording_path`). A path is read only when it resolves, symlinks followed, inside the folder
named by CLINFUSE_SERVE_ROOT in the server's environment (a relative path is taken inside that
folder). That check comes before anything touches the file, so a refused path is never opened and
the answer does not tell whether it exists. Decoding goes through the ingest readers (load_image,
load_recording): the same tensor, and the same size limits, as in the pipeline.

Request size (`limits.max_request_mb` of the run's settings, stored with the model): one input
larger than that on its own is refused, in its row's errors, before it is decoded; a request
whose inputs together exceed it is refused as a whole (`request_refusal`: every row gets the
sentence and no score), unless it is the pipeline scoring its own landing zone (`reading_from`).
Sizes are what the request carries: text in UTF-8 bytes (base64 included), 8 bytes for any
other value; a path's file counts against `limits.max_image_mb` or the audio prefix, not here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.assets.ingest.audio.reader import RecordingError, load_recording
from clinfuse.assets.ingest.dicom.reader import ImageError, load_image
from clinfuse.assets.settings import Settings

SERVE_ROOT_ENV = "CLINFUSE_SERVE_ROOT"
NOUNS = {"image": "a DICOM image", "recording": "an audio recording"}
LAB_SHAPE = "{itemid, charttime, valuenum}"
MB = 2**20  # as limits.max_image_mb
# True inside reading_from: the pipeline scores its own cohort, no request from outside.
_PIPELINE_SCORING: ContextVar[bool] = ContextVar("pipeline_scoring", default=False)

Lab = tuple[int, pd.Timestamp, float]  # itemid, charttime, valuenum (NaN: a text result)


class Refused(Exception):
    """An input the row cannot use; the message is the response's sentence."""


@dataclass
class RowInputs:
    """What one request row contributes; None = missing (absent, refused or unreadable)."""

    admittime: pd.Timestamp | None = None
    gender: str | None = None
    anchor_age: float | None = None
    anchor_year: float | None = None
    labs: list[Lab] | None = None
    notes: str | None = None
    image: np.ndarray | None = None  # (1, S, S) float32
    recording: np.ndarray | None = None  # (1, n_mels, frames) float32
    errors: list[str] = field(default_factory=list)


def serve_root() -> Path | None:
    """The folder paths may point into, read when scoring (the server's environment)."""
    value = os.environ.get(SERVE_ROOT_ENV, "")
    return Path(value).resolve() if value.strip() else None


@contextmanager
def reading_from(root: Path) -> Iterator[None]:
    """CLINFUSE_SERVE_ROOT = root for the block: the pipeline scoring a model in-process on its
    own landing zone (serving_frame's paths) reads those files as a server over it would.

    The whole-request size limit is off in the block: the promotion gate re-scores a whole
    validation and test cohort in one call, which is no request from outside (the limit on each
    single input still holds).
    """
    before = os.environ.get(SERVE_ROOT_ENV)
    os.environ[SERVE_ROOT_ENV] = str(root)
    token = _PIPELINE_SCORING.set(True)
    try:
        yield
    finally:
        _PIPELINE_SCORING.reset(token)
        if before is None:
            os.environ.pop(SERVE_ROOT_ENV, None)
        else:
            os.environ[SERVE_ROOT_ENV] = before


def read_row(row: Mapping[str, Any], settings: Settings, root: Path | None) -> RowInputs:
    """Every input of one row; what it cannot use is in `errors`, one sentence per input."""
    out = RowInputs()
    row = _within_limit(row, settings.limits.max_request_mb, out.errors)
    take = partial(_take, out.errors)
    out.admittime = take(_time, "admittime", row.get("admittime"))
    out.gender = take(_text, "gender", row.get("gender"))
    out.anchor_age = take(_number, "anchor_age", row.get("anchor_age"))
    out.anchor_year = take(_number, "anchor_year", row.get("anchor_year"))
    out.notes = take(_text, "notes", row.get("notes"))
    out.labs = take(_labs, "labs", row.get("labs"))
    if out.labs and out.admittime is None:
        # The window starts at admittime: without it, no lab can be told inside or outside.
        out.errors.append("labs were not used: without admittime no lab can be placed in time.")
        out.labs = None
    size, max_mb = settings.image_size, settings.limits.max_image_mb  # the run's own limit
    out.image = _file(row, "image", lambda s: load_image(s, size, max_mb), root, out.errors)
    out.recording = _file(
        row, "recording", lambda s: load_recording(s, settings.audio), root, out.errors
    )
    return out


# --- size ----------------------------------------------------------------------------------------


def value_bytes(value: object) -> int:
    """What one request value weighs: text in UTF-8 bytes, bytes as they are, else 8."""
    if isinstance(value, str):
        # isascii is a scan, not a copy: base64 and most text never need encoding to be measured
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, list | dict):  # labs given as JSON values rather than text
        return len(json.dumps(value, default=str))
    return 8


def _too_large(value: object, max_mb: float) -> bool:
    return not missing(value) and value_bytes(value) > max_mb * MB


def _within_limit(row: Mapping[str, Any], max_mb: float, errors: list[str]) -> dict[str, Any]:
    """The row with each input larger than the limit on its own refused (None), and why."""
    kept = dict(row)
    for name, value in row.items():
        if _too_large(value, max_mb):
            errors.append(
                f"{name} was refused: it is larger than limits.max_request_mb = {max_mb:g} MB."
            )
            kept[name] = None
    return kept


def request_refusal(records: Sequence[Mapping[str, Any]], max_mb: float) -> str | None:
    """The sentence refusing the whole request when its inputs (less those refused on their
    own) together exceed the limit; None when it is within it, or the pipeline is scoring."""
    if _PIPELINE_SCORING.get():
        return None
    total = sum(
        value_bytes(value)
        for record in records
        for value in record.values()
        if not missing(value) and not _too_large(value, max_mb)
    )
    if total <= max_mb * MB:
        return None
    return (
        f"the request was refused: its inputs come to {total / MB:,.1f} MB, more than "
        f"limits.max_request_mb = {max_mb:g} MB; send fewer rows per request."
    )


def missing(value: object) -> bool:
    """Null, NaN (how pandas fills a column a row lacks) or "" (as the pipeline's notes)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value == ""


def _take(errors: list[str], reader: Callable[[str, Any], Any], name: str, value: object) -> Any:
    if missing(value):
        return None
    try:
        return reader(name, value)
    except Refused as refusal:
        errors.append(str(refusal))
        return None


# --- fields --------------------------------------------------------------------------------------


def _time(name: str, value: object) -> pd.Timestamp:
    if isinstance(value, str | datetime | np.datetime64):  # not a number: pandas reads it as ns
        try:
            # as_unit: the frames are datetime64[ns]; a year pandas holds but ns cannot is refused
            stamp = pd.Timestamp(value).as_unit("ns")
        except (ValueError, TypeError, OverflowError):
            stamp = pd.NaT
        if not pd.isna(stamp):
            # Wall-clock time, as the export's naive timestamps are.
            return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp
    raise Refused(f"{name} is not a date and time such as 2180-01-01 08:00:00.")


def _text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise Refused(f"{name} is not text.")


def _number(name: str, value: object) -> float:
    number = math.nan
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with suppress(ValueError):
            number = float(value)
    if not math.isfinite(number):
        raise Refused(f"{name} is not a number.")
    return number


def _integer(value: object) -> int | None:
    try:
        number = _number("", value)
    except Refused:
        return None
    # Within int64: the lab frame's itemid column is Int64, and one huge id must not sink the batch.
    return int(number) if number.is_integer() and abs(number) < 2**63 else None


# --- labs ----------------------------------------------------------------------------------------


def _labs(name: str, value: object) -> list[Lab]:
    entries = value
    if isinstance(value, str):
        try:
            entries = json.loads(value)
        except (ValueError, RecursionError):
            raise Refused(f"{name} is not valid JSON (a list of {LAB_SHAPE}).") from None
    if not isinstance(entries, list):
        raise Refused(f"{name} is not a JSON list of {LAB_SHAPE}.")
    return [_lab(name, number, entry) for number, entry in enumerate(entries, start=1)]


def _lab(name: str, number: int, entry: object) -> Lab:
    refusal = Refused(
        f"{name} entry {number} is not an object with an integer itemid, a charttime and a "
        "numeric or null valuenum."
    )
    if not isinstance(entry, dict):
        raise refusal
    itemid = _integer(entry.get("itemid"))
    value = entry.get("valuenum")
    try:
        charttime = _time("charttime", entry.get("charttime"))
        valuenum = math.nan if missing(value) else _number("valuenum", value)
    except Refused:
        raise refusal from None
    if itemid is None:
        raise refusal
    return itemid, charttime, valuenum


# --- files ---------------------------------------------------------------------------------------


def _file(
    row: Mapping[str, Any],
    kind: str,
    load: Callable[[bytes | Path], np.ndarray],
    root: Path | None,
    errors: list[str],
) -> np.ndarray | None:
    name, source = _file_source(row, kind, root, errors)
    if source is None:
        return None
    try:
        return load(source)
    except (ImageError, RecordingError) as error:
        errors.append(f"{name} is not {NOUNS[kind]} that can be read: {error.reason}.")
    except OSError:
        errors.append(f"{name} could not be read.")
    except Exception:  # noqa: BLE001 - a decoder's own failure costs this input, not the batch
        errors.append(f"{name} is not {NOUNS[kind]} that can be read.")
    return None


def _file_source(
    row: Mapping[str, Any], kind: str, root: Path | None, errors: list[str]
) -> tuple[str, bytes | Path | None]:
    """(the column it came from, the bytes or the checked path), or a None source."""
    b64_name, path_name = f"{kind}_b64", f"{kind}_path"
    encoded, path = row.get(b64_name), row.get(path_name)
    if not missing(encoded):
        if not missing(path):
            errors.append(f"{path_name} was not read: {b64_name} was given too.")
        return b64_name, _take(errors, _base64, b64_name, encoded)
    return path_name, _take(errors, partial(_inside_root, root=root), path_name, path)


def _base64(name: str, value: object) -> bytes:
    if isinstance(value, bytes):  # an in-process caller may hand the bytes themselves
        return value
    if not isinstance(value, str):
        raise Refused(f"{name} is not base64 text.")
    try:
        # Whitespace out first: `base64` wraps its output at 76 characters.
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{name} is not valid base64.") from None


def _inside_root(name: str, value: object, root: Path | None) -> Path:
    if not isinstance(value, str):
        raise Refused(f"{name} is not text.")
    if root is None:
        raise Refused(f"{name} was refused: the server reads no paths ({SERVE_ROOT_ENV} is unset).")
    try:
        resolved = (root / value).resolve()  # symlinks followed: where the bytes really are
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        raise Refused(f"{name} is not a usable path.") from None
    if not resolved.is_relative_to(root):
        raise Refused(f"{name} was refused: it is outside the server's {SERVE_ROOT_ENV} folder.")
    if not resolved.is_file():
        raise Refused(f"{name} names no file in the server's {SERVE_ROOT_ENV} folder.")
    return resolved


__all__ = [
    "MB",
    "SERVE_ROOT_ENV",
    "RowInputs",
    "missing",
    "read_row",
    "reading_from",
    "request_refusal",
    "serve_root",
    "value_bytes",
]
