"""The recording index: every audio/manifest.csv row linked to an admission and its decoded file.

Plain code (no Dagster). Accounting (../shared/cli-and-report.md): `seen` is the number of
manifest data rows, and every row ends either in the index or in the rejects. Which source a
reject names:

- `audio/<path>` when the file itself is bad: "not an audio file", "truncated file",
  "empty recording", "decoder crashed" (decoding it killed the worker process).
- `audio/manifest.csv:N` (1-based data row) when the row is the problem: "missing file",
  "outside landing zone", "missing <column>" / "bad <column>" (path, subject_id, recorded_at,
  hadm_id), and also "unknown patient", "unknown admission", "no admission" and "duplicate
  recording". A link problem belongs to the row: the file may be a fine recording, it is the
  row's subject_id, hadm_id or time that points nowhere. A duplicate is a second row naming
  content already taken (the same path twice, or a copy under another name), so the row is
  what is redundant.

A row has one reason, the first that applies in this order: its own fields, the file's
existence, the link to an admission, the file's content (sha256 already claimed by an earlier
row -> duplicate), the decoding. Rows rejected before the file's content is looked at do not
claim it, so a later, well-linked row with the same content is still ingested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.audio.delivery import decode_delivery
from clinfuse.assets.ingest.audio.manifest import file_problem, read_manifest, read_manifest_records
from clinfuse.assets.ingest.audio.reader import FILE_REASONS, SHARD_PREFIX, usable_cores
from clinfuse.assets.ingest.decoded import DecodeStore
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.ingest.paths import Zone, walk_entries
from clinfuse.assets.ingest.quarantine import (
    DUPLICATE_RECORDING,
    Reject,
    rejects_frame,
    row_source,
)
from clinfuse.assets.settings import AudioSettings

MANIFEST = "audio/manifest.csv"
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


class NotInDelivery(RuntimeError):
    """A manifest row names a file that no delivery holds yet (it arrived after the last look)."""


@dataclass
class AudioIngest:
    """index: one row per ingested manifest row (columns INDEX_DTYPES). rejects: quarantine rows
    (modality, source, reason). seen: manifest data rows; seen == len(index) + len(rejects).
    shards: the shard files the index points into, items (1, n_mels, frames) float16.
    unlisted: files under audio/ (other than manifest.csv) that no manifest row names, as
    `audio/...`. They are not "seen" (the contract counts manifest rows for audio), so they are
    neither ingested nor quarantined; they are listed so that the asset can report them.
    """

    index: pd.DataFrame
    rejects: pd.DataFrame
    seen: int
    shards: list[str]
    unlisted: list[str]


def index_recordings(
    landing: Path, records: pd.DataFrame, admissions: pd.DataFrame, known_subjects: pd.Series
) -> AudioIngest:
    """Every manifest row: ingested (index row pointing at its file's record) or quarantined.

    records: the decoded files of every delivery (delivery.py), earliest delivery first.
    """
    audio_root = Path(landing) / "audio"
    manifest_path = audio_root / "manifest.csv"
    rows = read_manifest(manifest_path) if manifest_path.is_file() else read_manifest_records([])
    seen = len(rows)
    rows = _link(_check_files(rows, audio_root), admissions, known_subjects)
    rejects = [
        (int(r.manifest_row), _row_reject(r.manifest_row, r.problem))
        for r in rows[rows["problem"].notna()].itertuples()
    ]
    # A dict of plain rows: a pandas lookup per manifest row costs more than decoding a short
    # recording's worth of bookkeeping.
    by_path = records.drop_duplicates("path", keep="last").set_index("path").to_dict("index")
    claimed: set[str] = set()
    index_rows: list[dict] = []
    for row in rows[rows["problem"].isna()].itertuples():
        path = f"audio/{row.path}"
        if path not in by_path:
            raise NotInDelivery(
                f"{path}: in the manifest but in no delivery yet; `clinfuse run`, the landing-zone "
                "sensor or the schedule adds it (docs/architecture.md, Deliveries)"
            )
        record = {"sha256": None, "reason": None, **by_path[path]}
        reject = _record_reject(row, record, claimed)
        if reject is not None:
            rejects.append((int(row.manifest_row), reject))
        else:
            index_rows.append(_index_row(row, record))
    rejects.sort(key=lambda pair: pair[0])
    index = _index_frame(index_rows)
    return AudioIngest(
        index=index,
        rejects=rejects_frame(reject for _, reject in rejects),
        seen=seen,
        shards=sorted(set(index["shard"])),
        unlisted=_unlisted(records, rows),
    )


def ingest_audio(
    landing: Path,
    shard_dir: Path,
    admissions: pd.DataFrame,
    known_subjects: pd.Series,
    settings: AudioSettings,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AudioIngest:
    """Every file under <landing>/audio/ as one delivery, decoded into `shard_dir`, and every
    manifest row linked: what the assets do delivery by delivery, at once (tests, benchmarks).

    Files are hashed and decoded in a process pool (`workers`, default: every usable core; 1 =
    in this process); the index and the shards are the same whatever the worker count.
    """
    audio_root = Path(landing) / "audio"
    files = sorted(
        path.relative_to(landing).as_posix()
        for path in (walk_entries(audio_root) if audio_root.is_dir() else ())
        if path != audio_root / "manifest.csv"
    )
    store = DecodeStore(Path(shard_dir), (1, settings.n_mels, settings.frames), SHARD_PREFIX)
    Path(shard_dir).mkdir(parents=True, exist_ok=True)
    decoded = decode_delivery(
        landing, files, store, "all", settings, workers or usable_cores(), progress
    )
    store.save("all", decoded.records)
    return index_recordings(landing, decoded.records, admissions, known_subjects)


def _unlisted(records: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    named = {f"audio/{p}" for p in rows["path"].dropna()}
    return sorted(p for p in records["path"] if p not in named)


def _check_files(rows: pd.DataFrame, audio_root: Path) -> pd.DataFrame:
    """A row whose own fields are fine but whose file resolves outside the landing zone ->
    "outside landing zone" (never opened), or is not there -> "missing file"."""
    rows = rows.copy()
    fine = rows["problem"].isna()
    zone = Zone.of(Path(audio_root).parent)
    problems = rows.loc[fine, "path"].map(lambda rel: file_problem(audio_root, rel, zone))
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


def _record_reject(row, record: dict, claimed: set[str]) -> Reject | None:
    """The reject for a row given its file's record, or None when the row is ingested.

    The first row to reach a file's content claims it, decodable or not; later rows with the
    same sha256 are "duplicate recording".
    """
    sha256 = None if pd.isna(record["sha256"]) else str(record["sha256"])
    if sha256 is not None:
        if sha256 in claimed:
            return _row_reject(row.manifest_row, DUPLICATE_RECORDING)
        claimed.add(sha256)
    if pd.isna(record["reason"]):
        return None
    reason = str(record["reason"])
    if reason.startswith(FILE_REASONS):
        return Reject("audio", f"audio/{row.path}", reason)
    return _row_reject(row.manifest_row, reason)


def _index_row(row, record: dict) -> dict:
    return {
        "path": f"audio/{row.path}",
        "sha256": record["sha256"],
        "subject_id": row.subject_id,
        "hadm_id": row.hadm_id,
        "recorded_at": row.recorded_at,
        "site": row.site,
        "sample_rate": int(record["sample_rate"]),
        "channels": int(record["channels"]),
        "frames": int(record["frames"]),
        "duration_s": int(record["frames"]) / int(record["sample_rate"]),
        "manifest_row": row.manifest_row,
        "shard": record["shard"],
        "slot": int(record["slot"]),
    }


def _index_frame(index_rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(index_rows, columns=list(INDEX_DTYPES))
    return frame.astype(INDEX_DTYPES)
