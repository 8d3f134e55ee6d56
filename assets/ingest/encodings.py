"""The text encoding of a landing-zone table or manifest, detected once per file.

landing-zone.md: text files are UTF-8 (with or without a byte-order mark); a file in another
8-bit encoding is read with a fallback, Windows-1252 then Latin-1, and undecodable bytes never
stop a run. Latin-1 maps every byte to a character, so the chain always ends in a decoding.

The readers (ehr/csv_chunks.py, the DICOM and audio manifests) and the independent row counter
(counting.py) both call `detect_encoding`, so a file is decoded the same way by both. Row counts
do not depend on the encoding anyway: the CSV structure (comma, quote, CR, LF) is ASCII in all
three, and no byte of a UTF-8 multi-byte sequence is ASCII. Plain code: no Dagster.
"""

from __future__ import annotations

import codecs
import gzip
import io
from pathlib import Path
from typing import BinaryIO

from clinfuse.assets.ingest.paths import Zone

UTF8 = "utf-8"
UTF8_SIG = "utf-8-sig"  # UTF-8 that starts with a byte-order mark: the mark is not data
CP1252 = "cp1252"
LATIN1 = "latin-1"
FALLBACKS = (CP1252, LATIN1)  # in this order; cp1252 leaves 5 bytes undefined, latin-1 none
BLOCK = 1 << 20  # bytes decoded at a time: memory stays flat whatever the file's size


def is_compressed(path: Path | str) -> bool:
    """By the name in the landing zone (`.csv.gz`), not by the target of a link."""
    return str(path).endswith(".gz")


def open_binary(path: Path | str, compressed: bool | None = None) -> BinaryIO:
    """The file's (decompressed) bytes; `compressed` defaults to the name ending in .gz."""
    if is_compressed(path) if compressed is None else compressed:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's `with`


def open_text(path: Path | str, encoding: str, compressed: bool | None = None) -> io.TextIOBase:
    """Text with line ends untranslated (newline=""), as csv.reader wants it."""
    return io.TextIOWrapper(open_binary(path, compressed), encoding=encoding, newline="")


def decodes(path: Path | str, encoding: str, compressed: bool | None = None) -> bool:
    """Whether the whole file decodes strictly in `encoding`, read a block at a time."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    with open_binary(path, compressed) as handle:
        try:
            while block := handle.read(BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)  # a multi-byte sequence cut off at the end
        except UnicodeDecodeError:
            return False
    return True


def detect_encoding(path: Path | str, compressed: bool | None = None) -> str:
    """utf-8 (utf-8-sig with a byte-order mark), else cp1252, else latin-1.

    Raises what reading the file raises (OSError, EOFError, zlib.error for a truncated gzip):
    a file that cannot be read is the caller's to report, whatever its encoding.
    """
    if decodes(path, UTF8, compressed):
        with open_binary(path, compressed) as handle:
            return UTF8_SIG if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else UTF8
    if decodes(path, CP1252, compressed):
        return CP1252
    return LATIN1


def is_fallback(encoding: str) -> bool:
    """A legacy 8-bit encoding: the run log and the table's metadata name it."""
    return encoding in FALLBACKS


def manifest_encodings(landing: Path, folder: str) -> dict[str, str]:
    """{"<folder>/manifest.csv": encoding} when that manifest is a regular file inside the zone
    (the readers quarantine one that is not, and it is never opened here either)."""
    manifest = Path(landing) / folder / "manifest.csv"
    real = Zone.of(landing).real(manifest) if manifest.exists() else None
    if real is None or not real.is_file():
        return {}
    try:
        return {f"{folder}/manifest.csv": detect_encoding(real, compressed=False)}
    except OSError:
        return {}
