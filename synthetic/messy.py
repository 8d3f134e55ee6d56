"""Bad inputs planted on purpose (`generate(messy=True)`), each recorded with its expected reason.

One of every kind landing-zone.md names. Each is bad in exactly one way (a garbage WAV still has
a good manifest row of a known patient inside an admission, ...) so that its reason is not a
matter of which check a reader runs first. Times of files that do link fall after the window, so
a reader that wrongly ingested one would still not feed it to a model.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from clinfuse.assets.ingest.quarantine import (
    DUPLICATE_INSTANCE,
    DUPLICATE_SUBJECT,
    MISSING_FILE,
    NO_ADMISSION,
    NO_PIXEL_DATA,
    NOT_AUDIO,
    NOT_DICOM,
    TRUNCATED_FILE,
    UNKNOWN_ADMISSION,
    UNKNOWN_PATIENT,
)
from clinfuse.synthetic import imaging, notes, recordings, streams, tables
from clinfuse.synthetic.population import LATE_FIRST, AdmissionPlan, PatientPlan
from clinfuse.synthetic.zone import Zone

UNKNOWN_SUBJECT = 19_999_901  # above every planned subject_id (they grow by < 400 a patient)
UNKNOWN_HADM = 30_000_017  # outside the planned hadm_id range
MESSY_KEY = 0  # plants are keyed (0, n) where real ones use (hadm_id, n)


def bad_value(column: str) -> str:
    return f"bad {column}"


def plant(zone: Zone) -> None:
    """Writes every kind of bad input into the open zone and records it in zone.quarantine."""
    patient = zone.anchor
    if patient is None:
        raise ValueError("messy inputs need at least one admission")
    adm = patient.admissions[0]
    _bad_rows(zone, patient, adm)
    _bad_images(zone, patient, adm)
    _bad_recordings(zone, patient, adm)


# --- tables ----------------------------------------------------------------------------------


def _bad_rows(zone: Zone, patient: PatientPlan, adm: AdmissionPlan) -> None:
    rng = streams.render_rng(zone.seed, MESSY_KEY, streams.MESSY)
    late = adm.admittime + LATE_FIRST
    good = tables.LabRow(patient.subject_id, adm.hadm_id, 50983, late, "140", 140.0, 1, "ROUTINE")
    labs = zone.tables["labevents"]
    plants = (
        ({"charttime": f"{late.year}-13-41 25:61:00"}, bad_value("charttime")),
        ({"subject_id": f"1O{str(patient.subject_id)[2:]}"}, bad_value("subject_id")),
        ({"subject_id": UNKNOWN_SUBJECT, "hadm_id": None}, UNKNOWN_PATIENT),
        ({"hadm_id": UNKNOWN_HADM}, UNKNOWN_ADMISSION),
    )
    for change, reason in plants:
        record = tables.lab_record(good, zone.next_labevent_id(), rng)
        record.update(change)
        zone.reject("ehr", labs.where(labs.write(record)), reason)
    twin = tables.patient_row(patient)
    twin["anchor_age"] = patient.anchor_age + 7  # the later row of a subject_id loses
    patients = zone.tables["patients"]
    zone.reject("ehr", patients.where(patients.write(twin)), DUPLICATE_SUBJECT)
    note = notes.note_row(
        patient, adm, "HP", zone.next_note_seq(patient.subject_id, "HP"), late, ""
    )
    note.update(charttime=f"{late.year}-02-30 08:00:00", text="Addendum: ___")
    hp = zone.tables["HP"]
    zone.reject("note", hp.where(hp.write(note)), bad_value("charttime"))


# --- DICOM -----------------------------------------------------------------------------------


def _bad_images(zone: Zone, patient: PatientPlan, adm: AdmissionPlan) -> None:
    rng = streams.render_rng(zone.seed, MESSY_KEY + 1, streams.MESSY)
    who = imaging.identity(rng, patient.birth_year)
    late = adm.admittime + LATE_FIRST + timedelta(minutes=15)

    def spec(n: int, **changes: object) -> imaging.ImageSpec:
        base = zone.image_spec(
            rng, patient.subject_id, patient.gender, who, (MESSY_KEY, n), late, 0.0
        )
        plain = {"transfer_syntax": imaging.uid.ExplicitVRLittleEndian, "bits": 16}
        return replace(base, **{**plain, **changes})

    truncated = spec(0)
    path = imaging.write_image(zone.root, truncated, zone.image_size)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])  # cut in the pixels
    zone.reject("dicom", truncated.path, TRUNCATED_FILE)

    bare = spec(1)
    imaging.save(zone.root, bare, imaging.dataset(bare, None))
    zone.reject("dicom", bare.path, NO_PIXEL_DATA)

    stranger = spec(2, subject_id=UNKNOWN_SUBJECT, patient_id=str(UNKNOWN_SUBJECT))
    imaging.write_image(zone.root, stranger, zone.image_size)
    zone.reject("dicom", stranger.path, UNKNOWN_PATIENT)

    early = spec(3, when=adm.admittime - timedelta(days=5))
    imaging.write_image(zone.root, early, zone.image_size)
    zone.reject("dicom", early.path, NO_ADMISSION)

    for name, content in (
        ("dicom/incoming/worklist.txt", b"PATIENT WORKLIST\nnothing to see here\n"),
        (f"dicom/incoming/{MESSY_KEY}_scan.dcm", b"\xff\xd8\xff\xe0" + rng.bytes(2000)),
    ):
        name = zone.unique_path(name)
        _write(zone, name, content)
        zone.reject("dicom", name, NOT_DICOM)

    zone.files["dicom"] += 4


def plant_duplicate(zone: Zone) -> None:
    """A resend of a good file (same SOPInstanceUID) in a folder that sorts after every other,
    so that "the first is ingested" names the original whatever order a reader walks in.
    Planted last, when a good file surely exists (none only if no admission has an image)."""
    if zone.first_image is None:
        return
    copy = zone.unique_path(f"dicom/zz_resent/{zone.first_image.rsplit('/', 1)[-1]}")
    _write(zone, copy, (zone.root / zone.first_image).read_bytes())
    zone.reject("dicom", copy, DUPLICATE_INSTANCE)


def _write(zone: Zone, relative: str, content: bytes) -> None:
    path = zone.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    zone.files["dicom" if relative.startswith("dicom/") else "audio"] += 1


# --- audio -----------------------------------------------------------------------------------


def _bad_recordings(zone: Zone, patient: PatientPlan, adm: AdmissionPlan) -> None:
    rng = streams.render_rng(zone.seed, MESSY_KEY + 2, streams.MESSY)
    late = adm.admittime + LATE_FIRST + timedelta(minutes=45)
    manifest = zone.tables["audio"]

    def spec(n: int, **changes: object) -> recordings.RecordingSpec:
        base = zone.recording_spec(
            rng, patient.subject_id, adm.hadm_id, (MESSY_KEY, n), late, 3.0, 0
        )
        return replace(base, **changes)

    garbage = spec(0, path=zone.unique_path(f"audio/uploads/{patient.subject_id}_upload.wav"))
    _write(zone, garbage.path, rng.bytes(4000))
    manifest.write(recordings.manifest_row(garbage))
    zone.reject("audio", garbage.path, NOT_AUDIO)

    missing = spec(1, path=f"audio/uploads/{patient.subject_id}_lost.wav")
    zone.reject(
        "audio", manifest.where(manifest.write(recordings.manifest_row(missing))), MISSING_FILE
    )

    undated = spec(2)
    recordings.write_recording(zone.root, undated)
    row = recordings.manifest_row(undated) | {"recorded_at": f"{late.year}-02-30 10:00:00"}
    zone.reject("audio", manifest.where(manifest.write(row)), bad_value("recorded_at"))

    early = spec(3, recorded_at=adm.admittime - timedelta(days=5), manifest_hadm_id=None)
    stranger = spec(4, subject_id=UNKNOWN_SUBJECT, manifest_hadm_id=None)
    for bad, reason in ((early, NO_ADMISSION), (stranger, UNKNOWN_PATIENT)):
        recordings.write_recording(zone.root, bad)
        # A link problem is the row's (its subject_id or time points nowhere), as
        # assets/ingest/audio_reader.py names it: the file may be a fine recording.
        number = manifest.write(recordings.manifest_row(bad))
        zone.reject("audio", manifest.where(number), reason)
    zone.files["audio"] += 3
