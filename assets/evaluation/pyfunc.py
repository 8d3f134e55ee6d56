"""The registered model, as MLflow "models from code": this file is the model's code.

Artifacts carry the state: the fused model (the chosen per-modality learners, the fusion head
and its calibration, saved by joblib from this project's own classes), the fitted lab featurizer
and note embedder, and the run's settings. Input: one admission per
row (serving.INPUT_COLUMNS); output: the probability of the target.
"""

from __future__ import annotations

import json

import joblib
import mlflow
import numpy as np
import pandas as pd

from clinfuse.assets.evaluation.serving import serving_batch
from clinfuse.assets.settings import settings_from_dict
from clinfuse.models.sources import BatchSource


class ClinfuseModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.model = joblib.load(artifacts["checkpoint"])
        self.lab_state = _json(artifacts["lab_featurizer"])
        self.text_state = _json(artifacts["note_embedder"])
        self.settings = settings_from_dict(_json(artifacts["settings"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        batch = serving_batch(model_input, self.lab_state, self.text_state, self.settings)
        return np.asarray(self.model.predict_proba(BatchSource(batch)), dtype=np.float64)


def _json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


mlflow.models.set_model(ClinfuseModel())
