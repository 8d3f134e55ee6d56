"""Fixed-shape arrays (images, spectrograms) stored as a few memory-mappable .npy shards.

Thousands of small files are slow to list and copy; one pickle cannot be read lazily. A shard
holds up to `items_per_shard` items of one shape; an index table keeps (shard, slot) per item
and the training loader memory-maps the shards.

A run may be killed at any moment, so nothing half-written is ever trusted:

- each shard is written under a temporary name and renamed into place (`os.replace` is atomic),
  so a shard's name never holds a cut-off file;
- when the writer closes, it writes `<prefix>.manifest.json` (also tmp + rename) listing every
  shard with its item count, size in bytes and sha256. A writer that never closed (killed, or an
  exception) leaves no manifest, and a new writer first removes the one an earlier run left;
- `ShardReader` opens only shards a manifest lists, at the listed size (a stat: cheap enough for
  every training worker); `verify_shards` re-hashes them against digests kept elsewhere (the
  IO manager's `<asset>.shards.json`), which catches a shard replaced by a later, killed run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

MANIFEST_SUFFIX = ".manifest.json"
_HASH_BLOCK = 1 << 20


class ShardError(Exception):
    """A shard that is not the one its writer finished: unlisted, missing, cut short or changed."""


class _HashingFile:
    """A write-only file that hashes and counts what passes through (np.save writes to it)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)


def manifest_path(directory: Path, prefix: str) -> Path:
    return Path(directory) / f"{prefix}{MANIFEST_SUFFIX}"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


# No fsync below: a power cut may still leave a bad shard behind a rename, but its bytes then
# disagree with the manifest's sha256, which verify_shards checks before a run trusts them.


def _save_shard(path: Path, array: np.ndarray) -> dict[str, int | str]:
    """Writes `array` as .npy under a temporary name, renames it into place; size and sha256."""
    tmp = _temporary(path)
    with open(tmp, "wb") as handle:
        hashing = _HashingFile(handle)
        np.save(hashing, array)  # type: ignore[arg-type]  # np.save only calls .write
    os.replace(tmp, path)
    return {"items": len(array), "bytes": hashing.size, "sha256": hashing.sha256.hexdigest()}


def _replace_text(path: Path, text: str) -> None:
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


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
        self.digests: dict[str, dict[str, int | str]] = {}
        # An earlier writer's manifest would vouch for names this one is about to overwrite.
        manifest_path(self.directory, prefix).unlink(missing_ok=True)

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
        self.digests[name] = _save_shard(self.directory / name, self._buffer[: self._count])
        self.shards.append(name)
        self._shard_number += 1
        self._count = 0

    def close(self) -> list[str]:
        """Writes the last partial shard and the manifest; returns every shard file name."""
        self._flush()
        manifest = {
            "prefix": self.prefix,
            "item_shape": list(self.item_shape),
            "dtype": self.dtype.str,
            "shards": self.digests,
        }
        _replace_text(manifest_path(self.directory, self.prefix), json.dumps(manifest, indent=1))
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Only a writer that finished vouches for its shards: after an exception, no manifest.
        if exc_type is None:
            self.close()


def listed_shards(directory: Path) -> dict[str, dict]:
    """Every shard the manifests in `directory` list: name -> {items, bytes, sha256}."""
    listed: dict[str, dict] = {}
    for path in sorted(Path(directory).glob(f"*{MANIFEST_SUFFIX}")):
        try:
            listed.update(json.loads(path.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ShardError(f"{path} is not a shard manifest ({type(error).__name__})") from None
    return listed


def shard_digests(directory: Path, names: Iterable[str]) -> dict[str, dict]:
    """The writer's record of these shards, to be kept with whatever refers to them."""
    listed = listed_shards(directory)
    missing = [name for name in names if name not in listed]
    if missing:
        raise ShardError(f"{missing[0]}: no finished writer in {directory} lists it")
    return {name: listed[name] for name in names}


def _check_size(directory: Path, name: str, expected: Mapping) -> Path:
    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{name} is missing from {directory}") from None
    if size != int(expected["bytes"]):
        raise ShardError(
            f"{name} in {directory} has {size} bytes, its writer wrote {expected['bytes']}"
        )
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shards(directory: Path, digests: Mapping[str, Mapping]) -> None:
    """Raises ShardError unless every shard is there with exactly the bytes its writer wrote."""
    for name, expected in digests.items():
        path = _check_size(directory, name, expected)
        if file_sha256(path) != expected["sha256"]:
            raise ShardError(f"{name} in {directory} is not the shard its writer wrote (sha256)")


class ShardReader:
    """Reads items back by (shard, slot), memory-mapping each shard once.

    Only shards a finished writer listed are opened, and only at the size it wrote.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._open: dict[str, np.ndarray] = {}
        self._listed: dict[str, dict] | None = None

    def get(self, shard: str, slot: int) -> np.ndarray:
        array = self._open.get(shard)
        if array is None:
            array = self._open[shard] = np.load(self._checked(shard), mmap_mode="r")
        return array[slot]

    def _checked(self, shard: str) -> Path:
        if self._listed is None or shard not in self._listed:
            self._listed = listed_shards(self.directory)  # read again: a writer may have closed
        expected = self._listed.get(shard)
        if expected is None:
            raise ShardError(f"{shard}: no finished writer in {self.directory} lists it")
        return _check_size(self.directory, shard, expected)
