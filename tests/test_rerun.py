"""Running again: after a kill, twice in a row, and with a deliberately worse challenger; killed
at each step that writes (shards, training, registration) and rerun; two runs at once."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from dagster import AssetKey, DagsterEventType
from sqlalchemy.exc import OperationalError

from clinfuse.assets.evaluation.registry import version_problem
from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.models.shards import verify_shards
from clinfuse.orchestration.cli import main
from clinfuse.orchestration.runner import PipelineFailed, dagster_instance, retrain, run_pipeline
from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow


def _row_counts(workdir: Path) -> dict[str, int]:
    tables = workdir / "tables"
    return {p.name: len(pd.read_parquet(p)) for p in sorted(tables.glob("*.parquet"))}


def _first_tables_exist(workdir: Path) -> bool:
    return (workdir / "tables" / "admissions.parquet").exists()


def _run_command(landing: Path, workdir: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clinfuse.orchestration.cli",
        "run",
        "--landing",
        str(landing),
        "--workdir",
        str(workdir),
        "--config",
        str(config),
    ]


def _kill_midway(
    landing: Path,
    workdir: Path,
    config: Path,
    ready: Callable[[Path], bool] = _first_tables_exist,
    while_running: Callable[[subprocess.Popen], None] | None = None,
) -> None:
    """Starts `clinfuse run` and SIGKILLs it (and its workers) once `ready(workdir)` holds;
    `while_running(process)` is called first, as soon as the run has written its first table."""
    command = _run_command(landing, workdir, config)
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        checks = [_first_tables_exist, ready]
        while checks:
            if checks[0](workdir):
                if checks.pop(0) is _first_tables_exist and while_running is not None:
                    while_running(process)
                continue
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got there"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (workdir / "report.json").exists()


def test_killed_rerun_twice_and_a_worse_challenger(landing, tmp_path):
    workdir = tmp_path / "work"
    config = tmp_path / "run.yaml"
    # A window other than the default: every step, promote included, must use the run's own.
    config.write_text(yaml.safe_dump({"window_hours": 20, "training": TINY_TRAINING}))

    _kill_midway(landing, workdir, config)
    first = run_pipeline(landing, workdir, config, workers=2)
    assert first["mlflow"]["version"] == "1"
    counts = _row_counts(workdir)

    second = run_pipeline(landing, workdir, config, workers=2)
    assert second["mlflow"]["version"] == "2"
    assert "challenger" in second["mlflow"]["aliases"]
    assert _row_counts(workdir) == counts  # nothing appended twice
    assert second["quarantine"] == first["quarantine"]
    assert second["cohort"] == first["cohort"]
    # Incremental ingest (cli-and-report.md): the second run, with nothing new, decodes nothing.
    # The first decoded every film, whether or not the killed run had decoded them already.
    assert first["inputs"]["dicom"]["decoded"] == first["inputs"]["dicom"]["seen"] > 0
    assert first["inputs"]["audio"]["decoded"] > 0
    assert second["inputs"]["dicom"]["decoded"] == second["inputs"]["audio"]["decoded"] == 0
    assert second["inputs"]["dicom"]["seen"] == first["inputs"]["dicom"]["seen"]

    client = mlflow.MlflowClient(second["mlflow"]["tracking_uri"])
    name = second["mlflow"]["model_name"]
    champion_before = client.get_registered_model(name).aliases["champion"]

    negative_control = {**TINY_TRAINING, "shuffle_labels": True}
    worse = retrain(landing, workdir, negative_control, config).output_for_node("champion")
    assert worse["version"] == "3"
    assert worse["decision"]["promoted"] is False
    # Refused on the metric it is worse in: discrimination, calibration, or both (which one
    # shows first depends on a ~20-admission test split).
    assert worse["decision"]["reason"].startswith(("AUROC", "ECE"))
    numbers = worse["decision"]["numbers"]
    assert (
        numbers["auroc_challenger"] < numbers["auroc_champion"] - numbers["auroc_tolerance"]
        or numbers["ece_challenger"] > numbers["ece_champion"] + numbers["ece_tolerance"]
    )
    assert client.get_registered_model(name).aliases["champion"] == champion_before
    assert client.get_model_version(name, "3").tags["promotion.decision"] == "refused"
    assert sorted(worse["aliases"]) == ["challenger"]

    # a person overrides the gate through the CLI: recorded as forced, with their note
    code = main(
        [
            "promote",
            "--landing",
            str(landing),
            "--workdir",
            str(workdir),
            "--force",
            "--note",
            "pytest: override check",
            "--config",
            str(config),
        ]
    )
    assert code == 0
    with dagster_instance(workdir) as instance:
        event = instance.get_latest_materialization_event(AssetKey("champion"))
    rescored = event.asset_materialization.metadata["window_hours"].value
    assert rescored == 20  # the champion was re-scored with the run's window, not the default
    assert str(client.get_registered_model(name).aliases["champion"]) == "3"
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.force_note"] == "pytest: override check"
    assert (
        client.get_model_version(name, str(champion_before)).tags["promotion.superseded_by"] == "3"
    )


# --- killed at each step, rerun -------------------------------------------------------------


def _steps(workdir: Path, event: DagsterEventType) -> dict[str, float]:
    """step key -> when it logged `event`, in the latest run of the work dir's Dagster event log
    (read while the run writes it: the same SQLite storage `clinfuse run` uses)."""
    if not _first_tables_exist(workdir):  # before that, the storage may still be being created
        return {}
    try:
        with dagster_instance(workdir) as instance:
            runs = instance.get_runs(limit=1)
            events = instance.all_logs(runs[0].run_id, of_type=event) if runs else []
    except OperationalError:  # SQLite busy with the run's own writes: look again later
        return {}
    return {entry.step_key: entry.timestamp for entry in events if entry.step_key}


def _started(workdir: Path) -> dict[str, float]:
    return _steps(workdir, DagsterEventType.STEP_START)


def _running_for(step: str, seconds: float) -> Callable[[Path], bool]:
    def ready(workdir: Path) -> bool:
        started = _started(workdir).get(step)
        return started is not None and time.time() - started >= seconds

    return ready


def _logging_the_model(workdir: Path) -> bool:
    """registered_model wrote the served model's settings.json a second ago: it is inside
    log_model (saving the pyfunc and validating its input example take ~7 s here), with a logged
    model created that is not READY yet. Killed now, that one stays PENDING, never uploaded."""
    written = list((workdir / "models").glob("*/settings.json"))
    return bool(written) and time.time() - written[0].stat().st_mtime >= 1.0


def _second_run_is_refused(landing: Path, workdir: Path, config: Path):
    def check(process: subprocess.Popen) -> None:
        with pytest.raises(PipelineFailed) as refused:
            run_pipeline(landing, workdir, config, workers=2)
        lock = workdir.resolve() / ".lock"
        assert str(refused.value) == f"another run holds {lock} (pid {process.pid})"

    return check


# name -> (when to kill, the step that must have started then, whether it must be unfinished)
# Training and registration last seconds on any machine, so those kills land inside them.
# Decoding a tiny zone's films may take under a second, so that kill lands in it or just after.
KILL_POINTS = {
    "decoding": (_running_for("dicom_delivery", 0.0), "dicom_delivery", False),
    "training": (_running_for("modality_models", 2.0), "modality_models", True),
    "registration": (_logging_the_model, "registered_model", True),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_at_a_step_reruns_cleanly(landing, tmp_path, point):
    workdir = tmp_path / "work"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"training": TINY_TRAINING}))
    # While the doomed run holds the work dir, a second run is refused at once, untouched.
    check = _second_run_is_refused(landing, workdir, config) if point == "decoding" else None
    ready, step, unfinished = KILL_POINTS[point]
    _kill_midway(landing, workdir, config, ready, while_running=check)
    assert step in _started(workdir)  # killed where meant: the step began (and never ended)
    assert not unfinished or step not in _steps(workdir, DagsterEventType.STEP_SUCCESS)

    report = run_pipeline(landing, workdir, config, workers=2)

    assert json.loads((workdir / "report.json").read_text()) == report
    _every_table_and_shard_is_whole(workdir)
    block = report["mlflow"]
    store = MLflowResource(tracking_uri=block["tracking_uri"], workdir=str(workdir))
    client = store.client()
    versions = client.search_model_versions(f"name = '{block['model_name']}'")
    assert block["version"] in {str(v.version) for v in versions}
    assert "challenger" in block["aliases"]
    with store.activated():
        for version in versions:  # none points at missing artifacts
            assert version_problem(client, version) is None, version.version
            model = mlflow.pyfunc.load_model(f"models:/{block['model_name']}/{version.version}")
            assert model.metadata.get_input_schema() is not None


def _every_table_and_shard_is_whole(workdir: Path) -> None:
    tables = workdir / "tables"
    for path in sorted(tables.glob("*.parquet")):
        pd.read_parquet(path)  # raises on a cut-off file
    assert not list(tables.glob("*.tmp"))
    manifests = sorted(tables.glob("*.shards.json"))
    assert {m.name for m in manifests} == {
        "study_images.shards.json",
        "recording_spectrograms.shards.json",
    }
    for manifest in manifests:
        stored = json.loads(manifest.read_text())
        verify_shards(Path(stored["directory"]), stored["digests"])
