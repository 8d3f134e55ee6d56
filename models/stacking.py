"""Fusion of the chosen per-modality learners, and the calibrated model that is served.

`LateFusion` is a regularized logistic regression on each modality's logit (0 where the
modality is missing) and its presence indicator, fitted on *out-of-fold* logits of the train
split only. A modality that carries nothing gets a near-zero weight, and a missing modality
adds nothing. `FusedModel` applies it, then a `Calibrator` fitted on the validation split; a
single-modality model is the same construction over one modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

from clinfuse.models.calibration import Calibrator, sigmoid
from clinfuse.models.data import MODALITIES
from clinfuse.models.learners import ModalityChoice
from clinfuse.models.sources import Source


class LateFusion:
    """log-odds = b + sum_m present_m * (w_m * z_m + c_m), fitted by L2 logistic regression."""

    def __init__(self, modalities: tuple[str, ...], seed: int = 0):
        self.modalities = tuple(modalities)
        self.seed = seed

    def design(self, logits: np.ndarray) -> np.ndarray:
        """(N, M) logits with NaN where missing -> (N, 2M): the logits, then presence."""
        present = ~np.isnan(logits)
        return np.concatenate([np.where(present, logits, 0.0), present.astype(float)], axis=1)

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> LateFusion:
        x, y = self.design(logits), np.asarray(labels, dtype=int)
        folds = min(5, int(y.sum()), int((1 - y).sum()))
        if folds >= 2:
            self.model_ = LogisticRegressionCV(
                Cs=np.logspace(-3, 2, 10), cv=folds, scoring="neg_log_loss", max_iter=3000,
                random_state=self.seed,
            ).fit(x, y)  # fmt: skip
        else:
            self.model_ = LogisticRegression(max_iter=3000).fit(x, y)
        return self

    def decision_function(self, logits: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(self.design(logits))

    @property
    def weights(self) -> dict[str, float]:
        """Each modality's weight on its own logit (what the noise test reads)."""
        coef = self.model_.coef_[0]
        return {m: float(coef[i]) for i, m in enumerate(self.modalities)}


def stacked_logits(
    choices: dict[str, ModalityChoice], source: Source, rows: np.ndarray
) -> np.ndarray:
    """(len(rows), M) logits of each chosen learner (bagged over folds); NaN where missing."""
    out = np.full((len(rows), len(choices)), np.nan)
    for j, (modality, choice) in enumerate(choices.items()):
        present = source.present(modality)[rows]
        out[present, j] = choice.learner.logits(source, np.asarray(rows)[present])
    return out


def out_of_fold_logits(choices: dict[str, ModalityChoice], rows: np.ndarray) -> np.ndarray:
    """(len(rows), M) out-of-fold logits of the train rows; NaN where the modality is missing."""
    position = {int(r): i for i, r in enumerate(rows)}
    out = np.full((len(rows), len(choices)), np.nan)
    for j, choice in enumerate(choices.values()):
        learner = choice.learner
        for row, logit in zip(learner.train_rows, learner.oof, strict=True):
            out[position[int(row)], j] = logit
    return out


@dataclass
class Head:
    """A fusion head over some modalities and the calibration that follows it."""

    fusion: LateFusion
    calibrator: Calibrator

    def proba(self, logits: np.ndarray) -> np.ndarray:
        return self.calibrator(self.fusion.decision_function(logits))


@dataclass
class FusedModel:
    """What predicts, is evaluated and is served: chosen learners, fusion head, calibration."""

    choices: dict[str, ModalityChoice]
    head: Head
    singles: dict[str, Head] = field(default_factory=dict)
    strategy: str = "late"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.choices)

    def logits(self, source: Source, rows: np.ndarray) -> np.ndarray:
        return stacked_logits(self.choices, source, rows)

    def predict_proba(
        self, source: Source, rows: np.ndarray | None = None, logits: np.ndarray | None = None
    ) -> np.ndarray:
        rows = np.arange(len(source)) if rows is None else np.asarray(rows)
        return self.head.proba(self.logits(source, rows) if logits is None else logits)

    def single_proba(self, modality: str, logits: np.ndarray) -> np.ndarray:
        j = self.modalities.index(modality)
        return self.singles[modality].proba(logits[:, [j]])

    def without(self, modality: str, logits: np.ndarray) -> np.ndarray:
        """The fused probability with `modality` marked missing (an ablation)."""
        hidden = logits.copy()
        if modality in self.modalities:
            hidden[:, self.modalities.index(modality)] = np.nan
        return self.head.proba(hidden)


def fit_head(
    modalities: tuple[str, ...],
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    validation_logits: np.ndarray,
    validation_labels: np.ndarray,
    seed: int = 0,
) -> Head:
    """Late fusion on out-of-fold train logits, then calibration on validation."""
    fusion = LateFusion(modalities, seed).fit(train_logits, train_labels)
    calibrator = Calibrator(seed=seed).fit(
        fusion.decision_function(validation_logits), validation_labels
    )
    return Head(fusion, calibrator)


def fit_fused_model(
    choices: dict[str, ModalityChoice],
    source: Source,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    seed: int = 0,
) -> FusedModel:
    """The fused model and every single-modality model, on the same out-of-fold logits."""
    if not choices:
        raise ValueError("no modality has a learner: nothing to fuse")
    modalities = tuple(choices)
    y_train = source.labels[train_rows]
    y_val = source.labels[validation_rows]
    train = out_of_fold_logits(choices, train_rows)
    validation = stacked_logits(choices, source, validation_rows)
    head = fit_head(modalities, train, y_train, validation, y_val, seed)
    singles = {
        m: fit_head((m,), train[:, [j]], y_train, validation[:, [j]], y_val, seed)
        for j, m in enumerate(modalities)
    }
    return FusedModel(choices, head, singles)


def prior_logit(labels: np.ndarray) -> float:
    p = float(np.mean(labels))
    return math.log(p / (1 - p)) if 0 < p < 1 else 0.0


__all__ = ["FusedModel", "Head", "LateFusion", "fit_fused_model", "sigmoid", "MODALITIES"]
