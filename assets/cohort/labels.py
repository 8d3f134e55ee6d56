"""The label: does an admission's diagnoses_icd hold a code of the target?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from clinfuse.assets.settings import Target


def normalise_icd(codes: pd.Series) -> pd.Series:
    """MIMIC stores codes without dots ("J189"); some exports keep them ("J18.9")."""
    return codes.astype("string").str.replace(".", "", regex=False).str.strip().str.upper()


LABEL_COLUMNS = ["hadm_id", "icd_code", "icd_version"]


def target_admissions(diagnoses: pd.DataFrame | Path, target: Target) -> set[int]:
    """hadm_ids with a code that starts with one of the target's prefixes for its ICD version.

    diagnoses is the table, or the diagnoses_icd asset's Parquet file: then only the three
    columns the rule reads are read, a batch at a time."""
    if not isinstance(diagnoses, pd.DataFrame):
        batches = pq.ParquetFile(diagnoses).iter_batches(batch_size=500_000, columns=LABEL_COLUMNS)
        return set().union(*(target_admissions(b.to_pandas(), target) for b in batches))
    codes = normalise_icd(diagnoses["icd_code"])
    version = pd.to_numeric(diagnoses["icd_version"], errors="coerce")
    hit10 = (version == 10) & codes.str.startswith(tuple(p.upper() for p in target.icd10_prefixes))
    hit9 = (version == 9) & codes.str.startswith(tuple(p.upper() for p in target.icd9_prefixes))
    hits = diagnoses.loc[(hit10 | hit9).fillna(False).astype(bool), "hadm_id"].dropna()
    return set(hits.astype("int64"))


def label_admissions(
    admissions: pd.DataFrame, diagnoses: pd.DataFrame | Path, target: Target
) -> pd.Series:
    """0/1 per admission row (aligned to admissions' index)."""
    positives = target_admissions(diagnoses, target)
    return admissions["hadm_id"].astype("int64").isin(positives).astype("int8")
