"""Parsing a file's bytes as DICOM and keeping the few header fields the index may hold.

Only the fields of `Header` ever leave this module: hashed UIDs, the PatientID as an integer
subject_id, the study time and technical attributes (docs/privacy.md). Everything is read under
`quiet()`, since pydicom's warnings and log lines quote attribute values.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from clinfuse.assets.ingest.dicom.pixels import ImageError, frame_count
from clinfuse.assets.ingest.quarantine import NOT_DICOM, TRUNCATED_FILE

UNDEFINED_LENGTH = 0xFFFFFFFF
_INTEGER = re.compile(r"\s*\+?(\d{1,18})(\.0*)?\s*")
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")  # VR CS: what a Modality or PI may hold
_UID = re.compile(r"\d+(\.\d+)*")


@dataclass(frozen=True)
class Header:
    """The non-identifying header fields of one file (PS3.15 Annex E: see docs/privacy.md)."""

    instance_key: str | None  # sha256 of SOPInstanceUID
    study_key: str | None  # sha256 of StudyInstanceUID
    subject_id: int | None  # PatientID when it is an integer, else None
    study_datetime: datetime | None
    modality: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    photometric_interpretation: str | None
    rows: int | None
    columns: int | None
    frames: int | None
    bits_stored: int | None


@contextmanager
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Collects warnings and mutes pydicom's logger: both may quote attribute values."""
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.disabled = was_disabled


# --- parsing ----------------------------------------------------------------------------------


def parse_dicom(data: bytes) -> Dataset:
    """The dataset in `data`; raises ImageError(TRUNCATED_FILE or NOT_DICOM).

    A file without the 128-byte preamble and "DICM" is read again with `force`. Either way the
    result must look like DICOM (at least two tags from the data dictionary, file meta
    included): pydicom turns arbitrary bytes into one garbage element. A file whose bytes end
    inside an element, or a Part-10 file with a file meta but an empty body, is truncated.
    """
    with quiet() as caught:
        try:
            ds = dcmread(io.BytesIO(data))
            part10 = True
        except InvalidDicomError:
            ds, part10 = _forced(data), False
        except Exception:  # struct/EOF errors in the file meta: a cut-off header
            raise ImageError(TRUNCATED_FILE) from None
        ended_early = any("End of file" in str(w.message) for w in caught)
    if not _looks_like_dicom(ds):
        raise ImageError(NOT_DICOM)
    if ended_early or (part10 and len(ds) == 0) or _last_element_cut(ds, len(data)):
        raise ImageError(TRUNCATED_FILE)
    return ds


def _forced(data: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(data), force=True)
    except Exception:
        raise ImageError(NOT_DICOM) from None


def _looks_like_dicom(ds: Dataset) -> bool:
    """At least two tags (file meta included) from the data dictionary: garbage yields one."""
    meta = getattr(ds, "file_meta", None)
    # keys(), not the Dataset itself: iterating a Dataset converts every raw element.
    tags = itertools.chain(ds.keys(), meta.keys() if meta is not None else ())  # noqa: SIM118
    known = (tag for tag in tags if dictionary_has_tag(tag))
    return next(known, None) is not None and next(known, None) is not None


def _last_element_cut(ds: Dataset, size: int) -> bool:
    """The file ends inside its last top-level element: in its value, or in the next header.

    pydicom stops silently at the end of the bytes: a value shorter than its length says, or a
    partial element header (under 12 bytes left over) after the last complete element, is a cut.
    A cut exactly between two elements leaves a valid, shorter dataset and is not detectable.
    """
    if len(ds) == 0:
        return False
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return False  # converted while reading, or encapsulated: the EOF warning covers those
    if last.value is not None and len(last.value) < last.length:
        return True
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    leftover = size - (last.value_tell + last.length)  # offsets are in the inflated stream
    return not deflated and 0 < leftover < 12


# --- header fields ----------------------------------------------------------------------------


