"""Files as hospitals export them (../shared/landing-zone.md): legacy encodings, byte-order
marks, CRLF, empty tables, and links or manifest paths that lead out of the landing zone.

One generated landing zone is planted with every case and run through the real ingest assets,
quarantine and input accounting (Dagster, in process); the unit tests below pin the pieces:
encoding detection, the row counter, the walk, the delivery scan, the DICOM file read.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pydicom
import pytest
import soundfile as sf

from clinfuse.assets.ingest import encodings
from clinfuse.assets.ingest.counting import count_data_rows, landing_counts
from clinfuse.assets.ingest.deliveries import scan_landing
from clinfuse.assets.ingest.dicom import reader as dicom_reader
from clinfuse.assets.ingest.ehr import notes as notes_reader
from clinfuse.assets.ingest.ehr import reader as ehr_reader
from clinfuse.assets.ingest.encodings import detect_encoding
from clinfuse.assets.ingest.paths import Zone, walk_entries
from clinfuse.assets.ingest.quarantine import NOT_DICOM, OUTSIDE_LANDING_ZONE
from clinfuse.assets.settings import settings_from_dict

NOTE_HEADER = "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text"
OUTSIDE_MARKER = "Zzoutside^Neverreadmarker"  # PatientName of the DICOMs outside the zone
LEGACY_TEXT = "Temp 38.5°C, patient’s cough worse overnight."  # ° = 0xb0, ’ = 0x92 in cp1252
LATIN1_LABEL = "Zähigkeit µ\x81 marker"  # \x81 is undefined in cp1252: only latin-1 reads it
INGEST = [
    "patients",
    "admissions",
    "d_labitems",
    "diagnoses_icd",
    "labevents",
    "notes",
    "dicom_index",
    "study_images",
    "recording_index",
    "recording_spectrograms",
    "quarantine",
    "input_accounting",
]


# -- the planted landing zone ------------------------------------------------------------------


def _first_admission(landing: Path) -> pd.Series:
    admissions = pd.read_csv(landing / "ehr" / "admissions.csv.gz", dtype=str)
    return admissions.iloc[0]


def _note_rows(admission: pd.Series, note_id: str, text: str, newline: str = "\n") -> str:
    quoted = '"' + text.replace('"', '""') + '"'
    row = f"{note_id},{admission.subject_id},{admission.hadm_id},HP,1,"
    row += f"{admission.admittime},{admission.admittime},{quoted}"
    return newline.join([NOTE_HEADER, row]) + newline


def _outside_dicom(source: Path, target: Path) -> str:
    """A copy of an inside DICOM with a marker name and a fresh UID; returns its sha256."""
    ds = pydicom.dcmread(source)
    ds.PatientName = OUTSIDE_MARKER
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return hashlib.sha256(target.read_bytes()).hexdigest()


def _plant_notes(landing: Path, admission: pd.Series) -> None:
    note = landing / "note"
    legacy = _note_rows(admission, "LEGACY-1", LEGACY_TEXT)
    (note / "legacy.csv").write_bytes(legacy.encode("cp1252"))
    bom = _note_rows(admission, "BOM-1", "SpO₂ 91% on room air.\r\nCXR: infiltrate.", "\r\n")
    (note / "bom_crlf.csv").write_bytes(codecs.BOM_UTF8 + bom.encode("utf-8"))
    (note / "empty.csv").write_bytes(b"")
    (note / "header_only.csv").write_text(NOTE_HEADER + "\n")


def _plant_latin1_table(landing: Path) -> None:
    path = landing / "ehr" / "d_labitems.csv"
    text = path.read_text(encoding="utf-8") + f"99999,{LATIN1_LABEL},Blood,Chemistry\n"
    path.write_bytes(text.encode("latin-1"))


def _plant_dicom(landing: Path, outside: Path) -> dict[str, str]:
    """Links out (a file, a folder), a manifest row out, and one link in (to be ingested)."""
    dicom = landing / "dicom"
    files = sorted(p for p in dicom.rglob("*") if p.is_file() and p.name != "manifest.csv")
    inside = files[0]
    store = landing / "store" / "film.dcm"  # inside the zone, outside dicom/
    store.parent.mkdir()
    shutil.move(inside, store)
    inside.symlink_to(store)
    shas = {
        "file": _outside_dicom(files[1], outside / "secret.dcm"),
        "folder": _outside_dicom(files[1], outside / "folder" / "deep.dcm"),
    }
    (dicom / "escape.dcm").symlink_to(outside / "secret.dcm")
    (dicom / "escape_dir").symlink_to(outside / "folder", target_is_directory=True)
    (dicom / "loop").symlink_to(dicom, target_is_directory=True)  # inside, never walked
    with open(dicom / "manifest.csv", "a", encoding="utf-8") as handle:
        handle.write("../../outside/secret.dcm,10000207,,\n")
    return {"inside": f"dicom/{inside.relative_to(dicom).as_posix()}", **shas}


def _plant_audio(landing: Path, admission: pd.Series) -> tuple[str, int]:
    """Two manifest rows out of the zone (a ../ path, a link); returns the sha and first row."""
    outside_wav = landing.parent / "outside.wav"
    sf.write(outside_wav, [0.1, -0.1] * 2000, 4000, subtype="PCM_16")
    (landing / "audio" / "escape.wav").symlink_to(outside_wav)
    manifest = landing / "audio" / "manifest.csv"
    rows = len(manifest.read_text().splitlines()) - 1
    with open(manifest, "a", encoding="utf-8") as handle:
        for path in ("../../outside.wav", "escape.wav"):
            handle.write(f"{path},{admission.subject_id},{admission.admittime},,trachea\n")
    return hashlib.sha256(outside_wav.read_bytes()).hexdigest(), rows + 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    from clinfuse.synthetic import generate

    base = tmp_path_factory.mktemp("untrusted")
    landing = base / "landing"
    generate(landing, admissions=40, seed=1, image_size=32)
    admission = _first_admission(landing)
    _plant_notes(landing, admission)
    _plant_latin1_table(landing)
    dicom = _plant_dicom(landing, base / "outside")
    wav_sha, first_audio_row = _plant_audio(landing, admission)
    return {
        "landing": landing,
        "base": base,
        "dicom": dicom,
        "wav_sha": wav_sha,
        "first_audio_row": first_audio_row,
    }


@pytest.fixture(scope="module")
def ingest_run(planted) -> dict:
    """The ingest assets, quarantine and input_accounting (+ its blocking check), for real."""
    from clinfuse.orchestration.definitions import build_definitions

    workdir = planted["base"] / "work"
    settings = settings_from_dict({"audio": {"seconds": 1.0}})
    defs = build_definitions(planted["landing"], workdir, settings, workers=1)
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        asset_selection=[dg.AssetKey(k) for k in INGEST], instance=instance
    )
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return {"result": result, "workdir": workdir, "logs": logs, **planted}


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in materialization.metadata.items()}


# -- through the pipeline ----------------------------------------------------------------------


def test_the_run_succeeds_and_every_input_is_accounted_for(ingest_run):
    result = ingest_run["result"]
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["every_input_accounted_for"] is True
    accounting = result.output_for_node("input_accounting")
    assert accounting["balanced"].all(), accounting


def test_legacy_and_bom_notes_are_decoded_and_named(ingest_run):
    result = ingest_run["result"]
    notes = pd.read_parquet(ingest_run["workdir"] / "tables" / "notes.parquet")
    by_id = notes.set_index("note_id")["text"]
    assert "38.5°C" in by_id["LEGACY-1"] and "\ufffd" not in by_id["LEGACY-1"]
    assert "SpO₂ 91%" in by_id["BOM-1"]  # the BOM did not spoil the header's first column
    meta = _metadata(result, "notes")
    assert meta["encodings"]["note/legacy.csv"] == "cp1252"
    assert meta["encodings"]["note/bom_crlf.csv"] == "utf-8-sig"
    assert meta["encodings"]["note/hp.csv"] == "utf-8"
    empty = {"note/empty.csv": "no header", "note/header_only.csv": "header only"}
    assert meta["empty_files"] == empty
    assert any("note/legacy.csv" in m and "cp1252" in m for m in ingest_run["logs"])
    assert any("note/empty.csv" in m and "0 rows" in m for m in ingest_run["logs"])


def test_a_latin1_ehr_table_is_read_by_fallback(ingest_run):
    result = ingest_run["result"]
    labels = pd.read_parquet(ingest_run["workdir"] / "tables" / "d_labitems.parquet")["label"]
    assert LATIN1_LABEL in set(labels)
    assert _metadata(result, "d_labitems")["encodings"] == {"ehr/d_labitems.csv": "latin-1"}
    assert _metadata(result, "patients")["empty_files"] == {}


def test_everything_outside_the_zone_is_quarantined_and_never_read(ingest_run):
    result = ingest_run["result"]
    quarantine = result.output_for_node("quarantine").set_index("source")["reason"]
    first = ingest_run["first_audio_row"]
    outside = {
        "dicom/escape.dcm",
        "dicom/escape_dir",
        f"dicom/manifest.csv:{_manifest_rows(ingest_run['landing'])}",
        f"audio/manifest.csv:{first}",
        f"audio/manifest.csv:{first + 1}",
    }
    for source in outside:
        assert quarantine[source].startswith(OUTSIDE_LANDING_ZONE), source
    assert set(quarantine[quarantine.str.startswith(OUTSIDE_LANDING_ZONE)].index) == outside
    assert quarantine["dicom/loop"].startswith(NOT_DICOM)  # a folder link inside: not entered
    index = pd.read_parquet(ingest_run["workdir"] / "tables" / "dicom_index.parquet")
    assert ingest_run["dicom"]["inside"] in set(index["path"])  # a link inside is read
    assert not {ingest_run["dicom"]["file"], ingest_run["dicom"]["folder"]} & set(index["sha256"])
    recordings = pd.read_parquet(ingest_run["workdir"] / "tables" / "recording_index.parquet")
    assert ingest_run["wav_sha"] not in set(recordings["sha256"])
    marker = OUTSIDE_MARKER.encode()
    for path in walk_entries(ingest_run["workdir"]):
        assert marker not in path.read_bytes(), path
    assert not any(OUTSIDE_MARKER in m for m in ingest_run["logs"])


def _manifest_rows(landing: Path) -> int:
    return len((landing / "dicom" / "manifest.csv").read_text().splitlines()) - 1


# -- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a,b\n1,caf\xc3\xa9\n", "utf-8"),
        (codecs.BOM_UTF8 + b"a,b\r\n1,caf\xc3\xa9\r\n", "utf-8-sig"),
        (b"a,b\n1,38.5\xb0C \x92\n", "cp1252"),
        (b"a,b\n1,\x81\x8d\x8f\x90\x9d\n", "latin-1"),
        (b"", "utf-8"),
    ],
)
def test_detect_encoding(tmp_path, data: bytes, expected: str):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    assert detect_encoding(path) == expected
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(data))
    assert detect_encoding(gz) == expected


def test_detection_streams_across_block_boundaries(tmp_path, monkeypatch):
    """A multi-byte character cut by a block boundary is still UTF-8; a cut at the end is not."""
    monkeypatch.setattr(encodings, "BLOCK", 3)
    path = tmp_path / "t.csv"
    path.write_bytes("aé€é\n".encode())
    assert detect_encoding(path) == "utf-8"
    path.write_bytes("aé".encode()[:-1])
    assert detect_encoding(path) == "cp1252"


def test_the_counter_and_the_reader_agree_on_odd_files(tmp_path):
    landing = tmp_path / "landing"
    (landing / "ehr").mkdir(parents=True)
    (landing / "note").mkdir()
    admission = pd.Series({"subject_id": "1", "hadm_id": "10", "admittime": "2180-01-01 10:00"})
    _plant_notes(landing, admission)
    read = notes_reader.read_notes(landing, _admissions(), _patients())
    assert read.seen == landing_counts(landing)["note"] == 2
    assert set(read.rows["note_id"]) == {"LEGACY-1", "BOM-1"}
    for name in ("legacy", "bom_crlf", "empty", "header_only"):
        path = landing / "note" / f"{name}.csv"
        assert count_data_rows(path) == (name in ("legacy", "bom_crlf"))


def _patients() -> pd.DataFrame:
    return pd.DataFrame({"subject_id": pd.array([1], dtype="Int64")})


def _admissions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": pd.array([1], dtype="Int64"),
            "hadm_id": pd.array([10], dtype="Int64"),
            "admittime": pd.to_datetime(["2180-01-01 09:00"]),
            "dischtime": pd.to_datetime(["2180-01-03 09:00"]),
        }
    )


# -- confinement -------------------------------------------------------------------------------


@pytest.fixture
def linked_zone(tmp_path) -> Path:
    """ehr/ with a table linked out; outside/ holds what the links point at."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "patients.csv").write_text("subject_id,gender,anchor_age\n1,F,50\n2,M,60\n")
    (outside / "folder" / "x.dcm").write_bytes(b"not read")
    landing = tmp_path / "landing"
    (landing / "ehr").mkdir(parents=True)
    (landing / "dicom" / "a").mkdir(parents=True)
    (landing / "ehr" / "patients.csv").symlink_to(outside / "patients.csv")
    (landing / "dicom" / "a" / "out").symlink_to(outside / "folder", target_is_directory=True)
    (landing / "dicom" / "a" / "up").symlink_to(landing, target_is_directory=True)  # a loop
    (landing / "dicom" / "a" / "f.dcm").write_bytes(b"inside")
    return landing


