"""MIMIC-IV "hosp" rows: patients, admissions, labevents (+ d_labitems), diagnoses_icd.

Only the task's lab channels carry the label (pneumonia: WBC, CRP and temperature in the first
panel of the window; tasks.py names the others); every other lab, every categorical column and
every code other than the target's is drawn without looking at the label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from clinfuse.synthetic import evidence as ev
from clinfuse.synthetic.population import (
    IN_WINDOW_LAST,
    LATE_FIRST,
    AdmissionPlan,
    PatientPlan,
)
from clinfuse.synthetic.tasks import PNEUMONIA, Task

# MIMIC-IV's column order; the optional columns are filled so readers meet the real thing.
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")
ADMISSION_COLUMNS = (
    "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
    "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
    "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag",
)  # fmt: skip
LAB_COLUMNS = (
    "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
    "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
    "ref_range_upper", "flag", "priority", "comments",
)  # fmt: skip
LABITEM_COLUMNS = ("itemid", "label", "fluid", "category")
DIAGNOSIS_COLUMNS = ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version")


@dataclass(frozen=True)
class LabItem:
    itemid: int
    label: str
    fluid: str
    category: str
    unit: str
    low: float | None  # reference range
    high: float | None
    center: float  # label-free values: center * exp(N(0, spread)) or center + N(0, spread)
    spread: float
    log: bool
    decimals: int
    channel: str | None = None  # the evidence channel it renders, if any


def _signal(itemid: int, label: str, category: str, unit: str, low, high, channel: str) -> LabItem:
    """A lab that renders an evidence channel: its scale is evidence.LAB_SCALES's."""
    scale = ev.LAB_SCALES[channel]
    return LabItem(
        itemid, label, "Blood", category, unit, low, high,
        scale.center, scale.spread, scale.log, scale.decimals, channel,
    )  # fmt: skip


LAB_ITEMS = (
    _signal(51301, "White Blood Cells", "Hematology", "K/uL", 4.0, 11.0, "wbc"),
    _signal(50889, "C-Reactive Protein", "Chemistry", "mg/L", 0.0, 5.0, "crp"),
    _signal(50825, "Temperature", "Blood Gas", "C", None, None, "temperature"),
    LabItem(51265, "Platelet Count", "Blood", "Hematology", "K/uL", 150, 440, 240, 0.3, True, 0),
    LabItem(51222, "Hemoglobin", "Blood", "Hematology", "g/dL", 12.0, 17.5, 12.5, 1.8, False, 1),
    LabItem(51256, "Neutrophils", "Blood", "Hematology", "%", 50, 70, 68, 9, False, 1),
    LabItem(50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2, 1.0, 0.4, True, 1),
    LabItem(50983, "Sodium", "Blood", "Chemistry", "mEq/L", 133, 145, 139, 3.5, False, 0),
    LabItem(50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1, 4.2, 0.45, False, 1),
    LabItem(50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0, 1.4, 0.4, True, 1),
)
# Items only other tasks chart (their values come from the task's channel, never from here).
TASK_ITEMS = (
    LabItem(50963, "NT-proBNP", "Blood", "Chemistry", "pg/mL", 0, 125, 300, 0.9, True, 0),
    LabItem(51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 6, 20, 17, 0.35, True, 0),
    LabItem(50818, "pCO2", "Blood", "Blood Gas", "mm Hg", 35, 45, 42, 6, False, 0),
    LabItem(51200, "Eosinophils", "Blood", "Hematology", "%", 0.0, 4.0, 2.0, 0.6, True, 1),
)
ITEMS = {item.itemid: item for item in LAB_ITEMS + TASK_ITEMS}
SIGNAL_ITEMS = {item.channel: item for item in LAB_ITEMS if item.channel}
# Text-only results: valuenum empty, value a word (MIMIC is full of them; they are good rows).
TEXT_ITEMS = {
    51463: ("Bacteria", "Urine", "Hematology", ("NONE", "FEW", "MOD", "MANY")),
    51484: ("Ketone", "Urine", "Chemistry", ("NEG", "TR", "NEG", "NEG")),
}
CBC = (51222, 51265, 51256)
CHEMISTRY = (50983, 50971, 50912)

