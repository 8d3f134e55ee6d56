"""The synthetic landing zone, read back the way landing-zone.md describes it.

The reader here uses pandas, pydicom and soundfile directly, never the generator's code, so it
checks the files against the contract rather than against themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import soundfile as sf
from pydicom.errors import InvalidDicomError
from sklearn.metrics import roc_auc_score

from clinfuse.synthetic import generate, simulate_truth, truth_dir

ADMISSIONS = 40
WINDOW = pd.Timedelta(hours=24)
ICD10 = ("J12", "J13", "J14", "J15", "J16", "J17", "J18")
ICD9 = ("480", "481", "482", "483", "484", "485", "486")
MODALITIES = ("ehr", "text", "image", "audio")


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "landing"
    generate(out, admissions=ADMISSIONS, seed=3, messy=True, image_size=64)
    return out


@pytest.fixture(scope="module")
def truth(zone: Path) -> dict:
    folder = truth_dir(zone)
    return {
        "admissions": pd.read_parquet(folder / "admissions.parquet"),
        "quarantine": pd.read_csv(folder / "quarantine.csv", dtype=str),
        "leaks": pd.read_csv(folder / "leaks.csv", dtype={"source": str}),
    }


# --- an independent reader ---------------------------------------------------------------------


def table(zone: Path, folder: str, name: str) -> tuple[str, pd.DataFrame]:
    """(source, frame) of the one .csv or .csv.gz called `name`; every cell as text."""
    (path,) = [p for p in (zone / folder).iterdir() if p.name in (f"{name}.csv", f"{name}.csv.gz")]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.index = range(1, len(frame) + 1)  # 1-based data rows, as quarantine sources count
    return f"{folder}/{path.name}", frame


def ids(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column.replace("", None), errors="coerce")


def times(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column.replace("", None), format="%Y-%m-%d %H:%M:%S", errors="coerce")


class Cohort:
    """patients and admissions as landing-zone.md reads them, and its linking rule."""

    def __init__(self, zone: Path, rejects: set) -> None:
        source, patients = table(zone, "ehr", "patients")
        subject = ids(patients["subject_id"])
        for row in patients.index[subject.duplicated()]:
            rejects.add(("ehr", f"{source}:{row}", "duplicate subject_id"))
        self.subjects = set(subject.dropna().astype(int))
        _, adm = table(zone, "ehr", "admissions")
        self.admissions = pd.DataFrame(
            {
                "subject_id": ids(adm["subject_id"]).astype(int),
                "hadm_id": ids(adm["hadm_id"]).astype(int),
                "admittime": times(adm["admittime"]),
                "dischtime": times(adm["dischtime"]),
            }
        ).set_index("hadm_id")
        assert self.admissions[["admittime", "dischtime"]].notna().all().all()

    def link(self, subject_id: float, hadm_id: float, when: pd.Timestamp) -> int | str:
        """The hadm_id an event belongs to, or the reason it belongs to none."""
        if pd.isna(subject_id) or int(subject_id) not in self.subjects:
            return "unknown patient"
        if not pd.isna(hadm_id):
            owner = self.admissions["subject_id"].get(int(hadm_id))
            return int(hadm_id) if owner == int(subject_id) else "unknown admission"
        mine = self.admissions[self.admissions["subject_id"] == int(subject_id)]
        inside = mine[(mine["admittime"] <= when) & (when <= mine["dischtime"])]
        return int(inside.index[0]) if len(inside) else "no admission"


def read_labs(zone: Path, cohort: Cohort, rejects: set) -> pd.DataFrame:
    source, labs = table(zone, "ehr", "labevents")
    subject, hadm, when = ids(labs["subject_id"]), ids(labs["hadm_id"]), times(labs["charttime"])
    linked = []
    for row in labs.index:
        if pd.isna(subject[row]):
            rejects.add(("ehr", f"{source}:{row}", "bad subject_id"))
        elif pd.isna(when[row]):
            rejects.add(("ehr", f"{source}:{row}", "bad charttime"))
        else:
            target = cohort.link(subject[row], hadm[row], when[row])
            if target in ("unknown patient", "unknown admission"):
                rejects.add(("ehr", f"{source}:{row}", target))
            elif isinstance(target, int):  # an outpatient lab links nowhere and is fine
                linked.append((target, when[row]))
            assert labs.at[row, "valuenum"] != "" or labs.at[row, "value"] != ""
    return pd.DataFrame(linked, columns=["hadm_id", "time"])


def read_notes(zone: Path, rejects: set) -> pd.DataFrame:
    frames = []
    for path in sorted((zone / "note").iterdir()):
        name = path.name.removesuffix(".gz").removesuffix(".csv")
        source, notes = table(zone, "note", name)
        assert {"note_id", "subject_id", "hadm_id", "note_type", "charttime", "text"} <= set(notes)
        when = times(notes["charttime"])
        for row in notes.index[when.isna()]:
            rejects.add(("note", f"{source}:{row}", "bad charttime"))
        frames.append(pd.DataFrame({"hadm_id": ids(notes["hadm_id"]), "time": when,
                                    "note_type": notes["note_type"]})[when.notna()])  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def dicom_time(ds: pydicom.Dataset) -> pd.Timestamp:
    """StudyDate+StudyTime, else AcquisitionDateTime, else ContentDate+ContentTime."""
    if ds.get("StudyDate"):
        text = ds.StudyDate + ds.StudyTime
    elif ds.get("AcquisitionDateTime"):
        text = ds.AcquisitionDateTime
    else:
        text = ds.ContentDate + ds.ContentTime
    return pd.to_datetime(text[:14], format="%Y%m%d%H%M%S")


def read_dicom(zone: Path, cohort: Cohort, rejects: set) -> pd.DataFrame:
    manifest = pd.read_csv(zone / "dicom/manifest.csv", dtype=str, keep_default_na=False)
    listed = manifest.set_index("path").to_dict("index")
    seen_uids, linked = set(), []
    files = sorted(p for p in (zone / "dicom").rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(zone).as_posix()
        if rel == "dicom/manifest.csv":
            continue
        problem, ds = _decode_dicom(path)
        if problem:
            rejects.add(("dicom", rel, problem))
            continue
        if ds.SOPInstanceUID in seen_uids:
            rejects.add(("dicom", rel, "duplicate instance"))
            continue
        seen_uids.add(ds.SOPInstanceUID)
        entry = listed.get(path.relative_to(zone / "dicom").as_posix())
        if entry:
            subject, hadm = float(entry["subject_id"]), ids(pd.Series([entry["hadm_id"]]))[0]
            when = pd.Timestamp(entry["study_datetime"])
        else:
            subject, hadm, when = float(ds.PatientID), np.nan, dicom_time(ds)
        target = cohort.link(subject, hadm, when)
        if isinstance(target, str):
            rejects.add(("dicom", rel, target))
        else:
            linked.append((target, when, rel))
    return pd.DataFrame(linked, columns=["hadm_id", "time", "path"])


def _decode_dicom(path: Path) -> tuple[str | None, pydicom.Dataset | None]:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "not a DICOM file", None
    if "PixelData" not in ds:
        return "no pixel data", None
    try:
        pixels = ds.pixel_array
    except ValueError:
        return "truncated file", None
    assert pixels.shape == (64, 64) and pixels.max() > pixels.min()
    return None, ds


def read_audio(zone: Path, cohort: Cohort, rejects: set) -> pd.DataFrame:
    source, manifest = table(zone, "audio", "manifest")
    when = times(manifest["recorded_at"])
    linked = []
    for row in manifest.index:
        rel = f"audio/{manifest.at[row, 'path']}"
        if not (zone / rel).is_file():
            rejects.add(("audio", f"{source}:{row}", "missing file"))
            continue
        if pd.isna(when[row]):
            rejects.add(("audio", f"{source}:{row}", "bad recorded_at"))
            continue
        try:
            data, rate = sf.read(zone / rel, always_2d=True)
        except sf.LibsndfileError:
            rejects.add(("audio", rel, "not an audio file"))
            continue
        assert 4000 <= rate <= 48000 and 3.0 <= len(data) / rate <= 8.0 and np.abs(data).max() > 0
        hadm = ids(manifest["hadm_id"])[row]
        target = cohort.link(float(manifest.at[row, "subject_id"]), hadm, when[row])
        if isinstance(target, str):  # the row points nowhere (the file may be fine)
            rejects.add(("audio", f"{source}:{row}", target))
        else:
            linked.append((target, when[row], rel))
    return pd.DataFrame(linked, columns=["hadm_id", "time", "path"])


@pytest.fixture(scope="module")
def landing(zone: Path) -> dict:
    rejects: set = set()
    cohort = Cohort(zone, rejects)
    return {
        "cohort": cohort,
        "labs": read_labs(zone, cohort, rejects),
        "notes": read_notes(zone, rejects),
        "images": read_dicom(zone, cohort, rejects),
        "recordings": read_audio(zone, cohort, rejects),
        "rejects": rejects,
    }


# --- the tests -------------------------------------------------------------------------------


def test_bad_inputs_are_exactly_where_quarantine_csv_says(landing: dict, truth: dict):
    expected = set(truth["quarantine"].itertuples(index=False, name=None))
    assert landing["rejects"] == expected
    reasons = {reason for _, _, reason in expected}
    assert {"truncated file", "not a DICOM file", "no pixel data", "duplicate instance",
            "unknown patient", "no admission", "not an audio file", "missing file",
            "bad recorded_at", "bad charttime", "bad subject_id", "duplicate subject_id",
            "unknown admission"} <= reasons  # fmt: skip


def test_every_modality_is_there_in_every_flavour(zone: Path, landing: dict):
    syntaxes, photometric, bits = set(), set(), set()
    for rel in landing["images"]["path"]:
        ds = pydicom.dcmread(zone / rel, stop_before_pixels=True)
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
        photometric.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
        assert ds.PatientName and ds.PatientBirthDate and ds.InstitutionName  # to de-identify
    assert len(syntaxes) >= 5 and photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert bits == {8, 12, 16}
    formats = {sf.info(zone / rel).subtype for rel in landing["recordings"]["path"]}
    assert {"PCM_16", "PCM_24", "FLOAT"} <= formats
    assert {p.name for p in (zone / "ehr").iterdir()} >= {"labevents.csv.gz", "patients.csv"}
    _, labs = table(zone, "ehr", "labevents")
    assert (labs["hadm_id"] == "").any() and (
        (labs["valuenum"] == "") & (labs["value"] != "")
    ).any()


def test_truth_matches_the_data(zone: Path, landing: dict, truth: dict):
    adm = truth["admissions"].set_index("hadm_id")
    cohort = landing["cohort"].admissions
    assert set(adm.index) == set(cohort.index) and len(adm) == ADMISSIONS
    _, diagnoses = table(zone, "ehr", "diagnoses_icd")
    hit = ((diagnoses["icd_version"] == "10") & diagnoses["icd_code"].str.startswith(ICD10)) | (
        (diagnoses["icd_version"] == "9") & diagnoses["icd_code"].str.startswith(ICD9)
    )
    positives = set(ids(diagnoses.loc[hit, "hadm_id"]).astype(int))
    assert adm["label"].eq(adm.index.isin(positives).astype(int)).all()
    notes = landing["notes"][landing["notes"]["note_type"] != "DS"]
    items = {"ehr": landing["labs"], "text": notes, "image": landing["images"],
             "audio": landing["recordings"]}  # fmt: skip
    for modality, events in items.items():
        start = cohort.loc[events["hadm_id"], "admittime"].to_numpy()
        inside = (events["time"].to_numpy() >= start) & (events["time"].to_numpy() < start + WINDOW)
        has = set(events.loc[inside, "hadm_id"].astype(int))
        assert adm[f"has_{modality}"].eq(adm.index.isin(has)).all(), modality
    for column in ("p_oracle", *(f"p_oracle_{m}" for m in MODALITIES)):
        assert adm[column].between(0, 1).all()


def test_leaks_are_after_the_window_or_discharge_summaries(zone: Path, truth: dict):
    leaks = truth["leaks"]
    admissions = truth["admissions"]
    assert {"discharge summary", "late lab", "late image", "late recording"} <= set(leaks["kind"])
    _, adm = table(zone, "ehr", "admissions")
    start = dict(zip(ids(adm["hadm_id"]).astype(int), times(adm["admittime"]), strict=True))
    late = leaks[leaks["kind"] != "discharge summary"]
    assert (pd.to_datetime(late["time"]) >= late["hadm_id"].map(start) + WINDOW).all()
    files = leaks[leaks["modality"].isin(["dicom", "audio"])]["source"]
    assert all((zone / source).is_file() for source in files)
    assert set(leaks["hadm_id"]) <= set(admissions["hadm_id"])


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def test_same_seed_same_bytes(zone: Path, tmp_path: Path):
    again = tmp_path / "again"
    generate(again, admissions=ADMISSIONS, seed=3, messy=True, image_size=64)
    assert tree_digest(again) == tree_digest(zone)
    assert tree_digest(truth_dir(again)) == tree_digest(truth_dir(zone))


def test_refuses_a_non_empty_folder(zone: Path):
    with pytest.raises(FileExistsError):
        generate(zone, admissions=2)


def test_fusion_has_something_to_gain():
    truth = simulate_truth(admissions=3000, seed=11)
    auroc = {c: roc_auc_score(truth["label"], truth[c]) for c in truth if c.startswith("p_")}
    singles = [auroc[f"p_oracle_{m}"] for m in MODALITIES]
    assert 0.87 < auroc["p_oracle"] < 0.97
    assert all(0.62 < a < 0.85 for a in singles)
    assert auroc["p_oracle"] > max(singles) + 0.08
    for m in MODALITIES:
        assert 0.75 < truth[f"has_{m}"].mean() < 0.95  # each missing for 10-20 %
