"""Audio ingest: audio/manifest.csv rows -> linked index, log-mel shards, quarantine rows.

Plain code (no Dagster): the `recordings` asset calls `ingest_audio`, and serving calls
`load_recording`, so a recording becomes the very same tensor in training and in production.

Accounting (../shared/cli-and-report.md): `seen` is the number of manifest data rows, and every
row ends either in the index or in the rejects. Which source a reject names:

- `audio/<path>` when the file itself is bad: "not an audio file", "truncated file",
  "empty recording", "decoder crashed" (decoding it killed the worker process).
- `audio/manifest.csv:N` (1-based data row) when the row is the problem: "missing file",
  "missing <column>" / "bad <column>" (path, subject_id, recorded_at, hadm_id), and also
  "unknown patient", "unknown admission", "no admission" and "duplicate recording". A link
  problem belongs to the row: the file may be a fine recording, it is the row's subject_id,
  hadm_id or time that points nowhere. A duplicate is a second row naming content already
  taken (the same path twice, or a copy under another name), so the row is what is redundant.

A row has one reason, the first that applies in this order: its own fields, the file's
existence, the link to an admission, the file's content (sha256 already claimed by an earlier
row -> duplicate), the decoding. Rows rejected before the file is read do not claim its content,
so a later, well-linked row with the same content is still ingested.

Modules: audio_manifest (the manifest's rows and their own problems), audio_features (waveform
-> log-mel), this one (decoding, the worker pool, linking, duplicates, shards, the index).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import soundfile as sf

from clinfuse.assets.ingest.audio.manifest import file_problem, read_manifest, read_manifest_records
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.ingest.paths import walk_entries
from clinfuse.assets.ingest.pool import process_pool
from clinfuse.assets.ingest.quarantine import (
    DECODER_CRASHED,
    DUPLICATE_RECORDING,
    EMPTY_RECORDING,
    MISSING_FILE,
    NOT_AUDIO,
    TRUNCATED_FILE,
    Reject,
    rejects_frame,
    row_source,
)
from clinfuse.assets.settings import AudioSettings
from clinfuse.models.shards import ShardWriter

MANIFEST = "audio/manifest.csv"
SHARD_PREFIX = "recording"
INDEX_DTYPES = {
    "path": "string",
    "sha256": "string",
    "subject_id": "Int64",
    "hadm_id": "Int64",
    "recorded_at": "datetime64[ns]",
    "site": "string",
    "sample_rate": "int64",
    "channels": "int64",
    "frames": "int64",
    "duration_s": "float64",
    "manifest_row": "int64",
    "shard": "string",
    "slot": "int64",
}
# Reasons that describe the file, so the reject names the file rather than the manifest row.
FILE_REASONS = (NOT_AUDIO, TRUNCATED_FILE, EMPTY_RECORDING, DECODER_CRASHED)
BATCH = 8  # files per pool task
IN_FLIGHT = 3  # batches per worker queued or running


class RecordingError(Exception):
    """A recording that cannot become features; `reason` starts with a quarantine constant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Decoded:
    """A decoded recording: its features and what the file said about itself."""

    features: np.ndarray  # (1, n_mels, frames) float32
    sample_rate: int
    channels: int
    frames: int


@dataclass
class AudioIngest:
    """What `ingest_audio` returns.

    index: one row per ingested manifest row (columns INDEX_DTYPES). rejects: quarantine rows
    (modality, source, reason). seen: manifest data rows; seen == len(index) + len(rejects).
    shards: shard file names written under shard_dir, items (1, n_mels, frames) float16.
    unlisted: files under audio/ (other than manifest.csv) that no manifest row names, as
    `audio/...`. They are not "seen" (the contract counts manifest rows for audio), so they are
    neither ingested nor quarantined; they are listed so that the asset can report them.
    """

    index: pd.DataFrame
    rejects: pd.DataFrame
    seen: int
    shards: list[str]
    unlisted: list[str] = field(default_factory=list)


# --- one recording ------------------------------------------------------------------------------


def load_recording(source: Path | bytes, settings: AudioSettings) -> np.ndarray:
    """A recording (file path or its bytes) -> (1, n_mels, settings.frames) float32 log-mel.

    Raises RecordingError with reason "not an audio file", "truncated file" or "empty recording".
    """
    return decode_recording(source, settings).features


