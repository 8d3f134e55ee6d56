"""`clinfuse generate`: a synthetic landing zone (../shared/landing-zone.md) and its truth."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from clinfuse.synthetic import messy as messy_inputs
from clinfuse.synthetic.evidence import MODALITIES, PREVALENCE
from clinfuse.synthetic.population import WINDOW, plan_patients, truth_frame
from clinfuse.synthetic.tasks import DEFAULT_TASK, Task, get_task
from clinfuse.synthetic.truth import oracle_aurocs, truth_dir, write_truth
from clinfuse.synthetic.zone import Zone


def generate(
    out: Path,
    admissions: int = 300,
    seed: int = 0,
    messy: bool = False,
    image_size: int = 128,
    progress: bool = False,
    task: Task | str = DEFAULT_TASK,
    labs_per_admission: int = 0,
) -> dict:
    """Writes `admissions` admissions into the empty folder `out`, and the truth beside it.

    `task` names the prediction task (tasks.TASKS); the default, pneumonia, writes what the
    generator always wrote, byte for byte. Returns the summary (what summary.json holds, plus
    task, target, truth_dir and the seconds it took). The same arguments give byte-identical
    files. `labs_per_admission` N > 0 tops every admission up to about N lab rows with label-free
    filler (dense_labs.py: benchmarks of a MIMIC-sized labevents); 0 (the default) adds none.
    """
    task = get_task(task)
    out = Path(out)
    truth = truth_dir(out)
    _refuse_non_empty(out)
    _refuse_non_empty(truth)
    if admissions < 1:
        raise ValueError("admissions must be at least 1")
    if labs_per_admission < 0:
        raise ValueError("labs_per_admission must be 0 (none added) or more")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    zone = Zone(out, seed, image_size, task, labs_per_admission)
    try:
        _fill(zone, admissions, seed, messy, progress, task)
    finally:
        zone.close()
    frame = truth_frame(zone.admissions, task)
    summary = _summary(zone, frame, admissions, seed, messy, image_size)
    named = {"task": task.name, "target": task.target.config()}
    if task.name != DEFAULT_TASK:  # pneumonia's summary.json keeps its bytes; task.json says it
        summary.update(named)
    if labs_per_admission:  # likewise: only a dense zone's summary names its density
        summary["labs_per_admission"] = labs_per_admission
    write_truth(truth, frame, zone.quarantine, zone.leaks, summary, task.describe())
    return {
        **summary,
        **named,
        "truth_dir": str(truth),
        "seconds": time.perf_counter() - started,
    }


def _refuse_non_empty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder")


def _fill(zone: Zone, admissions: int, seed: int, messy: bool, progress: bool, task: Task) -> None:
    """Patients one by one; the bad inputs go in a third of the way, among good data."""
    planted = not messy
    with tqdm(total=admissions, disable=not progress, unit="adm", desc="generate") as bar:
        for patient in plan_patients(admissions, seed, task):
            zone.add_patient(patient)
            bar.update(len(patient.admissions))
            if not planted and len(zone.admissions) >= max(1, admissions // 3):
                messy_inputs.plant(zone)
                planted = True
    if messy:
        messy_inputs.plant_duplicate(zone)


def _summary(zone: Zone, frame, admissions: int, seed: int, messy: bool, image_size: int) -> dict:
    """Counts per modality as the report counts them, and the oracle's AUROCs."""
    ehr = {name: zone.tables[name].rows for name in ("patients", "admissions", "labevents",
                                                      "d_labitems", "diagnoses_icd")}  # fmt: skip
    return {
        "seed": seed,
        "admissions": admissions,
        "patients": zone.patients,
        "positives": int(frame["label"].sum()),
        "prevalence_model": round(PREVALENCE, 6),
        "messy": messy,
        "image_size": image_size,
        "window_hours": WINDOW.total_seconds() / 3600,
        "inputs": {
            "ehr": ehr,
            "note": sum(zone.tables[t].rows for t in ("HP", "RR", "DS")),
            "dicom": zone.files["dicom"],
            "audio": zone.tables["audio"].rows,
        },
        "in_window": {m: int(frame[f"has_{m}"].sum()) for m in MODALITIES},
        "quarantined": len(zone.quarantine),
        "leaks": dict(sorted(Counter(leak["kind"] for leak in zone.leaks).items())),
        "oracle_auroc": {
            k: None if v is None else round(v, 6) for k, v in oracle_aurocs(frame).items()
        },
    }
