"""Where a learner's inputs come from: the cohort (features in memory, films in shards) or a
served batch (tensors in memory). Learners ask a source for rows, never for files, so a model
trained on the cohort scores a served request through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.handcrafted import STATISTICS
from clinfuse.models.modalities import MODALITIES

# A learner's feature kinds: a modality's vector, the note text, or hand-crafted statistics.
FEATURE_KINDS = ("ehr", "text", "notes", "image_statistics", "audio_statistics")


class Source:
    """Rows of admissions as datasets (for networks) and feature matrices (for linear models)."""

    labels: np.ndarray | None
    groups: np.ndarray  # the patient of each row: folds never split a patient

    def __len__(self) -> int:
        raise NotImplementedError

    def present(self, modality: str) -> np.ndarray:
        raise NotImplementedError

    def dataset(self, rows: np.ndarray, read: tuple[str, ...] | None = None) -> Dataset:
        """Rows as a dataset; `read` names the modalities a model uses (None: all), the others
        may come as zeros (their mask unchanged)."""
        raise NotImplementedError

    def features(self, kind: str) -> np.ndarray | list:
        """The feature `kind` for every row (zeros / "" where the modality is absent), cached."""
        cache = self.__dict__.setdefault("_features", {})
        if kind not in cache:
            cache[kind] = self._compute(kind)
        return cache[kind]

    def _compute(self, kind: str) -> np.ndarray | list:
        raise NotImplementedError

    def without(self, modality: str) -> Source:
        """The same rows with `modality` marked missing (an ablation)."""
        raise NotImplementedError


def take(features: np.ndarray | list, rows: np.ndarray) -> np.ndarray | list:
    if isinstance(features, list):
        return [features[int(r)] for r in rows]
    return features[rows]


@dataclass(eq=False)
class CohortSource(Source):
    """The cohort's ModalityInputs, plus each admission's allowed note text and patient."""

    inputs: ModalityInputs
    notes: list[str | None] | None = None
    groups: np.ndarray | None = None
    batch_size: int = 256
    _features: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.groups is None:
            self.groups = np.arange(len(self.inputs))
        self.labels = self.inputs.labels
        self._mask = AdmissionDataset(self.inputs).mask

    def __len__(self) -> int:
        return len(self.inputs)

    def present(self, modality: str) -> np.ndarray:
        return self._mask[:, MODALITIES.index(modality)]

    def dataset(self, rows: np.ndarray, read: tuple[str, ...] | None = None) -> AdmissionDataset:
        return AdmissionDataset(self.inputs, np.asarray(rows), read=read)

    def _compute(self, kind: str) -> np.ndarray | list:
        if kind in ("ehr", "text"):
            return np.where(self.present(kind)[:, None], getattr(self.inputs, kind), 0.0)
        if kind == "notes":
            return _texts(self.notes or [None] * len(self), self.present("text"))
        modality = kind.removesuffix("_statistics")
        rows = np.flatnonzero(self.present(modality))
        loader = DataLoader(self.dataset(rows, (modality,)), batch_size=self.batch_size)
        blocks = [STATISTICS[modality](batch[modality]) for batch in loader]
        return _scatter(blocks, rows, len(self))

    def without(self, modality: str) -> CohortSource:
        mask = self.inputs.mask.copy()
        mask[:, MODALITIES.index(modality)] = False
        return CohortSource(
            replace(self.inputs, mask=mask), self.notes, self.groups, self.batch_size
        )


def _texts(notes: list[str | None], present: np.ndarray) -> list[str]:
    return [t if (t and has) else "" for t, has in zip(notes, present, strict=True)]


def _scatter(blocks: list[np.ndarray], rows: np.ndarray, n: int) -> np.ndarray:
    if not blocks:
        return np.zeros((n, 0), dtype=np.float32)
    values = np.concatenate(blocks)
    out = np.zeros((n, values.shape[1]), dtype=np.float32)
    out[rows] = values
    return out


class _BatchDataset(Dataset):
    def __init__(self, batch: dict[str, torch.Tensor], rows: np.ndarray):
        self.batch, self.rows = batch, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[index])
        item = {k: self.batch[k][row] for k in (*MODALITIES, "mask")}
        item["label"] = torch.tensor(float("nan"))
        return item


@dataclass(eq=False)
class BatchSource(Source):
    """A served batch: tensors per modality, `mask`, and `notes` (a list of str or None)."""

    batch: dict
    _features: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.labels = None
        self.groups = np.arange(len(self))

    def __len__(self) -> int:
        return int(self.batch["mask"].shape[0])

    def present(self, modality: str) -> np.ndarray:
        return self.batch["mask"][:, MODALITIES.index(modality)].numpy().astype(bool)

    def dataset(self, rows: np.ndarray, read: tuple[str, ...] | None = None) -> Dataset:
        return _BatchDataset(self.batch, rows)  # in memory already: nothing to spare

    def _compute(self, kind: str) -> np.ndarray | list:
        if kind in ("ehr", "text"):
            values = self.batch[kind].numpy().astype(np.float32)
            return np.where(self.present(kind)[:, None], values, 0.0)
        if kind == "notes":
            return _texts(self.batch.get("notes") or [None] * len(self), self.present("text"))
        modality = kind.removesuffix("_statistics")
        rows = np.flatnonzero(self.present(modality))
        blocks = [STATISTICS[modality](self.batch[modality][rows])] if len(rows) else []
        return _scatter(blocks, rows, len(self))

    def without(self, modality: str) -> BatchSource:
        mask = self.batch["mask"].clone()
        mask[:, MODALITIES.index(modality)] = False
        return BatchSource({**self.batch, "mask": mask})
