"""Audio assets: one index row per manifest row and log-mel spectrograms in shards."""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.audio import reader as audio_reader
from clinfuse.assets.ingest.ingested import Ingested, ShardSet
from clinfuse.assets.ingest.progress import log_progress, manifest_metadata
from clinfuse.assets.resources import DECODE_POOL, LandingZone, PipelineSettings, WorkDir

GROUP = "ingest"


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
    pool=DECODE_POOL,
    deps=["landing_audio"],
)
def recordings(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
):
    """Decodes every recording the manifest names, in a process pool, and links it."""
    audio = settings.value.audio
    shard_dir = workdir.fresh_folder("shards", "recording_spectrograms")
    if landing.has("audio"):
        result = audio_reader.ingest_audio(
            landing.root,
            shard_dir,
            admissions,
            patients["subject_id"],
            audio,
            workers=workdir.worker_count,
            progress=log_progress(context, "audio"),
        )
        index, rejects, seen, shards = result.index, result.rejects, result.seen, result.shards
    else:
        empty = Ingested.empty(["path", "subject_id", "hadm_id", "recorded_at"])
        index, rejects, seen, shards = empty.rows, empty.rejects, 0, []
    yield dg.Output(
        Ingested(rows=index, rejects=rejects, seen=seen),
        "recording_index",
        metadata=manifest_metadata(context, landing, "audio"),
    )
    yield dg.Output(
        ShardSet(
            directory=shard_dir,
            shards=tuple(shards),
            item_shape=(1, audio.n_mels, audio.frames),
        ),
        "recording_spectrograms",
        metadata={"shards": len(shards), "recordings": len(index)},
    )
