"""Jobs: the full pipeline, retrain + evaluate only, and promotion."""

from __future__ import annotations

import dagster as dg

from clinfuse.orchestration.hooks import stage_progress

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset: ingest, validate, cohort, features, train, evaluate, register.",
    hooks={stage_progress},
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
