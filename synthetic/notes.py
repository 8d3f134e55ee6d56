"""Clinical notes: the admission H&P (evidence, in the window), radiology reports and discharge
summaries (after the window: leaks).

The H&P mentions, negates or leaves out each finding of the task as its channel's state says
(tasks.py holds the words; a counted channel mentions that many of its findings); everything else
in it (history, medications, other complaints, wording) is drawn without the label.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from clinfuse.synthetic.population import AdmissionPlan, PatientPlan
from clinfuse.synthetic.tasks import PNEUMONIA, Task

NOTE_COLUMNS = (
    "note_id",
    "subject_id",
    "hadm_id",
    "note_type",
    "note_seq",
    "charttime",
    "storetime",
    "text",
)

# Complaints that say nothing about the task, mentioned or negated at random (a task's `quiet`
# ones are left out: they would say its findings' words).
OTHER_COMPLAINTS = (
    ("headache", "denies headache"),
    ("nausea", "no nausea or vomiting"),
    ("lower back pain", "no back pain"),
    ("dysuria", "denies dysuria"),
    ("fatigue", "no fatigue"),
    ("leg swelling", "no leg swelling"),
    ("dizziness", "denies dizziness"),
    ("abdominal pain", "no abdominal pain"),
)
HISTORY = (
    "hypertension", "type 2 diabetes", "hyperlipidemia", "COPD", "atrial fibrillation",
    "chronic kidney disease", "GERD", "depression", "hypothyroidism", "coronary artery disease",
    "osteoarthritis", "prior stroke", "heart failure with preserved EF", "obesity", "asthma",
)  # fmt: skip
MEDICATIONS = (
    "lisinopril 10 mg daily", "metformin 500 mg BID", "atorvastatin 40 mg daily",
    "tiotropium inhaler", "apixaban 5 mg BID", "omeprazole 20 mg daily", "sertraline 50 mg daily",
    "levothyroxine 75 mcg daily", "aspirin 81 mg daily", "furosemide 20 mg daily",
    "albuterol PRN", "metoprolol 25 mg BID",
)  # fmt: skip
# Chief complaints are label-free on purpose: none of them names a finding.
SOCIAL = ("Lives alone.", "Lives with family.", "Former smoker.", "Never smoker.")
COMPLAINTS = ("weakness", "feeling unwell", "fall at home", "malaise", "poor intake", "confusion")
LOBES = ("right lower lobe", "left lower lobe", "right middle lobe", "lingula", "right upper lobe")


def note_row(
    patient: PatientPlan, adm: AdmissionPlan, note_type: str, seq: int, when: datetime, text: str
) -> dict:
    return {
        "note_id": f"{patient.subject_id}-{note_type}-{seq}",
        "subject_id": patient.subject_id,
        "hadm_id": adm.hadm_id,
        "note_type": note_type,
        "note_seq": seq,
        "charttime": when,
        "storetime": when + timedelta(minutes=37),
        "text": text,
    }


def _pick(rng: np.random.Generator, options: tuple) -> str:
    return str(options[int(rng.integers(len(options)))])


def _sample(rng: np.random.Generator, options: tuple, low: int, high: int) -> list[str]:
    picks = rng.choice(len(options), size=int(rng.integers(low, high + 1)), replace=False)
    return [str(options[int(i)]) for i in picks]


def _phrase(rng: np.random.Generator, template: str) -> str:
    values = {
        "temp": f"{rng.uniform(38.1, 39.8):.1f}",
        "sat": int(rng.integers(84, 92)),
        "good": int(rng.integers(95, 100)),
        "side": _pick(rng, ("right", "left")),
    }
    if any(f"{{{k}}}" in template for k in EXTRA_SLOTS):
        values.update({k: draw(rng) for k, draw in EXTRA_SLOTS.items()})  # other tasks' words
    return template.format(**values)


# Slots only other tasks' phrases use; drawn only for them, so pneumonia's draws stay as they were.
EXTRA_SLOTS = {
    "pillows": lambda rng: int(rng.integers(2, 5)),
    "kg": lambda rng: int(rng.integers(2, 7)),
    "sbp": lambda rng: int(rng.integers(72, 90)),
    "dbp": lambda rng: int(rng.integers(38, 55)),
    "hr": lambda rng: int(rng.integers(11, 14)) * 10,
    "hours": lambda rng: int(rng.integers(1, 4)),
}


def _findings(adm: AdmissionPlan, rng: np.random.Generator, task: Task) -> tuple[list, list]:
    """(mentioned, negated) phrases of the task's text channels present in the note."""
    mentioned, negated = [], []
    for finding, (positive, negative) in task.findings.items():
        state = int(adm.observed[finding])
        if finding in task.counted:  # that many of its findings, which ones label-free
            mentioned += [_phrase(rng, p) for p in _sample(rng, positive, state, state)]
        elif state > 0:
            mentioned.append(_phrase(rng, _pick(rng, positive)))
        elif state < 0:
            negated.append(_phrase(rng, _pick(rng, negative)))
    return mentioned, negated


