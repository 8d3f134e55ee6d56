"""The task family of the synthetic generator (synthetic/tasks.py, docs/synthetic.md).

Tiny zones for files (every task, plain and messy, read back with the pipeline's own readers)
and a few thousand simulated admissions, no files, for the oracle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clinfuse.assets.ingest.audio.reader import load_recording
from clinfuse.assets.ingest.dicom.reader import load_image
from clinfuse.assets.settings import AudioSettings
from clinfuse.synthetic import TASKS, generate, get_task, simulate_truth, truth_dir
from clinfuse.synthetic.truth import auroc

ADMISSIONS = 40
MODALITIES = ("ehr", "text", "image", "audio")
NEW_TASKS = sorted(set(TASKS) - {"pneumonia"})


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make(root: Path, name: str, **kwargs) -> Path:
    out = root / name
    generate(out, admissions=ADMISSIONS, seed=5, image_size=32, **kwargs)
    return out


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {name: make(root, f"{name}-messy", messy=True, task=name) for name in TASKS}


def test_at_least_five_tasks_and_a_clear_error() -> None:
    assert len(TASKS) >= 5 and "pneumonia" in TASKS
    assert get_task("sepsis") is TASKS["sepsis"]
    with pytest.raises(ValueError, match="known tasks: .*pneumonia"):
        get_task("appendicitis")


def test_default_task_is_byte_identical(tmp_path: Path) -> None:
    default, named = make(tmp_path, "default"), make(tmp_path, "named", task="pneumonia")
    assert digest(default) == digest(named)
    assert digest(truth_dir(default)) == digest(truth_dir(named))
    summary = json.loads((truth_dir(default) / "summary.json").read_text())
    assert "task" not in summary  # the default summary keeps the bytes it always had


@pytest.mark.parametrize("name", NEW_TASKS)
def test_plain_zone_repeats_byte_for_byte(tmp_path: Path, name: str) -> None:
    first, second = make(tmp_path, "a", task=name), make(tmp_path, "b", task=name)
    assert digest(first) == digest(second)
    assert digest(truth_dir(first)) == digest(truth_dir(second))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_labels_follow_the_targets_codes(zones: dict[str, Path], name: str) -> None:
    """A pipeline given truth/config.yaml labels exactly the truth's positives."""
    zone, task = zones[name], TASKS[name]
    config = yaml.safe_load((truth_dir(zone) / "config.yaml").read_text())
    assert config == {"target": task.target.config()}
    described = json.loads((truth_dir(zone) / "task.json").read_text())
    assert described["task"] == name and described["target"] == task.target.config()
    codes = pd.read_csv(zone / "ehr" / "diagnoses_icd.csv.gz", dtype=str)
    prefixes = {"10": tuple(config["target"]["icd10_prefixes"]),
                "9": tuple(config["target"]["icd9_prefixes"])}  # fmt: skip
    hit = codes.apply(lambda r: r["icd_code"].startswith(prefixes[r["icd_version"]]), axis=1)
    positives = set(codes.loc[hit, "hadm_id"].astype(int))
    truth = pd.read_parquet(truth_dir(zone) / "admissions.parquet")
    assert positives == set(truth.loc[truth["label"] == 1, "hadm_id"])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_files_decode_with_the_pipelines_readers(zones: dict[str, Path], name: str) -> None:
    zone = zones[name]
    bad = set(pd.read_csv(truth_dir(zone) / "quarantine.csv", dtype=str)["source"])
    images = [p for p in (zone / "dicom").rglob("*") if p.is_file() and p.name != "manifest.csv"]
    good = [p for p in images if str(p.relative_to(zone)) not in bad]
    assert good
    for path in good:
        pixels = load_image(path, 32)
        assert pixels.size and np.isfinite(pixels).all()
    manifest = pd.read_csv(zone / "audio" / "manifest.csv", dtype=str)
    settings = AudioSettings()
    paths = [zone / "audio" / p for p in manifest["path"] if f"audio/{p}" not in bad]
    for path in [p for p in paths if p.exists()]:
        assert np.isfinite(load_recording(path, settings)).all()


@pytest.mark.parametrize("name", NEW_TASKS)
def test_messy_inputs_and_leaks_in_every_task(zones: dict[str, Path], name: str) -> None:
    folder = truth_dir(zones[name])
    reasons = set(pd.read_csv(folder / "quarantine.csv")["reason"])
    assert {"truncated file", "not a DICOM file", "missing file", "unknown patient"} <= reasons
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["task"] == name and summary["target"]["name"] == name
    assert summary["leaks"].get("discharge summary", 0) > 0 and summary["leaks"].get("late lab")


def test_trend_is_two_readings_of_one_item_in_the_window(zones: dict[str, Path]) -> None:
    """AKI's creatinine: exactly a first and a later reading in the window (last - first)."""
    zone = zones["aki"]
    labs = pd.read_csv(zone / "ehr" / "labevents.csv.gz", dtype=str)  # messy rows: parse coerced
    labs["subject_id"] = pd.to_numeric(labs["subject_id"], errors="coerce")
    labs["itemid"] = pd.to_numeric(labs["itemid"], errors="coerce")
    labs["charttime"] = pd.to_datetime(labs["charttime"], errors="coerce")
    adm = pd.read_csv(zone / "ehr" / "admissions.csv.gz", parse_dates=["admittime"])
    truth = pd.read_parquet(truth_dir(zone) / "admissions.parquet").merge(adm, on="hadm_id")
    creatinine = labs[labs["itemid"] == TASKS["aki"].labs["creatinine"]]
    for row in truth[truth["has_ehr"]].itertuples():
        start, end = row.admittime, row.admittime + pd.Timedelta(hours=24)
        mine = creatinine[(creatinine["subject_id"] == row.subject_id_x)]
        inside = mine[(mine["charttime"] >= start) & (mine["charttime"] < end)]
        assert len(inside) == 2, row.hadm_id


@pytest.mark.parametrize("name", sorted(TASKS))
def test_oracle_beats_every_single_modality(name: str) -> None:
    truth = simulate_truth(3000, seed=1, task=name)
    labels = truth["label"].to_numpy()
    everything = auroc(labels, truth["p_oracle"].to_numpy())
    assert 0.8 < everything < 0.95
    silent = get_task(name).silent
    for m in MODALITIES:
        ceiling = auroc(labels, truth[f"p_oracle_{m}"].to_numpy())
        if m in silent:
            assert abs(ceiling - 0.5) <= 0.03, m
        else:
            assert 0.58 < ceiling < everything - 0.05, m


def test_some_task_has_a_modality_without_signal() -> None:
    assert any(task.silent for task in TASKS.values())