ICD10_PNEUMONIA = PNEUMONIA.icd10_codes
ICD9_PNEUMONIA = PNEUMONIA.icd9_codes
# Other codes, some of them near misses of the target (aspiration pneumonitis J69/507,
# bronchitis J20/466, influenza 487): labels are decided on prefixes, not on words.
ICD10_OTHER = (
    "I10", "E119", "N179", "J449", "I4891", "E785", "K219", "F329", "N390", "A419", "I509",
    "J9601", "Z87891", "D649", "E871", "J690", "J209", "R0902", "I2510", "E039",
)  # fmt: skip
ICD9_OTHER = (
    "4019", "25000", "5849", "49121", "42731", "2724", "53081", "311", "5990", "0389", "4280",
    "51881", "V1582", "2859", "2761", "5070", "4660", "4870", "41401", "2449",
)  # fmt: skip


def task_items(task: Task) -> tuple[LabItem, ...]:
    """d_labitems of a task: pneumonia's list as it always was; others put theirs first."""
    if task.labs == PNEUMONIA.labs:
        return LAB_ITEMS
    signals = tuple(ITEMS[i] for i in task.labs.values())
    return signals + tuple(i for i in LAB_ITEMS if i.itemid not in task.labs.values())


def labitem_rows(task: Task = PNEUMONIA) -> Iterator[dict]:
    for item in task_items(task):
        yield {
            "itemid": item.itemid,
            "label": item.label,
            "fluid": item.fluid,
            "category": item.category,
        }
    for itemid, (label, fluid, category, _) in TEXT_ITEMS.items():
        yield {"itemid": itemid, "label": label, "fluid": fluid, "category": category}


def patient_row(patient: PatientPlan) -> dict:
    return {
        "subject_id": patient.subject_id,
        "gender": patient.gender,
        "anchor_age": patient.anchor_age,
        "anchor_year": patient.anchor_year,
        "anchor_year_group": patient.anchor_year_group,
        "dod": patient.dod.strftime("%Y-%m-%d") if patient.dod else None,
    }


def admission_row(adm: AdmissionPlan, rng: np.random.Generator) -> dict:
    emergency = rng.random() < 0.75
    ed_in = adm.admittime - timedelta(minutes=int(rng.integers(60, 600))) if emergency else None
    return {
        "subject_id": adm.subject_id,
        "hadm_id": adm.hadm_id,
        "admittime": adm.admittime,
        "dischtime": adm.dischtime,
        "deathtime": adm.dischtime if adm.died else None,
        "admission_type": _pick(rng, ("EW EMER.", "URGENT", "OBSERVATION ADMIT", "ELECTIVE")),
        "admit_provider_id": f"P{int(rng.integers(10000, 99999)):05d}",
        "admission_location": "EMERGENCY ROOM"
        if emergency
        else _pick(rng, ("PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL")),
        "discharge_location": "DIED"
        if adm.died
        else _pick(rng, ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", None)),
        "insurance": _pick(rng, ("Medicare", "Medicaid", "Other", "Private")),
        "language": _pick(rng, ("ENGLISH", "ENGLISH", "ENGLISH", "SPANISH", "?")),
        "marital_status": _pick(rng, ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None)),
        "race": _pick(
            rng,
            (
                "WHITE",
                "BLACK/AFRICAN AMERICAN",
                "HISPANIC/LATINO - PUERTO RICAN",
                "ASIAN",
                "OTHER",
                "UNKNOWN",
            ),
        ),  # fmt: skip
        "edregtime": ed_in,
        "edouttime": adm.admittime if emergency else None,
        "hospital_expire_flag": int(adm.died),
    }


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[int(rng.integers(len(options)))]


def diagnosis_rows(
    adm: AdmissionPlan, rng: np.random.Generator, task: Task = PNEUMONIA
) -> list[dict]:
    """Codes of one admission; a positive holds one target code among label-free others."""
    version = 9 if rng.random() < 0.35 else 10
    others = ICD9_OTHER if version == 9 else ICD10_OTHER
    # A negative must not carry the target (pneumonia's others never do: the tuple is unchanged).
    others = tuple(code for code in others if not task.target.matches(code, version))
    picks = rng.choice(len(others), size=int(rng.integers(1, 9)), replace=False)
    codes = [others[int(i)] for i in picks]
    if adm.label:
        target = task.icd9_codes if version == 9 else task.icd10_codes
        where = 0 if rng.random() < 0.6 else int(rng.integers(0, len(codes) + 1))
        codes.insert(where, target[int(rng.integers(len(target)))])
    return [
        {"subject_id": adm.subject_id, "hadm_id": adm.hadm_id, "seq_num": k + 1,
         "icd_code": code, "icd_version": version}
        for k, code in enumerate(codes)
    ]  # fmt: skip


