"""Jobs: the full pipeline, one delivery's decoding, retrain + evaluate only, and promotion."""

from __future__ import annotations

import dagster as dg

from clinfuse.orchestration.hooks import stage_progress

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    description=(
        "Every asset, for one delivery (partition): decode its images and recordings, then "
        "ingest, validate, cohort, features, train, evaluate, register over all deliveries. "
        "Without its two delivery assets it rebuilds from what is already decoded."
    ),
    hooks={stage_progress},
)

ingest_deliveries = dg.define_asset_job(
    "ingest_deliveries",
    selection=dg.AssetSelection.assets("dicom_delivery", "audio_delivery"),
    description="Decode one delivery's images and recordings (a backfill decodes several).",
)

retrain_and_evaluate = dg.define_asset_job(
    "retrain_and_evaluate",
    selection=dg.AssetSelection.groups("training", "evaluation", "registry"),
    description="Retrain the models on the current features, evaluate, register a challenger.",
    hooks={stage_progress},
)

promote = dg.define_asset_job(
    "promote",
    selection=dg.AssetSelection.assets("champion"),
    description="Compare the challenger with the champion and move the alias if it earns it.",
)
