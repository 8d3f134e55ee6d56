"""Patients, their admissions and each admission's latent state: the plan every file renders.

The plan is drawn from its own random stream (one per patient), apart from the streams that
render files, so that the truth can be computed without writing anything (`simulate_truth`) and
is the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from scipy.special import ndtr

from clinfuse.synthetic import evidence as ev
from clinfuse.synthetic.tasks import DEFAULT_TASK, Task, get_task

WINDOW = timedelta(hours=24)
# Items inside the window are charted at most IN_WINDOW_LAST after admission, items after it at
# least LATE_FIRST after: the truth holds for any window_hours between the two.
IN_WINDOW_LAST = timedelta(hours=20)
LATE_FIRST = timedelta(hours=30)
MIN_STAY = timedelta(hours=48)

FIRST_SUBJECT_ID = 10_000_000
FIRST_HADM_ID = 20_000_000
HADM_SPAN = 9_999_991  # a prime: hadm_id = FIRST + (a * k + b) mod span is a permutation
ADMISSIONS_PER_PATIENT = (1, 2, 3, 4)
ADMISSIONS_WEIGHTS = (0.62, 0.24, 0.10, 0.04)
NO_ADMISSION_SHARE = 0.03  # patients seen only as outpatients (labs, no admission)


@dataclass
class AdmissionPlan:
    hadm_id: int
    subject_id: int
    admittime: datetime
    dischtime: datetime
    label: int
    present: dict[str, bool]
    scores: dict[str, float]
    observed: dict[str, float]  # the rendered value of each channel (lab value, state, ...)
    intervals: dict[str, ev.Interval]
    recording_seconds: float
    late_scores: dict[str, float]  # evidence charted after the window (a leak)
    died: bool
    aux: dict[str, float] = field(default_factory=dict)  # label-free draws of some channels

    @property
    def window_end(self) -> datetime:
        return self.admittime + WINDOW


@dataclass
class PatientPlan:
    index: int
    subject_id: int
    gender: str
    anchor_age: int
    anchor_year: int
    anchor_year_group: str
    effect: float
    admissions: list[AdmissionPlan] = field(default_factory=list)
    outpatient_times: list[datetime] = field(default_factory=list)
    dod: datetime | None = None

    @property
    def birth_year(self) -> int:
        return self.anchor_year - self.anchor_age


def patient_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, index])


def plan_patients(
    admissions: int, seed: int, task: Task | str = DEFAULT_TASK
) -> Iterator[PatientPlan]:
    """Patients in subject_id order until `admissions` admissions have been planned."""
    task = get_task(task)
    ids = np.random.default_rng([seed, 0])
    hadm_a, hadm_b = int(ids.integers(1, HADM_SPAN)), int(ids.integers(0, HADM_SPAN))
    subject_id, planned, index = FIRST_SUBJECT_ID, 0, 0
    while planned < admissions:
        rng = patient_rng(seed, index)
        subject_id += int(rng.integers(1, 400))
        wanted = 0 if rng.random() < NO_ADMISSION_SHARE else _admission_count(rng)
        count = min(wanted, admissions - planned)
        patient = _patient(rng, index, subject_id)
        hadm_ids = [
            FIRST_HADM_ID + (hadm_a * (planned + k) + hadm_b) % HADM_SPAN for k in range(count)
        ]
        _add_admissions(rng, patient, hadm_ids, task)
        planned += count
        index += 1
        yield patient


def _admission_count(rng: np.random.Generator) -> int:
    return int(rng.choice(ADMISSIONS_PER_PATIENT, p=ADMISSIONS_WEIGHTS))


def _patient(rng: np.random.Generator, index: int, subject_id: int) -> PatientPlan:
    anchor_year = int(rng.integers(2110, 2193))
    group_start = int(rng.choice([2008, 2011, 2014, 2017, 2020]))
    return PatientPlan(
        index=index,
        subject_id=subject_id,
        gender=str(rng.choice(["F", "M"])),
        anchor_age=int(rng.integers(18, 92)),
        anchor_year=anchor_year,
        anchor_year_group=f"{group_start} - {group_start + 2}",
        effect=float(rng.normal(0.0, ev.PATIENT_SD)),
    )


def _add_admissions(
    rng: np.random.Generator, patient: PatientPlan, hadm_ids: list[int], task: Task
) -> None:
    start = datetime(patient.anchor_year, 1, 1) + _minutes(rng, 0, 2 * 365 * 24 * 60)
    for hadm_id in hadm_ids:
        stay = max(MIN_STAY, timedelta(hours=float(rng.lognormal(math.log(96), 0.6))))
        stay = min(stay, timedelta(days=20))
        admittime = start.replace(second=0)
        dischtime = (admittime + stay).replace(second=0)
        patient.admissions.append(_admission(rng, patient, hadm_id, admittime, dischtime, task))
        start = dischtime + _minutes(rng, 20 * 24 * 60, 600 * 24 * 60)
    first = patient.admissions[0].admittime if patient.admissions else start
    if not patient.admissions or rng.random() < 0.35:
        count = int(rng.integers(1, 4))
        patient.outpatient_times = sorted(
            first - _minutes(rng, 10 * 24 * 60, 300 * 24 * 60) for _ in range(count)
        )
    last = patient.admissions[-1] if patient.admissions else None
    if last is not None and last.died:
        patient.dod = last.dischtime
    elif last is not None and rng.random() < 0.08:
        patient.dod = last.dischtime + _minutes(rng, 30 * 24 * 60, 900 * 24 * 60)


def _minutes(rng: np.random.Generator, low: int, high: int) -> timedelta:
    return timedelta(minutes=int(rng.integers(low, high)))


def _admission(
    rng: np.random.Generator,
    patient: PatientPlan,
    hadm_id: int,
    admittime: datetime,
    dischtime: datetime,
    task: Task,
) -> AdmissionPlan:
    label = int(rng.random() < ndtr(ev.BASE + patient.effect))
    present = {m: bool(rng.random() >= ev.MISSING[m]) for m in ev.MODALITIES}
    scores = {c.name: c.draw(rng, label) for c in task.channels}
    late_scores = {m: float(rng.normal(ev.LATE_SHIFT * label, 1.0)) for m in ev.MODALITIES}
    seconds = round(float(rng.uniform(3.0, 6.0)), 2)
    died = bool(rng.random() < 0.03)
    # Drawn last, so that a task without such channels (pneumonia) draws what it always drew.
    aux = {c.name: c.render.draw(rng) for c in task.channels if hasattr(c.render, "draw")}
    observed, intervals = _observe(task, scores, seconds, present, aux)
    return AdmissionPlan(
        hadm_id=hadm_id,
        subject_id=patient.subject_id,
        admittime=admittime,
        dischtime=dischtime,
        label=label,
        present=present,
        scores=scores,
        observed=observed,
        intervals=intervals,
        recording_seconds=seconds,
        late_scores=late_scores,
        died=died,
        aux=aux,
    )


def _observe(
    task: Task,
    scores: dict[str, float],
    seconds: float,
    present: dict[str, bool],
    aux: dict[str, float],
) -> tuple[dict[str, float], dict[str, ev.Interval]]:
    """What the files show of each channel of the modalities present in the window."""
    observed: dict[str, float] = {}
    intervals: dict[str, ev.Interval] = {}
    for channel in task.channels:
        if not present[channel.modality]:
            continue
        shown = channel.render.observe(scores[channel.name], seconds, aux.get(channel.name))
        if shown is not None:  # None: not in the file at all (a test that was not ordered)
            observed[channel.name], intervals[channel.name] = shown
    return observed, intervals


def truth_frame(plans: list[AdmissionPlan], task: Task | str = DEFAULT_TASK) -> pd.DataFrame:
    """One row per admission: ids, label, the oracles and which modalities are in the window."""
    frame = pd.DataFrame(
        {
            "hadm_id": np.array([a.hadm_id for a in plans], dtype="int64"),
            "subject_id": np.array([a.subject_id for a in plans], dtype="int64"),
            "label": np.array([a.label for a in plans], dtype="int64"),
        }
    )
    channels = get_task(task).channels
    oracles = ev.oracle([a.intervals for a in plans], [a.present for a in plans], channels)
    for name, values in oracles.items():
        frame[name] = values
    for m in ev.MODALITIES:
        frame[f"has_{m}"] = np.array([a.present[m] for a in plans], dtype=bool)
    return frame


def simulate_truth(
    admissions: int = 300, seed: int = 0, task: Task | str = DEFAULT_TASK
) -> pd.DataFrame:
    """The truth `generate` would write for this seed (admissions.parquet), without any file."""
    plans = [a for p in plan_patients(admissions, seed, task) for a in p.admissions]
    return truth_frame(plans, task)
