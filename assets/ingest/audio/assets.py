"""Audio assets: each delivery's recordings decoded (a partition each), and the recording index.

`audio_delivery` decodes the files of one delivery into the decode store (assets/ingest/
decoded.py); `recordings` reads audio/manifest.csv anew, links every row to an admission and to
its file's stored spectrogram, and drops duplicates: no file is decoded there.
"""

import dataclasses

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.audio.delivery import decode_delivery
from clinfuse.assets.ingest.audio.reader import SHARD_PREFIX
from clinfuse.assets.ingest.audio.recording_index import index_recordings
from clinfuse.assets.ingest.catch_up import Decode, catch_up
from clinfuse.assets.ingest.decoded import DecodeStore
from clinfuse.assets.ingest.deliveries import files_by_delivery, read_ledger
from clinfuse.assets.ingest.ingested import Ingested, ShardSet
from clinfuse.assets.ingest.progress import log_progress, manifest_metadata, newly_decoded
from clinfuse.assets.resources import (
    DECODE_POOL,
    DELIVERIES,
    LandingZone,
    PipelineSettings,
    WorkDir,
)
from clinfuse.assets.settings import AudioSettings

GROUP = "ingest"


def spectrogram_store(workdir: WorkDir, audio: AudioSettings) -> DecodeStore:
    """Where these audio settings keep decoded spectrograms (other mel bands: another folder)."""
    shape = (1, audio.n_mels, audio.frames)
    return DecodeStore.under(
        workdir.folder("decoded"), "audio", dataclasses.asdict(audio), shape, SHARD_PREFIX
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=DELIVERIES,
    pool=DECODE_POOL,
    deps=["landing_audio"],
    kinds={"soundfile", "numpy"},
    owners=["team:clinical-ml"],
)
def audio_delivery(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """One delivery's recordings, hashed and decoded to log-mel in a process pool (a file whose
    bytes an earlier delivery held is copied, not decoded): a record per file, shards."""
    delivery = context.partition_key
    files = files_by_delivery(read_ledger(workdir.root), "audio").get(delivery, [])
    decode = _decoder(context, landing, workdir, settings.value.audio)
    return dg.MaterializeResult(metadata=dict(decode(delivery, files)))


def _decoder(
    context: dg.AssetExecutionContext, landing: LandingZone, workdir: WorkDir, audio: AudioSettings
) -> Decode:
    store = spectrogram_store(workdir, audio)

    def decode(delivery: str, files: list[str]) -> dict[str, object]:
        result = decode_delivery(
            landing.root,
            files,
            store,
            delivery,
            audio,
            workdir.worker_count,
            progress=log_progress(context, f"audio {delivery}"),
        )
        return store.keep(delivery, result)

    return decode


@dg.multi_asset(
    outs={
        "recording_index": dg.AssetOut(
            description=(
                "One row per ingested recording (audio/manifest.csv row): path, sha256, "
                "subject_id, linked hadm_id, recorded_at, site, original format, (shard, slot)."
            ),
            kinds={"soundfile", "parquet"},
            owners=["team:clinical-ml"],
        ),
        "recording_spectrograms": dg.AssetOut(
            description="Mono, resampled, fixed-length log-mel spectrograms as float16 shards.",
            kinds={"librosa", "numpy"},
            owners=["team:clinical-ml"],
        ),
    },
    group_name=GROUP,
    deps=["audio_delivery"],
    # Only catch-up decoding (catch_up.py) happens here, but then in a pool of every core.
    pool=DECODE_POOL,
)
def recordings(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
):
    """Every manifest row linked to an admission and to its delivery's decoded recording."""
    audio = settings.value.audio
    store = spectrogram_store(workdir, audio)
    decode = _decoder(context, landing, workdir, audio)
    deliveries = catch_up(context, landing, workdir, "audio", store, decode)
    records = store.current(deliveries, "recordings")
    if records.empty:
        records = pd.DataFrame({"path": pd.Series(dtype="string")})
    decoded = newly_decoded(context, "recording_index", store, list(deliveries))
    result = index_recordings(landing.root, records, admissions, patients["subject_id"])
    if result.unlisted:
        context.log.info(f"{len(result.unlisted)} file(s) under audio/ no manifest row names")
    yield dg.Output(
        Ingested(
            rows=result.index, rejects=result.rejects, seen=result.seen, decoded=decoded.count
        ),
        "recording_index",
        metadata={**manifest_metadata(context, landing, "audio"), **decoded.metadata()},
    )
    yield dg.Output(
        ShardSet(
            directory=store.directory,
            shards=tuple(result.shards),
            item_shape=(1, audio.n_mels, audio.frames),
        ),
        "recording_spectrograms",
        metadata={"shards": len(result.shards), "recordings": len(result.index)},
    )
