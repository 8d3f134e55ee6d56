"""Sensors: new files in the landing zone start a run; failed runs are written down."""

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from clinfuse.orchestration.jobs import full_pipeline
from clinfuse.orchestration.resources import LandingZone, WorkDir


def scan_landing(root: Path) -> dict[str, int]:
    """Relative path -> size of every file in the landing zone."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def next_cursor(cursor: dict, current: dict[str, int]) -> tuple[list[str], dict]:
    """(files ready to ingest, the new cursor).

    A file is ready once it is new or changed and its size has not moved since the previous
    tick: a file still being copied is pending until then.
    """
    seen, pending = cursor.get("seen", {}), cursor.get("pending", {})
    changed = {p: s for p, s in current.items() if seen.get(p) != s}
    ready = sorted(p for p, s in changed.items() if pending.get(p) == s)
    still_pending = {p: s for p, s in changed.items() if p not in ready}
    new_seen = {**seen, **{p: current[p] for p in ready}}
    return ready, {"seen": new_seen, "pending": still_pending}


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
