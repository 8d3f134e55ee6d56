"""`clinfuse run`: materialize every asset in-process on one landing zone, then write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef

from clinfuse.assets.settings import Settings, load_settings, settings_from_dict
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.report import write_report


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


def read_config(config: Path | None) -> tuple[Settings, dict[str, Any]]:
    """(settings, training hyper-parameters) from the run's YAML.

    The keys of cli-and-report.md (target, window_hours, seed) and image_size / audio go to the
    settings; an optional `training:` section (strategy, epochs, ...) to the training assets.
    """
    raw = yaml.safe_load(config.read_text()) if config else {}
    if raw is not None and not isinstance(raw, dict):
        raise PipelineFailed(f"{config}: expected a mapping at the top level")
    raw = dict(raw or {})
    training = dict(raw.pop("training", None) or {})
    try:
        return settings_from_dict(raw), training
    except (TypeError, ValueError) as error:
        raise PipelineFailed(f"{config}: {error}") from error


# The console shows what a person follows (stage progress, epochs, warnings); Dagster's own
# step events stay in its event log, visible in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def training_run_config(training: dict[str, Any]) -> dict[str, Any]:
    if not training:
        return dict(QUIET_CONSOLE)
    ops = {name: {"config": training} for name in ("fusion_model", "modality_models")}
    return {**QUIET_CONSOLE, "ops": ops}


def run_pipeline(
    landing: Path,
    workdir: Path,
    config: Path | None = None,
    workers: int = 0,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs `full_pipeline` and returns the report (also written to <workdir>/report.json).

    training overrides the YAML's `training:` section (tests use it for tiny epochs).
    """
    landing, workdir = landing.resolve(), workdir.resolve()
    _check_landing(landing)
    workdir.mkdir(parents=True, exist_ok=True)
    settings, from_yaml = read_config(config)
    defs = build_definitions(landing, workdir, settings, workers=workers)
    job = defs.resolve_job_def("full_pipeline")
    run_config = training_run_config({**from_yaml, **(training or {})})
    with dagster_instance(workdir) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return write_report(workdir)


def promote_model(
    landing: Path, workdir: Path, force: bool = False, note: str = "", config: Path | None = None
) -> dict[str, Any]:
    """Runs the `promote` job (the champion gate) on the latest registered challenger."""
    landing, workdir = landing.resolve(), workdir.resolve()
    defs = build_definitions(landing, workdir, load_settings(config))
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
    settings, from_yaml = read_config(config)
    defs = build_definitions(landing.resolve(), workdir.resolve(), settings)
    job = defs.resolve_job_def("retrain_and_evaluate")
    run_config = training_run_config({**from_yaml, **training})
    with dagster_instance(workdir.resolve()) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result
