"""One landing zone being written: its open tables, and what the truth needs so far.

`Zone.add_patient` renders one planned patient into every modality at once (rows, notes, DICOM
files, recordings) and forgets the pixels and samples as soon as they are on disk.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from clinfuse.synthetic import dense_labs, imaging, notes, recordings, streams, tables
from clinfuse.synthetic import evidence as ev
from clinfuse.synthetic.imaging import Identity, ImageSpec
from clinfuse.synthetic.population import IN_WINDOW_LAST, LATE_FIRST, AdmissionPlan, PatientPlan
from clinfuse.synthetic.recordings import RecordingSpec
from clinfuse.synthetic.tasks import PNEUMONIA, Task
from clinfuse.synthetic.writers import Table, iso

EHR_FILES = {
    "patients": ("ehr/patients.csv", tables.PATIENT_COLUMNS),
    "admissions": ("ehr/admissions.csv.gz", tables.ADMISSION_COLUMNS),
    "labevents": ("ehr/labevents.csv.gz", tables.LAB_COLUMNS),
    "d_labitems": ("ehr/d_labitems.csv", tables.LABITEM_COLUMNS),
    "diagnoses_icd": ("ehr/diagnoses_icd.csv.gz", tables.DIAGNOSIS_COLUMNS),
}
NOTE_FILES = {"HP": "note/hp.csv", "RR": "note/radiology.csv", "DS": "note/discharge.csv.gz"}
AUDIO_MANIFEST = "audio/manifest.csv"
DICOM_MANIFEST = "dicom/manifest.csv"
DICOM_MANIFEST_COLUMNS = ("path", "subject_id", "hadm_id", "study_datetime")

LATE_IMAGE_SHARE = 0.25
LATE_RECORDING_SHARE = 0.2
DISCHARGE_SUMMARY_SHARE = 0.95
MANIFEST_LISTED_SHARE = 0.04  # images whose PatientID is an MRN: dicom/manifest.csv links them
MANIFEST_HADM_SHARE = 0.6  # audio manifest rows that carry hadm_id (the others link by time)


class Zone:
    def __init__(
        self,
        root: Path,
        seed: int,
        image_size: int,
        task: Task = PNEUMONIA,
        labs_per_admission: int = 0,
    ) -> None:
        self.root, self.seed, self.image_size, self.task = root, seed, image_size, task
        # 0: the rendered labs only. N: each admission topped up to ~N rows (dense_labs.py).
        self.labs_per_admission = int(labs_per_admission)
        self.tables: dict[str, Table] = {
            name: Table(root, path, columns, _compresslevel(name, self.labs_per_admission))
            for name, (path, columns) in EHR_FILES.items()
        }
        for note_type, path in NOTE_FILES.items():
            self.tables[note_type] = Table(root, path, notes.NOTE_COLUMNS)
        self.tables["audio"] = Table(root, AUDIO_MANIFEST, recordings.MANIFEST_COLUMNS)
        self.tables["dicom"] = Table(root, DICOM_MANIFEST, DICOM_MANIFEST_COLUMNS)
        for row in tables.labitem_rows(task):
            self.tables["d_labitems"].write(row)
        self.quarantine: list[dict] = []
        self.leaks: list[dict] = []
        self.admissions: list[AdmissionPlan] = []
        self.patients = 0
        self.files = {"dicom": 0, "audio": 0}
        self.first_image: str | None = None  # a good file linked by its tags: the plant copies it
        self.anchor: PatientPlan | None = None  # a patient with an admission, for the plants
        self._labevent_id = 0
        self._note_seq: dict[tuple[int, str], int] = {}
        self._paths: set[str] = set()

    def close(self) -> None:
        for table in self.tables.values():
            table.close()

    # --- bookkeeping used by messy.py too ----------------------------------------------------

    def reject(self, modality: str, source: str, reason: str) -> None:
        self.quarantine.append({"modality": modality, "source": source, "reason": reason})

    def leak(self, kind: str, modality: str, source: str, adm: AdmissionPlan, when: datetime):
        self.leaks.append(
            {"kind": kind, "modality": modality, "source": source, "subject_id": adm.subject_id,
             "hadm_id": adm.hadm_id, "time": iso(when)}
        )  # fmt: skip

    def next_labevent_id(self) -> int:
        self._labevent_id += 1
        return self._labevent_id

    def next_note_seq(self, subject_id: int, note_type: str) -> int:
        key = (subject_id, note_type)
        self._note_seq[key] = self._note_seq.get(key, 0) + 1
        return self._note_seq[key]

    def unique_path(self, path: str) -> str:
        """Random folder names can meet; the second gets a suffix so no file is overwritten."""
        candidate, n = path, 1
        while candidate.lower() in self._paths:
            stem, dot, ext = path.rpartition(".")
            candidate = f"{stem}_{n}.{ext}" if dot and "/" not in ext else f"{path}_{n}"
            n += 1
        self._paths.add(candidate.lower())
        return candidate

    def _rng(self, adm: AdmissionPlan, kind: int) -> np.random.Generator:
        return streams.render_rng(self.seed, adm.hadm_id, kind)

    # --- one patient -------------------------------------------------------------------------

    def add_patient(self, patient: PatientPlan) -> None:
        self.patients += 1
        self.tables["patients"].write(tables.patient_row(patient))
        who = imaging.identity(
            streams.render_rng(self.seed, patient.subject_id, streams.IDENTITY), patient.birth_year
        )
        self._labs(patient)
        for adm in patient.admissions:
            self._admission(patient, who, adm)
        if self.anchor is None and patient.admissions:
            self.anchor = patient

    def _labs(self, patient: PatientPlan) -> None:
        rows = tables.outpatient_labs(
            patient, streams.render_rng(self.seed, patient.subject_id, streams.OUTPATIENT)
        )
        rendered = {}
        for adm in patient.admissions:
            labs = tables.admission_labs(adm, self._rng(adm, streams.LABS), self.task)
            rendered[adm.hadm_id] = len(labs)
            rows += labs
        by_hadm = {a.hadm_id: a for a in patient.admissions}
        rng = streams.render_rng(self.seed, patient.subject_id, streams.LAB_RECORDS)
        table = self.tables["labevents"]
        for row in sorted(rows, key=lambda r: (r.charttime, r.itemid)):
            number = table.write(tables.lab_record(row, self.next_labevent_id(), rng))
            if row.late:
                adm = by_hadm[row.hadm_id]
                self.leak("late lab", "ehr", table.where(number), adm, row.charttime)
        if self.labs_per_admission > 0:
            self._filler_labs(patient, rendered)

    def _filler_labs(self, patient: PatientPlan, rendered: dict[int, int]) -> None:
        """After the patient's rendered rows, each admission's label-free filler (dense_labs)."""
        items = dense_labs.filler_items(self.task)
        table = self.tables["labevents"]
        for adm in patient.admissions:
            count = self.labs_per_admission - rendered[adm.hadm_id]
            if count <= 0:
                continue
            first_id = self._labevent_id + 1
            self._labevent_id += count
            text = dense_labs.filler_block(adm, count, first_id, self.seed, items)
            table.write_block(text, count)

    def _admission(self, patient: PatientPlan, who: Identity, adm: AdmissionPlan) -> None:
        self.admissions.append(adm)
        self.tables["admissions"].write(
            tables.admission_row(adm, self._rng(adm, streams.ADMISSION_ROW))
        )
        for row in tables.diagnosis_rows(adm, self._rng(adm, streams.DIAGNOSES), self.task):
            self.tables["diagnoses_icd"].write(row)
        late_image = self._images(patient, who, adm)
        self._notes(patient, adm, late_image)
        self._recordings(patient, adm)

    # --- notes -------------------------------------------------------------------------------

    def _notes(
        self, patient: PatientPlan, adm: AdmissionPlan, late_image: tuple[datetime, float] | None
    ) -> None:
        rng = self._rng(adm, streams.NOTES)
        if adm.present["text"]:
            when = adm.admittime + _minutes(rng, 30, 6 * 60)
            self._note(patient, adm, "HP", when, notes.hp_text(patient, adm, rng, self.task))
        if late_image is not None:
            when, extent = late_image
            report = notes.radiology_text(extent, rng, self.task.image_sign)
            number = self._note(patient, adm, "RR", when + timedelta(minutes=20), report)
            self.leak("late note", "note", self.tables["RR"].where(number), adm, when)
        if rng.random() < DISCHARGE_SUMMARY_SHARE:
            number = self._note(
                patient,
                adm,
                "DS",
                adm.dischtime,
                notes.discharge_text(patient, adm, rng, self.task),
            )
            self.leak(
                "discharge summary", "note", self.tables["DS"].where(number), adm, adm.dischtime
            )

    def _note(
        self, patient: PatientPlan, adm: AdmissionPlan, note_type: str, when: datetime, text: str
    ) -> int:
        seq = self.next_note_seq(patient.subject_id, note_type)
        return self.tables[note_type].write(
            notes.note_row(patient, adm, note_type, seq, when, text)
        )

    # --- images ------------------------------------------------------------------------------

    def _images(
        self, patient: PatientPlan, who: Identity, adm: AdmissionPlan
    ) -> tuple[datetime, float] | None:
        """The window's image (evidence) and maybe a later one (a leak): (time, extent) of it."""
        rng = self._rng(adm, streams.IMAGES)
        channel = self.task.image_channel
        if adm.present["image"]:
            when = adm.admittime + _seconds(rng, 3600, IN_WINDOW_LAST.total_seconds())
            self.image(patient, who, adm, rng, 0, when, adm.observed[channel.name])
        if rng.random() >= LATE_IMAGE_SHARE:
            return None
        when = _late_time(rng, adm)
        extent = _late_state(channel, adm, "image", 0.0)
        spec = self.image(patient, who, adm, rng, 1, when, extent)
        self.leak("late image", "dicom", spec.path, adm, when)
        return when, extent

    def image_spec(
        self,
        rng: np.random.Generator,
        subject_id: int,
        sex: str,
        who: Identity,
        key: tuple[int, int],
        when: datetime,
        extent: float,
    ) -> ImageSpec:
        """A spec with label-free format, path and UIDs; key = (hadm_id or tag, n) names it."""
        study = int(rng.integers(50_000_000, 60_000_000))
        sop = imaging.make_uid(self.seed, "sop", *key)
        path = self.unique_path(imaging.choose_path(rng, subject_id, study, sop, key[1] + 1))
        return ImageSpec(
            path=path,
            subject_id=subject_id,
            patient_id=str(subject_id),
            sex=sex,
            who=who,
            when=when,
            extent=extent,
            study_uid=imaging.make_uid(self.seed, "study", *key),
            series_uid=imaging.make_uid(self.seed, "series", *key),
            sop_uid=sop,
            accession=f"{int(rng.integers(1_000_000_000, 9_999_999_999))}",
            pixel_seed=(self.seed, 3, *key),
            **imaging.choose_format(rng),
            sign=self.task.image_sign,
        )

    def image(
        self,
        patient: PatientPlan,
        who: Identity,
        adm: AdmissionPlan,
        rng: np.random.Generator,
        n: int,
        when: datetime,
        extent: float,
    ) -> ImageSpec:
        spec = self.image_spec(
            rng, patient.subject_id, patient.gender, who, (adm.hadm_id, n), when, extent
        )
        if rng.random() < MANIFEST_LISTED_SHARE:  # PACS keyed by MRN: the manifest links it
            spec = replace(spec, patient_id=who.mrn)
            hadm = adm.hadm_id if rng.random() < 0.5 else None
            self.tables["dicom"].write(
                {"path": spec.path.removeprefix("dicom/"), "subject_id": patient.subject_id,
                 "hadm_id": hadm, "study_datetime": when}
            )  # fmt: skip
        imaging.write_image(self.root, spec, self.image_size)
        self.files["dicom"] += 1
        if self.first_image is None and spec.patient_id == str(patient.subject_id):
            self.first_image = spec.path
        return spec

    # --- recordings --------------------------------------------------------------------------

    def _recordings(self, patient: PatientPlan, adm: AdmissionPlan) -> None:
        rng = self._rng(adm, streams.RECORDINGS)
        channel = self.task.audio_channel
        if adm.present["audio"]:
            when = adm.admittime + _seconds(rng, 1800, IN_WINDOW_LAST.total_seconds())
            state = adm.observed[channel.name]
            self.recording(rng, patient.subject_id, adm, 0, when, adm.recording_seconds, state)
        if rng.random() < LATE_RECORDING_SHARE:
            when = _late_time(rng, adm)
            seconds = round(float(rng.uniform(3.0, 6.0)), 2)
            state = _late_state(channel, adm, "audio", seconds)
            spec = self.recording(rng, patient.subject_id, adm, 1, when, seconds, state)
            self.leak("late recording", "audio", spec.path, adm, when)

    def recording_spec(
        self,
        rng: np.random.Generator,
        subject_id: int,
        hadm_id: int | None,
        key: tuple[int, int],
        when: datetime,
        seconds: float,
        crackles: int,
        amount: float = 0.0,
    ) -> RecordingSpec:
        fmt = recordings.choose_format(rng)
        folder = f"audio/{subject_id}/{when:%Y%m%d}" if rng.random() < 0.7 else "audio/uploads"
        name = f"{fmt['site'].replace(' ', '_')}_{key[0]}_{key[1]}{fmt['extension']}"
        return RecordingSpec(
            path=self.unique_path(f"{folder}/{name}"),
            subject_id=subject_id,
            recorded_at=when,
            manifest_hadm_id=hadm_id,
            site=fmt["site"],
            seconds=seconds,
            crackles=crackles,
            sample_rate=fmt["sample_rate"],
            channels=fmt["channels"],
            container=fmt["container"],
            subtype=fmt["subtype"],
            sound_seed=(self.seed, 4, *key),
            sign=self.task.audio_sign,
            amount=amount,
        )

    def recording(
        self,
        rng: np.random.Generator,
        subject_id: int,
        adm: AdmissionPlan,
        n: int,
        when: datetime,
        seconds: float,
        state: float,
    ) -> RecordingSpec:
        """A recording showing the audio channel's state (crackles: the count)."""
        sign = self.task.audio_sign
        crackles = int(state) if sign == "crackles" else 0
        amount = 0.0 if sign == "crackles" else recordings.sign_amount(sign, state)
        hadm = adm.hadm_id if rng.random() < MANIFEST_HADM_SHARE else None
        key = (adm.hadm_id, n)
        spec = self.recording_spec(rng, subject_id, hadm, key, when, seconds, crackles, amount)
        recordings.write_recording(self.root, spec)
        self.tables["audio"].write(recordings.manifest_row(spec))
        self.files["audio"] += 1
        return spec


