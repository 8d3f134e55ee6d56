"""A trained model on disk: state_dict + constructor config (no pickled module)."""

from __future__ import annotations

from pathlib import Path

import torch

from clinfuse.models.fusion import FusionModel


def save_checkpoint(model: FusionModel, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dict(model.config), "state_dict": model.state_dict()}, path)
    return path


def load_checkpoint(path: Path | str) -> FusionModel:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = FusionModel(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model