def read_header(ds: Dataset) -> Header:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return Header(
        instance_key=uid_key(_text(ds, "SOPInstanceUID")),
        study_key=uid_key(_text(ds, "StudyInstanceUID")),
        subject_id=parse_integer(_text(ds, "PatientID")),
        study_datetime=study_datetime(ds),
        modality=_matching(_text(ds, "Modality"), _CODE_STRING),
        sop_class_uid=_matching(_text(ds, "SOPClassUID"), _UID),
        transfer_syntax_uid=_matching(str(tsyntax) if tsyntax else None, _UID),
        photometric_interpretation=_matching(_text(ds, "PhotometricInterpretation"), _CODE_STRING),
        rows=_integer(ds, "Rows"),
        columns=_integer(ds, "Columns"),
        frames=frame_count(ds),
        bits_stored=_integer(ds, "BitsStored"),
    )


def uid_key(uid: str | None) -> str | None:
    """sha256 of a UID (its text without padding): a stable key that does not carry the UID."""
    if not uid:
        return None
    return hashlib.sha256(uid.strip("\x00 ").encode("ascii", "replace")).hexdigest()


def parse_integer(text: str | None) -> int | None:
    """'10001217' or '10001217.0' -> 10001217; anything else (a name, an MRN with letters) None."""
    match = _INTEGER.fullmatch(text or "")
    return int(match.group(1)) if match else None


def _text(ds: Dataset, keyword: str) -> str | None:
    """The element's first value as text, None when absent, empty or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:  # a value that does not convert to its VR
        return None
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):  # multi-valued
        value = value[0] if len(value) else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = None if value is None else str(value).strip("\x00 ")
    return text or None


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None else int(value)
    except Exception:
        return None


def _matching(text: str | None, pattern: re.Pattern[str]) -> str | None:
    """Kept only when it has the shape its VR allows: free text must not ride in a code field."""
    if text is None:
        return None
    text = text.strip().upper() if pattern is _CODE_STRING else text.strip()
    return text if pattern.fullmatch(text) and len(text) <= 64 else None


# --- the study time ---------------------------------------------------------------------------


def study_datetime(ds: Dataset) -> datetime | None:
    """StudyDate+StudyTime, else AcquisitionDateTime, else ContentDate+ContentTime.

    The first source with both a date and a time wins; when none has a time, the first date
    alone is used at 00:00. Offsets from UTC (DT's "&ZZXX") are ignored: times are naive and
    already shifted in MIMIC-style exports.
    """
    candidates = [
        (_text(ds, "StudyDate"), _text(ds, "StudyTime")),
        _split_dt(_text(ds, "AcquisitionDateTime")),
        (_text(ds, "ContentDate"), _text(ds, "ContentTime")),
    ]
    parsed = [(_date(d), _time(t)) for d, t in candidates]
    for day, clock in parsed:
        if day is not None and clock is not None:
            return datetime(day[0], day[1], day[2], *clock)
    for day, _ in parsed:
        if day is not None:
            return datetime(day[0], day[1], day[2])
    return None


def _split_dt(text: str | None) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    text = re.split(r"[+-]", text.strip(), maxsplit=1)[0]
    return text[:8], (text[8:] or None)


def _date(text: str | None) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", (text or "").replace(".", "").replace("-", ""))
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    if not 1678 <= year <= 2261:  # outside what datetime64[ns] holds
        return None
    try:
        datetime(year, month, day)
    except ValueError:
        return None
    return year, month, day


def _time(text: str | None) -> tuple[int, int, int, int] | None:
    """TM 'HH[MM[SS[.F{1,6}]]]' (colons of ACR-NEMA style tolerated) -> (h, m, s, microsecond)."""
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", (text or "").replace(":", ""))
    if not match:
        return None
    hour, minute, second = (int(g) if g else 0 for g in match.groups()[:3])
    micro = int((match.group(4) or "0").ljust(6, "0"))
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, min(second, 59), micro
