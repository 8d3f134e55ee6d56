"""Pure PyTorch models of clinfuse: datasets, encoders, fusion, training loop (no Dagster)."""

from clinfuse.models.data import MODALITIES, AdmissionDataset, ModalityInputs
from clinfuse.models.fusion import STRATEGIES, FusionModel
from clinfuse.models.runtime import resolve_device
from clinfuse.models.training import TrainConfig, TrainResult, predict_proba, train_fusion

__all__ = [
    "MODALITIES",
    "STRATEGIES",
    "AdmissionDataset",
    "FusionModel",
    "ModalityInputs",
    "TrainConfig",
    "TrainResult",
    "predict_proba",
    "resolve_device",
    "train_fusion",
]
