"""Fixed-shape arrays (images, spectrograms) stored as a few memory-mappable .npy shards.

Thousands of small files are slow to list and copy; one pickle cannot be read lazily. A shard
holds up to `items_per_shard` items of one shape; an index table keeps (shard, slot) per item
and the training loader memory-maps the shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardWriter:
    """Appends equally shaped arrays; writes a shard each time `items_per_shard` are buffered."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        item_shape: tuple[int, ...],
        dtype: str = "float16",
        items_per_shard: int = 512,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.item_shape = tuple(item_shape)
        self.dtype = np.dtype(dtype)
        self.items_per_shard = items_per_shard
        self._buffer = np.empty((items_per_shard, *self.item_shape), dtype=self.dtype)
        self._count = 0
        self._shard_number = 0
        self.shards: list[str] = []

    @property
    def _current_name(self) -> str:
        return f"{self.prefix}-{self._shard_number:05d}.npy"

    def append(self, item: np.ndarray) -> tuple[str, int]:
        """Stores one item; returns (shard file name, slot) for the index table."""
        if item.shape != self.item_shape:
            raise ValueError(f"item shape {item.shape} != shard shape {self.item_shape}")
        slot = self._count
        name = self._current_name
        self._buffer[slot] = item
        self._count += 1
        if self._count == self.items_per_shard:
            self._flush()
        return name, slot

    def _flush(self) -> None:
        if self._count == 0:
            return
        name = self._current_name
        np.save(self.directory / name, self._buffer[: self._count])
        self.shards.append(name)
        self._shard_number += 1
        self._count = 0

    def close(self) -> list[str]:
        """Writes the last partial shard; returns every shard file name written."""
        self._flush()
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardReader:
    """Reads items back by (shard, slot), memory-mapping each shard once."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._open: dict[str, np.ndarray] = {}

    def get(self, shard: str, slot: int) -> np.ndarray:
        array = self._open.get(shard)
        if array is None:
            array = np.load(self.directory / shard, mmap_mode="r")
            self._open[shard] = array
        return array[slot]
