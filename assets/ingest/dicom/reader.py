"""Reading DICOM files: one file becomes a header and an image, or a quarantine reason.

Plain code (no Dagster). The work per file (sha256, parse, header, decode, normalise: header.py,
pixels.py) runs in a process pool; results come back in the order of the paths asked for, so
nothing downstream depends on the number of workers. delivery.py decodes a delivery's files with
it; study_index.py links them to admissions and drops duplicates (its docstring has every reason a
file is rejected for); serving reads a request's film with `load_image`.

A file is rejected here when it
- resolves outside the landing zone (a link out of it, or into a linked folder): "outside
  landing zone", and none of its bytes is read (paths.py; a link into the zone is read);
- cannot be read as DICOM: "truncated file", "not a DICOM file", "no pixel data",
  "unsupported transfer syntax[: name]" (no decoder installed), "undecodable pixel data[: what]",
  "image too large", "decoder crashed" (decoding it killed the worker process).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from clinfuse.assets.ingest.dicom.header import Header, parse_dicom, quiet, read_header
from clinfuse.assets.ingest.dicom.manifest import MANIFEST
from clinfuse.assets.ingest.dicom.pixels import DEFAULT_MAX_IMAGE_MB, ImageError, dataset_image
from clinfuse.assets.ingest.paths import Zone, read_regular, walk_entries
from clinfuse.assets.ingest.pool import process_pool
from clinfuse.assets.ingest.quarantine import (
    DECODER_CRASHED,
    NOT_DICOM,
    OUTSIDE_LANDING_ZONE,
    UNDECODABLE_PIXELS,
)

__all__ = ["Decoding", "FileResult", "ImageError", "discover", "load_image", "read_files"]

SHARD_PREFIX = "images"
INLINE_BELOW = 16  # fewer files than this are read in-process: a pool's start costs more


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
