"""Decoded files kept across runs: a store per modality and decode settings, keyed by content.

`<workdir>/decoded/<modality>/<settings digest>/` holds, per delivery, the records of its files
(`<delivery>.records.parquet`: path, sha256, the decoder's reason or the file's description, and
the (shard, slot) of its tensor) and the shards those slots are in. What a file decodes to
depends only on its bytes and the settings, so a file whose sha256 the store already holds (the
same file in a re-run of its delivery, a copy under another name in a later one) is copied from
its shard, never decoded again. Other settings (another image size, other mel bands) get another
folder, so nothing decoded one way is ever read as if decoded another.

Shards are named `<delivery>-g<generation>-<prefix>-NNNNN.npy`: a delivery decoded again writes a
new generation beside the old one (which it may be copying from) and removes the old one after.

Plain code: the delivery assets and the study / recording index assets call it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinfuse.models.shards import ShardReader, ShardWriter

RECORDS_SUFFIX = ".records.parquet"
DECODE_SUFFIX = ".decode.json"


def _replace_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


HASH_THREADS = 8  # reading and hashing release the GIL: threads keep the disk busy


@dataclass(frozen=True)
class DeliveryDecode:
    """What decoding one delivery gave: a record per file, and how many a decoder read."""

    records: pd.DataFrame  # one row per file of the delivery, in path order
    decoded: int  # files handed to a decoder (the rest were copied by content, or not opened)

    def metadata(self, store: DecodeStore) -> dict[str, object]:
        """The delivery partition's materialization metadata."""
        return {
            "files": len(self.records),
            "decoded": self.decoded,
            "not_decoded": len(self.records) - self.decoded,  # copied by content, or unopened
            "undecodable": int(self.records["reason"].notna().sum()),
            "store": str(store.directory),
        }