# --- labs ------------------------------------------------------------------------------------


@dataclass
class LabRow:
    """One result before it has a labevent_id; `late` marks a leak."""

    subject_id: int
    hadm_id: int | None
    itemid: int
    charttime: datetime
    value: str
    valuenum: float | None
    specimen_id: int
    priority: str | None
    late: bool = False


def admission_labs(
    adm: AdmissionPlan, rng: np.random.Generator, task: Task = PNEUMONIA
) -> list[LabRow]:
    """The first panel (with the evidence), maybe a second, and maybe a late panel (leak); a
    trend's later reading last, so that tasks without one draw what pneumonia always drew."""
    rows: list[LabRow] = []
    if adm.present["ehr"]:
        rows += _first_panel(adm, rng, task)
        if rng.random() < 0.5:
            when = adm.admittime + _hours(rng, 8.0, IN_WINDOW_LAST.total_seconds() / 3600)
            rows += _nuisance_panel(adm, rng, when, _nuisance(task, CHEMISTRY + (51222,)))
        if rng.random() < 0.3:
            rows += _urine(adm, rng, adm.admittime + _hours(rng, 0.5, 19.0))
    if rng.random() < 0.6:
        rows += _late_panel(adm, rng, task)
    if adm.present["ehr"]:
        rows += _trend_readings(adm, rng, task)
    return sorted(rows, key=lambda r: (r.charttime, r.itemid))


def _nuisance(task: Task, itemids: tuple[int, ...]) -> tuple[int, ...]:
    """Label-free items of a panel: a task's signal item is charted only as its channel says
    (a trend's item twice, no more, so that last - first is the trend)."""
    return tuple(i for i in itemids if i not in task.labs.values())


def _trend_readings(adm: AdmissionPlan, rng: np.random.Generator, task: Task) -> list[LabRow]:
    """The later reading of each trend channel, 10-20 h into the window, after the first panel."""
    rows = []
    for channel in task.of("ehr"):
        if isinstance(channel.render, ev.Trend) and channel.name in adm.observed:
            when = adm.admittime + _hours(rng, 10.0, IN_WINDOW_LAST.total_seconds() / 3600)
            item, value = ITEMS[task.labs[channel.name]], adm.observed[channel.name]
            rows.append(_lab(adm.subject_id, adm.hadm_id, item, when, value, rng, "ROUTINE"))
    return rows


def _hours(rng: np.random.Generator, low: float, high: float) -> timedelta:
    return timedelta(minutes=int(rng.uniform(low, high) * 60))


def _first_panel(adm: AdmissionPlan, rng: np.random.Generator, task: Task) -> list[LabRow]:
    when = adm.admittime + _hours(rng, 0.3, 8.0)
    hadm = None if rng.random() < 0.1 else adm.hadm_id  # an ED draw: linked by its time
    priority = _pick(rng, ("STAT", "ROUTINE", None))
    rows = []
    for channel, itemid in task.labs.items():
        if channel not in adm.observed:  # a rare test that was not ordered
            continue
        value = adm.aux[channel] if _is_trend(task, channel) else adm.observed[channel]
        rows.append(_lab(adm.subject_id, hadm, ITEMS[itemid], when, value, rng, priority))
    extra = CBC + CHEMISTRY + ((50813,) if rng.random() < 0.6 else ())
    if task.labs != PNEUMONIA.labs:  # WBC, CRP, temperature: label-free in the other tasks
        extra = tuple(PNEUMONIA.labs.values()) + extra
    extra = _nuisance(task, extra)
    rows += [
        _lab(adm.subject_id, hadm, ITEMS[i], when, _nuisance_value(ITEMS[i], rng), rng, priority)
        for i in extra
    ]
    return rows


def _nuisance_panel(
    adm: AdmissionPlan, rng: np.random.Generator, when: datetime, itemids: tuple[int, ...]
) -> list[LabRow]:
    hadm = None if rng.random() < 0.1 else adm.hadm_id
    return [
        _lab(adm.subject_id, hadm, ITEMS[i], when, _nuisance_value(ITEMS[i], rng), rng, "ROUTINE")
        for i in itemids
    ]


