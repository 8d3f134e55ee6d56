"""Probability calibration on the validation split: none, Platt or isotonic, chosen by log-loss.

The choice is made by cross-validated log-loss *within* the validation split: isotonic
regression always wins on the rows it was fitted on, so an in-sample comparison would pick it
every time and overfit a few hundred admissions. The chosen map is then refitted on all of
validation. Inputs are logits (log-odds); outputs are probabilities.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

METHODS = ("none", "platt", "isotonic")
EPS = 1e-4  # isotonic steps reach 0 and 1; a probability of exactly 0 is never honest


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=float), -40, 40)))


class _Map:
    """One calibration map, fitted on (logit, label) pairs."""

    def __init__(self, method: str):
        self.method = method

    def fit(self, z: np.ndarray, y: np.ndarray) -> _Map:
        if self.method == "platt":
            self.model_ = LogisticRegression(C=1e4).fit(z[:, None], y)
        elif self.method == "isotonic":
            self.model_ = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip")
            self.model_.fit(z, y)
        return self

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        if self.method == "platt":
            return self.model_.predict_proba(z[:, None])[:, 1]
        if self.method == "isotonic":
            return np.clip(self.model_.predict(z), EPS, 1 - EPS)
        return sigmoid(z)


class Calibrator:
    """fit(logits, labels) on validation, chooses the method; __call__(logits) -> probabilities.

    `scores_` holds each method's cross-validated log-loss, `method_` the choice. With too few
    validation rows of either class to cross-validate, the logits are left as they are ("none").
    """

    def __init__(self, methods: tuple[str, ...] = METHODS, folds: int = 5, seed: int = 0):
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown calibration methods {sorted(unknown)}; known: {METHODS}")
        self.methods = tuple(methods)
        self.folds = folds
        self.seed = seed

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        z = np.asarray(logits, dtype=float)
        y = np.asarray(labels, dtype=int)
        folds = min(self.folds, int(y.sum()), int((1 - y).sum()))
        if folds < 2:
            self.scores_, self.method_ = {}, "none"
        else:
            self.scores_ = {m: self._cross_validated(m, z, y, folds) for m in self.methods}
            self.method_ = min(self.scores_, key=self.scores_.get)
        self.map_ = _Map(self.method_).fit(z, y) if len(z) else _Map("none")
        return self

    def _cross_validated(self, method: str, z: np.ndarray, y: np.ndarray, folds: int) -> float:
        out = np.zeros(len(z))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        for fit, held in splitter.split(z, y):
            out[held] = _Map(method).fit(z[fit], y[fit])(z[held])
        return float(log_loss(y, np.clip(out, EPS, 1 - EPS), labels=[0, 1]))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return self.map_(logits)


def calibration_line(labels: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of logit P(y) regressed on logit p: (1, 0) is perfectly calibrated."""
    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    z = np.log(p / (1 - p))
    fit = LogisticRegression(C=1e6).fit(z[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])
