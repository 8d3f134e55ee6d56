"""Tables out of core: DuckDB's paths give exactly what the in-memory (pandas) paths give.

labevents tokenized by DuckDB vs pandas on generated odd files; the window cut by DuckDB vs
read_window_labs; LabFeaturizer on a Parquet file vs a DataFrame; diagnoses and notes read in
chunks vs whole; the generator's lab density.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clinfuse.assets.cohort.window import read_window_labs, window_lab_admissions, write_window_labs
from clinfuse.assets.features import labs as labs_module
from clinfuse.assets.features.labs import LabFeaturizer
from clinfuse.assets.ingest.counting import count_data_rows
from clinfuse.assets.ingest.ehr import reader as er
from clinfuse.assets.ingest.ehr.csv_chunks import inspect_table, scan_file
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.ingest.ehr.notes import read_notes
from clinfuse.assets.ingest.encodings import detect_encoding
from clinfuse.synthetic import generate, truth_dir
from clinfuse.synthetic.tasks import PNEUMONIA
from tests.test_ehr_reader import ADMISSIONS, PATIENTS, TABLES, make_landing

HEADER = "subject_id,hadm_id,itemid,charttime,valuenum,value,comments"
GOOD = ["1,100,51301,2180-01-01 09:00:00,7.5,7.5,", "1,,50912,2180-01-02 10:00:00,1.1,1.1,x"]
# Cells that are odd one way or another: each is good, bad, or odd for the tokenizer.
ODD_CELLS = [
    "",
    " ",
    " 7 ",
    "\u00a0",
    "7\u2003",
    "abc",
    "1e3",
    "1e999",
    "24181354.0",
    "٣",
    "2180-02-30 00:00:00",
    "2180-01-01T09:00:00",
    "2180-01-01",
    "2300-01-01 00:00:00",
    '"quoted, comma"',
    '"two\nlines"',
    '"say ""hi"""',
    ' "spaced"',
    '"tail" ',
    "café",
    "x\ty",
]


def _odd_labevents(rng: random.Random, newline: str) -> str:
    lines = [HEADER]
    for _ in range(rng.randint(3, 12)):
        if rng.random() < 0.5:
            lines.append(rng.choice(GOOD))
            continue
        cells = rng.choice(GOOD).split(",")
        cells[rng.randrange(len(cells))] = rng.choice(ODD_CELLS)
        if rng.random() < 0.08:
            cells.append("extra")
        if rng.random() < 0.05:
            cells = cells[:-1]
        lines.append(",".join(cells))
        if rng.random() < 0.05:
            lines.append("")  # a blank line: a record for csv.reader
    return newline.join(lines) + (newline if rng.random() < 0.9 else "")


def _zone(root: Path, labevents: bytes, gz: bool = False) -> Path:
    landing = make_landing(root, tables={"ehr/patients": PATIENTS, "ehr/admissions": ADMISSIONS})
    name = "ehr/labevents.csv" + (".gz" if gz else "")
    (landing / name).write_bytes(gzip.compress(labevents, mtime=0) if gz else labevents)
    return landing


def _both(landing: Path, tmp: Path, chunksize: int = 4) -> tuple[er.TableRead, er.TableRead]:
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    runs = []
    for use_engine in (True, False):
        out = tmp / f"labs-{use_engine}.parquet"
        try:
            read = er.stream_labevents(
                landing, out, admissions, patients, chunksize=chunksize, use_engine=use_engine
            )
        except er.UnreadableTableError as error:
            read = error  # both must fail alike
        runs.append(read)
    return runs[0], runs[1]


def _assert_same(engine, pandas_read, tmp: Path) -> None:
    if isinstance(pandas_read, Exception):
        assert isinstance(engine, Exception) and str(engine) == str(pandas_read)
        return
    pd.testing.assert_frame_equal(engine.rejects, pandas_read.rejects)
    assert (engine.seen, engine.ingested, engine.coerced, engine.encodings) == (
        pandas_read.seen,
        pandas_read.ingested,
        pandas_read.coerced,
        pandas_read.encodings,
    )
    a, b = pq.read_table(tmp / "labs-True.parquet"), pq.read_table(tmp / "labs-False.parquet")
    assert a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


