"""Shared fixtures: one small messy landing zone and one pipeline run over it per session.

Tiny on purpose (tens of admissions, 64 px images, a few epochs): the suite must stay under
15 minutes on 2 cores. Quality at scale is measured in benchmarks/, not here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

TINY_TRAINING = {"epochs": 6, "patience": 3, "width": 16, "batch_size": 32}
ADMISSIONS = 120


def test_split_requests(run: dict, notes=None) -> tuple:
    """(test cohort, serving frame): a run's test admissions as requests to its served model,
    built by the pipeline's own `serving_frame` from the run's tables (`notes` replaces the
    stored notes table, e.g. with the raw text a hospital would send)."""
    import pandas as pd

    from clinfuse.assets.evaluation.serving import serving_frame
    from clinfuse.assets.settings import Settings

    tables = run["workdir"] / "tables"
    cohort = pd.read_parquet(tables / "cohort.parquet")
    test = cohort[cohort["split"] == "test"].reset_index(drop=True)
    frame = serving_frame(
        test,
        tables / "labevents.parquet",
        pd.read_parquet(tables / "notes.parquet") if notes is None else notes,
        pd.read_parquet(tables / "dicom_index.parquet"),
        pd.read_parquet(tables / "recording_index.parquet"),
        run["landing"],
        Settings().window_hours,
    )
    return test, frame


def load_champion(run: dict):
    """The champion a run registered, as `mlflow.pyfunc` loads it from the run's own store."""
    import mlflow

    from clinfuse.assets.mlflow_resource import MLflowResource

    block = run["report"]["mlflow"]
    store = MLflowResource(tracking_uri=block["tracking_uri"], workdir=str(run["workdir"]))
    with store.activated():
        return mlflow.pyfunc.load_model(f"models:/{block['model_name']}@champion")


test_split_requests.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session", autouse=True)
def _quiet_environment(tmp_path_factory):
    # Nothing in the suite may reach a network or a user's own MLflow / Dagster setup.
    for name in ("MLFLOW_TRACKING_URI", "DAGSTER_HOME"):
        os.environ.pop(name, None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield


@pytest.fixture
def one_thread():
    """One torch thread for a test: the CI box is small and shared, and timings stay stable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def landing(tmp_path_factory) -> Path:
    from clinfuse.synthetic import generate

    out = tmp_path_factory.mktemp("zone") / "landing"
    generate(out, admissions=ADMISSIONS, seed=3, messy=True, image_size=64)
    assert len(plant_phi(out)) == 3
    return out


@pytest.fixture(scope="session")
def pipeline_run(landing, tmp_path_factory) -> dict:
    """A full `clinfuse run` (in-process) on the messy landing zone; returns its report."""
    from clinfuse.orchestration.runner import run_pipeline

    workdir = tmp_path_factory.mktemp("work")
    report = run_pipeline(landing, workdir, workers=2, training=TINY_TRAINING)
    assert json.loads((workdir / "report.json").read_text()) == report
    return {"report": report, "workdir": workdir, "landing": landing}


# Unique strings planted in identifying attributes (DICOM PS3.15 Annex E basic profile) of some
# DICOMs; none may appear in any byte the pipeline writes.
PHI_MARKERS = {
    "PatientName": "Zyxq^Markerpatient",
    "OtherPatientIDs": "ZQOTHERID77",
    "PatientBirthDate": "18870707",
    "PatientAddress": "ZQ 77 Markerstreet",
    "AccessionNumber": "ZQACC7781",
    "InstitutionName": "ZQ Marker General Hospital",
    "InstitutionAddress": "ZQ 1 Institution Road",
    "ReferringPhysicianName": "Zqref^Markerdoctor",
    "PerformingPhysicianName": "Zqperf^Markerdoc",
    "OperatorsName": "Zqop^Markeroperator",
    "StudyID": "ZQSTUDY771",
    "StationName": "ZQSTATION7",
    "DeviceSerialNumber": "ZQSERIAL7781",
    "PatientComments": "ZQ marker comment",
    "StudyDescription": "ZQ marker study description",
}


def plant_phi(landing: Path, files: int = 3) -> list[Path]:
    """Writes PHI_MARKERS into the first few readable DICOMs of a landing zone."""
    import pydicom

    planted = []
    for path in sorted((landing / "dicom").rglob("*")):
        if len(planted) == files or not path.is_file() or path.name == "manifest.csv":
            continue
        try:
            ds = pydicom.dcmread(path)
            ds.pixel_array  # noqa: B018 - only files that decode, so they reach every stage
        except Exception:  # noqa: BLE001 - planted bad inputs are skipped here
            continue
        for keyword, value in PHI_MARKERS.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        planted.append(path)
    return planted
