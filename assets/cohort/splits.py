"""Patient-level train/validation/test splits: no subject_id has admissions in two splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.70, 0.15, 0.15)


def _patient_key(seed: int, subject_id: int) -> str:
    # A hash, not a shuffled list: a patient's place in the order does not depend on who else
    # is in the export, so splits stay put for a seed.
    return hashlib.sha256(f"{seed}:{subject_id}".encode()).hexdigest()


def _split_sizes(n: int) -> tuple[int, int]:
    """(validation, test) sizes for a stratum of n patients; each gets one when n >= 3."""
    if n < 3:
        return 0, 0
    n_val = max(1, round(n * FRACTIONS[1]))
    n_test = max(1, round(n * FRACTIONS[2]))
    return n_val, n_test


def assign_splits(cohort: pd.DataFrame, seed: int) -> pd.Series:
    """split per admission row (aligned to cohort's index), stratified by each patient's label.

    A patient is positive when any of their admissions is; within each stratum patients are
    ordered by a seeded hash and cut 70/15/15 (test first, then validation, then train).
    """
    by_patient = cohort.groupby("subject_id")["label"].max()
    assignment: dict[int, str] = {}
    for _, stratum in by_patient.groupby(by_patient):
        ordered = sorted(stratum.index, key=lambda s: _patient_key(seed, int(s)))
        n_val, n_test = _split_sizes(len(ordered))
        for position, subject in enumerate(ordered):
            if position < n_test:
                assignment[int(subject)] = "test"
            elif position < n_test + n_val:
                assignment[int(subject)] = "validation"
            else:
                assignment[int(subject)] = "train"
    return cohort["subject_id"].astype("int64").map(assignment).astype("string")


def split_summary(cohort: pd.DataFrame) -> dict[str, int]:
    counts = cohort["split"].value_counts()
    return {name: int(counts.get(name, 0)) for name in SPLITS}


def patients_in_two_splits(cohort: pd.DataFrame) -> np.ndarray:
    per_patient = cohort.groupby("subject_id")["split"].nunique()
    return per_patient[per_patient > 1].index.to_numpy()