@pytest.mark.parametrize("seed", range(40))
def test_engine_and_pandas_read_odd_labevents_alike(tmp_path, seed):
    rng = random.Random(seed)
    newline = "\r\n" if seed % 4 == 3 else "\n"
    text = _odd_labevents(rng, newline)
    if seed % 5 == 4:  # now and then a line end of the other kind
        text = text.replace(newline, "\r\n" if newline == "\n" else "\n", 1)
    encoding = ("utf-8", "utf-8-sig", "latin-1", "cp1252")[seed % 4]
    data = text.replace("٣", "3" if encoding in ("latin-1", "cp1252") else "٣")
    data = data.replace("\u2003", " " if encoding in ("latin-1", "cp1252") else "\u2003")
    raw = data.encode(encoding) + (b"\x80\xff" if encoding == "latin-1" else b"")
    landing = _zone(tmp_path / "zone", raw, gz=seed % 3 == 0)
    engine, pandas_read = _both(landing, tmp_path)
    _assert_same(engine, pandas_read, tmp_path)
    if not isinstance(engine, Exception):
        file = landing / engine.file
        assert engine.seen == count_data_rows(file)


def test_the_engine_reads_the_planted_table_and_regular_files(tmp_path):
    landing = make_landing(tmp_path / "zone")
    table = inspect_table(landing, landing / "ehr/labevents.csv", layout=True)
    assert table.engine_readable and table.layout.newline == "\n"
    engine, pandas_read = _both(landing, tmp_path, chunksize=3)
    assert engine.tokenizers == {"ehr/labevents.csv": er.ENGINE}
    assert pandas_read.tokenizers == {"ehr/labevents.csv": er.PANDAS}
    _assert_same(engine, pandas_read, tmp_path)


@pytest.mark.parametrize(
    "text, engine",
    [
        (HEADER + "\n" + GOOD[0] + "\n", True),
        (HEADER + "\r\n" + GOOD[0] + "\r\n", True),
        (HEADER + "\n" + GOOD[0] + "\n\n", False),  # a blank line
        (HEADER + "\n" + GOOD[0] + "\r\n", False),  # both line ends
        (HEADER + "\n" + GOOD[0] + ', "x"\n', False),  # a blank before a quote
        (HEADER + "\n" + GOOD[0] + "\r", False),  # a lone CR
    ],
)
def test_only_regular_layouts_go_to_the_engine(tmp_path, text, engine):
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode())
    encoding, layout = scan_file(path, compressed=False)
    assert encoding == detect_encoding(path) and layout.engine is engine


def test_the_scan_finds_what_straddles_two_blocks(tmp_path, monkeypatch):
    from clinfuse.assets.ingest.ehr import csv_chunks

    monkeypatch.setattr(csv_chunks, "BLOCK", 3)
    for text, engine in (("ab\n\ncd\n", False), ("abc\r\ndef\r\n", True), ('ab\n "c"\n', False)):
        path = tmp_path / "t.csv"
        path.write_bytes(text.encode())
        assert csv_chunks.scan_file(path, False)[1].engine is engine, text


def test_a_file_the_engine_rejects_midway_is_read_by_pandas(tmp_path):
    rows = [GOOD[0]] * 50 + ['1,100,51301,2180-01-01 09:00:00,"7.5"x,7.5,'] + [GOOD[1]] * 5
    landing = _zone(tmp_path / "zone", (HEADER + "\n" + "\n".join(rows) + "\n").encode())
    engine, pandas_read = _both(landing, tmp_path, chunksize=10)
    assert engine.tokenizers == {"ehr/labevents.csv": er.PANDAS}  # DuckDB gave up
    _assert_same(engine, pandas_read, tmp_path)


