"""Per-modality learners: the candidates, cross-fitting, and the choice on validation.

Every candidate has the same two methods, `fit(source, rows, validation_rows)` and
`logits(source, rows)`, and returns log-odds that class weighting has not shifted. Linear and
boosted candidates are scikit-learn estimators over a feature kind of the source; a network
candidate is the project's PyTorch encoder with its own head (train_fusion of one modality).

`CrossFitted` trains K copies of a candidate on K folds of the train split (folds by patient)
and keeps each admission's *out-of-fold* logit: the fusion head is fitted on those, so no
modality's in-sample overfit can pass for evidence. Validation and test admissions get the mean
of the K copies' logits (a bagged model). `choose` keeps, per modality, the candidate with the
lowest validation log-loss (AUROC breaks ties), each candidate's logits first mapped to
probabilities by a Platt fit on its own out-of-fold logits, so a candidate is judged on what it
ranks and on how well its scale can be learnt from train alone.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import QuantileTransformer, SplineTransformer, StandardScaler
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from clinfuse.models.runtime import resolve_device
from clinfuse.models.sources import Source, take
from clinfuse.models.training import (
    TrainConfig,
    positive_weight,
    predict_logits,
    single_modality,
    train_fusion,
)

TIE = 1e-3  # validation log-losses closer than this are a tie, broken by AUROC


# -- candidates --------------------------------------------------------------------------------


class EstimatorCandidate:
    """A scikit-learn classifier over one feature kind of the source.

    `grid` lists parameter settings (`set_params` keys) that cross-fitting tries on every fold;
    the setting of lowest out-of-fold log-loss is kept (see CrossFitted). One fit per setting
    and fold: cheaper than a nested cross-validation inside each fold, and judged on rows that
    no copy trained on.
    """

    def __init__(
        self,
        name: str,
        modality: str,
        feature: str,
        make: Callable[[int], object],
        grid: tuple[dict, ...] = ({},),
    ):
        self.name, self.modality, self.feature, self.make = name, modality, feature, make
        self.grid = tuple(grid)
        self.params: dict = {}

    def fit(self, source: Source, rows: np.ndarray, validation_rows: np.ndarray):
        x = take(source.features(self.feature), rows)
        estimator = self.make(len(rows)).set_params(**self.params)
        # One OpenMP thread: on a few thousand rows more threads gain nothing, and beside any
        # other busy process (a second run, the test suite) spinning OpenMP threads made
        # HistGradientBoosting 10-30x slower (measured: 1.2 s vs 34 s for 5 folds).
        with threadpool_limits(limits=1, user_api="openmp"):
            self.estimator_ = estimator.fit(x, source.labels[rows].astype(int))
        return self

    def with_params(self, params: dict) -> EstimatorCandidate:
        other = EstimatorCandidate(self.name, self.modality, self.feature, self.make, self.grid)
        other.params = dict(params)
        return other

    def logits(self, source: Source, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        x = take(source.features(self.feature), rows)
        with threadpool_limits(limits=1, user_api="openmp"):
            return np.asarray(self.estimator_.decision_function(x), dtype=float)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "make"}  # a closure: not saved


class PriorCandidate:
    """No evidence at all: a constant logit. A modality whose learners cannot beat it on
    validation carries no usable signal; fusion then ignores it (its logit never varies)."""

    grid = ({},)

    def __init__(self, modality: str):
        self.name, self.modality = f"{modality}_prior", modality

    def with_params(self, params: dict) -> PriorCandidate:
        return PriorCandidate(self.modality)

    def fit(self, source: Source, rows: np.ndarray, validation_rows: np.ndarray):
        return self

    def logits(self, source: Source, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows))


class NetworkCandidate:
    """The PyTorch encoder of one modality with its unimodal head (the project's own network)."""

    def __init__(self, name: str, modality: str, config: TrainConfig):
        self.name, self.modality = name, modality
        self.config = single_modality(config, modality)

    def fit(self, source: Source, rows: np.ndarray, validation_rows: np.ndarray):
        own = self._reads  # the films and spectrograms of other modalities are never read
        result = train_fusion(
            source.dataset(rows, own), source.dataset(validation_rows, own), self.config
        )
        self.model_ = result.model
        self.best_val_auroc_ = result.best_val_auroc
        self.train_seconds_ = result.train_seconds
        # BCE with pos_weight w moves the optimal logit by log w: take it back out.
        self.offset_ = math.log(positive_weight(source.labels[rows]))
        return self

    @property
    def _reads(self) -> tuple[str, ...]:
        return tuple(self.config.modalities)  # one for a modality's network, all for fusion

    def logits(self, source: Source, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        device = resolve_device(self.config.device)
        loader = DataLoader(source.dataset(rows, self._reads), batch_size=256)
        model = self.model_.to(device)
        try:
            raw, _ = predict_logits(model, loader, device, None)
        finally:
            self.model_.cpu()
        return raw.astype(float) - self.offset_


_NEGATION = re.compile(
    r"\b(no|not|denies|denied|without|negative for|absent|free of)\b([^.;:,\n]*)"
)


def negation_marked(text: str) -> str:
    """Words after a negation cue, up to the end of the clause, get a `neg_` prefix (NegEx-lite),
    so "denies fever" and "fever" are different features."""
    text = text.lower()
    return _NEGATION.sub(
        lambda m: m.group(1) + " " + " ".join(f"neg_{w}" for w in m.group(2).split()), text
    )


C_GRID = tuple({"logisticregression__C": c} for c in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0))
TEXT_C_GRID = tuple({"logistic__C": c} for c in (0.3, 1.0, 3.0, 10.0, 30.0))


def _logistic() -> LogisticRegression:
    return LogisticRegression(max_iter=2000, tol=1e-3)


def _quantile(n: int, output: str) -> QuantileTransformer:
    return QuantileTransformer(n_quantiles=max(10, min(200, n // 2)), output_distribution=output)


def _boosted(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        learning_rate=0.1,
        max_iter=200,
        max_leaf_nodes=8,
        min_samples_leaf=20,
        l2_regularization=1.0,
        max_features=0.5,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=15,
        random_state=seed,
    )


def candidates(modality: str, network: TrainConfig, seed: int) -> list[Callable[[], object]]:
    """The factories of a modality's candidates (each call makes a fresh, unfitted one)."""

    def estimator(name: str, feature: str, make: Callable[[int], object], grid=({},)):
        return lambda: EstimatorCandidate(name, modality, feature, make, grid)

    def net():
        return NetworkCandidate(f"{modality}_network", modality, network)

    def prior():
        return PriorCandidate(modality)

    if modality == "ehr":
        return [
            estimator("ehr_logistic", "ehr", lambda n: make_pipeline(
                _quantile(n, "normal"), _logistic()), C_GRID),
            estimator("ehr_spline", "ehr", lambda n: make_pipeline(
                _quantile(n, "uniform"), SplineTransformer(n_knots=4, degree=2),
                _logistic()), C_GRID),
            estimator("ehr_boosted", "ehr", lambda n: _boosted(seed)),
            net,
            prior,
        ]  # fmt: skip
    if modality == "text":
        return [
            estimator("text_tfidf", "notes", lambda n: Pipeline([
                ("tfidf", TfidfVectorizer(
                    preprocessor=negation_marked, ngram_range=(1, 2), min_df=5,
                    max_features=20000, sublinear_tf=True)),
                ("logistic", _logistic())]), TEXT_C_GRID),
            estimator("text_embedding_logistic", "text", lambda n: make_pipeline(
                StandardScaler(), _logistic()), C_GRID),
            net,
            prior,
        ]  # fmt: skip
    statistics = f"{modality}_statistics"
    return [
        estimator(f"{modality}_statistics_logistic", statistics, lambda n: make_pipeline(
            StandardScaler(), _logistic()), C_GRID),
        estimator(f"{modality}_statistics_boosted", statistics, lambda n: _boosted(seed)),
        net,
        prior,
    ]  # fmt: skip


# -- cross-fitting -----------------------------------------------------------------------------


@dataclass
class CrossFitted:
    """K fold copies of one candidate; out-of-fold logits on train, their mean elsewhere."""

    make: Callable[[], object]
    folds: int = 5
    seed: int = 0
    members: list = field(default_factory=list)
    name: str = ""
    modality: str = ""
    train_rows: np.ndarray | None = None  # train admissions that have the modality
    oof: np.ndarray | None = None  # their out-of-fold logits
    validation_rows: np.ndarray | None = None
    validation_logits: np.ndarray | None = None
    seconds: float = 0.0

    params: dict = field(default_factory=dict)  # the grid setting kept (estimators)

    def fit(self, source: Source, train_rows: np.ndarray, validation_rows: np.ndarray):
        started = time.perf_counter()
        probe = self.make()
        self.name, self.modality = probe.name, probe.modality
        present = source.present(self.modality)
        rows = np.asarray(train_rows)[present[train_rows]]
        validation = np.asarray(validation_rows)[present[validation_rows]]
        y = source.labels[rows].astype(int)
        groups = source.groups[rows]
        folds = min(self.folds, int(y.sum()), int((1 - y).sum()), len(np.unique(groups)))
        if folds < 2:
            raise ValueError(f"{self.name}: too few train admissions of each class to cross-fit")
        splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed).split(
            rows, y, groups))  # fmt: skip
        grid = getattr(probe, "grid", ({},))
        best = None
        for params in grid:
            members, oof = self._fold_fits(probe, params, source, rows, validation, splits)
            loss = log_loss(y, _sigmoid(oof), labels=[0, 1])
            if best is None or loss < best[0]:
                best = (loss, params, members, oof)
        _, self.params, self.members, oof = best
        self.train_rows, self.oof = rows, oof
        self.validation_rows, self.validation_logits = validation, self.logits(source, validation)
        self.seconds = time.perf_counter() - started
        return self

    def _fold_fits(self, probe, params, source, rows, validation, splits):
        oof = np.full(len(rows), np.nan)
        members = []
        for fold, (fit, held) in enumerate(splits):
            member = probe.with_params(params) if hasattr(probe, "with_params") else self.make()
            _reseed(member, self.seed + fold)
            member.fit(source, rows[fit], validation)
            oof[held] = member.logits(source, rows[held])
            members.append(member)
        return members, oof

    def logits(self, source: Source, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        return np.mean([m.logits(source, rows) for m in self.members], axis=0)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "make"}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _reseed(member: object, seed: int) -> None:
    """Each fold's network starts from its own seed, so the bag is not K copies of one init."""
    if isinstance(member, NetworkCandidate):
        member.config = replace(member.config, seed=seed)


# -- the choice --------------------------------------------------------------------------------


def validation_scores(fitted: CrossFitted, source: Source) -> dict[str, float]:
    """Validation log-loss and AUROC, after a Platt map fitted on the out-of-fold logits."""
    y_train = source.labels[fitted.train_rows].astype(int)
    y_val = source.labels[fitted.validation_rows].astype(int)
    platt = LogisticRegression(C=1e4).fit(fitted.oof[:, None], y_train)
    val = fitted.validation_logits[:, None]
    p = platt.predict_proba(val)[:, 1] if len(val) else np.zeros(0)
    two = len(np.unique(y_val)) == 2
    return {
        "val_logloss": float(log_loss(y_val, p, labels=[0, 1])) if len(y_val) else math.nan,
        "val_auroc": float(roc_auc_score(y_val, p)) if two else math.nan,
        "seconds": fitted.seconds,
    }


def choose(scores: dict[str, dict[str, float]]) -> str:
    """The candidate of lowest validation log-loss; within TIE of it, the highest AUROC."""
    finite = {n: s for n, s in scores.items() if math.isfinite(s["val_logloss"])}
    if not finite:
        return next(iter(scores))
    best = min(s["val_logloss"] for s in finite.values())
    close = [n for n, s in finite.items() if s["val_logloss"] <= best + TIE]
    return max(close, key=lambda n: _or(finite[n]["val_auroc"], -1.0))


def _or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


@dataclass
class ModalityChoice:
    """One modality's chosen, cross-fitted learner and every candidate's validation scores."""

    modality: str
    learner: CrossFitted
    scores: dict[str, dict[str, float]]

    @property
    def chosen(self) -> str:
        return self.learner.name


def fit_modality(
    source: Source,
    modality: str,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    makers: list[Callable[[], object]],
    folds: dict[str, int] | int = 5,
    seed: int = 0,
    on_candidate: Callable[[str, dict[str, float]], None] | None = None,
) -> ModalityChoice:
    """Cross-fits every candidate of `modality` and keeps the best on validation."""
    fitted, scores = {}, {}
    for make in makers:
        name = make().name
        k = folds if isinstance(folds, int) else folds.get(_family(name), folds.get("default", 5))
        learner = CrossFitted(make, folds=k, seed=seed).fit(source, train_rows, validation_rows)
        fitted[name], scores[name] = learner, validation_scores(learner, source)
        if on_candidate is not None:
            on_candidate(name, scores[name])
    return ModalityChoice(modality, fitted[choose(scores)], scores)


def _family(name: str) -> str:
    return "network" if name.endswith("_network") else "estimator"
