"""Running again: after a kill, twice in a row, and with a deliberately worse challenger."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from dagster import AssetKey

from clinfuse.orchestration.cli import main
from clinfuse.orchestration.runner import dagster_instance, retrain, run_pipeline
from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow


def _row_counts(workdir: Path) -> dict[str, int]:
    tables = workdir / "tables"
    return {p.name: len(pd.read_parquet(p)) for p in sorted(tables.glob("*.parquet"))}


def _kill_midway(landing: Path, workdir: Path, config: Path) -> None:
    """Starts `clinfuse run` and kills it once the first ingest tables exist."""
    command = [
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
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (workdir / "tables" / "admissions.parquet").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.2)
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
