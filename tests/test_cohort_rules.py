"""Linking, labels and splits: the rules of landing-zone.md, on small hand-made tables."""

from __future__ import annotations

import pandas as pd

from clinfuse.assets.cohort.labels import label_admissions
from clinfuse.assets.cohort.splits import assign_splits, patients_in_two_splits
from clinfuse.assets.ingest.linking import link_to_admissions
from clinfuse.assets.settings import Target

T = pd.Timestamp


def _admissions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": pd.array([1, 1, 2], dtype="Int64"),
            "hadm_id": pd.array([10, 11, 20], dtype="Int64"),
            "admittime": [T("2180-01-01 08:00"), T("2180-03-01 00:00"), T("2150-05-05 12:00")],
            "dischtime": [T("2180-01-05 08:00"), T("2180-03-03 00:00"), T("2150-05-06 12:00")],
        }
    )


def _events(rows: list[tuple]) -> pd.DataFrame:
    subject, hadm, time = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "subject_id": pd.array(subject, dtype="Int64"),
            "hadm_id": pd.array(hadm, dtype="Int64"),
            "t": pd.to_datetime(list(time)),
        }
    )


def test_linking_follows_the_landing_zone_rules():
    events = _events(
        [
            (1, None, "2180-01-02 00:00"),  # inside admission 10
            (1, None, "2180-03-03 00:00"),  # exactly at discharge of 11: inside
            (1, None, "2180-02-01 00:00"),  # between admissions: no admission
            (1, 20, "2180-01-02 00:00"),  # hadm of another patient
            (3, None, "2180-01-02 00:00"),  # unknown patient
            (2, 20, "2000-01-01 00:00"),  # a given hadm_id wins over the time
            (2, None, None),  # no time, no hadm_id
        ]
    )
    linked = link_to_admissions(events, _admissions(), pd.Series([1, 2]), "t")
    assert linked["linked_hadm_id"].tolist()[:2] == [10, 11]
    assert linked["link_problem"].tolist() == [
        pd.NA,
        pd.NA,
        "no admission",
        "unknown admission",
        "unknown patient",
        pd.NA,
        "no admission",
    ]
    assert linked.loc[5, "linked_hadm_id"] == 20


def test_labels_use_the_prefixes_of_each_icd_version():
    admissions = _admissions()
    diagnoses = pd.DataFrame(
        {
            "hadm_id": [10, 10, 11, 20],
            "icd_code": ["I10", "J18.9", "4829", "J449"],
            "icd_version": [10, 10, 10, 10],
        }
    )
    # "4829" is an ICD-9 pneumonia code but recorded as version 10: not a hit
    assert label_admissions(admissions, diagnoses, Target()).tolist() == [1, 0, 0]
    diagnoses.loc[2, "icd_version"] = 9
    assert label_admissions(admissions, diagnoses, Target()).tolist() == [1, 1, 0]


def test_labels_from_the_diagnoses_file_are_the_labels_from_the_table(tmp_path):
    diagnoses = pd.DataFrame(
        {
            "subject_id": [1, 1, 2, 3],
            "hadm_id": pd.array([10, 10, 11, 20], dtype="Int64"),
            "icd_code": pd.array(["I10", "J18.9", "4829", "J449"], dtype="string"),
            "icd_version": pd.array([10, 10, 9, 10], dtype="Int64"),
        }
    )
    path = tmp_path / "diagnoses_icd.parquet"
    diagnoses.to_parquet(path, index=False)
    expected = label_admissions(_admissions(), diagnoses, Target()).tolist()
    assert label_admissions(_admissions(), path, Target()).tolist() == expected == [1, 1, 0]


def test_splits_keep_patients_whole_stratified_and_stable():
    cohort = pd.DataFrame(
        {
            "subject_id": [s for s in range(200) for _ in range(1 + s % 3)],
        }
    )
    cohort["label"] = (cohort["subject_id"] % 4 == 0).astype(int)
    splits = assign_splits(cohort, seed=7)
    cohort["split"] = splits
    assert len(patients_in_two_splits(cohort)) == 0
    patients = cohort.drop_duplicates("subject_id")
    share = patients["split"].value_counts(normalize=True)
    assert 0.65 < share["train"] < 0.75
    positives = patients[patients["label"] == 1]["split"].value_counts()
    assert positives["test"] >= 5 and positives["validation"] >= 5
    assert assign_splits(cohort, seed=7).equals(splits)
    assert not assign_splits(cohort, seed=8).equals(splits)
