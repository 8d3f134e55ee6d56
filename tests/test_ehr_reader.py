"""EHR and note tables: typed columns, exact row-numbered rejects, labevents streamed to Parquet."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinfuse.assets.ingest.counting import count_data_rows
from clinfuse.assets.ingest.ehr import reader as er
from clinfuse.assets.ingest.ehr.notes import NOTE_COLUMNS, read_notes

DEMO = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "mimic_iv_demo" / "hosp"

PATIENTS = """subject_id,gender,anchor_age,extra_col
1,F,50,x
2,M,abc,x
1,F,51,x
x3,M,40,x
3,M,,x
4,F,30,x
5,M,60.0,x
"""
ADMISSIONS = """subject_id,hadm_id,admittime,dischtime,race
1,100,2180-01-01 08:00:00,2180-01-05 10:00:00,WHITE
2,200,2180-01-01 08:00:00,2180-01-05 10:00:00,
9,900,2180-01-01 08:00:00,2180-01-05 10:00:00,
1,101,2180-13-01 00:00:00,2180-01-05 10:00:00,
1,100,2180-03-01 08:00:00,2180-03-05 10:00:00,
4,400,2181-01-05 00:00:00,2181-01-01 00:00:00,
4,401,2181-02-01 00:00:00,2181-02-03 00:00:00,ASIAN
5,500.0,2201-12-31 23:59:59,2202-01-02 00:00:00,
"""
# Row 9 holds a quoted comment spanning two physical lines: still one record.
LABEVENTS = """subject_id,hadm_id,itemid,charttime,valuenum,value,comments
1,100,51301,2180-01-01 09:00:00,7.5,7.5,
1,,51301,2180-01-02 09:00:00,,POS,
1,,51301,2179-01-01 09:00:00,5,5,
9,,51301,2180-01-01 09:00:00,5,5,
1,401,51301,2180-01-01 09:00:00,5,5,
1,100,51301,not a time,1,1,
1,100,abc,2180-01-01 09:00:00,1,1,
4,401,51301,2181-02-01 10:00:00,"1,5",x,"a, b"
1,100,51301,2180-01-01 11:00:00,3,3,"comment with
a newline"
1,100,51301,2180-01-01 12:00:00,xyz,xyz,
1,100,51301,2300-01-01 12:00:00,1,1,
,100,51301,2180-01-01 12:00:00,1,1,
5,,51301,2202-01-01 00:00:00,,,see comment
"""
D_LABITEMS = """itemid,label,fluid,category
51301,White Blood Cells,Blood,Hematology
51301,WBC again,Blood,Hematology
50912,,Blood,Chemistry
"""
DIAGNOSES = """subject_id,hadm_id,seq_num,icd_code,icd_version
1,100,1,J189,10
1,999,1,J189,10
9,100,1,J189,10
1,100,x,J189,10
4,100,1,0389,9
4,401,2,0389,9
"""
DISCHARGE = """note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text
1-DS-1,1,100,DS,1,2180-01-05 10:00:00,,"Discharge summary.
Two lines, with a comma."
1-DS-2,9,,DS,2,2180-01-05 10:00:00,,"unknown patient"
4-DS-1,4,100,DS,1,2181-02-02 10:00:00,,"admission of another patient"
"""
RADIOLOGY = """note_id,subject_id,hadm_id,note_type,charttime,text
1-RR-1,1,,RR,2180-01-01 10:00:00,Chest x-ray: linked by time.
1-RR-2,1,,RR,2179-06-01 10:00:00,Outpatient study.
1-RR-1,1,100,RR,2180-01-01 10:00:00,Repeated note id.
4-RR-1,4,401,RR,not a time,Bad time.
"""
TABLES = {
    "ehr/patients": PATIENTS,
    "ehr/admissions": ADMISSIONS,
    "ehr/labevents": LABEVENTS,
    "ehr/d_labitems": D_LABITEMS,
    "ehr/diagnoses_icd": DIAGNOSES,
    "note/discharge": DISCHARGE,
    "note/radiology": RADIOLOGY,
}


def make_landing(root: Path, gz: bool = False, tables: dict[str, str] | None = None) -> Path:
    for name, text in (tables or TABLES).items():
        path = root / f"{name}.csv{'.gz' if gz else ''}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if gz:
            path.write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            path.write_text(text)
    return root


def read_all(landing: Path, out: Path, chunksize: int = 1000) -> dict[str, er.TableRead]:
    patients = er.read_patients(landing, chunksize=chunksize)
    admissions = er.read_admissions(landing, patients.rows, chunksize=chunksize)
    return {
        "patients": patients,
        "admissions": admissions,
        "d_labitems": er.read_d_labitems(landing, chunksize=chunksize),
        "diagnoses_icd": er.read_diagnoses(
            landing, admissions.rows, patients.rows, chunksize=chunksize
        ),
        "labevents": er.stream_labevents(
            landing, out, admissions.rows, patients.rows, chunksize=chunksize
        ),
        "note": read_notes(landing, admissions.rows, patients.rows, chunksize=chunksize),
    }


def rejected(read: er.TableRead) -> dict[str, str]:
    return dict(zip(read.rejects["source"], read.rejects["reason"], strict=True))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, er.TableRead]]:
    root = tmp_path_factory.mktemp("planted")
    landing = make_landing(root / "landing")
    return landing, read_all(landing, root / "labs.parquet")


# -- planted bad rows ---------------------------------------------------------------------------


def test_patients_rejects_and_first_row_wins(planted):
    _, reads = planted
    read = reads["patients"]
    assert rejected(read) == {
        "ehr/patients.csv:2": "bad anchor_age: 'abc'",
        "ehr/patients.csv:3": "duplicate subject_id",
        "ehr/patients.csv:4": "bad subject_id: 'x3'",
        "ehr/patients.csv:5": "missing anchor_age",
    }
    rows = read.rows
    assert rows["subject_id"].tolist() == [1, 4, 5]
    assert rows.loc[rows["subject_id"] == 1, "anchor_age"].item() == 50  # the first row won
    assert list(rows.columns) == er.ts.PATIENTS.names  # extra_col never loaded, optional added
    assert rows["dod"].isna().all() and str(rows["dod"].dtype) == "datetime64[ns]"
    assert set(read.rejects["modality"]) == {"ehr"}


def test_admissions_rejects(planted):
    _, reads = planted
    read = reads["admissions"]
    assert rejected(read) == {
        "ehr/admissions.csv:2": "unknown patient",  # subject 2 was itself rejected
        "ehr/admissions.csv:3": "unknown patient",
        "ehr/admissions.csv:4": "bad admittime: '2180-13-01 00:00:00'",
        "ehr/admissions.csv:5": "duplicate hadm_id",
        "ehr/admissions.csv:6": "bad dischtime: before admittime",
    }
    rows = read.rows
    assert rows["hadm_id"].tolist() == [100, 401, 500]  # "500.0" is a whole number
    assert rows.loc[2, "admittime"] == pd.Timestamp("2201-12-31 23:59:59")  # shifted year, in ns
    assert str(rows["admittime"].dtype) == "datetime64[ns]"
    assert str(rows["race"].dtype) == "string" and rows["race"].isna().sum() == 1


def test_diagnoses_and_d_labitems_rejects(planted):
    _, reads = planted
    assert rejected(reads["diagnoses_icd"]) == {
        "ehr/diagnoses_icd.csv:2": "unknown admission",
        "ehr/diagnoses_icd.csv:3": "unknown patient",
        "ehr/diagnoses_icd.csv:4": "bad seq_num: 'x'",
        "ehr/diagnoses_icd.csv:5": "unknown admission",  # hadm 100 belongs to subject 1
    }
    assert reads["diagnoses_icd"].rows["icd_code"].tolist() == ["J189", "0389"]  # leading zero
    d_labitems = reads["d_labitems"]
    assert rejected(d_labitems) == {"ehr/d_labitems.csv:2": "duplicate itemid"}
    assert d_labitems.rows["label"].isna().sum() == 1  # an empty label is a good row


def test_labevents_rejects_linking_and_parquet(planted):
    landing, reads = planted
    read = reads["labevents"]
    assert rejected(read) == {
        "ehr/labevents.csv:4": "unknown patient",
        "ehr/labevents.csv:5": "unknown admission",
        "ehr/labevents.csv:6": "bad charttime: 'not a time'",
        "ehr/labevents.csv:7": "bad itemid: 'abc'",
        "ehr/labevents.csv:8": "bad valuenum: '1,5'",
        "ehr/labevents.csv:10": "bad valuenum: 'xyz'",  # numbered after the two-line record
        "ehr/labevents.csv:11": "bad charttime: '2300-01-01 12:00:00'",  # beyond datetime64[ns]
        "ehr/labevents.csv:12": "missing subject_id",
    }
    assert read.rows.empty and read.file == "ehr/labevents.csv"
    labs = pq.read_table(landing.parent / "labs.parquet")
    assert labs.num_rows == read.ingested == 5
    assert labs.schema.field("charttime").type == pa.timestamp("ns")
    assert labs.schema.field("hadm_id").type == pa.int64()
    assert labs.schema.field("valuenum").type == pa.float64()
    assert labs.schema.field("value").type == pa.string()
    assert "comments" not in labs.schema.names
    frame = labs.to_pandas()
    linked = frame[~frame["hadm_id_given"]]
    # Rows 2 and 13 lie inside admissions 100 and 500; row 3 a year before any (outpatient).
    assert linked["hadm_id"].astype("Int64").tolist() == [100, pd.NA, 500]
    assert frame["valuenum"].isna().sum() == 2  # empty valuenum: a text result, a good row


def test_notes(planted):
    _, reads = planted
    read = reads["note"]
    assert rejected(read) == {
        "note/discharge.csv:2": "unknown patient",
        "note/discharge.csv:3": "unknown admission",
        "note/radiology.csv:3": "duplicate note_id",
        "note/radiology.csv:4": "bad charttime: 'not a time'",
    }
    rows = read.rows.set_index("note_id")
    assert list(read.rows.columns) == NOTE_COLUMNS
    assert rows.loc["1-DS-1", "text"] == "Discharge summary.\nTwo lines, with a comma."
    assert rows.loc["1-RR-1", "hadm_id"] == 100 and not rows.loc["1-RR-1", "hadm_id_given"]
    assert pd.isna(rows.loc["1-RR-2", "hadm_id"])  # in no admission: kept, used by none
    assert set(read.rows["source_table"]) == {"note/discharge.csv", "note/radiology.csv"}
    assert set(read.rejects["modality"]) == {"note"}


def test_seen_is_ingested_plus_quarantined_and_matches_accounting(planted):
    landing, reads = planted
    for name, read in reads.items():
        assert read.seen == read.ingested + len(read.rejects), name
    for name in ("patients", "admissions", "labevents", "d_labitems", "diagnoses_icd"):
        assert reads[name].seen == count_data_rows(landing / f"ehr/{name}.csv"), name
    notes = sum(count_data_rows(p) for p in (landing / "note").iterdir())
    assert reads["note"].seen == notes


# -- file formats and chunking ------------------------------------------------------------------


def test_gzip_reads_identically(planted, tmp_path):
    _, plain = planted
    landing = make_landing(tmp_path / "landing", gz=True)
    packed = read_all(landing, tmp_path / "labs.parquet")
    for name, read in plain.items():
        other = packed[name]
        rows = other.rows
        if "source_table" in rows:
            rows = rows.assign(source_table=rows["source_table"].str.removesuffix(".gz"))
        pd.testing.assert_frame_equal(read.rows, rows)
        sources = other.rejects["source"].str.replace(".csv.gz:", ".csv:", regex=False)
        assert sources.tolist() == read.rejects["source"].tolist(), name
        assert other.rejects["reason"].tolist() == read.rejects["reason"].tolist(), name
    assert packed["labevents"].file == "ehr/labevents.csv.gz"
    a = pq.read_table(tmp_path / "labs.parquet")
    b = pq.read_table(planted[0].parent / "labs.parquet")
    assert a.equals(b)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_small_chunks_give_the_same_rows_and_row_numbers(planted, tmp_path, chunksize):
    landing, reads = planted
    out = tmp_path / "labs.parquet"
    patients, admissions = reads["patients"].rows, reads["admissions"].rows
    read = er.stream_labevents(landing, out, admissions, patients, chunksize=chunksize)
    assert rejected(read) == rejected(reads["labevents"])
    whole = pq.read_table(landing.parent / "labs.parquet")
    chunked = pq.read_table(out)
    assert chunked.num_rows == read.ingested and chunked.schema == whole.schema
    assert chunked.to_pandas().equals(whole.to_pandas())
    notes = read_notes(landing, admissions, patients, chunksize=chunksize)
    assert rejected(notes) == rejected(reads["note"])


@pytest.mark.parametrize("chunksize", [2, 1000])
def test_notes_streamed_to_parquet_are_the_rows_read_in_memory(planted, tmp_path, chunksize):
    landing, reads = planted
    patients, admissions = reads["patients"].rows, reads["admissions"].rows
    out = tmp_path / "notes.parquet"
    streamed = read_notes(landing, admissions, patients, chunksize=chunksize, out=out)
    stored = pd.read_parquet(out)
    assert streamed.rows.empty and streamed.ingested == len(stored) == reads["note"].ingested
    assert rejected(streamed) == rejected(reads["note"]) and streamed.seen == reads["note"].seen
    pd.testing.assert_frame_equal(stored, reads["note"].rows)
    assert not list(tmp_path.glob("*.partial"))


def test_diagnoses_streamed_to_parquet_are_the_rows_read_in_memory(planted, tmp_path):
    landing, reads = planted
    patients, admissions = reads["patients"].rows, reads["admissions"].rows
    out = tmp_path / "diagnoses.parquet"
    streamed = er.read_diagnoses(landing, admissions, patients, chunksize=2, out=out)
    assert streamed.rows.empty and streamed.ingested == reads["diagnoses_icd"].ingested > 0
    assert rejected(streamed) == rejected(reads["diagnoses_icd"])
    pd.testing.assert_frame_equal(pd.read_parquet(out), reads["diagnoses_icd"].rows)


def test_notes_stream_that_fails_leaves_no_file(planted, tmp_path):
    landing, reads = planted
    out = tmp_path / "notes.parquet"

    def failing(rows: pd.DataFrame) -> pd.DataFrame:
        raise RuntimeError("de-identifier died")

    with pytest.raises(RuntimeError, match="died"):
        read_notes(landing, reads["admissions"].rows, reads["patients"].rows, keep=failing, out=out)
    assert list(tmp_path.iterdir()) == []


def test_missing_required_column_raises(tmp_path):
    bad = {**TABLES, "ehr/labevents": "subject_id,hadm_id,valuenum\n1,100,2\n"}
    landing = make_landing(tmp_path, tables=bad)
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    with pytest.raises(er.MissingColumnsError) as caught:
        er.stream_labevents(landing, tmp_path / "labs.parquet", admissions, patients)
    assert caught.value.table == "ehr/labevents.csv"
    assert caught.value.missing == ("itemid", "charttime")
    assert "ehr/labevents.csv lacks required columns: itemid, charttime" in str(caught.value)


def test_both_csv_and_gz_is_an_error(tmp_path):
    make_landing(tmp_path, tables={"ehr/patients": PATIENTS})
    make_landing(tmp_path, gz=True, tables={"ehr/patients": PATIENTS})
    with pytest.raises(er.AmbiguousTableError, match="ehr/patients.csv and ehr/patients.csv.gz"):
        er.read_patients(tmp_path)


def test_absent_tables_read_empty_with_their_schema(tmp_path):
    (tmp_path / "ehr").mkdir()
    patients = er.read_patients(tmp_path)
    assert patients.file is None and patients.seen == patients.ingested == 0
    assert str(patients.rows["subject_id"].dtype) == "Int64"
    admissions = er.read_admissions(tmp_path, patients.rows)
    read = er.stream_labevents(tmp_path, tmp_path / "labs.parquet", admissions.rows, patients.rows)
    table = pq.read_table(tmp_path / "labs.parquet")
    assert read.seen == table.num_rows == 0 and "hadm_id_given" in table.schema.names
    notes = read_notes(tmp_path, admissions.rows, patients.rows)
    assert notes.seen == 0 and list(notes.rows.columns) == NOTE_COLUMNS
    streamed = read_notes(tmp_path, admissions.rows, patients.rows, out=tmp_path / "notes.pq")
    stored = pd.read_parquet(tmp_path / "notes.pq")
    assert streamed.ingested == len(stored) == 0 and list(stored.columns) == NOTE_COLUMNS


@pytest.mark.parametrize("chunksize", [1, 2, 100])
def test_extra_field_and_blank_line_are_rejected_in_place(tmp_path, chunksize):
    text = "itemid,label\n1,a\n2,b,EXTRA\n\n3,c\n"
    landing = make_landing(tmp_path, tables={"ehr/d_labitems": text})
    read = er.read_d_labitems(landing, chunksize=chunksize)
    assert rejected(read) == {
        "ehr/d_labitems.csv:2": "bad row: wrong number of fields",
        "ehr/d_labitems.csv:3": "missing itemid",  # a blank line is a record, as csv counts it
    }
    assert read.rows["itemid"].tolist() == [1, 3]
    assert read.seen == count_data_rows(landing / "ehr/d_labitems.csv") == 4


def test_garbled_optional_cell_is_counted_not_rejected(tmp_path):
    text = "subject_id,gender,anchor_age,dod\n1,F,50,2180-01-01\n2,M,60,someday\n"
    landing = make_landing(tmp_path, tables={"ehr/patients": text})
    read = er.read_patients(landing)
    assert read.rejects.empty and read.coerced == {"dod": 1}
    assert read.rows["dod"].isna().tolist() == [False, True]


# -- the real MIMIC-IV demo ---------------------------------------------------------------------


@pytest.mark.skipif(not DEMO.is_dir(), reason="MIMIC-IV demo not present")
def test_mimic_demo_reads_without_rejects(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "ehr").symlink_to(DEMO, target_is_directory=True)
    reads = read_all(landing, tmp_path / "labs.parquet", chunksize=er.CHUNKSIZE)
    expected = {
        "patients": 100,
        "admissions": 275,
        "d_labitems": 1622,
        "diagnoses_icd": 4506,
        "labevents": 107_727,
    }
    for name, count in expected.items():
        read = reads[name]
        assert read.seen == read.ingested == count, name
        assert read.rejects.empty and not read.coerced, name
    labs = pq.read_table(tmp_path / "labs.parquet").to_pandas()
    assert len(labs) == 107_727
    assert (~labs["hadm_id_given"]).sum() == 28_420
    assert labs["valuenum"].isna().sum() == 12_481
    linked = labs[~labs["hadm_id_given"] & labs["hadm_id"].notna()]
    assert 0 < len(linked) < 28_420  # some linked by charttime, the rest outpatient
    assert labs["charttime"].dt.year.between(2100, 2220).all()
    admissions = reads["admissions"].rows
    assert (admissions["dischtime"] >= admissions["admittime"]).all()
