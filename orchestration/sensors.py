"""Sensors and the schedule: new files in the landing zone start a run; failed runs are noted.

Both record what they find as a delivery first (orchestration/deliveries.py), so a file is
decoded by the run for its own delivery and never again.
"""

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg

from clinfuse.assets.ingest.deliveries import next_cursor, scan_landing
from clinfuse.assets.resources import LandingZone, PipelineSettings, WorkDir
from clinfuse.orchestration.deliveries import (
    apply_partitions,
    partition_requests,
    record_deliveries,
    run_request,
)
from clinfuse.orchestration.jobs import full_pipeline


@dg.sensor(
    job=full_pipeline,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Once new files in the landing zone have stopped growing, records the new images and "
        "recordings as a delivery (a partition) and runs the full pipeline for it."
    ),
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
):
    cursor = json.loads(context.cursor) if context.cursor else {}
    ready, cursor = next_cursor(cursor, scan_landing(landing.root))
    if not ready:
        return dg.SensorResult(
            skip_reason="no new stable files in the landing zone", cursor=json.dumps(cursor)
        )
    plan = record_deliveries(
        landing.root, workdir.root, settings.value, context.instance, ready=set(ready)
    )
    digest = hashlib.sha256(
        json.dumps([(p, cursor["seen"][p]) for p in ready]).encode()
    ).hexdigest()[:16]
    tags = {"clinfuse/new_files": str(len(ready))}
    return dg.SensorResult(
        run_requests=[run_request(plan, _job(context), run_key=f"landing-{digest}", tags=tags)],
        dynamic_partitions_requests=partition_requests(plan),
        cursor=json.dumps(cursor),
    )


@dg.schedule(
    job=full_pipeline,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every night: records what arrived as a delivery and runs the full pipeline.",
)
def daily_full_pipeline(
    context: dg.ScheduleEvaluationContext,
    landing: LandingZone,
    workdir: WorkDir,
    settings: PipelineSettings,
):
    plan = record_deliveries(landing.root, workdir.root, settings.value, context.instance)
    apply_partitions(plan, context.instance)  # a schedule returns no partition requests
    return run_request(plan, _job(context), run_key=None)


def _job(context: dg.SensorEvaluationContext | dg.ScheduleEvaluationContext) -> dg.JobDefinition:
    return context.repository_def.get_job(full_pipeline.name)  # type: ignore[union-attr]


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Appends every failed run to <workdir>/failures.jsonl and the sensor log.",
)
def record_run_failure(context: dg.RunFailureSensorContext, workdir: WorkDir):
    entry = {
        "run_id": context.dagster_run.run_id,
        "job": context.dagster_run.job_name,
        "failed_at": datetime.now(UTC).isoformat(),
        "message": context.failure_event.message,
    }
    with (workdir.root / "failures.jsonl").open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    context.log.error(f"run {entry['run_id']} of {entry['job']} failed: {entry['message']}")
