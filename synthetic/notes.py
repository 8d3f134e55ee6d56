"""Clinical notes: the admission H&P (evidence, in the window), radiology reports and discharge
summaries (after the window: leaks).

The H&P mentions, negates or leaves out each finding as evidence.finding_state says; everything
else in it (history, medications, other complaints, wording) is drawn without the label.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from clinfuse.synthetic.population import AdmissionPlan, PatientPlan

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

# finding -> (ways to mention it, ways to negate it)
FINDINGS = {
    "cough": (
        ("productive cough", "cough productive of yellow sputum", "cough with green sputum",
         "worsening productive cough"),
        ("denies cough", "no cough", "no sputum production"),
    ),
    "fever": (
        ("fever to {temp}", "fevers and chills at home", "subjective fevers", "febrile to {temp}"),
        ("denies fevers", "afebrile at home", "no fevers"),
    ),
    "pleuritic": (
        ("pleuritic chest pain", "sharp chest pain worse with inspiration",
         "pleuritic pain on the {side}"),
        ("denies chest pain", "no chest pain"),
    ),
    "dyspnea": (
        ("shortness of breath", "increasing dyspnea", "dyspnea on exertion",
         "progressive shortness of breath"),
        ("denies shortness of breath", "no dyspnea"),
    ),
    "chills": (
        ("rigors", "shaking chills", "chills and sweats"),
        ("denies chills", "no rigors"),
    ),
    "hypoxia": (
        ("hypoxic to {sat}% on room air", "SpO2 {sat}% on RA",
         "desaturation to {sat}% on room air"),
        ("saturating well on room air", "SpO2 {good}% on RA"),
    ),
}  # fmt: skip
# Complaints that say nothing about pneumonia, mentioned or negated at random.
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
PNEUMONIA_DIAGNOSES = (
    "Community-acquired pneumonia", "Right lower lobe pneumonia", "Left lower lobe pneumonia",
    "Multifocal pneumonia", "Bacterial pneumonia",
)  # fmt: skip
OTHER_DIAGNOSES = (
    "CHF exacerbation", "COPD exacerbation", "Urinary tract infection", "Cellulitis",
    "Acute kidney injury", "Syncope", "Atrial fibrillation with RVR", "Viral bronchitis",
    "Hyponatremia", "Gastroenteritis", "Aspiration pneumonitis",
)  # fmt: skip
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
    return template.format(
        temp=f"{rng.uniform(38.1, 39.8):.1f}",
        sat=int(rng.integers(84, 92)),
        good=int(rng.integers(95, 100)),
        side=_pick(rng, ("right", "left")),
    )


def hp_text(patient: PatientPlan, adm: AdmissionPlan, rng: np.random.Generator) -> str:
    """The admission history & physical: the findings as their states say, plus filler."""
    age = adm.admittime.year - patient.birth_year
    sex = "woman" if patient.gender == "F" else "man"
    mentioned, negated = [], []
    for finding, (positive, negative) in FINDINGS.items():
        state = int(adm.observed[finding])
        if state > 0:
            mentioned.append(_phrase(rng, _pick(rng, positive)))
        elif state < 0:
            negated.append(_phrase(rng, _pick(rng, negative)))
    for positive, negative in OTHER_COMPLAINTS:
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


def discharge_text(patient: PatientPlan, adm: AdmissionPlan, rng: np.random.Generator) -> str:
    """The discharge summary names the diagnosis: a leak the pipeline must leave out."""
    primary = _pick(rng, PNEUMONIA_DIAGNOSES if adm.label else OTHER_DIAGNOSES)
    secondary = ", ".join(_sample(rng, HISTORY, 1, 3))
    stay = (adm.dischtime - adm.admittime).days
    course = (
        "Treated with ceftriaxone and azithromycin with improvement."
        if adm.label
        else "Managed supportively with improvement."
    )
    return (
        f"Name: ___  Unit No: ___\nAdmission Date: ___  Discharge Date: ___\n"
        f"Sex: {patient.gender}\nService: MEDICINE\n\n"
        f"Brief Hospital Course:\nAdmitted for {stay} days. {course}\n\n"
        f"Discharge Diagnosis:\nPrimary: {primary}\nSecondary: {secondary}\n\n"
        f"Discharge Condition: {_pick(rng, ('stable', 'improved', 'good'))}\n"
    )


def radiology_text(extent: float, rng: np.random.Generator) -> str:
    """The report of a chest radiograph taken after the window, as its opacity shows."""
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
