"""The cohort splits as MLflow datasets: digest, schema and counts of what a model saw, no rows.

`mlflow.log_input` records a dataset's name, digest, schema and profile (row count); the rows
themselves stay in the work directory. Only link keys and derived columns are described: no
identifier of a person reaches MLflow.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clinfuse.models.modalities import MODALITIES

SPLIT_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
DESCRIBED = ("subject_id", "hadm_id", "label", *(f"has_{m}" for m in MODALITIES))


def cohort_datasets(cohort: pd.DataFrame, source: Path, target: str) -> list[tuple[object, str]]:
    """(dataset, context) per split: `<target>-<split>` with `label` as its target."""
    import mlflow.data

    columns = [c for c in DESCRIBED if c in cohort]
    found = []
    for split, context in SPLIT_CONTEXTS.items():
        rows = cohort.loc[cohort["split"] == split, columns].reset_index(drop=True)
        dataset = mlflow.data.from_pandas(
            rows, source=str(source), targets="label", name=f"{target}-{split}"
        )
        found.append((dataset, context))
    return found


def log_cohort_datasets(cohort: pd.DataFrame, source: Path, target: str) -> None:
    """Logs each split to the active run (inputs of the run, shown on its page)."""
    import mlflow

    for dataset, context in cohort_datasets(cohort, source, target):
        mlflow.log_input(dataset, context=context)