def _compresslevel(table: str, labs_per_admission: int) -> int:
    """gzip level 9 everywhere (the default zone's bytes), 6 for a dense labevents: at tens of
    millions of rows level 9 compresses at ~40 MB/s, 6 at ~170, for a file ~15% larger."""
    return 6 if table == "labevents" and labs_per_admission > 0 else 9


def _minutes(rng: np.random.Generator, low: float, high: float) -> timedelta:
    return timedelta(minutes=int(rng.uniform(low, high)))


def _seconds(rng: np.random.Generator, low: float, high: float) -> timedelta:
    return timedelta(seconds=int(rng.uniform(low, high)))


def _late_state(channel: ev.Channel, adm: AdmissionPlan, modality: str, seconds: float) -> float:
    """What a file charted after the window shows: the channel's rendering of the late score
    (further along for a positive: a leak)."""
    score = channel.late(adm.late_scores[modality], adm.label, flip=False)
    return channel.render.observe(score, seconds, adm.aux.get(channel.name))[0]


def _late_time(rng: np.random.Generator, adm: AdmissionPlan) -> datetime:
    """After the window, at least an hour before discharge (stays last 48 h or more)."""
    span = (adm.dischtime - adm.admittime - LATE_FIRST).total_seconds() - 3600
    return adm.admittime + LATE_FIRST + _seconds(rng, 0, span)
