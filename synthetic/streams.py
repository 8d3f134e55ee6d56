"""Independent random streams, one per rendered thing, so that files repeat byte for byte.

Each stream is keyed by the seed, what is rendered (a KIND) and whose it is (a hadm_id or a
subject_id): adding a file of one kind never shifts the draws of another, and the plan
(population.py, stream family 1) never sees a rendering draw.
"""

from __future__ import annotations

import numpy as np

ADMISSION_ROW = 1
DIAGNOSES = 2
LABS = 3
NOTES = 4
IMAGES = 5
RECORDINGS = 6
IDENTITY = 7
OUTPATIENT = 8
LAB_RECORDS = 9
MESSY = 10
FILLER_LABS = 11  # dense_labs.py: the extra label-free rows of --labs-per-admission


def render_rng(seed: int, key: int, kind: int) -> np.random.Generator:
    """The stream of one rendered thing (key: a hadm_id or subject_id; kind: one of the above)."""
    return np.random.default_rng([seed, 2, key, kind])