def decode_recording(source: Path | bytes, settings: AudioSettings) -> Decoded:
    """Decodes only the first `seconds` (plus a resampling margin): memory stays flat for
    hour-long recordings, and later samples would be cut anyway."""
    # Imported here: audio_features loads librosa's feature stack (seconds), which importing
    # this module (the Dagster definitions do) should not pay.
    from clinfuse.assets.ingest.audio.features import frames_to_read, waveform_features

    with _open_binary(source) as handle:
        if wav_truncated(handle):
            raise RecordingError(f"{TRUNCATED_FILE}: data chunk longer than the file")
        handle.seek(0)
        try:
            sound = sf.SoundFile(str(source) if isinstance(source, Path) else handle)
        except Exception as err:  # libsndfile's message is the useful detail, whatever the type
            raise RecordingError(f"{NOT_AUDIO}: {_describe(err)}") from err
        with sound:
            rate, channels, frames = sound.samplerate, sound.channels, sound.frames
            if frames <= 0:
                raise RecordingError(EMPTY_RECORDING)
            wanted = min(frames, frames_to_read(rate, settings))
            try:
                wave = sound.read(wanted, dtype="float32", always_2d=True)
            except Exception as err:  # e.g. FLAC "decoder lost sync" on a cut-off stream
                raise RecordingError(f"{TRUNCATED_FILE}: {_describe(err)}") from err
    if len(wave) < wanted:  # the header promised frames the stream does not hold
        raise RecordingError(f"{TRUNCATED_FILE}: {len(wave)} of {wanted} frames")
    return Decoded(waveform_features(wave, rate, settings), rate, channels, frames)


def _open_binary(source: Path | bytes) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    return open(source, "rb")  # noqa: SIM115 - closed by the caller's `with`


def _describe(err: Exception) -> str:
    """libsndfile's own words ("Format not recognised"), without the file name it adds."""
    text = getattr(err, "error_string", None) or type(err).__name__
    return str(text).strip().rstrip(".")


_WAV_BYTE_ORDER = {b"RIFF": "<", b"RIFX": ">", b"RF64": "<", b"BW64": "<"}
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # a header a streaming recorder never finalised
_MAX_CHUNKS = 1000


def wav_truncated(handle: BinaryIO) -> bool:
    """True when a WAV's data chunk declares more (whole frames) than the file holds.

    libsndfile reads such a file without a word, returning only the frames present (SOURCES.md:
    the early-EOF file), so it is checked here from the chunk headers. Sizes a recorder leaves
    unfinished (0, 0xFFFFFFFF without ds64) mean "to the end of the file" and are not truncation.
    Non-WAV input returns False: libsndfile judges it.
    """
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    head = handle.read(12)
    order = _WAV_BYTE_ORDER.get(head[:4])
    if len(head) < 12 or order is None or head[8:12] != b"WAVE":
        return False
    position, block_align, ds64_data_size = 12, 1, None
    for _ in range(_MAX_CHUNKS):
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            return False  # no data chunk: libsndfile reports it
        chunk, chunk_size = header[:4], struct.unpack(order + "I", header[4:])[0]
        body = handle.read(16)
        if chunk == b"ds64" and len(body) >= 16:
            ds64_data_size = struct.unpack("<Q", body[8:16])[0]
        elif chunk == b"fmt " and len(body) >= 14:
            block_align = max(struct.unpack(order + "H", body[12:14])[0], 1)
        elif chunk == b"data":
            declared = chunk_size
            if chunk_size == 0xFFFFFFFF and ds64_data_size is not None:
                declared = ds64_data_size
            elif chunk_size in _UNKNOWN_SIZES:
                return False
            return declared - (size - position - 8) >= block_align
        position += 8 + chunk_size + (chunk_size & 1)
    return False


# --- the worker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    sha256: str | None
    decoded: Decoded | None
    reason: str | None


