"""The one place where clinfuse's Dagster definitions are assembled.

`dagster dev -w workspace.yaml` loads the module-level `defs`, configured from the environment
(CLINFUSE_LANDING, CLINFUSE_WORKDIR, CLINFUSE_CONFIG, and CLINFUSE_EXECUTOR for the executor:
orchestration/executors.py); `clinfuse run` calls `build_definitions` with its own arguments.
Both are the same graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from clinfuse.assets.checks import asset_checks
from clinfuse.assets.cohort import assets as cohort_assets
from clinfuse.assets.evaluation import assets as evaluation_assets
from clinfuse.assets.evaluation import predictions as prediction_assets
from clinfuse.assets.evaluation import registry_assets, run_report
from clinfuse.assets.features import assets as feature_assets
from clinfuse.assets.ingest import accounting
from clinfuse.assets.ingest.audio import assets as recordings
from clinfuse.assets.ingest.dicom import assets as imaging
from clinfuse.assets.ingest.ehr import assets as ehr
from clinfuse.assets.ingest.landing import LANDING_ASSETS
from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.assets.resources import LandingZone, PipelineSettings, WorkDir
from clinfuse.assets.settings import Settings, load_settings
from clinfuse.assets.training import assets as training_assets
from clinfuse.orchestration.executors import executor_from_environment
from clinfuse.orchestration.io_manager import ParquetIOManagerFactory
from clinfuse.orchestration.jobs import (
    full_pipeline,
    ingest_deliveries,
    promote,
    retrain_and_evaluate,
)
from clinfuse.orchestration.sensors import (
    daily_full_pipeline,
    landing_zone_sensor,
    record_run_failure,
)

ASSET_MODULES = (
    asset_checks,
    ehr,
    imaging,
    recordings,
    accounting,
    cohort_assets,
    feature_assets,
    training_assets,
    prediction_assets,
    evaluation_assets,
    registry_assets,
    run_report,
)


def build_definitions(
    landing: str | Path,
    workdir: str | Path,
    settings: Settings | None = None,
    workers: int = 0,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor, bound to one landing zone and work dir.

    `executor` is every job's (None: Dagster's multiprocess default); `execute_in_process`
    ignores it."""
    workdir = Path(workdir).expanduser().resolve()
    settings = settings or Settings()
    assets = [*LANDING_ASSETS, *dg.load_assets_from_modules(ASSET_MODULES)]
    checks = dg.load_asset_checks_from_modules(ASSET_MODULES)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[full_pipeline, ingest_deliveries, retrain_and_evaluate, promote],
        executor=executor,
        schedules=[daily_full_pipeline],
        sensors=[landing_zone_sensor, record_run_failure],
        resources={
            "landing": LandingZone(path=str(landing)),
            "workdir": WorkDir(path=str(workdir), workers=workers),
            "settings": PipelineSettings.from_settings(settings),
            "mlflow": MLflowResource(workdir=str(workdir)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(workdir / "tables")),
        },
    )


def _from_environment() -> dg.Definitions:
    workdir = os.environ.get("CLINFUSE_WORKDIR", "work/demo")
    landing = os.environ.get("CLINFUSE_LANDING", str(Path(workdir) / "landing"))
    config = os.environ.get("CLINFUSE_CONFIG")
    settings = load_settings(config) if config else None
    return build_definitions(landing, workdir, settings, executor=executor_from_environment())


defs = _from_environment()
