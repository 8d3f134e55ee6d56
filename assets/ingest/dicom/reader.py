"""DICOM ingest: every file under <landing>/dicom/ becomes an index row and an image, or a reject.

Plain code (no Dagster): `assets/ingest/imaging.py` wires it into assets. The work per file
(sha256, parse, header, decode, normalise: dicom_header.py, dicom_pixels.py) runs in a process
pool; the parent links files to admissions, drops duplicate instances and writes the images into
shards, in sorted path order, so the result does not depend on the number of workers.

Accounting: `seen` is the number of files under dicom/ except dicom/manifest.csv, and every one of
them ends either in `index` or in `rejects` with its path as source. Rejected manifest rows
(source `dicom/manifest.csv:N`) are in `rejects` too but are not files: they do not count in seen.

A file is rejected, in this order, when it
- resolves outside the landing zone (a link out of it, or into a linked folder): "outside
  landing zone", and none of its bytes is read (paths.py; a link into the zone is read);
- cannot be read as DICOM: "truncated file", "not a DICOM file", "no pixel data",
  "unsupported transfer syntax[: name]" (no decoder installed), "undecodable pixel data[: what]",
  "decoder crashed" (decoding it killed the worker process);
- cannot be linked (`link_to_admissions`): "unknown patient" (PatientID not an integer or not
  in patients; a manifest row overrides it), "unknown admission" (a manifest hadm_id that is not
  the patient's), "no admission" (no admission of the patient holds the study time, or there is
  neither a study time nor a hadm_id);
- repeats an ingested file: "duplicate instance" (same SOPInstanceUID, or the same bytes when it
  has none; the first file in path order is the one kept).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from clinfuse.assets.ingest.dicom.header import Header, parse_dicom, quiet, read_header
from clinfuse.assets.ingest.dicom.manifest import MANIFEST, ManifestEntry, read_manifest
from clinfuse.assets.ingest.dicom.pixels import DEFAULT_MAX_IMAGE_MB, ImageError, dataset_image
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.ingest.paths import Zone, read_regular, walk_entries
from clinfuse.assets.ingest.pool import process_pool
from clinfuse.assets.ingest.quarantine import (
    DECODER_CRASHED,
    DUPLICATE_INSTANCE,
    NOT_DICOM,
    OUTSIDE_LANDING_ZONE,
    UNDECODABLE_PIXELS,
    Reject,
    rejects_frame,
)
from clinfuse.models.shards import ShardWriter

__all__ = ["INDEX_DTYPES", "DicomIngest", "ImageError", "ingest_dicom", "load_image"]

INDEX_DTYPES: dict[str, str] = {
    "path": "string",  # relative to the landing zone: dicom/a/b.dcm
    "sha256": "string",  # of the file's bytes
    "instance_key": "string",  # sha256 of SOPInstanceUID (the UID itself is not kept)
    "study_key": "string",  # sha256 of StudyInstanceUID
    "subject_id": "Int64",
    "hadm_id": "Int64",  # the linked admission
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
SHARD_PREFIX = "images"
INLINE_BELOW = 16  # fewer files than this are read in-process: a pool's start costs more
LINK_BATCH = 256  # results linked to admissions per call (link_to_admissions is vectorised)


@dataclass
class DicomIngest:
    index: pd.DataFrame  # INDEX_DTYPES, one row per ingested file, in path order
    rejects: pd.DataFrame  # quarantine columns: manifest rows first, then files in path order
    seen: int
    shards: list[str]


def load_image(
    source: Path | str | bytes | Dataset,
    image_size: int,
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
) -> np.ndarray:
    """(1, S, S) float32 in [0, 1] from a DICOM file, its bytes or a parsed dataset.

    The pixel rule is dicom_pixels.py's docstring. Raises ImageError(reason) with a quarantine
    reason when the source yields no image. A Dataset without a transfer syntax gets the
    inferred one written into its file meta.
    """
    with quiet():
        if isinstance(source, Dataset):
            ds = source
        else:
            ds = parse_dicom(source if isinstance(source, bytes) else Path(source).read_bytes())
        try:
            return dataset_image(ds, image_size, max_image_mb)
        except ImageError:
            raise
        except Exception:  # never the text: it may quote attribute values
            raise ImageError(UNDECODABLE_PIXELS) from None


@dataclass(frozen=True)
class Decoding:
    """What every worker does to a file's pixels: the tensor size, and the size limit."""

    image_size: int
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB


