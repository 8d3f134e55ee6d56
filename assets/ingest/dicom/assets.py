"""DICOM assets: each delivery's files decoded (a partition each), and the study index over all.

`dicom_delivery` decodes the files of one delivery into the decode store (assets/ingest/
decoded.py); `dicom_studies` links every current delivery's records to admissions, drops
duplicates and points the index at the stored images: no file is decoded there.
"""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.catch_up import Decode, catch_up
from clinfuse.assets.ingest.decoded import DecodeStore
from clinfuse.assets.ingest.deliveries import files_by_delivery, read_ledger
from clinfuse.assets.ingest.dicom.delivery import RECORD_DTYPES, decode_delivery, typed_records
from clinfuse.assets.ingest.dicom.reader import SHARD_PREFIX, Decoding
from clinfuse.assets.ingest.dicom.study_index import link_studies
from clinfuse.assets.ingest.ingested import Ingested, ShardSet
from clinfuse.assets.ingest.progress import log_progress, manifest_metadata, newly_decoded
from clinfuse.assets.resources import (
    DECODE_POOL,
    DELIVERIES,
    LandingZone,
    PipelineSettings,
    WorkDir,
)
from clinfuse.assets.settings import Settings

GROUP = "ingest"


def image_store(workdir: WorkDir, run: Settings) -> DecodeStore:
    """Where this run's settings keep decoded images (another image size: another folder)."""
    size = run.image_size
    decoding = {"image_size": size, "max_image_mb": run.limits.max_image_mb}
    return DecodeStore.under(
        workdir.folder("decoded"), "dicom", decoding, (1, size, size), SHARD_PREFIX
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=DELIVERIES,
    pool=DECODE_POOL,
    deps=["landing_dicom"],
    kinds={"pydicom", "numpy"},
    owners=["team:clinical-ml"],
)
def dicom_delivery(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """One delivery's DICOM files, hashed and decoded in a process pool (a file whose bytes an
    earlier delivery held is copied, not decoded): a record per file, the images in shards."""
    run = settings.value
    delivery = context.partition_key
    files = files_by_delivery(read_ledger(workdir.root), "dicom").get(delivery, [])
    decode = _decoder(context, landing, workdir, run)
    return dg.MaterializeResult(metadata=dict(decode(delivery, files)))


def _decoder(
    context: dg.AssetExecutionContext, landing: LandingZone, workdir: WorkDir, run: Settings
) -> Decode:
    store = image_store(workdir, run)

    def decode(delivery: str, files: list[str]) -> dict[str, object]:
        result = decode_delivery(
            landing.root,
            files,
            store,
            delivery,
            Decoding(run.image_size, run.limits.max_image_mb),
            workdir.worker_count,
            progress=log_progress(context, f"dicom {delivery}"),
        )
        return store.keep(delivery, result)

    return decode


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
    deps=["dicom_delivery"],
    # Only catch-up decoding (catch_up.py) happens here, but then in a pool of every core.
    pool=DECODE_POOL,
)
def dicom_studies(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
    admissions: pd.DataFrame,
    patients: pd.DataFrame,
):
    """Every current delivery's records linked to an admission, duplicates dropped."""
    run = settings.value
    size = run.image_size
    store = image_store(workdir, run)
    decode = _decoder(context, landing, workdir, run)
    deliveries = catch_up(context, landing, workdir, "dicom", store, decode)
    records = store.current(deliveries, "DICOM files")
    if records.empty:  # no image yet: the manifest's rows are still read and accounted for
        records = typed_records(pd.DataFrame(columns=list(RECORD_DTYPES)))
    decoded = newly_decoded(context, "dicom_index", store, list(deliveries))
    index, rejects = link_studies(landing.root, records, admissions, patients["subject_id"])
    manifest_rows = int(rejects["source"].str.startswith("dicom/manifest.csv").sum())
    yield dg.Output(
        Ingested(
            rows=index,
            rejects=rejects,
            seen=len(records),
            extra_rejects=manifest_rows,
            decoded=decoded.count,
        ),
        "dicom_index",
        metadata={**manifest_metadata(context, landing, "dicom"), **decoded.metadata()},
    )
    shards = tuple(sorted(set(index["shard"].dropna()))) if len(index) else ()
    yield dg.Output(
        ShardSet(directory=store.directory, shards=shards, item_shape=(1, size, size)),
        "study_images",
        metadata={"shards": len(shards), "images": len(index), "image_size": size},
    )