def test_a_table_linked_out_is_one_quarantined_input(linked_zone):
    read = ehr_reader.read_patients(linked_zone)
    assert read.seen == 1 and read.rows.empty and read.encodings == {}
    assert read.rejects.to_dict("records") == [
        {"modality": "ehr", "source": "ehr/patients.csv", "reason": OUTSIDE_LANDING_ZONE}
    ]
    assert landing_counts(linked_zone)["ehr/patients"] == 1


def test_the_walk_lists_links_and_never_enters_a_linked_folder(linked_zone):
    dicom = linked_zone / "dicom"
    assert dicom_reader.discover(dicom) == ["a/f.dcm", "a/out", "a/up"]
    assert landing_counts(linked_zone)["dicom"] == 3
    zone = Zone.of(linked_zone)
    assert not zone.contains(dicom / "a" / "out" / "x.dcm")
    assert zone.contains(dicom / "a" / "up")


def test_the_delivery_scan_sizes_links_without_following_them_out(linked_zone):
    scan = scan_landing(linked_zone)
    link = linked_zone / "ehr" / "patients.csv"
    assert scan["ehr/patients.csv"] == os.lstat(link).st_size != link.stat().st_size
    assert scan["dicom/a/f.dcm"] == 6
    assert set(scan) == {"ehr/patients.csv", "dicom/a/f.dcm", "dicom/a/out", "dicom/a/up"}


