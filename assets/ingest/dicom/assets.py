"""DICOM assets: one index row per file and the decoded images in memory-mappable shards."""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.dicom import reader as dicom_reader
from clinfuse.assets.ingest.ingested import Ingested, ShardSet
from clinfuse.assets.ingest.progress import log_progress, manifest_metadata
from clinfuse.assets.resources import DECODE_POOL, LandingZone, PipelineSettings, WorkDir

GROUP = "ingest"


@dg.multi_asset(
    outs={
        "dicom_index": dg.AssetOut(
            description=(
                "One row per ingested DICOM file: path, sha256, hashed UIDs, subject_id, linked "
                "hadm_id, study time, modality, transfer syntax, geometry, (shard, slot). "
                "No identifying attribute (PS3.15 Annex E) is kept."
            ),
            kinds={"pydicom", "parquet"},
            owners=["team:clinical-ml"],
        ),
        "study_images": dg.AssetOut(
            description="Decoded, windowed, resized images as float16 .npy shards (1 x S x S).",
            kinds={"numpy"},
            owners=["team:clinical-ml"],
        ),
    },
    group_name=GROUP,
    pool=DECODE_POOL,
    deps=["landing_dicom"],
)
def dicom_studies(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
):
    """Reads every file under dicom/ in a process pool: header, pixels, link to an admission."""
    run = settings.value
    size = run.image_size
    shard_dir = workdir.fresh_folder("shards", "study_images")
    if landing.has("dicom"):
        result = dicom_reader.ingest_dicom(
            landing.root,
            shard_dir,
            admissions,
            patients["subject_id"],
            image_size=size,
            workers=workdir.worker_count,
            progress=log_progress(context, "dicom"),
            max_image_mb=run.limits.max_image_mb,
        )
        index, rejects, seen, shards = result.index, result.rejects, result.seen, result.shards
    else:
        empty = Ingested.empty(["path", "subject_id", "hadm_id", "study_datetime"])
        index, rejects, seen, shards = empty.rows, empty.rejects, 0, []
    manifest_rows = int(rejects["source"].str.startswith("dicom/manifest.csv").sum())
    yield dg.Output(
        Ingested(rows=index, rejects=rejects, seen=seen, extra_rejects=manifest_rows),
        "dicom_index",
        metadata=manifest_metadata(context, landing, "dicom"),
    )
    yield dg.Output(
        ShardSet(directory=shard_dir, shards=tuple(shards), item_shape=(1, size, size)),
        "study_images",
        metadata={"shards": len(shards), "images": len(index), "image_size": size},
    )