def ingest_dicom(
    landing: Path,
    shard_dir: Path,
    admissions: pd.DataFrame,
    known_subjects: pd.Series,
    image_size: int,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
) -> DicomIngest:
    """Reads every file under <landing>/dicom/ (see the module docstring for what becomes what).

    admissions: subject_id, hadm_id, admittime, dischtime; known_subjects: patients' subject_id.
    Images go to `<shard_dir>/images-NNNNN.npy` (float16, (1, S, S) per item); workers defaults
    to every core. progress(done, total) is called as files complete.
    """
    dicom_dir = Path(landing) / "dicom"
    paths = discover(dicom_dir)
    manifest, manifest_rejects = read_manifest(dicom_dir, set(paths))
    writer = ShardWriter(Path(shard_dir), SHARD_PREFIX, (1, image_size, image_size))
    decider = _Decider(manifest, admissions, known_subjects, writer)
    done = 0
    decoding = Decoding(image_size, max_image_mb)
    for results in read_files(dicom_dir, paths, decoding, workers or os.cpu_count() or 1):
        decider.add(results)
        done += len(results)
        if progress is not None:
            progress(done, len(paths))
    decider.flush()
    shards = writer.close()
    rejects = manifest_rejects + sorted(decider.rejects, key=lambda r: r.source)
    return DicomIngest(decider.index(), rejects_frame(rejects), len(paths), shards)


def discover(dicom_dir: Path) -> list[str]:
    """Every file under dicom/ except the top-level manifest, relative to dicom/, sorted.

    Links are files here, whatever they point to (read_file decides); a linked folder is never
    entered, so a link out of the zone or a link loop costs one entry (paths.walk_entries).
    """
    if not dicom_dir.is_dir():
        return []
    manifest = dicom_dir / MANIFEST
    found = (p for p in walk_entries(dicom_dir) if p != manifest)
    return sorted(p.relative_to(dicom_dir).as_posix() for p in found)


# --- per file, in the workers ----------------------------------------------------------------


@dataclass
class FileResult:
    """What a worker hands back for one file: never an attribute value beyond Header's."""

    path: str  # relative to dicom/
    sha256: str | None = None
    header: Header | None = None
    image: np.ndarray | None = None  # (1, S, S) float32
    reason: str | None = None


def read_file(
    dicom_dir: str, relative: str, decoding: Decoding, zone: Zone | None = None
) -> FileResult:
    """One file: confined to the landing zone (dicom_dir's parent), hashed, parsed, decoded.

    What is opened is the resolved path that was checked, and only if it is a regular file (a
    folder link or a FIFO inside the zone is "unreadable", never waited on).
    """
    real = (zone or Zone.of(Path(dicom_dir).parent)).real(Path(dicom_dir) / relative)
    if real is None:
        return FileResult(relative, reason=OUTSIDE_LANDING_ZONE)
    try:
        data = read_regular(real)
    except OSError:
        return FileResult(relative, reason=f"{NOT_DICOM}: unreadable")
    digest = hashlib.sha256(data).hexdigest()
    with quiet():
        try:
            ds = parse_dicom(data)
            header = read_header(ds)
            image = dataset_image(ds, decoding.image_size, decoding.max_image_mb)
        except ImageError as error:
            return FileResult(relative, digest, reason=error.reason)
        except Exception:  # never the text: it may quote attribute values
            return FileResult(relative, digest, reason=UNDECODABLE_PIXELS)
    return FileResult(relative, digest, header, image)


def read_chunk(dicom_dir: str, relatives: list[str], decoding: Decoding) -> list[FileResult]:
    zone = Zone.of(Path(dicom_dir).parent)  # once per chunk: a few realpath calls
    return [read_file(dicom_dir, relative, decoding, zone) for relative in relatives]


# --- the pool --------------------------------------------------------------------------------


def read_files(
    dicom_dir: Path, paths: list[str], decoding: Decoding, workers: int
) -> Iterator[list[FileResult]]:
    """Results in path order, a chunk at a time; in-process for few files or one worker."""
    size = _chunk_size(len(paths), workers)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    if workers <= 1 or len(paths) < INLINE_BELOW:
        for chunk in chunks:
            yield read_chunk(str(dicom_dir), chunk, decoding)
        return
    workers = min(workers, len(chunks))
    yield from ordered_map(read_chunk, str(dicom_dir), chunks, decoding, workers)


