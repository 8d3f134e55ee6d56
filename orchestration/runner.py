"""`clinfuse run`: materialize every asset in-process on one landing zone, then write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from clinfuse.assets.settings import load_settings
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.report import write_report
from dagster._core.instance.ref import InstanceRef


class PipelineFailed(RuntimeError):
    """The run could not complete; str() is the one-line reason the CLI prints."""


def dagster_instance(workdir: Path) -> dg.DagsterInstance:
    """$DAGSTER_HOME when set, else persistent SQLite storage under <workdir>/dagster_home."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _check_landing(landing: Path) -> None:
    if not landing.is_dir():
        raise PipelineFailed(f"landing zone {landing} does not exist")
    if not (landing / "ehr").is_dir():
        raise PipelineFailed(f"landing zone {landing} has no ehr/ folder (required)")


def _failure_reason(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                return f"blocking data-quality check failed: {evaluation.check_name}"
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.message.strip().splitlines()[-1] if error else "unknown error"
            return f"step {event.step_key} failed: {message}"
    return "the run failed"


def run_pipeline(
    landing: Path, workdir: Path, config: Path | None = None, workers: int = 0
) -> dict[str, Any]:
    """Runs `full_pipeline` and returns the report (also written to <workdir>/report.json)."""
    landing, workdir = landing.resolve(), workdir.resolve()
    _check_landing(landing)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(config)
    defs = build_definitions(landing, workdir, settings, workers=workers)
    job = defs.resolve_job_def("full_pipeline")
    with dagster_instance(workdir) as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return write_report(workdir)