def settings_digest(settings: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DecodeStore:
    """One modality's decoded files under one set of decode settings."""

    directory: Path
    item_shape: tuple[int, ...]
    prefix: str

    @classmethod
    def under(
        cls,
        root: Path,
        modality: str,
        settings: Mapping[str, object],
        item_shape: tuple[int, ...],
        prefix: str,
    ) -> DecodeStore:
        directory = Path(root) / modality / settings_digest(settings)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, tuple(item_shape), prefix)

    def records_path(self, delivery: str) -> Path:
        return self.directory / f"{delivery}{RECORDS_SUFFIX}"

    def deliveries(self) -> list[str]:
        return sorted(p.name.removesuffix(RECORDS_SUFFIX) for p in self._record_files())

    def _record_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{RECORDS_SUFFIX}"))

    def records(self, delivery: str) -> pd.DataFrame:
        """The delivery's records; KeyError when it was never decoded with these settings."""
        path = self.records_path(delivery)
        if not path.exists():
            raise KeyError(delivery)
        return pd.read_parquet(path)

    def known(self) -> pd.DataFrame:
        """sha256 -> where its result is (delivery, reason, shard, slot), over every delivery."""
        columns = ["sha256", "reason", "shard", "slot"]
        frames = []
        for path in self._record_files():
            frame = pd.read_parquet(path)
            frame = frame[frame["sha256"].notna()].drop_duplicates("sha256")
            frames.append(frame.assign(delivery=path.name.removesuffix(RECORDS_SUFFIX)))
        if not frames:
            return pd.DataFrame(columns=["delivery", *columns]).set_index("sha256")
        return pd.concat(frames, ignore_index=True).drop_duplicates("sha256").set_index("sha256")

    def reusable(
        self, paths: list[str], digest: Callable[[str], str | None]
    ) -> dict[str, pd.Series]:
        """path -> the store's record of its content, for the paths whose sha256 (`digest`:
        None when the file cannot be hashed) the store already holds. Hashing only when the
        store holds anything: a first delivery has nothing to find."""
        known = self.known()
        if not len(known):
            return {}
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            hashes = dict(zip(paths, pool.map(digest, paths), strict=True))
        return {p: known.loc[h] for p, h in hashes.items() if h is not None and h in known.index}

    def keep(self, delivery: str, result: DeliveryDecode) -> dict[str, object]:
        """save, and the partition's metadata."""
        self.save(delivery, result.records, result.decoded)
        return result.metadata(self)

    def writer(self, delivery: str) -> ShardWriter:
        """A writer of the delivery's next generation (g1 the first time: names are stable)."""
        pattern = re.compile(rf"{re.escape(delivery)}-g(\d+)-")
        taken = [
            int(match.group(1))
            for path in self.directory.glob(f"{delivery}-g*")
            if (match := pattern.match(path.name))
        ]
        prefix = f"{delivery}-g{max(taken, default=0) + 1}-{self.prefix}"
        return ShardWriter(self.directory, prefix, self.item_shape)

    def reader(self) -> ShardReader:
        return ShardReader(self.directory)

    def save(self, delivery: str, records: pd.DataFrame, decoded: int = 0) -> None:
        """Stores the records, then removes the delivery's shards that they no longer name.

        `decoded` (files handed to a decoder) is kept with a token naming this decode, so that
        the index knows which decodes it has already counted (`decodes`).
        """
        path = self.records_path(delivery)
        tmp = path.with_name(f".{path.name}.tmp")
        records.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        note = {"token": uuid.uuid4().hex, "decoded": int(decoded)}
        _replace_json(self.directory / f"{delivery}{DECODE_SUFFIX}", note)
        used = set(records["shard"].dropna())
        writers = {name.removesuffix(".npy").rsplit("-", 1)[0] for name in used}
        for stale in self.directory.glob(f"{delivery}-*"):
            if stale.name in used or stale.name.removesuffix(".manifest.json") in writers:
                continue
            stale.unlink(missing_ok=True)

    def decodes(self, deliveries: list[str]) -> dict[str, dict]:
        """delivery -> {"token", "decoded"} of its latest decode with these settings."""
        found = {}
        for delivery in deliveries:
            path = self.directory / f"{delivery}{DECODE_SUFFIX}"
            if path.exists():
                found[delivery] = json.loads(path.read_text())
        return found

    def current(self, deliveries: dict[str, list[str]], what: str) -> pd.DataFrame:
        """The records of the files each delivery holds now (delivery -> paths), in delivery
        order; a file that changed since has moved to a later delivery, so its old record is left
        out. KeyError names a delivery not decoded with these settings."""
        frames = []
        for delivery, paths in sorted(deliveries.items()):
            try:
                records = self.records(delivery)
            except KeyError:
                raise KeyError(
                    f"delivery {delivery} has no {what} decoded with these settings: "
                    f"materialize its partition (`clinfuse run` does)"
                ) from None
            frames.append(records[records["path"].isin(set(paths))])
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def forget(self, delivery: str) -> None:
        """A delivery gone from the landing zone: its records and shards go too."""
        self.records_path(delivery).unlink(missing_ok=True)
        (self.directory / f"{delivery}{DECODE_SUFFIX}").unlink(missing_ok=True)
        for stale in self.directory.glob(f"{delivery}-*"):
            stale.unlink(missing_ok=True)

    def shards_of(self, records: pd.DataFrame) -> tuple[str, ...]:
        return tuple(sorted(set(records["shard"].dropna())))


def reused_record(
    path: str,
    known: pd.Series,
    columns: list[str],
    reader: ShardReader,
    append: Callable[[np.ndarray], tuple[str, int]],
) -> dict[str, object]:
    """The record of a file whose content the store holds (`known`: a row of `known()`), its
    tensor copied into this delivery's shards, so the delivery never depends on another's."""
    row = {c: known.get(c) for c in columns if c != "path"}
    row = {k: (None if is_missing(v) else v) for k, v in row.items()}
    row.update(path=path, sha256=known.name)
    if row["reason"] is None:
        item = np.array(reader.get(str(known["shard"]), int(known["slot"])))
        row["shard"], row["slot"] = append(item)
    return row


def is_missing(value: object) -> bool:
    """NA, NaT or None (a record's empty cell), for any value pandas hands back."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array-like value is never a missing cell
        return False


def typed(frame: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """frame's `dtypes` columns, each cast to its dtype (None -> NA), in that order."""
    out = frame[list(dtypes)].copy()
    for column, dtype in dtypes.items():
        if dtype == "Int64":
            values = [None if is_missing(v) else int(v) for v in out[column]]
            out[column] = pd.array(values, dtype="Int64")
        elif dtype.startswith("datetime64"):
            out[column] = pd.to_datetime(out[column]).astype(dtype)
        else:
            out[column] = out[column].astype(dtype)
    return out.reset_index(drop=True)
