"""`clinfuse run`: materialize every asset in-process on one landing zone, then write the report."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from clinfuse.assets.settings import Settings, read_yaml, settings_from_dict, with_overrides
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.deliveries import (
    apply_partitions,
    rebuild_selection,
    record_deliveries,
)


class PipelineFailed(RuntimeError):
    """The run could not complete; str() is the one-line reason the CLI prints."""


def dagster_instance(workdir: Path) -> dg.DagsterInstance:
    """$DAGSTER_HOME when set, else persistent SQLite storage under <workdir>/dagster_home."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=str(home))  # persistent, despite the name


LOCK_NAME = ".lock"


@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Holds <workdir>/.lock (flock, exclusive) for the block; PipelineFailed if another holds it.

    Two runs on one work directory would overwrite each other's tables, shards and models, so
    the second refuses at once, before it touches anything, and says which process has it. The
    kernel drops the lock when its holder dies, however it dies, so a killed run never leaves a
    stale lock behind (the pid left in the file is then only a note).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    # "a+", not "w": the file must not be emptied before the lock is ours, it names the holder.
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PipelineFailed(f"another run holds {path} (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield  # closing the file releases the lock


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
    settings = read_config(config, training, assignments)
    defs = build_definitions(landing, workdir, settings, workers=workers)
    job = defs.resolve_job_def("full_pipeline")
    with workdir_lock(workdir), dagster_instance(workdir) as instance:
        plan = record_deliveries(landing, workdir, settings, instance)
        apply_partitions(plan, instance)
        for key in plan.stale:  # decoded under other settings (image size, mel bands) only
            _succeed(defs.resolve_job_def("ingest_deliveries"), instance, partition_key=key)
        if plan.added is not None:
            result = _succeed(job, instance, partition_key=plan.added)
        else:  # nothing new to decode: rebuild from the decoded deliveries
            result = _succeed(job, instance, asset_selection=rebuild_selection(job))
    return result.output_for_node("run_report")


def _succeed(
    job: dg.JobDefinition, instance: dg.DagsterInstance, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    result = job.execute_in_process(
        instance=instance, run_config=QUIET_CONSOLE, raise_on_error=False, **kwargs
    )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result


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
    with workdir_lock(workdir), dagster_instance(workdir) as instance:
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
    with workdir_lock(workdir.resolve()), dagster_instance(workdir.resolve()) as instance:
        result = job.execute_in_process(
            instance=instance, run_config=QUIET_CONSOLE, raise_on_error=False
        )
    if not result.success:
        raise PipelineFailed(_failure_reason(result))
    return result
