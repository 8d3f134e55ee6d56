"""GX Core expectation suites: each passes on good data, fails naming the rule on bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from clinfuse.assets.checks import expectations as ex
from clinfuse.assets.ingest.ehr import reader as er

DEMO = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "mimic_iv_demo" / "hosp"
T = pd.Timestamp


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """The MIMIC-IV demo read by the EHR reader; labevents read back from its Parquet."""
    if not DEMO.is_dir():
        pytest.skip("MIMIC-IV demo not present")
    root = tmp_path_factory.mktemp("demo")
    (root / "landing").mkdir()
    (root / "landing" / "ehr").symlink_to(DEMO, target_is_directory=True)
    landing = root / "landing"
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    er.stream_labevents(landing, root / "labs.parquet", admissions, patients)
    return {
        "patients": patients,
        "admissions": admissions,
        "d_labitems": er.read_d_labitems(landing).rows,
        "diagnoses_icd": er.read_diagnoses(landing, admissions, patients).rows,
        "labevents": pq.read_table(root / "labs.parquet").to_pandas(),
    }


def assert_failed(outcome: ex.QualityOutcome, expectation: str) -> None:
    assert not outcome.passed, outcome.description
    assert expectation in outcome.failed_expectations, outcome.failed_expectations
    assert expectation in outcome.description
    json.dumps(outcome.metadata)  # JSON-able


# -- tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["patients", "admissions", "labevents", "d_labitems", "diagnoses_icd"]
)
def test_demo_tables_pass(demo, name):
    outcome = ex.validate_table(name, demo[name])
    assert outcome.passed, outcome.description
    assert outcome.blocking and outcome.failed_expectations == []
    assert outcome.metadata["rows"] == len(demo[name])
    json.dumps(outcome.metadata)


def test_a_parquet_sample_of_labevents_passes(demo):
    sample = demo["labevents"][["subject_id", "hadm_id", "itemid", "charttime", "valuenum"]]
    assert ex.validate_table("labevents", sample.sample(500, random_state=0)).passed


def test_table_failures_name_the_rule(demo):
    admissions = demo["admissions"].copy()
    admissions.loc[0, "dischtime"] = admissions.loc[0, "admittime"] - pd.Timedelta(hours=1)
    admissions.loc[1, "hadm_id"] = admissions.loc[2, "hadm_id"]
    outcome = ex.validate_table("admissions", admissions)
    assert_failed(outcome, "expect_column_pair_values_a_to_be_greater_than_b(dischtime,admittime)")
    assert_failed(outcome, "expect_column_values_to_be_unique(hadm_id)")
    assert outcome.metadata["expect_column_values_to_be_unique(hadm_id) unexpected_count"] == 2

    patients = demo["patients"].drop(columns=["gender"])
    patients.loc[3, "subject_id"] = pd.NA
    outcome = ex.validate_table("patients", patients)
    assert_failed(outcome, "expect_column_to_exist(gender)")
    assert_failed(outcome, "expect_column_values_to_not_be_null(subject_id)")

    assert_failed(
        ex.validate_table("patients", demo["patients"].iloc[:0]),
        "expect_table_row_count_to_be_between",
    )

    diagnoses = demo["diagnoses_icd"].copy()
    diagnoses.loc[5, "icd_version"] = 11
    assert_failed(
        ex.validate_table("diagnoses_icd", diagnoses),
        "expect_column_values_to_be_in_set(icd_version)",
    )


@pytest.mark.parametrize("rows", [1000, 10**6])
def test_diagnoses_in_batches_is_the_verdict_on_the_whole_table(demo, rows):
    diagnoses = demo["diagnoses_icd"].copy()
    batches = [diagnoses.iloc[i : i + rows] for i in range(0, len(diagnoses), rows)]
    whole = ex.validate_table("diagnoses_icd", diagnoses)
    batched = ex.validate_table_batches("diagnoses_icd", iter(batches))
    assert batched.passed and batched.metadata["rows"] == len(diagnoses)
    assert batched.metadata["expectations"] == whole.metadata["expectations"]

    # A bad row in the last batch only: the table fails, counted once, named as on the whole.
    diagnoses.loc[diagnoses.index[-1], "icd_version"] = 11
    diagnoses.loc[diagnoses.index[-2], "icd_code"] = pd.NA
    batches = [diagnoses.iloc[i : i + rows] for i in range(0, len(diagnoses), rows)]
    whole = ex.validate_table("diagnoses_icd", diagnoses)
    batched = ex.validate_table_batches("diagnoses_icd", iter(batches))
    assert_failed(batched, "expect_column_values_to_be_in_set(icd_version)")
    assert batched.failed_expectations == whole.failed_expectations
    assert batched.description == whole.description
    for key, value in whole.metadata.items():
        if key.endswith(("unexpected_count", "missing_count", "passed", "failed")):
            assert batched.metadata[key] == value, key
    null_code = "expect_column_values_to_not_be_null(icd_code)"
    assert batched.metadata[f"{null_code} unexpected_count"] == 1
    assert batched.metadata[f"{null_code} unexpected_percent"] == pytest.approx(
        whole.metadata[f"{null_code} unexpected_percent"]
    )
    with pytest.raises(ValueError, match="whole table"):
        ex.validate_table_batches("patients", iter([demo["patients"]]))


def test_notes_and_unknown_table():
    notes = pd.DataFrame(
        {
            "note_id": pd.array(["1-DS-1", "1-DS-1"], dtype="string"),
            "subject_id": pd.array([1, 1], dtype="Int64"),
            "hadm_id": pd.array([10, pd.NA], dtype="Int64"),
            "note_type": pd.array(["DS", "RR"], dtype="string"),
            "charttime": [T("2180-01-01"), T("2180-01-02")],
            "text": pd.array(["a", "b"], dtype="string"),
        }
    )
    assert ex.validate_table("notes", notes.iloc[:1]).passed
    assert ex.validate_table("notes", notes.iloc[:0]).passed  # no notes at all is fine
    assert_failed(ex.validate_table("notes", notes), "expect_column_values_to_be_unique(note_id)")
    with pytest.raises(ValueError, match="no rules for table"):
        ex.validate_table("chartevents", notes)


# -- lab ranges --------------------------------------------------------------------------------


def test_demo_labs_are_in_range(demo):
    outcome = ex.validate_lab_ranges(demo["labevents"], demo["d_labitems"])
    assert outcome.passed and not outcome.blocking, outcome.description
    assert outcome.metadata["sodium values"] > 1000
    assert outcome.metadata["analytes_absent"] == "none"


def _labs(itemid: int, values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"itemid": [itemid] * len(values), "valuenum": values})


def test_lab_range_failures():
    d_labitems = pd.DataFrame(
        {"itemid": [99001], "label": ["Sodium"], "fluid": ["Blood"], "category": ["Chemistry"]}
    )
    # One typo in 200 values is within `mostly`; sodium in the wrong unit is not.
    one_typo = pd.concat([_labs(50983, [140.0] * 199), _labs(50983, [14000.0])])
    assert ex.validate_lab_ranges(one_typo, d_labitems).passed
    wrong_unit = pd.concat([one_typo, _labs(99001, [140_000.0] * 10)])  # found by its label
    outcome = ex.validate_lab_ranges(wrong_unit, d_labitems)
    assert_failed(outcome, "expect_column_values_to_be_between(sodium)")
    assert not outcome.blocking
    assert "wbc" in outcome.metadata["analytes_absent"]
    assert "14000" not in json.dumps(outcome.metadata)  # counts, never values


# -- cohort ------------------------------------------------------------------------------------


def _cohort() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hadm_id": pd.array([10, 11, 20, 30, 40], dtype="Int64"),
            "subject_id": pd.array([1, 1, 2, 3, 4], dtype="Int64"),
            "split": ["train", "train", "train", "validation", "test"],
            "label": [1, 0, 0, 1, 0],
            "has_ehr": [True, True, True, True, False],
            "has_text": [True, True, False, True, True],
            "has_image": [True, False, True, True, False],
            "has_audio": [False, False, True, False, False],
        }
    )


def test_cohort_passes_and_fails():
    good = _cohort()
    outcome = ex.validate_cohort(good)
    assert outcome.passed and outcome.blocking, outcome.description
    assert outcome.metadata["expect_column_sum_to_be_between(train_label) observed_value"] == 1

    leak = good.copy()
    leak.loc[1, "split"] = "test"  # subject 1 now in train and test
    assert_failed(ex.validate_cohort(leak), "expect_column_values_to_be_between(splits_of_subject)")

    no_positive = good.assign(label=[0, 0, 0, 1, 1])
    assert_failed(ex.validate_cohort(no_positive), "expect_column_sum_to_be_between(train_label)")

    bad_label = good.assign(label=[1, 0, 2, 1, 0])
    assert_failed(ex.validate_cohort(bad_label), "expect_column_values_to_be_in_set(label)")

    outcome = ex.validate_cohort(good.iloc[:0])
    assert_failed(outcome, "expect_table_row_count_to_be_between")


def test_modality_coverage_warns_under_half():
    outcome = ex.validate_modality_coverage(_cohort())
    assert not outcome.blocking
    assert_failed(outcome, "expect_column_mean_to_be_between(has_audio)")
    assert outcome.failed_expectations == ["expect_column_mean_to_be_between(has_audio)"]
    assert outcome.metadata["coverage_audio"] == pytest.approx(0.2)
    full = _cohort().assign(has_audio=True)
    assert ex.validate_modality_coverage(full).passed


# -- DICOM index -------------------------------------------------------------------------------


def test_dicom_index():
    index = pd.DataFrame(
        {
            "path": ["dicom/a.dcm", "dicom/b.dcm", "dicom/c.dcm"],
            "transfer_syntax_uid": pd.array(
                ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", None], dtype="string"
            ),
            "photometric_interpretation": pd.array(
                ["MONOCHROME2", "MONOCHROME1", "RGB"], dtype="string"
            ),
        }
    )
    assert ex.validate_dicom_index(index).passed
    assert ex.validate_dicom_index(pd.DataFrame()).passed  # no images: nothing to warn about
    odd = index.copy()
    odd.loc[0, "transfer_syntax_uid"] = "1.2.3.4"
    odd.loc[1, "photometric_interpretation"] = "HSV"
    outcome = ex.validate_dicom_index(odd)
    assert not outcome.blocking
    assert_failed(outcome, "expect_column_values_to_be_in_set(transfer_syntax_uid)")
    assert_failed(outcome, "expect_column_values_to_be_in_set(photometric_interpretation)")


# -- the window --------------------------------------------------------------------------------


def test_window_edges():
    cohort = pd.DataFrame(
        {"hadm_id": pd.array([10, 20], dtype="Int64"), "admittime": [T("2180-01-01 08:00")] * 2}
    )
    inside = pd.DataFrame(
        {
            "hadm_id": pd.array([10, 10, 20], dtype="Int64"),
            "charttime": [T("2180-01-01 08:00"), T("2180-01-02 07:59:59"), T("2180-01-01 09:00")],
        }
    )
    outcome = ex.validate_window(inside, cohort, 24, "charttime")
    assert outcome.passed and outcome.blocking, outcome.description
    assert ex.validate_window(inside.iloc[:0], cohort, 24, "charttime").passed

    between = "expect_column_values_to_be_between(hours_since_admit)"
    at_end = inside.assign(charttime=[T("2180-01-02 08:00")] * 3)  # the end is outside
    assert_failed(ex.validate_window(at_end, cohort, 24, "charttime"), between)
    before = inside.assign(charttime=[T("2180-01-01 07:59")] * 3)
    assert_failed(ex.validate_window(before, cohort, 24, "charttime"), between)
    stranger = inside.assign(hadm_id=pd.array([10, 10, 99], dtype="Int64"))
    not_null = "expect_column_values_to_not_be_null(hours_since_admit)"
    assert_failed(ex.validate_window(stranger, cohort, 24, "charttime"), not_null)

    # In batches (a table too big to hold), a bad row in a later batch still fails the check.
    batches = [inside.iloc[:2], inside.iloc[2:]]
    assert ex.validate_window(iter(batches), cohort, 24, "charttime").passed
    assert ex.validate_window(iter([]), cohort, 24, "charttime").passed
    late = [inside.iloc[:2], at_end.iloc[2:]]
    outcome = ex.validate_window(iter(late), cohort, 24, "charttime")
    assert_failed(outcome, between)
    assert outcome.metadata == ex.validate_window(pd.concat(late), cohort, 24, "charttime").metadata


def test_window_on_demo_labs(demo):
    labs = demo["labevents"].dropna(subset=["hadm_id"])
    cohort = demo["admissions"][["hadm_id", "admittime"]]
    joined = labs.merge(cohort, on="hadm_id")
    hours = (joined["charttime"] - joined["admittime"]) / pd.Timedelta(hours=1)
    in_window = joined[(hours >= 0) & (hours < 24)]
    assert len(in_window) > 1000
    assert ex.validate_window(in_window, cohort, 24, "charttime").passed
    outcome = ex.validate_window(labs, cohort, 24, "charttime")
    assert_failed(outcome, "expect_column_values_to_be_between(hours_since_admit)")


# -- GX itself -----------------------------------------------------------------------------------


def test_gx_writes_nothing_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ex.validate_cohort(_cohort())
    ex.validate_modality_coverage(_cohort())
    assert list(tmp_path.iterdir()) == []
