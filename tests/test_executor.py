"""The default executor outside `clinfuse run`: Dagster's multiprocess executor, one process per
step, as `dagster dev` and the daemon launch runs. Driven through Dagster's own CLI."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _materialize(home: Path, landing: Path, workdir: Path, selection: str) -> None:
    """`dagster asset materialize` on the code location, as a person or a deployment runs it."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CLINFUSE_LANDING": str(landing),
        "CLINFUSE_WORKDIR": str(workdir),
    }
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "asset", "materialize", "-m", "clinfuse.orchestration.definitions"]
    command += ["--select", selection]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_multiprocess_executor_materializes_ingest_assets(landing, tmp_path):
    home, workdir = tmp_path / "dagster_home", tmp_path / "work"
    home.mkdir()
    _materialize(home, landing, workdir, "patients,admissions,d_labitems")

    admissions = pd.read_parquet(workdir / "tables" / "admissions.parquet")
    truth = pd.read_parquet(Path(str(landing) + ".truth") / "admissions.parquet")
    assert set(admissions["hadm_id"]) == set(truth["hadm_id"])
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        (run,) = instance.get_runs()
        kinds = {
            e.dagster_event_type.value for e in instance.all_logs(run.run_id) if e.is_dagster_event
        }
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert "STEP_WORKER_STARTED" in kinds  # each step in a process of its own


def _example_instance_yaml(home: Path) -> None:
    """docs/dagster.yaml.example with SQLite storage in place of Postgres (no server here)."""
    example = yaml.safe_load((ROOT / "docs" / "dagster.yaml.example").read_text())
    example["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(example))


def test_the_documented_instance_queues_runs_and_decodes_one_stage_at_a_time(landing, tmp_path):
    """docs/dagster.yaml.example as a real instance: queued runs with the documented limits, and
    the two decode stages (each a pool of every core) never running at once."""
    home, workdir = tmp_path / "dagster_home", tmp_path / "work"
    home.mkdir()
    _example_instance_yaml(home)
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        (limit,) = config.run_queue_config.tag_concurrency_limits
        assert limit == {"key": "dagster/sensor_name", "value": "landing_zone_sensor", "limit": 1}
        assert config.pool_config.default_pool_limit == 1
    selected = "patients,admissions,dicom_index,study_images,recording_index,recording_spectrograms"
    _materialize(home, landing, workdir, selected)
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        (run,) = instance.get_runs()
        spans = _step_spans(instance, run.run_id)
    (dicom,) = [v for k, v in spans.items() if k.startswith("dicom_studies")]
    (audio,) = [v for k, v in spans.items() if k.startswith("recordings")]
    assert dicom[1] <= audio[0] or audio[1] <= dicom[0], spans  # one after the other


def _step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        if not entry.is_dagster_event:
            continue
        kind, step = entry.dagster_event_type.value, entry.step_key
        if kind == "STEP_START":
            starts[step] = entry.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[step] = entry.timestamp
    return {step: (starts[step], ends[step]) for step in starts if step in ends}
