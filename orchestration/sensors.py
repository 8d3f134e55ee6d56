"""Sensors: new files in the landing zone start a run; failed runs are written down."""

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg

from clinfuse.assets.ingest.deliveries import next_cursor, scan_landing
from clinfuse.assets.resources import LandingZone, WorkDir
from clinfuse.orchestration.jobs import full_pipeline


@dg.sensor(
    job=full_pipeline,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts the full pipeline when new files in the landing zone have stopped growing.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
    cursor = json.loads(context.cursor) if context.cursor else {}
    ready, cursor = next_cursor(cursor, scan_landing(landing.root))
    context.update_cursor(json.dumps(cursor))
    if not ready:
        return dg.SkipReason("no new stable files in the landing zone")
    digest = hashlib.sha256(
        json.dumps([(p, cursor["seen"][p]) for p in ready]).encode()
    ).hexdigest()[:16]
    return dg.RunRequest(run_key=f"landing-{digest}", tags={"clinfuse/new_files": str(len(ready))})


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