def file_sha256(path: Path) -> str:
    """Streamed in 1 MiB blocks: a long recording is never held whole for hashing."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def examine_file(path: str, settings: AudioSettings) -> _Outcome:
    """Hash and decode one file; features come back as float16, the shards' type, which halves
    what a worker sends to the parent (the parent would round them the same way)."""
    try:
        sha = file_sha256(Path(path))
    except FileNotFoundError:  # vanished after the parent's check
        return _Outcome(None, None, MISSING_FILE)
    except OSError as err:
        return _Outcome(None, None, f"{NOT_AUDIO}: unreadable ({type(err).__name__})")
    try:
        decoded = decode_recording(Path(path), settings)
    except RecordingError as err:
        return _Outcome(sha, None, err.reason)
    return _Outcome(sha, replace(decoded, features=decoded.features.astype(np.float16)), None)


def examine_files(paths: list[str], settings: AudioSettings) -> list[_Outcome]:
    """A batch of files: one task (pickling, pipe round trip, wake-ups) per BATCH files, not per
    file, which matters when a small recording takes only a few milliseconds."""
    return [examine_file(path, settings) for path in paths]


def _single_threaded() -> contextlib.AbstractContextManager:
    """One BLAS/OpenMP thread while decoding. The pool already uses every core, and the per-file
    matrix products are small (64 x 129 x 251), so a second BLAS thread only adds hand-off cost:
    measured here, a serial ingest runs 2-3x faster with OpenBLAS limited to one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with scikit-learn); only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _outcomes(
    jobs: list[tuple[int, str]],
    settings: AudioSettings,
    workers: int,
    examine: Callable[[list[str], AudioSettings], list[_Outcome]] = examine_files,
) -> Iterator[tuple[int, _Outcome]]:
    """(key, outcome) in the order of `jobs`; `examine` decodes a batch (tests pass a crasher).

    At most IN_FLIGHT batches per worker are queued or running: a result holds BATCH small
    spectrograms, so memory stays flat however many files there are, and waiting on the oldest
    batch keeps the output order fixed. A worker that dies (libsndfile or a codec crashing on a
    hostile file, the kernel's OOM killer) breaks the pool: the oldest batch then runs one file
    per fresh process, the file that kills its process is rejected "decoder crashed", and a new
    pool takes the rest (as the DICOM reader does).
    """
    workers = min(workers, math.ceil(len(jobs) / BATCH))
    if workers <= 1:
        for key, path in jobs:
            yield key, examine([path], settings)[0]
        return
    batches: Iterator[list[tuple[int, str]]] = (
        jobs[at : at + BATCH] for at in range(0, len(jobs), BATCH)
    )
    pending: deque[tuple[list[tuple[int, str]], Future[list[_Outcome]]]] = deque()
    pool = process_pool(workers)  # pool.py: a fork server shared with DICOM
    try:
        while True:
            while len(pending) < IN_FLIGHT * workers and (batch := next(batches, None)):
                pending.append((batch, pool.submit(examine, [p for _, p in batch], settings)))
            if not pending:
                return
            batch, future = pending.popleft()
            try:
                outcomes = future.result()
            except BrokenProcessPool:
                pool.shutdown(cancel_futures=True)
                outcomes = [_isolated(examine, path, settings) for _, path in batch]
                batches = itertools.chain([b for b, _ in pending], batches)
                pending.clear()
                pool = process_pool(workers)
            yield from zip([key for key, _ in batch], outcomes, strict=True)
    finally:
        pool.shutdown(cancel_futures=True)


def _isolated(
    examine: Callable[[list[str], AudioSettings], list[_Outcome]],
    path: str,
    settings: AudioSettings,
) -> _Outcome:
    """One file in a process of its own: if that process dies, the file is what killed it."""
    pool = process_pool(1)
    try:
        return pool.submit(examine, [path], settings).result()[0]
    except BrokenProcessPool:
        _require_working_pool()  # a pool that cannot start at all is no fault of the file
        # Hashed here (streamed, no decoding) so that a copy of the file under another row is
        # still a "duplicate recording", not a second crash.
        with contextlib.suppress(OSError):
            return _Outcome(file_sha256(Path(path)), None, DECODER_CRASHED)
        return _Outcome(None, None, DECODER_CRASHED)
    finally:
        pool.shutdown(cancel_futures=True)


def _require_working_pool() -> None:
    pool = process_pool(1)
    try:
        pool.submit(os.getpid).result()
    except BrokenProcessPool:
        raise RuntimeError("audio worker processes cannot start") from None
    finally:
        pool.shutdown(cancel_futures=True)


# --- the ingest ---------------------------------------------------------------------------------