def _clean_labevents(rng: random.Random, rows: int) -> str:
    """Cells the engine types itself: every kind's commonest shapes, and empty ones."""

    def number() -> str:
        whole = str(rng.randint(0, 10 ** rng.randint(1, 20)))
        return rng.choice(
            [whole, f"{whole}.{rng.randint(0, 999)}", f".{rng.randint(0, 99)}", f"{whole}.",
             f"-{whole}e{rng.randint(-30, 30)}", f"+{whole}E-{rng.randint(0, 9)}", ""]
        )  # fmt: skip

    def when() -> str:
        year = rng.choice([1700, 2104, 2180, 2200, 2261])
        day = rng.randint(1, 29 if year % 4 == 0 and year % 100 else 28)
        return f"{year}-02-{day:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"

    lines = [HEADER + ",labevent_id,flag,priority"]
    for _ in range(rows):
        subject = rng.choice(["1", "4", "5", "-0", "0004", "", str(rng.randint(0, 10**18 - 1))])
        hadm = rng.choice(["100", "401", "", "", "999"])
        text = rng.choice(["NEG", "a b", "<0.5", "___", "", "x,y"])
        cells = [subject, hadm, rng.choice(["51301", "", "0"]), rng.choice([when(), ""]),
                 number(), text, rng.choice(["", "ok"]), rng.choice(["", "-7", "0123456789"]),
                 rng.choice(["abnormal", ""]), rng.choice(["STAT", "ROUTINE", ""])]  # fmt: skip
        lines.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_clean_chunks_are_typed_by_the_engine_as_pandas_types_them(tmp_path, monkeypatch, seed):
    text = _clean_labevents(random.Random(seed), 300)
    landing = _zone(tmp_path / "zone", text.encode(), gz=bool(seed % 2))
    from clinfuse.assets.ingest.ehr import table_schema

    parse_columns = table_schema.parse_columns
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return parse_columns(*args, **kwargs)

    monkeypatch.setattr(table_schema, "parse_columns", counted)
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    calls.clear()
    er.stream_labevents(landing, tmp_path / "clean.parquet", admissions, patients, chunksize=64)
    assert not calls  # every chunk clean: typed by DuckDB
    engine, pandas_read = _both(landing, tmp_path, chunksize=64)
    assert engine.tokenizers == {engine.file: er.ENGINE}
    assert not engine.rejects.empty  # missing ids, unknown patients: rejects of the clean path
    _assert_same(engine, pandas_read, tmp_path)


def test_engine_settings(tmp_path):
    config = EngineConfig.for_workdir(tmp_path, workers=3)
    assert config.threads == 3 and config.temp_directory == tmp_path / "tmp" / "duckdb"
    assert 256 <= config.memory_limit_mb <= 2048


# -- the window and the lab features --------------------------------------------------------


def _labs_and_cohort() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n_adm = 60
    admit = pd.Timestamp("2180-01-01") + pd.to_timedelta(rng.integers(0, 10_000, n_adm), "h")
    cohort = pd.DataFrame(
        {
            "hadm_id": np.arange(100, 100 + n_adm),
            "subject_id": np.arange(1, 1 + n_adm),
            "admittime": admit,
            "split": np.where(np.arange(n_adm) % 3 == 0, "test", "train"),
        }
    )
    rows = 4000
    hadm = rng.integers(98, 100 + n_adm, rows)  # 98, 99: outside the cohort
    start = pd.Series(admit, index=cohort["hadm_id"]).reindex(hadm).fillna(admit[0]).to_numpy()
    hours = rng.choice([-1.0, 0.0, 0.5, 3.0, 3.0, 23.99, 24.0, 30.0], rows)  # ties at 3 h
    labs = pd.DataFrame(
        {
            "subject_id": (hadm - 99).astype("int64"),
            "hadm_id": pd.array(np.where(rng.random(rows) < 0.05, -1, hadm), dtype="Int64"),
            "itemid": rng.choice([50912, 51301, 50983, 51222], rows),
            "charttime": start + pd.to_timedelta(hours, "h"),
            "valuenum": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(5, 2, rows)),
        }
    )
    labs["hadm_id"] = labs["hadm_id"].where(labs["hadm_id"] != -1)  # outpatient labs
    patients = pd.DataFrame(
        {
            "subject_id": cohort["subject_id"],
            "gender": np.where(np.arange(n_adm) % 2, "F", "M"),
            "anchor_age": 60,
        }
    )
    return labs, cohort, patients


