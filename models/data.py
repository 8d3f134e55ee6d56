"""What the models read: per-admission vectors in memory, images and spectrograms from shards.

`ModalityInputs` holds every admission of the cohort (cohort order); an `AdmissionDataset` is a
view on some of its rows (a split). Shards are memory-mapped lazily, once per process, so that
DataLoader workers each open their own maps instead of inheriting (or pickling) the parent's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from clinfuse.models.modalities import MODALITIES
from clinfuse.models.shards import ShardReader

EHR, TEXT, IMAGE, AUDIO = range(len(MODALITIES))  # mask columns

ShardRef = tuple[str, int] | None


@dataclass
class ModalityInputs:
    """Every model input of N admissions; `mask[:, j]` says whether MODALITIES[j] is present."""

    ehr: np.ndarray  # (N, L) float32
    text: np.ndarray  # (N, T) float32
    image_refs: list[ShardRef]
    image_dir: Path | None
    audio_refs: list[ShardRef]
    audio_dir: Path | None
    image_shape: tuple
    audio_shape: tuple
    mask: np.ndarray  # (N, 4) bool, columns in MODALITIES order
    labels: np.ndarray | None = None  # (N,) float32

    def __post_init__(self) -> None:
        n = len(self.mask)
        sizes = {
            "ehr": len(self.ehr),
            "text": len(self.text),
            "image_refs": len(self.image_refs),
            "audio_refs": len(self.audio_refs),
        }
        if self.labels is not None:
            sizes["labels"] = len(self.labels)
        wrong = {name: size for name, size in sizes.items() if size != n}
        if wrong:
            raise ValueError(f"mask has {n} rows but {wrong}")
        if self.mask.ndim != 2 or self.mask.shape[1] != len(MODALITIES):
            raise ValueError(f"mask must be (N, {len(MODALITIES)}), got {self.mask.shape}")
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.audio_shape = tuple(int(s) for s in self.audio_shape)

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def ehr_dim(self) -> int:
        return int(self.ehr.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])


class _LazyShards:
    """A ShardReader per directory, reopened after a fork so no memory map crosses processes."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._readers: dict[Path, ShardReader] = {}

    def get(self, directory: Path, ref: tuple[str, int]) -> np.ndarray:
        if self._pid != os.getpid():
            self._pid, self._readers = os.getpid(), {}
        reader = self._readers.get(directory)
        if reader is None:
            reader = self._readers[directory] = ShardReader(directory)
        return reader.get(ref[0], int(ref[1]))

    def __getstate__(self) -> dict:
        return {}  # spawned workers start with no open maps

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class AdmissionDataset(Dataset):
    """Rows `indices` of `inputs` as dicts of tensors; a missing modality is zeros, mask False."""

    def __init__(
        self,
        inputs: ModalityInputs,
        indices: np.ndarray | None = None,
        augment: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        read: tuple[str, ...] | None = None,
    ) -> None:
        self.inputs = inputs
        rows = np.arange(len(inputs)) if indices is None else np.asarray(indices)
        self.indices = rows.astype(np.int64)
        self.augment = dict(augment or {})  # modality -> transform of a present item
        # The modalities whose items are read (None: all). A one-modality network reads only
        # its own: the others come as zeros, their mask unchanged, and no shard page of them is
        # touched (at 50,000 admissions, 2 GiB of films and spectrograms an epoch).
        self.read = tuple(MODALITIES if read is None else read)
        self._reading = np.array([m in self.read for m in MODALITIES])
        self._shards = _LazyShards()

    def augmented(
        self, augment: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
    ) -> AdmissionDataset:
        """The same rows, with `augment[m]` applied to each present item of modality m."""
        return AdmissionDataset(self.inputs, self.indices, augment, self.read)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray | None:
        labels = self.inputs.labels
        return None if labels is None else np.asarray(labels, dtype=np.float32)[self.indices]

    @property
    def mask(self) -> np.ndarray:
        """(len, 4) bool after dropping image/audio rows without a shard reference."""
        return np.stack([self._row_mask(int(row)) for row in self.indices]).reshape(
            -1, len(MODALITIES)
        )

    def _row_mask(self, row: int) -> np.ndarray:
        mask = np.asarray(self.inputs.mask[row], dtype=bool).copy()
        inputs = self.inputs
        mask[IMAGE] &= inputs.image_refs[row] is not None and inputs.image_dir is not None
        mask[AUDIO] &= inputs.audio_refs[row] is not None and inputs.audio_dir is not None
        return mask

    def _item(
        self, modality: str, present: bool, directory: Path | None, ref: ShardRef, shape: tuple
    ) -> torch.Tensor:
        if not present:
            return torch.zeros(shape, dtype=torch.float32)
        array = self._shards.get(Path(directory), ref)
        if array.shape != shape:
            raise ValueError(f"shard item {ref} has shape {array.shape}, expected {shape}")
        item = torch.from_numpy(np.asarray(array, dtype=np.float32))  # float16 -> a fresh copy
        transform = self.augment.get(modality)
        return item if transform is None else transform(item)

    def _vector(self, values: np.ndarray, row: int, present: bool) -> torch.Tensor:
        vector = np.array(values[row], dtype=np.float32)  # copy: never hand out a view
        return torch.from_numpy(vector if present else np.zeros_like(vector))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[index])
        inputs = self.inputs
        mask = self._row_mask(row)
        read = mask & self._reading  # what is loaded; the mask handed on stays the data's
        labels = inputs.labels
        return {
            "ehr": self._vector(inputs.ehr, row, read[EHR]),
            "text": self._vector(inputs.text, row, read[TEXT]),
            "image": self._item(
                "image", read[IMAGE], inputs.image_dir, inputs.image_refs[row], inputs.image_shape
            ),
            "audio": self._item(
                "audio", read[AUDIO], inputs.audio_dir, inputs.audio_refs[row], inputs.audio_shape
            ),
            "mask": torch.from_numpy(mask),
            "label": torch.tensor(float("nan") if labels is None else float(labels[row])),
        }
