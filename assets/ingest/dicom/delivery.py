"""One delivery's DICOM files, decoded into the store: a record per file, each image in a shard.

A file whose bytes the store already holds (same sha256, same decode settings) is copied from
its shard instead of decoded, so a delivery decoded again, or a copy of an ingested file that
arrives under another name, costs a hash, not a decode. Linking to admissions, the manifest and
duplicates are not decided here but over all deliveries at once (study_index.py): they depend on the
other tables and deliveries, which change, while what a file decodes to does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.decoded import DecodeStore, DeliveryDecode, reused_record, typed
from clinfuse.assets.ingest.dicom.header import Header
from clinfuse.assets.ingest.dicom.reader import Decoding, FileResult, read_files
from clinfuse.assets.ingest.paths import Zone, read_regular

HEADER_FIELDS = [f.name for f in dataclasses.fields(Header)]
RECORD_DTYPES: dict[str, str] = {
    "path": "string",  # relative to the landing zone: dicom/a/b.dcm
    "sha256": "string",
    "reason": "string",  # the decoder's quarantine reason; NA when the file decoded
    "instance_key": "string",
    "study_key": "string",
    "subject_id": "Int64",  # PatientID when it is an integer
    "study_datetime": "datetime64[ns]",
    "modality": "string",
    "sop_class_uid": "string",
    "transfer_syntax_uid": "string",
    "photometric_interpretation": "string",
    "rows": "Int64",
    "columns": "Int64",
    "frames": "Int64",
    "bits_stored": "Int64",
    "shard": "string",
    "slot": "Int64",
}


def decode_delivery(
    landing: Path,
    files: list[str],
    store: DecodeStore,
    delivery: str,
    decoding: Decoding,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> DeliveryDecode:
    """`files` (relative to the zone, dicom/...) decoded, or copied from the store by content."""
    dicom_dir = Path(landing) / "dicom"
    relatives = [f.removeprefix("dicom/") for f in files]
    reuse = store.reusable(relatives, _hasher(dicom_dir))
    todo = [r for r in relatives if r not in reuse]
    rows: list[dict[str, object]] = []
    reader = store.reader()
    with store.writer(delivery) as writer:
        done = 0
        for results in read_files(dicom_dir, todo, decoding, workers):
            for result in results:
                rows.append(_record(result, writer.append))
            done += len(results)
            if progress is not None:
                progress(done, len(relatives))
        for relative, known in reuse.items():
            path = f"dicom/{relative}"
            rows.append(reused_record(path, known, list(RECORD_DTYPES), reader, writer.append))
    records = typed_records(pd.DataFrame(rows, columns=list(RECORD_DTYPES)))
    return DeliveryDecode(records.sort_values("path", ignore_index=True), len(todo))


def _record(result: FileResult, append: Callable) -> dict[str, object]:
    row: dict[str, object] = {"path": f"dicom/{result.path}", "sha256": result.sha256}
    if result.reason is not None or result.header is None or result.image is None:
        return {**row, "reason": result.reason}
    shard, slot = append(result.image)
    return {**row, **dataclasses.asdict(result.header), "shard": shard, "slot": slot}


def _hasher(dicom_dir: Path) -> Callable[[str], str | None]:
    """sha256 of a file that is inside the zone and readable; None for the rest (the decoder
    then rejects them with their reason, as it would have)."""
    zone = Zone.of(dicom_dir.parent)

    def digest(relative: str) -> str | None:
        real = zone.real(dicom_dir / relative)
        if real is None:
            return None
        try:
            return hashlib.sha256(read_regular(real)).hexdigest()
        except OSError:
            return None

    return digest


def typed_records(frame: pd.DataFrame) -> pd.DataFrame:
    return typed(frame, RECORD_DTYPES)