def test_a_dicom_read_never_opens_what_is_outside_or_not_a_file(linked_zone):
    dicom = linked_zone / "dicom"
    (dicom / "escape.dcm").symlink_to(linked_zone.parent / "outside" / "folder" / "x.dcm")
    os.mkfifo(dicom / "pipe.dcm")  # opening it for reading would block without a writer
    (dicom / "to_pipe.dcm").symlink_to(dicom / "pipe.dcm")
    decoding = dicom_reader.Decoding(16)
    outside = dicom_reader.read_file(str(dicom), "escape.dcm", decoding)
    assert outside.reason == OUTSIDE_LANDING_ZONE and outside.sha256 is None
    for name in ("to_pipe.dcm", "a/up"):
        result = dicom_reader.read_file(str(dicom), name, decoding)
        assert result.reason == f"{NOT_DICOM}: unreadable", name


def test_a_manifest_is_named_with_its_encoding_and_never_opened_outside(tmp_path):
    from clinfuse.assets.ingest.encodings import manifest_encodings

    landing, outside = tmp_path / "landing", tmp_path / "outside.csv"
    (landing / "dicom").mkdir(parents=True)
    (landing / "audio").mkdir()
    legacy = "path,note\na.dcm,38.5\xb0C\n".encode("cp1252")
    (landing / "dicom" / "manifest.csv").write_bytes(legacy)
    outside.write_text("path\nx.wav\n")
    (landing / "audio" / "manifest.csv").symlink_to(outside)
    assert manifest_encodings(landing, "dicom") == {"dicom/manifest.csv": "cp1252"}
    assert manifest_encodings(landing, "audio") == {}
    assert manifest_encodings(landing, "note") == {}
