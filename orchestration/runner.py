"""`clinfuse run`: materialize every asset in-process on one landing zone, then write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from clinfuse.assets.settings import Settings, read_yaml, settings_from_dict, with_overrides
from clinfuse.orchestration.definitions import build_definitions


class PipelineFailed(RuntimeError):
    """The run could not complete; str() is the one-line reason the CLI prints."""


def dagster_instance(workdir: Path) -> dg.DagsterInstance:
    """$DAGSTER_HOME when set, else persistent SQLite storage under <workdir>/dagster_home."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=str(home))  # persistent, despite the name


def _check_landing(landing: Path) -> None:
    if not landing.is_dir():
        raise PipelineFailed(f"landing zone {landing} does not exist")
    if not (landing / "ehr").is_dir():
        raise PipelineFailed(f"landing zone {landing} has no ehr/ folder (required)")


def _failure_reason(result: dg.ExecuteInProcessResult) -> str:
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            return f"blocking data-quality check failed: {evaluation.check_name}"
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        message = error.message.strip().splitlines()[-1] if error else "unknown error"
        return f"step {event.step_key} failed: {message}"
    return "the run failed"


def read_config(
    config: Path | None,
    training: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> Settings:
    """The run's settings: the YAML (every key optional), then `training` overrides (tests use
    them for tiny epochs), then `--set key.path=value` assignments."""
    try:
        raw = read_yaml(config) if config else {}
        if training:
            raw = {**raw, "training": {**(raw.get("training") or {}), **training}}
        return settings_from_dict(with_overrides(raw, assignments or []))
    except (TypeError, ValueError, yaml.YAMLError) as error:
        raise PipelineFailed(f"{config or 'settings'}: {error}") from error


# The console shows what a person follows (stage progress, epochs, warnings); Dagster's own
# step events stay in its event log, visible in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_pipeline(
    landing: Path,
    workdir: Path,
    config: Path | None = None,
    workers: int = 0,
    training: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> dict[str, Any]:
    """Runs `full_pipeline` and returns the report (also written to <workdir>/report.json)."""
    landing, workdir = landing.resolve(), workdir.resolve()
    _check_landing(landing)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = read_config(config, training, assignments)
    defs = build_definitions(landing, workdir, settings, workers=workers)
    job = defs.resolve_job_def("full_pipeline")
    with dagster_instance(workdir) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=QUIET_CONSOLE, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result.output_for_node("run_report")


def promote_model(
    landing: Path,
    workdir: Path,
    force: bool = False,
    note: str = "",
    config: Path | None = None,
    assignments: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the `promote` job (the champion gate) on the latest registered challenger.

    The champion is re-scored with these settings (window, target): pass the run's own config.
    """
    landing, workdir = landing.resolve(), workdir.resolve()
    defs = build_definitions(landing, workdir, read_config(config, None, assignments))
    job = defs.resolve_job_def("promote")
    run_config = {**QUIET_CONSOLE, "ops": {"champion": {"config": {"force": force, "note": note}}}}
    with dagster_instance(workdir) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result.output_for_node("champion")


def retrain(
    landing: Path, workdir: Path, training: dict[str, Any], config: Path | None = None
) -> dg.ExecuteInProcessResult:
    """Runs `retrain_and_evaluate` on the stored features with other hyper-parameters."""
    settings = read_config(config, training)
    defs = build_definitions(landing.resolve(), workdir.resolve(), settings)
    job = defs.resolve_job_def("retrain_and_evaluate")
    with dagster_instance(workdir.resolve()) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=QUIET_CONSOLE, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result