def ingest_audio(
    landing: Path,
    shard_dir: Path,
    admissions: pd.DataFrame,
    known_subjects: pd.Series,
    settings: AudioSettings,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AudioIngest:
    """Every row of <landing>/audio/manifest.csv: ingested (index + shard slot) or quarantined.

    Files are hashed and decoded in a process pool (`workers`, default: every usable core; 1 =
    in this process); the results are written in manifest order, so the index and the shards are
    the same on every run whatever the worker count. `progress(done, total)` counts manifest rows.
    Files under audio/ that the manifest does not name are returned in `unlisted` (not "seen").
    """
    audio_root = Path(landing) / "audio"
    manifest_path = audio_root / "manifest.csv"
    rows = read_manifest(manifest_path) if manifest_path.is_file() else _empty_manifest()
    seen = len(rows)
    unlisted = _unlisted_files(audio_root, rows)

    rows = _check_files(rows, audio_root)
    rows = _link(rows, admissions, known_subjects)
    rejects = [
        (int(r.manifest_row), _row_reject(r.manifest_row, r.problem))
        for r in rows[rows["problem"].notna()].itertuples()
    ]
    ready = rows[rows["problem"].isna()]
    jobs = [(int(r.manifest_row), str(audio_root / r.path)) for r in ready.itertuples()]
    by_row = {int(r.manifest_row): r for r in ready.itertuples()}

    done = seen - len(jobs)
    if progress is not None:
        progress(done, seen)
    claimed: set[str] = set()
    index_rows: list[dict] = []
    item_shape = (1, settings.n_mels, settings.frames)
    with ShardWriter(Path(shard_dir), SHARD_PREFIX, item_shape) as writer, _single_threaded():
        for number, outcome in _outcomes(jobs, settings, workers or _usable_cores()):
            row = by_row[number]
            reject = _outcome_reject(row, outcome, claimed)
            if reject is not None:
                rejects.append((number, reject))
            else:
                shard, slot = writer.append(outcome.decoded.features)
                index_rows.append(_index_row(row, outcome, shard, slot))
            done += 1
            if progress is not None:
                progress(done, seen)
    shards = writer.shards
    rejects.sort(key=lambda pair: pair[0])
    return AudioIngest(
        index=_index_frame(index_rows),
        rejects=rejects_frame(reject for _, reject in rejects),
        seen=seen,
        shards=list(shards),
        unlisted=unlisted,
    )


def _empty_manifest() -> pd.DataFrame:
    """read_manifest's columns with no rows: audio/ without a manifest.csv."""
    return read_manifest_records([])


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _unlisted_files(audio_root: Path, rows: pd.DataFrame) -> list[str]:
    if not audio_root.is_dir():
        return []
    named = set(rows["path"].dropna())
    found = (  # listed, never followed: a linked folder is not entered (paths.py)
        path.relative_to(audio_root).as_posix()
        for path in walk_entries(audio_root)
        if path != audio_root / "manifest.csv"
    )
    return sorted(f"audio/{name}" for name in found if name not in named)


def _check_files(rows: pd.DataFrame, audio_root: Path) -> pd.DataFrame:
    """A row whose own fields are fine but whose file resolves outside the landing zone ->
    "outside landing zone" (never opened), or is not there -> "missing file"."""
    rows = rows.copy()
    fine = rows["problem"].isna()
    problems = rows.loc[fine, "path"].map(lambda rel: file_problem(audio_root, rel))
    problems = problems[problems.notna()]
    rows.loc[problems.index, "problem"] = problems
    return rows


def _link(rows: pd.DataFrame, admissions: pd.DataFrame, known_subjects: pd.Series) -> pd.DataFrame:
    """hadm_id := the linked admission (the manifest's, else the one holding recorded_at)."""
    rows = rows.copy()
    fine = rows["problem"].isna()
    if not fine.any():
        return rows
    linked = link_to_admissions(rows.loc[fine], admissions, known_subjects, "recorded_at")
    rows.loc[fine, "hadm_id"] = linked["linked_hadm_id"]
    problem = linked["link_problem"]
    rows.loc[problem.index[problem.notna()], "problem"] = problem[problem.notna()]
    return rows


def _row_reject(manifest_row: int, reason: str) -> Reject:
    return Reject("audio", row_source(MANIFEST, int(manifest_row)), str(reason))


def _outcome_reject(row, outcome: _Outcome, claimed: set[str]) -> Reject | None:
    """The reject for a worker's outcome, or None when the row is ingested.

    The first row to reach a file's content claims it, decodable or not; later rows with the
    same sha256 are "duplicate recording".
    """
    if outcome.sha256 is not None:
        if outcome.sha256 in claimed:
            return _row_reject(row.manifest_row, DUPLICATE_RECORDING)
        claimed.add(outcome.sha256)
    if outcome.reason is None:
        return None
    if outcome.reason.startswith(FILE_REASONS):
        return Reject("audio", f"audio/{row.path}", outcome.reason)
    return _row_reject(row.manifest_row, outcome.reason)


def _index_row(row, outcome: _Outcome, shard: str, slot: int) -> dict:
    decoded = outcome.decoded
    return {
        "path": f"audio/{row.path}",
        "sha256": outcome.sha256,
        "subject_id": row.subject_id,
        "hadm_id": row.hadm_id,
        "recorded_at": row.recorded_at,
        "site": row.site,
        "sample_rate": decoded.sample_rate,
        "channels": decoded.channels,
        "frames": decoded.frames,
        "duration_s": decoded.frames / decoded.sample_rate,
        "manifest_row": row.manifest_row,
        "shard": shard,
        "slot": slot,
    }


def _index_frame(index_rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(index_rows, columns=list(INDEX_DTYPES))
    return frame.astype(INDEX_DTYPES)