def _chunk_size(files: int, workers: int) -> int:
    # Big enough to amortise a task's round trip, small enough to keep every worker busy.
    return max(1, min(16, files // (8 * max(workers, 1))))


def ordered_map(
    function: Callable[[str, list[str], Decoding], list[FileResult]],
    dicom_dir: str,
    chunks: Iterable[list[str]],
    decoding: Decoding,
    workers: int,
) -> Iterator[list[FileResult]]:
    """function(dicom_dir, chunk, decoding) for each chunk in a pool, yielded in chunk order.

    At most 3 chunks per worker are in flight, so memory does not grow with the file count. A
    worker that dies (a decoder crashing on a hostile codestream) breaks the pool: the oldest
    chunk then runs one file per fresh process, the file that kills its process is rejected
    "decoder crashed", and a new pool takes the rest.
    """
    todo: Iterator[list[str]] = iter(chunks)
    pending: deque[tuple[list[str], Future[list[FileResult]]]] = deque()
    pool = _new_pool(workers)
    try:
        while True:
            while len(pending) < 3 * workers and (chunk := next(todo, None)) is not None:
                pending.append((chunk, pool.submit(function, dicom_dir, chunk, decoding)))
            if not pending:
                return
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                pool.shutdown(cancel_futures=True)
                results = [_isolated(function, dicom_dir, path, decoding) for path in chunk]
                todo = itertools.chain([c for c, _ in pending], todo)
                pending.clear()
                pool = _new_pool(workers)
            yield results
    finally:
        pool.shutdown(cancel_futures=True)


def _isolated(
    function: Callable[[str, list[str], Decoding], list[FileResult]],
    dicom_dir: str,
    path: str,
    decoding: Decoding,
) -> FileResult:
    pool = _new_pool(1)
    try:
        return pool.submit(function, dicom_dir, [path], decoding).result()[0]
    except BrokenProcessPool:
        _require_working_pool()  # a pool that cannot start at all is no fault of the file
        return FileResult(path, reason=DECODER_CRASHED)
    finally:
        pool.shutdown(cancel_futures=True)


def _require_working_pool() -> None:
    pool = _new_pool(1)
    try:
        pool.submit(os.getpid).result()
    except BrokenProcessPool:
        raise RuntimeError("DICOM worker processes cannot start") from None
    finally:
        pool.shutdown(cancel_futures=True)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # The fork server imports this module and torch once; workers fork from it ready to go
    # (pool.py says why it is shared with the audio reader).
    return process_pool(workers)


# --- in the parent: link, de-duplicate, shard ------------------------------------------------


@dataclass
class _Decider:
    """Turns read files, in path order, into index rows (image in a shard) or rejects."""

    manifest: dict[str, ManifestEntry]
    admissions: pd.DataFrame
    known_subjects: pd.Series
    writer: ShardWriter
    rejects: list[Reject] = field(default_factory=list)
    _rows: list[dict[str, object]] = field(default_factory=list)
    _waiting: list[FileResult] = field(default_factory=list)
    _kept_keys: set[str] = field(default_factory=set)

    def add(self, results: Iterable[FileResult]) -> None:
        for result in results:
            if result.reason is not None:
                self._reject(result.path, result.reason)
            else:
                self._waiting.append(result)
        if len(self._waiting) >= LINK_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._waiting:
            return
        rows = [self._row(result) for result in self._waiting]
        linked = link_to_admissions(
            _typed(pd.DataFrame(rows), ["subject_id", "hadm_id", "study_datetime"]),
            self.admissions,
            self.known_subjects,
            "study_datetime",
        )
        for result, row, hadm, problem in zip(
            self._waiting, rows, linked["linked_hadm_id"], linked["link_problem"], strict=True
        ):
            if not pd.isna(problem):
                self._reject(result.path, str(problem))
            else:
                self._keep(result, row, int(hadm))
        self._waiting.clear()

    def _row(self, result: FileResult) -> dict[str, object]:
        header = result.header
        assert header is not None and result.sha256 is not None
        row: dict[str, object] = {
            "path": f"dicom/{result.path}",
            "sha256": result.sha256,
            "instance_key": header.instance_key,
            "study_key": header.study_key,
            "subject_id": header.subject_id,
            "hadm_id": None,
            "study_datetime": header.study_datetime,
            "modality": header.modality,
            "sop_class_uid": header.sop_class_uid,
            "transfer_syntax_uid": header.transfer_syntax_uid,
            "photometric_interpretation": header.photometric_interpretation,
            "rows": header.rows,
            "columns": header.columns,
            "frames": header.frames,
            "bits_stored": header.bits_stored,
        }
        entry = self.manifest.get(result.path)
        if entry is not None:  # the manifest overrides the tags for the files it names
            row["subject_id"] = entry.subject_id
            row["hadm_id"] = entry.hadm_id
            if entry.study_datetime is not None:
                row["study_datetime"] = entry.study_datetime
        return row

    def _keep(self, result: FileResult, row: dict[str, object], hadm_id: int) -> None:
        keys = {f"sha256:{result.sha256}"}
        if row["instance_key"] is not None:
            keys.add(f"uid:{row['instance_key']}")
        if keys & self._kept_keys:
            self._reject(result.path, DUPLICATE_INSTANCE)
            return
        self._kept_keys |= keys
        shard, slot = self.writer.append(result.image)
        self._rows.append({**row, "hadm_id": hadm_id, "shard": shard, "slot": slot})

    def _reject(self, path: str, reason: str) -> None:
        self.rejects.append(Reject("dicom", f"dicom/{path}", reason))

    def index(self) -> pd.DataFrame:
        return _typed(pd.DataFrame(self._rows, columns=list(INDEX_DTYPES)), list(INDEX_DTYPES))


def _typed(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame[columns].copy()
    for column in columns:
        dtype = INDEX_DTYPES[column]
        if dtype == "Int64":
            out[column] = pd.array(
                [None if pd.isna(v) else int(v) for v in out[column]], dtype="Int64"
            )
        elif dtype.startswith("datetime64"):
            out[column] = pd.to_datetime(out[column]).astype(dtype)
        else:
            out[column] = out[column].astype(dtype)
    return out.reset_index(drop=True)
