"""Note de-identification (assets/ingest/ehr/deid.py) and the TF-IDF vocabulary rule.

Unit tests of what is replaced and what passes, then one tiny pipeline run over a landing zone
whose notes carry planted identifiers: no byte the run writes may hold any of them.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import os
import socket
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.assets.features.text import NoteEmbedder, TfidfModel
from clinfuse.assets.ingest.ehr import deid
from clinfuse.assets.ingest.ehr.deid import NoteDeidentifier, deidentify_texts
from tests.conftest import load_champion, test_split_requests


@pytest.fixture(scope="module")
def deidentifier() -> NoteDeidentifier:
    return NoteDeidentifier()


def _clean(deidentifier: NoteDeidentifier, text: str) -> str:
    return deidentifier.text(text)[0]


# -- what is replaced ----------------------------------------------------------------------------

NAMES = [
    ("Mr. John Qwertyson is a 67 year old man.", "Mr. [NAME] is a 67 year old man."),
    ("Mrs. Jane Q. Doe-Smith presents.", "Mrs. [NAME] presents."),
    ("Patient: Qwertyson, John\nAge: 67", "Patient: [NAME]\nAge: 67"),
    ("Name: John Qwertyson  Unit No: ___", "Name: [NAME]  Unit No: ___"),
    ("Pt John Qwertyson denies pain.", "Pt [NAME] denies pain."),
    ("Attending: Alice Zyxwood, MD", "Attending: [NAME], MD"),
    ("Plan as above.\n- Alice Zyxwood\n", "Plan as above.\n- [NAME]\n"),
    ("Seen by DR. ZYXWOOD today.", "Seen by DR. [NAME] today."),
    ("Qwertyson, John\n", "[NAME]\n"),
]


@pytest.mark.parametrize(("text", "expected"), NAMES)
def test_names_in_the_places_clinicians_write_them_are_replaced(deidentifier, text, expected):
    assert _clean(deidentifier, text) == expected


def test_a_found_name_is_replaced_everywhere_else_in_the_note(deidentifier):
    text = "Discussed with Dr. Alice Zyxwood. Zyxwood agrees; ZYXWOOD to call back. Alice ok."
    clean, counts = deidentifier.text(text)
    assert "zyxwood" not in clean.lower() and "Alice" not in clean
    assert clean.startswith("Discussed with Dr. [NAME].") and counts["[NAME]"] == 4


def test_one_clinician_across_many_patients_notes(deidentifier):
    notes = [f"Patient {i}: cough x3 days.\nSeen with Dr. Alice Zyxwood.\n" for i in range(40)]
    cleaned = deidentifier.series(pd.Series(notes, dtype="string"))
    assert not cleaned.texts.str.contains("Zyxwood").any()
    assert cleaned.notes_changed == 40 and cleaned.entities["[NAME]"] == 40


PHONES = [
    "617-555-0123",
    "(617) 555-0123",
    "(617)555-0123",
    "617.555.0123",
    "617 555 0123",
    "+1 617 555 0123",
    "+44 20 7946 0958",
    "555-0199-7731",
    "555-0123",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_in_several_formats_are_replaced(deidentifier, phone):
    assert _clean(deidentifier, f"Call {phone} with results.") == "Call [PHONE] with results."


def test_a_bare_ten_digit_phone_number_is_replaced(deidentifier):
    clean = _clean(deidentifier, "Cell 6175550123.")
    assert clean in ("Cell [PHONE].", "Cell [ID].")


@pytest.mark.parametrize(
    "email", ["zq.marker@example.org", "j.doe@lab.local", "First.Last+tag@sub.hospital.co.uk"]
)
def test_email_addresses_are_replaced(deidentifier, email):
    assert _clean(deidentifier, f"Contact {email} today.") == "Contact [EMAIL] today."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MRN 00123456", "MRN [ID]"),
        ("MRN: 00123456", "MRN: [ID]"),
        ("MR#: 7789123", "MR#: [ID]"),
        ("Medical Record Number 4455667", "Medical Record Number [ID]"),
        ("Unit No: 44556677", "Unit No: [ID]"),
        ("Acct # A1234567", "Acct # [ID]"),
        ("SSN 123-45-6789", "SSN [ID]"),
        ("ref 99887766 on file", "ref [ID] on file"),
    ],
)
def test_record_numbers_are_replaced_and_their_label_kept(deidentifier, text, expected):
    assert _clean(deidentifier, text) == expected


@pytest.mark.parametrize(
    "date",
    [
        "01/05/2180",
        "1/5/80",
        "2180-01-09",
        "2180/01/09",
        "05.01.2180",
        "January 5, 2180",
        "Jan. 5th, 2180",
        "5 January 2180",
        "March 2180",
        "05-Jan-2180",
    ],
)
def test_dates_are_replaced(deidentifier, date):
    assert _clean(deidentifier, f"Seen on {date} in clinic.") == "Seen on [DATE] in clinic."


# -- what passes ---------------------------------------------------------------------------------

CLINICAL = (
    "T 38.5°C, HR 110, BP 120/80, RR 22, SpO2 88% on RA. WBC 12.3, Hgb 10.2, Plt 250,000, "
    "Cr 1.1, K 4.5, INR 1.2, lactate 2.1 mmol/L, pain 5/10, GCS 15, 2/4 bottles positive.\n"
    "Na 135-145. Medications on Admission:\n- lisinopril 10 mg daily\n- metformin 500 mg BID\n"
    "Impression: Patchy right lower lobe opacity concerning for pneumonia. Moderate MR.\n"
    "History of MS. Chief Complaint: weakness. Pt denies chest pain. Patient is a 67 year old.\n"
    "CC: Shortness of breath. Drug name: Lisinopril. Chest X-ray: Clear.\n"
    "Dose 0.125 mg, ratio 1:10, 3.5 x 2.1 cm, heparin 5000 units, time 08:00:00."
)
MIMIC = (
    "Name: ___  Unit No: ___\nAdmission Date: ___  Discharge Date: ___\nDate of Birth: ___\n"
    "Sex: F\nService: MEDICINE\nAttending: ___\nDr. ___ was paged; call ___ at ___.\n"
    "Followup Instructions:\n___\n"
)


@pytest.mark.parametrize("text", [CLINICAL, MIMIC])
def test_clinical_values_and_mimic_placeholders_pass_unchanged(deidentifier, text):
    assert deidentifier.text(text) == (text, {})


def test_the_generators_notes_pass_unchanged(deidentifier, tmp_path):
    from clinfuse.synthetic import generate

    generate(tmp_path / "landing", admissions=40, seed=5, image_size=32)
    texts = [
        t for f in sorted((tmp_path / "landing" / "note").glob("*.csv*")) for t in _read(f)["text"]
    ]
    cleaned = deidentifier.series(pd.Series(texts, dtype="string"))
    assert len(texts) > 40 and cleaned.notes_changed == 0
    assert cleaned.texts.tolist() == texts


def test_de_identification_is_idempotent(deidentifier):
    text = "\n".join([n for n, _ in NAMES] + PHONES + ["MRN 00123456", "01/05/2180", CLINICAL])
    once = _clean(deidentifier, text)
    assert once != text and _clean(deidentifier, once) == once


# -- columns, counts, pool, network, logs -------------------------------------------------------


def test_a_column_keeps_index_dtype_and_missing_values(deidentifier):
    texts = pd.Series(
        ["Dr. Alice Zyxwood", pd.NA, "", "no identifiers", "MRN 1234567, 617-555-0123"],
        index=[5, 3, 9, 1, 2],
        dtype="string",
        name="text",
    )
    cleaned = deidentifier.series(texts)
    expected = ["Dr. [NAME]", pd.NA, "", "no identifiers", "MRN [ID], [PHONE]"]
    pd.testing.assert_series_equal(
        cleaned.texts, pd.Series(expected, index=texts.index, dtype="string", name="text")
    )
    assert cleaned.metadata() == {
        "deidentified_notes": 2,
        "deid_name": 1,
        "deid_phone": 1,
        "deid_email": 0,
        "deid_date": 0,
        "deid_id": 1,
    }
    assert deidentify_texts(["Dr. Alice Zyxwood", None]) == ["Dr. [NAME]", None]


def test_a_large_column_in_a_process_pool_gives_the_same_result(deidentifier, monkeypatch):
    monkeypatch.setattr(deid, "POOL_MIN_NOTES", 10)
    monkeypatch.setattr(deid, "CHUNK_NOTES", 7)
    texts = pd.Series([f"Note {i}: Dr. Alice Zyxwood, 617-555-01{i:02d}." for i in range(30)])
    alone = deidentifier.series(texts, workers=1)
    pooled = deidentifier.series(texts, workers=2)
    pd.testing.assert_series_equal(pooled.texts, alone.texts)
    assert pooled.metadata() == alone.metadata() and alone.notes_changed == 30


def test_the_engine_builds_and_runs_without_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("de-identification must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    deid._engines.cache_clear()  # built again here, with the network gone
    try:
        assert _clean(NoteDeidentifier(), "Mail a.b@lab.local, Dr. Alice Zyxwood") == (
            "Mail [EMAIL], Dr. [NAME]"
        )
    finally:
        deid._engines.cache_clear()


def test_nothing_of_the_text_reaches_the_log(deidentifier, caplog):
    caplog.set_level(logging.DEBUG)
    deidentifier.series(pd.Series(["Dr. Alice Zyxwood, zq.marker@example.org, MRN 99887766"]))
    assert caplog.records  # Presidio does log at DEBUG: offsets and entity types only
    for marker in ("Zyxwood", "zq.marker", "99887766"):
        assert marker not in caplog.text


# -- the vocabulary rule -------------------------------------------------------------------------


def test_a_term_needs_notes_of_k_distinct_patients():
    k = 3
    texts = ["vxrare common words here"] * 2 + ["vxedge common words here"] * 3
    texts += ["vxsame common words", "vxsame common", "vxsame words"]
    patients = [1, 2, 1, 2, 3, 4, 4, 4]  # vxsame: three admissions of one patient
    model = TfidfModel.fit(texts, dim=4, seed=0, patients=patients, min_patients=k)
    assert "vxedge" in model.terms and "common" in model.terms
    assert "vxrare" not in model.terms and "vxsame" not in model.terms
    everything = TfidfModel.fit(texts, dim=4, seed=0)
    assert {"vxrare", "vxsame"} <= set(everything.terms)


def test_the_embedder_counts_train_patients_and_keeps_the_rule_in_its_state():
    texts = pd.Series(
        {10: "vxterm cough", 11: "vxterm fever", 12: "vxterm cough", 13: "cough fever"}
    ).rename_axis("hadm_id")
    same_patient = NoteEmbedder(backend="tfidf", max_dim=4, min_term_patients=2)
    fitted = same_patient.fit(texts, [10, 11, 12, 13], [1, 1, 1, 2])
    assert "vxterm" not in fitted.tfidf_.terms and "cough" in fitted.tfidf_.terms
    apart = NoteEmbedder(backend="tfidf", max_dim=4, min_term_patients=2)
    assert "vxterm" in apart.fit(texts, [10, 11, 12, 13], [1, 2, 1, 2]).tfidf_.terms
    state = json.loads(json.dumps(fitted.to_state()))
    assert state["min_term_patients"] == 2
    restored = NoteEmbedder.from_state(state)
    np.testing.assert_array_equal(
        restored.transform(texts, [10, 13]), fitted.transform(texts, [10, 13])
    )
    with pytest.raises(ValueError, match="subject_ids"):
        NoteEmbedder(backend="tfidf", min_term_patients=2).fit(texts, [10, 11])


# -- end to end ----------------------------------------------------------------------------------

K = 10  # Settings.notes.min_term_patients, the default the run uses
CLINICIAN = (
    "Discussed with Dr. Zqalicia Zqxwoodson (pager 555-0199-7731, "
    "zqmailbox.zqward@zqhospital.org); Zqxwoodson agrees. Ward MRN 99887766, MR#: 7789123.\n"
    "- Zqalicia Zqxwoodson"
)
SHARED_MARKERS = [
    "Zqalicia",
    "Zqxwoodson",
    "555-0199-7731",
    "zqmailbox.zqward@zqhospital.org",
    "zqmailbox",
    "zqhospital",
    "99887766",
    "7789123",
]


def _code(number: int) -> str:
    """A letters-only code (a name has no digits): 0 -> "ba", 1 -> "bb", ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[1 + number // 26 % 25] + letters[number % 26]


def _patient(number: int) -> dict[str, str]:
    code = _code(number)
    return {
        "first": f"Zqfirst{code}",
        "last": f"Zqlast{code}",
        "phone": f"(617) 555-{7000 + number:04d}",
        "email": f"zqpatient{code}@zqmail.com",
        # Ten digits in no round pattern: "40000000" turned up by chance in Dagster's own run
        # database (a number, not a leak); a marker must be something nothing else writes.
        "mrn": f"MRN 97{number:03d}{number * 7919 % 1000:03d}31",
    }


def _vocabulary_word(j: int) -> str:
    """A clinical-looking term planted in the notes of the first j + 1 patients."""
    return f"vx{_code(j)}itis"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _plant(landing: Path) -> tuple[list[str], list[str]]:
    """Identifiers into every note, vocabulary words into H&Ps; (markers, words)."""
    files = sorted((landing / "note").glob("*.csv*"))
    subjects = sorted({int(s) for f in files for s in _read(f)["subject_id"] if s})
    rank = {s: i for i, s in enumerate(subjects)}
    markers, words = list(SHARED_MARKERS), [_vocabulary_word(j) for j in range(len(subjects))]
    for number in range(len(subjects)):
        p = _patient(number)
        markers += [p["first"], p["last"], p["phone"], p["email"], p["mrn"].split()[1]]
    for path in files:
        frame = _read(path)
        frame["text"] = [
            _planted(text, rank[int(s)], path.name.startswith("hp"), words)
            for text, s in zip(frame["text"], frame["subject_id"], strict=True)
        ]
        _write(frame, path)
    return markers, words


def _planted(text: str, number: int, history: bool, words: list[str]) -> str:
    p = _patient(number)
    head = (
        f"Patient: {p['last']}, {p['first']}\n{p['mrn']}\n"
        f"Mr. {p['first']} {p['last']} can be reached at {p['phone']} or {p['email']}.\n"
    )
    planted = f"{head}{text}\n{p['last']} was told the plan.\n{CLINICIAN}\n"
    if history:  # in the window: what the vocabulary is fitted on
        planted += " ".join(words[number:]) + "\n"
    return planted


def _write(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(frame.columns)
    writer.writerows(frame.itertuples(index=False))
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _contents(path: Path) -> list[bytes]:
    """A file's bytes, lower-cased, and those of what it compresses (gzip, zlib, zip)."""
    raw = path.read_bytes()
    found = [raw]
    if raw[:2] == b"\x1f\x8b":
        found.append(gzip.decompress(raw))
    elif raw[:1] == b"\x78":
        with contextlib.suppress(zlib.error):
            found.append(zlib.decompress(raw))
    elif raw[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            found += [archive.read(name) for name in archive.namelist()]
    return [content.lower() for content in found]


def _parquet_cells(path: Path) -> list[str]:
    """Every string cell of a Parquet file (its pages may be compressed), lower-cased."""
    frame = pd.read_parquet(path)
    cells = [str(c).lower() for c in frame.columns]
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            cells += [str(v).lower() for v in frame[column].dropna()]
    return cells


def _leaks(workdir: Path, markers: list[str]) -> list[tuple[str, str]]:
    wanted = [m.lower() for m in markers]
    leaks = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        for content in _contents(path):
            leaks += [(str(path), m) for m in wanted if m.encode() in content]
        if path.suffix == ".parquet":
            text = "\n".join(_parquet_cells(path))
            leaks += [(str(path), m) for m in wanted if m in text]
    return leaks


@contextlib.contextmanager
def _all_output(path: Path):
    """Everything printed or logged while the block runs, into `path`: the process's stdout and
    stderr file descriptors (pools, C code), sys.stdout / sys.stderr, and every log record."""
    handler = logging.FileHandler(path.with_suffix(".log"))
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("dagster")]
    levels = [logger.level for logger in loggers]
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush(), sys.stderr.flush()
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(level)
            handler.close()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> dict:
    from clinfuse.orchestration.runner import run_pipeline
    from clinfuse.synthetic import generate
    from tests.conftest import TINY_TRAINING

    base = tmp_path_factory.mktemp("deid")
    landing, workdir = base / "landing", base / "work"
    generate(landing, admissions=60, seed=2, image_size=32)
    markers, words = _plant(landing)
    output = base / "output.txt"
    with _all_output(output):
        report = run_pipeline(landing, workdir, workers=2, training=TINY_TRAINING)
    printed = output.read_text() + output.with_suffix(".log").read_text()
    return {
        "report": report,
        "workdir": workdir,
        "landing": landing,
        "markers": markers,
        "words": words,
        "printed": printed,
    }


@pytest.mark.slow
def test_no_planted_identifier_is_persisted_anywhere(planted_run):
    workdir, markers = planted_run["workdir"], planted_run["markers"]
    # The search finds every marker where it was planted (discharge.csv.gz compressed).
    assert {m for _, m in _leaks(planted_run["landing"], markers)} == {m.lower() for m in markers}
    notes = pd.read_parquet(workdir / "tables" / "notes.parquet")
    assert notes["text"].str.contains("[NAME]", regex=False).all()  # the plants reached it
    assert _leaks(workdir, markers) == []
    printed = planted_run["printed"].lower()
    assert "notes" in printed  # the run did log (the capture works)
    assert [m for m in markers if m.lower() in printed] == []


@pytest.mark.slow
def test_the_vocabulary_holds_only_terms_of_k_train_patients(planted_run):
    from clinfuse.assets.cohort.window import allowed_notes
    from clinfuse.assets.settings import Settings

    tables = planted_run["workdir"] / "tables"
    state = json.loads((tables / "note_embedder.json").read_text())
    assert state["min_term_patients"] == K
    terms = set(state["tfidf"]["terms"])
    cohort = pd.read_parquet(tables / "cohort.parquet")
    text = allowed_notes(pd.read_parquet(tables / "notes.parquet"), cohort, Settings().window_hours)
    train = cohort[cohort["split"] == "train"].set_index("hadm_id")["subject_id"]
    text = text[text.index.isin(train.index)]
    subjects = train.loc[text.index.astype("int64")].to_numpy()
    counts = {
        w: len(set(subjects[text.str.contains(rf"\b{w}\b").to_numpy(dtype=bool)]))
        for w in planted_run["words"]
    }
    assert {K - 1, K} <= set(counts.values())  # both sides of the threshold were planted
    assert {w for w, n in counts.items() if n >= K} <= terms
    assert not {w for w, n in counts.items() if n < K} & terms


@pytest.mark.slow
def test_the_served_model_de_identifies_request_notes(planted_run):
    from clinfuse.assets.evaluation.serving import serving_batch
    from clinfuse.assets.settings import Settings

    tables = planted_run["workdir"] / "tables"
    lab_state = json.loads((tables / "lab_featurizer.json").read_text())
    text_state = json.loads((tables / "note_embedder.json").read_text())
    rows = pd.DataFrame({"hadm_id": [1, 2], "notes": [CLINICIAN, None]})
    batch = serving_batch(rows, lab_state, text_state, Settings())
    assert batch["notes"][1] is None and "[NAME]" in batch["notes"][0]
    assert not [m for m in SHARED_MARKERS if m.lower() in batch["notes"][0].lower()]
    assert batch["mask"][:, 1].tolist() == [True, False]


@pytest.mark.slow
def test_the_champion_scores_raw_notes_as_the_pipeline_scored_de_identified_ones(
    planted_run, monkeypatch
):
    from clinfuse.assets.evaluation.serve_inputs import SERVE_ROOT_ENV

    monkeypatch.setenv(SERVE_ROOT_ENV, str(planted_run["landing"]))
    workdir = planted_run["workdir"]
    notes = pd.read_parquet(workdir / "tables" / "notes.parquet")
    files = sorted((planted_run["landing"] / "note").glob("*.csv*"))
    raw = pd.concat([_read(f) for f in files]).set_index("note_id")["text"]
    planted = notes.assign(text=notes["note_id"].map(raw))  # the request as a hospital sends it
    assert planted["text"].notna().all() and not planted["text"].equals(notes["text"])
    test, frame = test_split_requests(planted_run, notes=planted)
    served = load_champion(planted_run).predict(frame)
    assert (served["errors"].map(len) == 0).all(), served["errors"].tolist()
    expected = pd.read_parquet(workdir / planted_run["report"]["predictions_path"])
    expected = expected.set_index("hadm_id").loc[test["hadm_id"], "p_fusion"].to_numpy()
    np.testing.assert_allclose(served["p_fusion"].to_numpy(dtype=float), expected, atol=1e-5)
