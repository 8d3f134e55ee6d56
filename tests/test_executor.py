"""The default executor outside `clinfuse run`: Dagster's multiprocess executor, one process per
step, as `dagster dev` and the daemon launch runs. Driven through Dagster's own CLI."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.instance.ref import InstanceRef

pytestmark = pytest.mark.slow


def test_the_multiprocess_executor_materializes_ingest_assets(landing, tmp_path):
    home, workdir = tmp_path / "dagster_home", tmp_path / "work"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CLINFUSE_LANDING": str(landing),
        "CLINFUSE_WORKDIR": str(workdir),
    }
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "asset", "materialize", "-m", "clinfuse.orchestration.definitions"]
    command += ["--select", "patients,admissions,d_labitems"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    admissions = pd.read_parquet(workdir / "tables" / "admissions.parquet")
    truth = pd.read_parquet(Path(str(landing) + ".truth") / "admissions.parquet")
    assert set(admissions["hadm_id"]) == set(truth["hadm_id"])
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        (run,) = instance.get_runs()
        kinds = {
            e.dagster_event_type.value for e in instance.all_logs(run.run_id) if e.is_dagster_event
        }
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert "STEP_WORKER_STARTED" in kinds  # each step in a process of its own
