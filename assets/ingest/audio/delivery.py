"""One delivery's recordings, decoded into the store: a record per file, its log-mel in a shard.

Every file of the delivery under audio/ is decoded, whether or not the manifest names it yet: the
manifest is read anew on every run (recording_index.py) and may name it later. A file whose bytes
the store already holds with these settings is copied from its shard instead. A file that is not
a regular file inside the landing zone is never opened (its record holds the reason the manifest
row naming it will get).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.audio import reader as audio_reader
from clinfuse.assets.ingest.audio.manifest import file_problem
from clinfuse.assets.ingest.decoded import DecodeStore, DeliveryDecode, reused_record, typed
from clinfuse.assets.ingest.paths import Zone
from clinfuse.assets.settings import AudioSettings

RECORD_DTYPES: dict[str, str] = {
    "path": "string",  # relative to the landing zone: audio/a/b.wav
    "sha256": "string",
    "reason": "string",  # why it yields no features; NA when it decoded
    "sample_rate": "Int64",
    "channels": "Int64",
    "frames": "Int64",
    "shard": "string",
    "slot": "Int64",
}


def decode_delivery(
    landing: Path,
    files: list[str],
    store: DecodeStore,
    delivery: str,
    settings: AudioSettings,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> DeliveryDecode:
    """`files` (relative to the zone, audio/...) decoded, or copied from the store by content."""
    audio_root = Path(landing) / "audio"
    relatives = [f.removeprefix("audio/") for f in files]
    zone = Zone.of(Path(landing))
    problems = {r: file_problem(audio_root, r, zone) for r in relatives}
    readable = [r for r in relatives if problems[r] is None]
    reuse = store.reusable(readable, _hasher(audio_root))
    todo = [r for r in readable if r not in reuse]
    rows = [{"path": f"audio/{r}", "reason": problems[r]} for r in relatives if problems[r]]
    reader = store.reader()
    jobs = [(number, str(audio_root / r)) for number, r in enumerate(todo)]
    with store.writer(delivery) as writer, audio_reader.single_threaded():
        for number, outcome in audio_reader.decode_files(jobs, settings, workers):
            rows.append(_record(todo[number], outcome, writer.append))
            if progress is not None:
                progress(number + 1, len(relatives))
        for relative, known in reuse.items():
            path = f"audio/{relative}"
            rows.append(reused_record(path, known, list(RECORD_DTYPES), reader, writer.append))
    records = typed(pd.DataFrame(rows, columns=list(RECORD_DTYPES)), RECORD_DTYPES)
    return DeliveryDecode(records.sort_values("path", ignore_index=True), len(todo))


def _record(relative: str, outcome, append: Callable) -> dict[str, object]:
    row: dict[str, object] = {"path": f"audio/{relative}", "sha256": outcome.sha256}
    decoded = outcome.decoded
    if outcome.reason is not None or decoded is None:
        return {**row, "reason": outcome.reason}
    shard, slot = append(decoded.features)
    return {
        **row,
        "sample_rate": decoded.sample_rate,
        "channels": decoded.channels,
        "frames": decoded.frames,
        "shard": shard,
        "slot": slot,
    }


def _hasher(audio_root: Path) -> Callable[[str], str | None]:
    def digest(relative: str) -> str | None:
        try:
            return audio_reader.file_sha256(audio_root / relative)
        except OSError:
            return None

    return digest
