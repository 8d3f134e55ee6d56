"""The pipeline on data nobody here wrote: the MIMIC-IV demo tables, every DICOM in
../shared/realdata and in pydicom's own test files, every real WAV. Nothing may crash the run;
every file and row is ingested or quarantined with a reason from the vocabulary.
"""

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from clinfuse.assets.ingest import quarantine as q
from clinfuse.orchestration.runner import run_pipeline
from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
if not REALDATA.is_dir():  # a checkout elsewhere: the shared folder beside the repository
    REALDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REASONS = tuple(
    value for name, value in vars(q).items() if name.isupper() and isinstance(value, str)
)


def _copy_tree(source: Path, target: Path) -> list[Path]:
    copied = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        copied.append(destination)
    return copied


def _linked_times(admissions: pd.DataFrame, count: int) -> pd.DataFrame:
    """subject_id and a time 2 h after admission, cycling through the demo's admissions."""
    rows = admissions.sort_values("hadm_id").iloc[[i % len(admissions) for i in range(count)]]
    times = pd.to_datetime(rows["admittime"]) + pd.Timedelta(hours=2)
    return pd.DataFrame({"subject_id": rows["subject_id"].to_numpy(), "time": times.to_numpy()})


@pytest.fixture(scope="module")
def real_landing(tmp_path_factory) -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    landing = tmp_path_factory.mktemp("real") / "landing"
    _copy_tree(REALDATA / "mimic_iv_demo" / "hosp", landing / "ehr")
    admissions = pd.read_csv(landing / "ehr" / "admissions.csv", dtype=str)

    dicoms = _copy_tree(REALDATA / "dicom", landing / "dicom" / "realdata")
    dicoms += _copy_tree(PYDICOM_FILES, landing / "dicom" / "zz_pydicom")
    links = _linked_times(admissions, len(dicoms))
    pd.DataFrame(
        {
            "path": [str(p.relative_to(landing / "dicom")) for p in dicoms],
            "subject_id": links["subject_id"],
            "study_datetime": links["time"].astype(str),
        }
    ).to_csv(landing / "dicom" / "manifest.csv", index=False)

    recordings = _copy_tree(REALDATA / "audio", landing / "audio")
    links = _linked_times(admissions, len(recordings))
    pd.DataFrame(
        {
            "path": [str(p.relative_to(landing / "audio")) for p in recordings],
            "subject_id": links["subject_id"],
            "recorded_at": links["time"].astype(str),
        }
    ).to_csv(landing / "audio" / "manifest.csv", index=False)
    return landing


def test_real_exports_run_end_to_end(real_landing, tmp_path):
    report = run_pipeline(real_landing, tmp_path / "work", workers=2, training=TINY_TRAINING)
    inputs = report["inputs"]
    files = [p for p in (real_landing / "dicom").rglob("*") if p.is_file()]
    assert inputs["dicom"]["seen"] == len(files) - 1  # all but dicom/manifest.csv
    # pydicom's test files are full of RT plans, SRs and corrupt streams: many are rejected
    assert inputs["dicom"]["ingested"] >= 60
    assert inputs["audio"]["seen"] == len(list((real_landing / "audio").rglob("*.wav")))
    assert inputs["ehr"]["labevents"] == {"seen": 107727, "ingested": 107727, "quarantined": 0}
    assert inputs["note"] == {"seen": 0, "ingested": 0, "quarantined": 0}
    for count in [inputs["dicom"], inputs["audio"], *inputs["ehr"].values()]:
        assert count["seen"] == count["ingested"] + count["quarantined"]
    for row in report["quarantine"]:
        assert row["reason"].startswith(REASONS), row
    reasons = {r["source"]: r["reason"] for r in report["quarantine"]}
    assert reasons["dicom/realdata/MR_truncated.dcm"].startswith(q.TRUNCATED_FILE)
    assert reasons["dicom/realdata/966.dcm"].startswith(q.UNDECODABLE_PIXELS)
    for decodable in ("JPGExtended.dcm", "HTJ2KLossless_08_RGB.dcm", "JLSL_RGB_ILV0.dcm"):
        assert f"dicom/realdata/{decodable}" not in reasons
    empty = "audio/coswara/9XKj7fAmvwPUas9GFPZuTpev7T03/cough-heavy.wav"
    assert reasons[empty].startswith(q.EMPTY_RECORDING)
    assert report["cohort"]["admissions"] == 275
    assert report["cohort"]["positives"] == 26  # pneumonia (J12-J18, 480-486) in the demo
    assert report["mlflow"]["version"] == "1"