def test_the_window_in_the_engine_is_read_window_labs(tmp_path):
    labs, cohort, _ = _labs_and_cohort()
    path = tmp_path / "labs.parquet"
    labs.to_parquet(path)
    expected = read_window_labs(labs, cohort, 24)
    count = write_window_labs(path, cohort, 24, tmp_path / "window.parquet")
    window = pd.read_parquet(tmp_path / "window.parquet")
    assert count == len(expected) > 0
    pd.testing.assert_frame_equal(window, expected, check_dtype=False)
    assert window_lab_admissions(path, cohort, 24) == set(expected["hadm_id"].astype(int))
    folder = tmp_path / "parts"
    folder.mkdir()
    labs.iloc[:1500].to_parquet(folder / "a.parquet")
    labs.iloc[1500:].to_parquet(folder / "b.parquet")
    write_window_labs(folder, cohort, 24, tmp_path / "w2.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "w2.parquet"), window)


@pytest.mark.parametrize("stream_rows", [7, 1_000_000])
def test_lab_features_from_parquet_are_bit_for_bit_the_in_memory_ones(
    tmp_path, monkeypatch, stream_rows
):
    monkeypatch.setattr(labs_module, "STREAM_ROWS", stream_rows)  # groups cut by batches
    labs, cohort, patients = _labs_and_cohort()
    labs.to_parquet(tmp_path / "labs.parquet")
    write_window_labs(tmp_path / "labs.parquet", cohort, 24, tmp_path / "window.parquet")
    window = read_window_labs(labs, cohort, 24)
    train = cohort[cohort["split"] == "train"]
    memory = LabFeaturizer(max_items=3).fit(window, train, patients)
    engine = LabFeaturizer(max_items=3).fit(tmp_path / "window.parquet", train, patients)
    assert engine.to_dict() == memory.to_dict()
    a = memory.transform(window, cohort, patients)
    b = engine.transform(tmp_path / "window.parquet", cohort, patients)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_lab_features_from_an_empty_window(tmp_path):
    labs, cohort, patients = _labs_and_cohort()
    labs.iloc[:0].to_parquet(tmp_path / "labs.parquet")
    assert write_window_labs(tmp_path / "labs.parquet", cohort, 24, tmp_path / "w.parquet") == 0
    fitted = LabFeaturizer().fit(tmp_path / "w.parquet", cohort, patients)
    table = fitted.transform(tmp_path / "w.parquet", cohort, patients)
    assert fitted.items_ == [] and len(table) == len(cohort) and not table.isna().any().any()


# -- diagnoses and notes in chunks ----------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 2, 1000])
def test_diagnoses_and_notes_in_chunks_are_the_whole_table(tmp_path, chunksize):
    landing = make_landing(tmp_path / "zone", tables=TABLES)
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    whole = er.read_diagnoses(landing, admissions, patients, chunksize=10_000)
    part = er.read_diagnoses(landing, admissions, patients, chunksize=chunksize)
    pd.testing.assert_frame_equal(part.rows, whole.rows)
    pd.testing.assert_frame_equal(part.rejects, whole.rejects)
    seen: list[int] = []

    def keep(rows: pd.DataFrame) -> pd.DataFrame:
        seen.append(len(rows))
        return rows.assign(text=rows["text"].str.upper())

    notes = read_notes(landing, admissions, patients, chunksize=chunksize, keep=keep)
    reference = read_notes(landing, admissions, patients, chunksize=10_000)
    expected = reference.rows.assign(text=reference.rows["text"].str.upper())
    pd.testing.assert_frame_equal(notes.rows, expected)
    pd.testing.assert_frame_equal(notes.rejects, reference.rejects)
    assert notes.seen == reference.seen and sum(seen) == len(expected)
    assert max(seen) <= chunksize


# -- the generator's lab density ------------------------------------------------------------


def test_lab_density_adds_label_free_rows_only(tmp_path):
    plain, dense = tmp_path / "plain", tmp_path / "dense"
    generate(plain, admissions=12, seed=4, image_size=32)
    summary = generate(dense, admissions=12, seed=4, image_size=32, labs_per_admission=300)
    labs = pd.read_csv(dense / "ehr/labevents.csv.gz", dtype=str, keep_default_na=False)
    before = pd.read_csv(plain / "ehr/labevents.csv.gz", dtype=str, keep_default_na=False)
    assert len(labs) == summary["inputs"]["ehr"]["labevents"] >= 12 * 300
    assert labs["labevent_id"].astype(int).tolist() == list(range(1, len(labs) + 1))
    extra = labs[~labs["specimen_id"].isin(before["specimen_id"])]
    assert not set(extra["itemid"].astype(int)) & set(PNEUMONIA.labs.values())
    assert (extra["value"] == "___").mean() < 0.1 and (extra["hadm_id"] == "").mean() < 0.2
    for name in ("admissions.parquet", "leaks.csv"):  # the same truth, the same leaks' times
        a, b = truth_dir(plain) / name, truth_dir(dense) / name
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    landing = dense
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    read = er.stream_labevents(landing, tmp_path / "labs.parquet", admissions, patients)
    assert read.rejects.empty and read.ingested == len(labs)
    assert read.tokenizers == {"ehr/labevents.csv.gz": er.ENGINE}
