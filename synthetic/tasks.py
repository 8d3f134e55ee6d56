"""The task family: what `clinfuse generate --task NAME` predicts and where its signal lies.

A task is a target (a name and the ICD-10 / ICD-9 prefixes a pipeline labels it by), the codes
the generator writes for positives, and the evidence channels of each modality (evidence.py: a
class-conditional score distribution and a rendering), with the words, lab items, image sign
and audio sign that render them. Everything else in a landing zone is the same for every task.
docs/synthetic.md describes each task, its signal forms and its oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinfuse.synthetic import evidence as ev
from clinfuse.synthetic.evidence import (
    Channel,
    Crackles,
    Extent,
    Lab,
    LabScale,
    Levels,
    Rare,
    Trend,
)

IMAGE_SIGNS = ("opacity", "silhouette", "texture", "hyperinflation")
AUDIO_SIGNS = ("crackles", "s3", "dropped", "wheeze")
FINDING = (ev.NEGATED_BELOW, ev.MENTIONED_ABOVE)  # a finding negated / not written / mentioned

Phrases = tuple[tuple[str, ...], tuple[str, ...]]  # (ways to mention it, ways to negate it)


@dataclass(frozen=True)
class Target:
    name: str
    icd10_prefixes: tuple[str, ...]
    icd9_prefixes: tuple[str, ...]

    def config(self) -> dict:
        """The `target` block of a pipeline --config (cli-and-report.md)."""
        return {
            "name": self.name,
            "icd10_prefixes": list(self.icd10_prefixes),
            "icd9_prefixes": list(self.icd9_prefixes),
        }

    def matches(self, code: str, version: int) -> bool:
        prefixes = self.icd10_prefixes if version == 10 else self.icd9_prefixes
        return code.startswith(prefixes)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    target: Target
    icd10_codes: tuple[str, ...]  # one of them is written for a positive; each has a prefix
    icd9_codes: tuple[str, ...]
    channels: tuple[Channel, ...]
    labs: dict[str, int]  # lab channel -> itemid (tables.CATALOG)
    findings: dict[str, Phrases]  # text channel -> its words
    image_sign: str
    audio_sign: str
    ds_positive: tuple[str, ...]  # a discharge summary's primary diagnosis (a leak)
    ds_negative: tuple[str, ...]
    ds_course: str
    counted: frozenset[str] = frozenset()  # text channels whose state is how many are mentioned
    quiet: frozenset[str] = frozenset()  # filler complaints that would say a finding's words
    notes: str = ""  # what docs/synthetic.md says of the forms

    def __post_init__(self) -> None:
        for modality in ("image", "audio"):  # one sign each: zone.py renders it
            if len(self.of(modality)) != 1:
                raise ValueError(f"task {self.name}: exactly one {modality} channel")
        codes = [(c, 10) for c in self.icd10_codes] + [(c, 9) for c in self.icd9_codes]
        if not all(self.target.matches(code, version) for code, version in codes):
            raise ValueError(f"task {self.name}: a positive code outside the target's prefixes")

    def of(self, modality: str) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if c.modality == modality)

    @property
    def image_channel(self) -> Channel:
        return self.of("image")[0]

    @property
    def audio_channel(self) -> Channel:
        return self.of("audio")[0]

    @property
    def silent(self) -> tuple[str, ...]:
        """Modalities whose files carry no label information at all."""
        return tuple(m for m in ev.MODALITIES if not any(c.informative for c in self.of(m)))

    def describe(self) -> dict:
        """What the truth folder says about the task (task.json)."""
        return {
            "task": self.name,
            "description": self.description,
            "target": self.target.config(),
            "channels": [
                {
                    "name": c.name,
                    "modality": c.modality,
                    "shift": c.shift,
                    "sd": c.sd,
                    "form": type(c.render).__name__.lower(),
                }
                for c in self.channels
            ],  # fmt: skip
            "image_sign": self.image_sign,
            "audio_sign": self.audio_sign,
            "no_signal": list(self.silent),
        }


# --- pneumonia: the original task, byte for byte ------------------------------------------------

PNEUMONIA_FINDINGS: dict[str, Phrases] = {
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
PNEUMONIA_DIAGNOSES = (
    "Community-acquired pneumonia", "Right lower lobe pneumonia", "Left lower lobe pneumonia",
    "Multifocal pneumonia", "Bacterial pneumonia",
)  # fmt: skip
OTHER_DIAGNOSES = (
    "CHF exacerbation", "COPD exacerbation", "Urinary tract infection", "Cellulitis",
    "Acute kidney injury", "Syncope", "Atrial fibrillation with RVR", "Viral bronchitis",
    "Hyponatremia", "Gastroenteritis", "Aspiration pneumonitis",
)  # fmt: skip


def _others(*excluded: str) -> tuple[str, ...]:
    """Negatives' discharge diagnoses: the other tasks' and the label-free ones, not this one."""
    return tuple(d for d in OTHER_DIAGNOSES + PNEUMONIA_DIAGNOSES[:2] if d not in excluded)


PNEUMONIA = Task(
    name="pneumonia",
    description="lobar pneumonia: log-normal labs, finding states, a focal opacity, crackles",
    target=Target(
        "pneumonia",
        ("J12", "J13", "J14", "J15", "J16", "J17", "J18"),
        ("480", "481", "482", "483", "484", "485", "486"),
    ),
    icd10_codes=("J189", "J181", "J159", "J156", "J13", "J1289", "J122", "J168", "J150", "J188"),
    icd9_codes=("486", "4829", "481", "4821", "485", "4800", "4838"),
    channels=ev.CHANNELS,
    labs={"wbc": 51301, "crp": 50889, "temperature": 50825},
    findings=PNEUMONIA_FINDINGS,
    image_sign="opacity",
    audio_sign="crackles",
    ds_positive=PNEUMONIA_DIAGNOSES,
    ds_negative=OTHER_DIAGNOSES,
    ds_course="Treated with ceftriaxone and azithromycin with improvement.",
)


# --- heart failure: a rarely ordered test, another vocabulary, a heart's size, a third sound --

HEART_FAILURE = Task(
    name="heart_failure",
    description="decompensated heart failure: NT-proBNP ordered for a quarter, orthopnea and "
    "edema, a wide cardiac silhouette, an S3 in some heart cycles",
    target=Target("heart_failure", ("I50",), ("428",)),
    icd10_codes=("I5023", "I5033", "I5043", "I509", "I5021", "I5031"),
    icd9_codes=("42823", "42833", "4280", "42843"),
    channels=(
        Channel("ntprobnp", "ehr", 2.2, Rare(Lab(LabScale(300.0, 0.9, 0, log=True)), 0.25)),
        Channel("bun", "ehr", 0.65, Lab(LabScale(17.0, 0.35, 0, log=True))),
        *(
            Channel(name, "text", 0.5, Levels(FINDING, offset=-1))
            for name in ("orthopnea", "pnd", "edema", "jvd", "weight_gain")
        ),
        Channel("silhouette", "image", 1.05, Extent()),
        Channel("s3", "audio", 1.05, Levels((0.4, 0.9, 1.4, 1.9))),
    ),
    labs={"ntprobnp": 50963, "bun": 51006},
    findings={
        "orthopnea": (
            ("orthopnea", "sleeping on {pillows} pillows", "unable to lie flat"),
            ("no orthopnea", "sleeps flat without difficulty"),
        ),
        "pnd": (
            ("paroxysmal nocturnal dyspnea", "waking at night gasping for air"),
            ("denies PND", "no nocturnal awakenings"),
        ),
        "edema": (
            ("bilateral lower extremity edema", "pitting edema to the knees", "ankle swelling"),
            ("no edema", "no peripheral edema"),
        ),
        "jvd": (
            ("JVP elevated to the angle of the jaw", "jugular venous distension"),
            ("JVP not elevated", "no JVD"),
        ),
        "weight_gain": (
            ("{kg} kg weight gain over the past week", "increasing abdominal girth"),
            ("weight stable", "no weight gain"),
        ),
    },
    image_sign="silhouette",
    audio_sign="s3",
    ds_positive=(
        "Acute on chronic systolic heart failure",
        "Acute decompensated heart failure",
        "Acute on chronic diastolic heart failure",
    ),  # fmt: skip
    ds_negative=_others("CHF exacerbation"),
    ds_course="Diuresed with IV furosemide with improvement.",
    quiet=frozenset({"leg swelling"}),
)


# --- sepsis: U-shaped labs, a count of findings, a dropped beat; the image carries nothing ---

SEPSIS = Task(
    name="sepsis",
    description="sepsis: WBC and temperature too high or too low, lactate, a count of sepsis "
    "signs, dropped beats; images carry no signal",
    target=Target("sepsis", ("A40", "A41"), ("038", "99591", "99592")),
    icd10_codes=("A419", "A4151", "A4101", "A412", "A403"),
    icd9_codes=("0389", "03811", "03842", "99591", "99592"),
    channels=(
        Channel("wbc", "ehr", 0.0, Lab(LabScale(8.0, 0.30, 1, log=True)), sd=1.85),
        Channel("temperature", "ehr", 0.0, Lab(LabScale(37.0, 0.45, 1, log=False)), sd=1.75),
        Channel("lactate", "ehr", 0.55, Lab(LabScale(1.3, 0.35, 1, log=True))),
        Channel("signs", "text", 1.15, Levels((-0.4, 0.4, 1.1, 1.8))),
        # Rendered like pneumonia's opacity, from a score that ignores y: no signal.
        Channel("opacity", "image", 0.0, Extent(ev.OPACITY_FROM)),
        Channel("dropped", "audio", 1.0, Levels((0.5, 1.1, 1.7))),
    ),
    labs={"wbc": 51301, "temperature": 50825, "lactate": 50813},
    findings={
        "signs": (
            (
                "rigors",
                "altered mental status",
                "hypotension to {sbp}/{dbp}",
                "heart rate in the {hr}s",
                "mottled extremities",
                "decreased urine output",
            ),
            (),
        ),
    },  # fmt: skip
    image_sign="opacity",
    audio_sign="dropped",
    ds_positive=("Sepsis", "Septic shock", "Sepsis due to urinary tract infection"),
    ds_negative=_others(),
    ds_course="Treated with broad-spectrum antibiotics and IV fluids with improvement.",
    counted=frozenset({"signs"}),
)


# --- acute kidney injury: a creatinine trend, informative negations, interstitial texture ---

AKI = Task(
    name="aki",
    description="acute kidney injury: creatinine rising within the window, BUN, negated "
    "symptoms, reticular (interstitial edema) texture, crackles",
    target=Target("aki", ("N17",), ("584",)),
    icd10_codes=("N179", "N170", "N178"),
    icd9_codes=("5849", "5845", "5848"),
    channels=(
        Channel("creatinine", "ehr", 1.15, Trend(LabScale(1.0, 0.35, 1, log=True), 0.3, 0.1)),
        Channel("bun", "ehr", 0.5, Lab(LabScale(17.0, 0.35, 0, log=True))),
        *(
            Channel(name, "text", 0.75, Levels((0.5,), offset=-1))  # negated or not written
            for name in ("urine", "edema", "nausea", "lightheaded")
        ),
        Channel("texture", "image", 1.05, Extent(0.0)),
        Channel("crackles", "audio", 0.95, Crackles()),
    ),
    labs={"creatinine": 50912, "bun": 51006},
    findings={
        "urine": ((), ("denies decreased urine output", "making good urine")),
        "edema": ((), ("no leg edema", "no peripheral edema")),
        "nausea": ((), ("denies nausea", "no nausea or vomiting")),
        "lightheaded": ((), ("no lightheadedness", "denies orthostatic dizziness")),
    },
    image_sign="texture",
    audio_sign="crackles",
    ds_positive=("Acute kidney injury", "Acute tubular necrosis", "Prerenal acute kidney injury"),
    ds_negative=_others("Acute kidney injury"),
    ds_course="Treated with IV fluids and nephrotoxins held; creatinine improved.",
    quiet=frozenset({"nausea", "leg swelling", "dizziness"}),
)


# --- COPD exacerbation: blood gas, another vocabulary, hyperinflation, a wheeze -------------

COPD = Task(
    name="copd_exacerbation",
    description="COPD exacerbation: pCO2 and eosinophils, wheezing and tightness, hyperinflated "
    "lungs, a wheeze whose duration follows the score",
    target=Target("copd_exacerbation", ("J441",), ("49121", "49122")),
    icd10_codes=("J441",),
    icd9_codes=("49121", "49122"),
    channels=(
        Channel("pco2", "ehr", 0.75, Lab(LabScale(42.0, 6.0, 0, log=False))),
        Channel("eosinophils", "ehr", 0.55, Lab(LabScale(2.0, 0.6, 1, log=True), floor=0.1)),
        *(
            Channel(name, "text", 0.55, Levels(FINDING, offset=-1))
            for name in ("wheezing", "tightness", "sputum", "accessory", "inhaler")
        ),
        Channel("hyperinflation", "image", 1.05, Extent()),
        Channel("wheeze", "audio", 1.1, Extent(0.2)),
    ),
    labs={"pco2": 50818, "eosinophils": 51200},
    findings={
        "wheezing": (
            ("audible wheezing", "wheezing at rest", "diffuse expiratory wheezes"),
            ("no wheezing", "denies wheezing"),
        ),
        "tightness": (
            ("chest tightness", "a tight chest"),
            ("no chest tightness",),
        ),
        "sputum": (
            ("increased sputum purulence", "change in sputum color"),
            ("sputum at baseline", "no change in sputum"),
        ),
        "accessory": (
            ("using accessory muscles", "speaking in short phrases", "tripoding"),
            ("no accessory muscle use", "speaking full sentences"),
        ),
        "inhaler": (
            ("rescue inhaler use every {hours} hours", "increasing albuterol use"),
            ("no increase in inhaler use",),
        ),
    },
    image_sign="hyperinflation",
    audio_sign="wheeze",
    ds_positive=(
        "Acute exacerbation of COPD",
        "COPD exacerbation",
        "Hypercapnic COPD exacerbation",
    ),
    ds_negative=_others("COPD exacerbation"),
    ds_course="Treated with nebulized bronchodilators, prednisone and azithromycin.",
)

TASKS: dict[str, Task] = {t.name: t for t in (PNEUMONIA, HEART_FAILURE, SEPSIS, AKI, COPD)}
DEFAULT_TASK = PNEUMONIA.name


def get_task(task: Task | str) -> Task:
    """The built-in task of that name (a Task passes through)."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {task!r}; known tasks: {known}") from None


__all__ = ["DEFAULT_TASK", "TASKS", "Target", "Task", "get_task"]
