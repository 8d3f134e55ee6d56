"""The registered model, as MLflow "models from code": this file is the model's code.

Artifacts carry the state: the fused model (the chosen per-modality learners, the fusion head
and its calibration, saved by joblib from this project's own classes), the fitted lab featurizer
and note embedder, and the run's settings. Input: one admission per
row (serving.INPUT_COLUMNS); output: one row per input row, `p_fusion` (the probability of the
target) and `errors` (a sentence per input the row could not use; serve_inputs.py). A request
whose inputs together exceed the stored settings' limits.max_request_mb is refused whole: every
row gets p_fusion NaN and the sentence saying so (serve_inputs.request_refusal).
"""

from __future__ import annotations

import json

import joblib
import mlflow
import numpy as np
import pandas as pd

from clinfuse.assets.evaluation.serving import OUTPUT_COLUMNS, serving_request
from clinfuse.assets.settings import settings_from_dict
from clinfuse.models.sources import BatchSource


class ClinfuseModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.model = joblib.load(artifacts["checkpoint"])
        self.lab_state = _json(artifacts["lab_featurizer"])
        self.text_state = _json(artifacts["note_embedder"])
        self.settings = settings_from_dict(_json(artifacts["settings"]), strict=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = pd.DataFrame(model_input)
        if not len(rows):  # no admissions, no batch: the featurizers want at least one row
            return pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}).astype({"p_fusion": "float64"})
        request = serving_request(rows, self.lab_state, self.text_state, self.settings)
        if request.batch is None:  # over limits.max_request_mb: nothing was read, none scored
            probabilities = np.full(len(rows), np.nan)
        else:
            probabilities = self.model.predict_proba(BatchSource(request.batch))
        return pd.DataFrame(
            {"p_fusion": np.asarray(probabilities, dtype=np.float64), "errors": request.errors}
        )


def _json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


mlflow.models.set_model(ClinfuseModel())
