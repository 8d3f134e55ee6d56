"""Reading recordings: a WAV or FLAC file becomes a log-mel spectrogram, or a quarantine reason.

Plain code (no Dagster): delivery.py decodes a delivery's files with `decode_files` (a process
pool), recording_index.py links manifest rows to them (its docstring says which reason each
reject gets and why), and serving calls `load_recording`, so a recording becomes the very same
tensor in training and in production.

A file yields no features when it is "not an audio file", a "truncated file", an "empty
recording", or "decoder crashed" (decoding it killed the worker process). Modules:
manifest.py (the manifest's rows and their own problems), features.py (waveform -> log-mel),
this one (decoding and the worker pool).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from clinfuse.assets.ingest.pool import process_pool
from clinfuse.assets.ingest.quarantine import (
    DECODER_CRASHED,
    EMPTY_RECORDING,
    MISSING_FILE,
    NOT_AUDIO,
    TRUNCATED_FILE,
)
from clinfuse.assets.settings import AudioSettings

MANIFEST = "audio/manifest.csv"
SHARD_PREFIX = "recording"
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


def single_threaded() -> contextlib.AbstractContextManager:
    """One BLAS/OpenMP thread while decoding. The pool already uses every core, and the per-file
    matrix products are small (64 x 129 x 251), so a second BLAS thread only adds hand-off cost:
    measured here, a serial ingest runs 2-3x faster with OpenBLAS limited to one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with scikit-learn); only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1)


def decode_files(
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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