def hp_text(
    patient: PatientPlan, adm: AdmissionPlan, rng: np.random.Generator, task: Task = PNEUMONIA
) -> str:
    """The admission history & physical: the findings as their states say, plus filler."""
    age = adm.admittime.year - patient.birth_year
    sex = "woman" if patient.gender == "F" else "man"
    mentioned, negated = _findings(adm, rng, task)
    for positive, negative in OTHER_COMPLAINTS:
        if positive in task.quiet:
            continue
        draw = rng.random()
        if draw < 0.15:
            mentioned.append(positive)
        elif draw < 0.35:
            negated.append(negative)
    order = rng.permutation(len(mentioned))
    mentioned = [mentioned[int(i)] for i in order]
    history = ", ".join(_sample(rng, HISTORY, 1, 4))
    meds = "\n".join(f"- {m}" for m in _sample(rng, MEDICATIONS, 1, 5))
    days = int(rng.integers(1, 8))
    hpi = f"{age} year old {sex} with a history of {history} who presents with {days} days of "
    hpi += ", ".join(mentioned) if mentioned else "feeling generally unwell"
    hpi += "."
    ros = "; ".join(negated) if negated else "otherwise negative"
    return (
        "ADMISSION HISTORY AND PHYSICAL\n\n"
        f"Chief Complaint: {_pick(rng, COMPLAINTS)}\n\n"
        f"History of Present Illness:\n{hpi}\n\n"
        f"Review of Systems: {ros}.\n\n"
        f"Past Medical History: {history}\n\n"
        f"Medications on Admission:\n{meds}\n\n"
        f"Social History: {_pick(rng, SOCIAL)}\n\n"
        "Plan: admit to medicine, labs and imaging as ordered.\n"
    )


def discharge_text(
    patient: PatientPlan, adm: AdmissionPlan, rng: np.random.Generator, task: Task = PNEUMONIA
) -> str:
    """The discharge summary names the diagnosis: a leak the pipeline must leave out."""
    primary = _pick(rng, task.ds_positive if adm.label else task.ds_negative)
    secondary = ", ".join(_sample(rng, HISTORY, 1, 3))
    stay = (adm.dischtime - adm.admittime).days
    course = task.ds_course if adm.label else "Managed supportively with improvement."
    return (
        f"Name: ___  Unit No: ___\nAdmission Date: ___  Discharge Date: ___\n"
        f"Sex: {patient.gender}\nService: MEDICINE\n\n"
        f"Brief Hospital Course:\nAdmitted for {stay} days. {course}\n\n"
        f"Discharge Diagnosis:\nPrimary: {primary}\nSecondary: {secondary}\n\n"
        f"Discharge Condition: {_pick(rng, ('stable', 'improved', 'good'))}\n"
    )


def radiology_text(extent: float, rng: np.random.Generator, sign: str = "opacity") -> str:
    """The report of a chest radiograph taken after the window, as its sign shows."""
    if sign != "opacity":
        return _sign_report(extent, rng, sign)
    view = _pick(rng, ("PA and lateral", "Portable AP"))
    if extent <= 0:
        finding = "No focal consolidation. No pleural effusion or pneumothorax."
        impression = "No acute cardiopulmonary process."
    else:
        lobe = _pick(rng, LOBES)
        size = "Large" if extent > 1.5 else "Patchy"
        finding = f"{size} opacity in the {lobe}. No pneumothorax."
        impression = f"{size} {lobe} opacity concerning for pneumonia."
    return (
        f"EXAMINATION: CHEST ({view})\n\nINDICATION: ___ with cough, evaluate for pneumonia.\n\n"
        f"FINDINGS: {finding} Cardiomediastinal silhouette is within normal limits.\n\n"
        f"IMPRESSION: {impression}\n"
    )


# sign -> (indication, (threshold, finding, impression) from the largest down, normal finding)
SIGN_REPORTS = {
    "silhouette": (
        "dyspnea, evaluate for edema",
        ((1.2, "The cardiac silhouette is enlarged.", "Cardiomegaly."),
         (0.4, "The cardiac silhouette is borderline enlarged.", "Borderline cardiomegaly.")),
        "Heart size is normal. Lungs are clear.",
    ),
    "texture": (
        "oliguria, evaluate for fluid overload",
        ((1.5, "Diffuse reticular interstitial opacities.", "Interstitial edema."),
         (0.0, "Mild interstitial prominence.", "Possible mild interstitial edema.")),
        "No interstitial abnormality. Lungs are clear.",
    ),
    "hyperinflation": (
        "wheezing, evaluate for infiltrate",
        ((1.0, "Hyperinflated lungs with flattened hemidiaphragms.", "Hyperinflation."),),
        "Lung volumes are normal. Lungs are clear.",
    ),
}  # fmt: skip


def _sign_report(extent: float, rng: np.random.Generator, sign: str) -> str:
    view = _pick(rng, ("PA and lateral", "Portable AP"))
    indication, grades, normal = SIGN_REPORTS[sign]
    finding, impression = normal, "No acute cardiopulmonary process."
    for threshold, graded, graded_impression in grades:
        if extent > threshold:
            finding, impression = graded, graded_impression
            break
    return (
        f"EXAMINATION: CHEST ({view})\n\nINDICATION: ___ with {indication}.\n\n"
        f"FINDINGS: {finding} No pneumothorax.\n\nIMPRESSION: {impression}\n"
    )