def _urine(adm: AdmissionPlan, rng: np.random.Generator, when: datetime) -> list[LabRow]:
    specimen = int(rng.integers(10_000_000, 99_999_999))
    return [
        LabRow(adm.subject_id, adm.hadm_id, itemid, when, _pick(rng, words), None, specimen, None)
        for itemid, (_, _, _, words) in TEXT_ITEMS.items()
    ]


def _is_trend(task: Task, channel: str) -> bool:
    return any(c.name == channel and isinstance(c.render, ev.Trend) for c in task.channels)


def _late_panel(adm: AdmissionPlan, rng: np.random.Generator, task: Task) -> list[LabRow]:
    """The task's labs after the window, shifted further for positives: a leak."""
    span = (adm.dischtime - adm.admittime - LATE_FIRST).total_seconds() / 3600 - 1.0
    when = adm.admittime + LATE_FIRST + _hours(rng, 0.0, span)
    rows = []
    for channel in task.of("ehr"):
        score = adm.late_scores["ehr"] + float(rng.normal(0.0, 0.5))
        flip = bool(rng.random() < 0.5) if channel.sd != 1.0 else False
        value = _late_value(channel, channel.late(score, adm.label, flip), adm)
        item = ITEMS[task.labs[channel.name]]
        row = _lab(adm.subject_id, adm.hadm_id, item, when, value, rng, "ROUTINE")
        row.late = True
        rows.append(row)
    return rows


def _late_value(channel: ev.Channel, score: float, adm: AdmissionPlan) -> float:
    """A late reading renders like the window's (a trend from its first reading; a rare test
    as if it had been ordered)."""
    render = channel.render.lab if isinstance(channel.render, ev.Rare) else channel.render
    if isinstance(render, ev.Trend):
        return render.observe(score, 0.0, adm.aux[channel.name])[0]
    return render.observe(score, 0.0, None)[0]


def outpatient_labs(patient: PatientPlan, rng: np.random.Generator) -> list[LabRow]:
    """Label-free results outside any admission, no hadm_id: good rows that no admission uses."""
    rows = []
    for when in patient.outpatient_times:
        for itemid in (51301, *CHEMISTRY):
            item = ITEMS[itemid]
            value = _nuisance_value(item, rng)
            rows.append(_lab(patient.subject_id, None, item, when, value, rng, "ROUTINE"))
    return rows


def _nuisance_value(item: LabItem, rng: np.random.Generator) -> float | None:
    """A label-free value; now and then none at all (MIMIC's "___" for a hemolysed sample)."""
    if rng.random() < 0.03:
        return None
    draw = float(rng.normal(0.0, item.spread))
    raw = item.center * math.exp(draw) if item.log else item.center + draw
    return round(max(raw, 0.0), item.decimals)


def _lab(
    subject_id: int,
    hadm: int | None,
    item: LabItem,
    when: datetime,
    value: float | None,
    rng: np.random.Generator,
    priority: str | None,
) -> LabRow:
    text = "___" if value is None else f"{value:.{item.decimals}f}"
    number = None if value is None else float(text)
    specimen = int(rng.integers(10_000_000, 99_999_999))
    return LabRow(subject_id, hadm, item.itemid, when, text, number, specimen, priority)


def lab_record(row: LabRow, labevent_id: int, rng: np.random.Generator) -> dict:
    """The labevents.csv row of a result."""
    item = ITEMS.get(row.itemid)
    flag = None
    if item is not None and row.valuenum is not None:
        low, high = item.low, item.high
        if (low is not None and row.valuenum < low) or (high is not None and row.valuenum > high):
            flag = "abnormal"
    return {
        "labevent_id": labevent_id,
        "subject_id": row.subject_id,
        "hadm_id": row.hadm_id,
        "specimen_id": row.specimen_id,
        "itemid": row.itemid,
        "order_provider_id": f"P{int(rng.integers(10000, 99999)):05d}"
        if rng.random() < 0.5
        else None,
        "charttime": row.charttime,
        "storetime": row.charttime + timedelta(minutes=int(rng.integers(15, 180))),
        "value": row.value,
        "valuenum": None if row.valuenum is None else _number(row.valuenum, item),
        "valueuom": item.unit if item is not None else None,
        "ref_range_lower": None if item is None or item.low is None else item.low,
        "ref_range_upper": None if item is None or item.high is None else item.high,
        "flag": flag,
        "priority": row.priority,
        "comments": "___" if row.valuenum is None and item is not None else None,
    }


def _number(value: float, item: LabItem | None) -> str:
    decimals = item.decimals if item is not None else 1
    return f"{value:.{decimals}f}"
