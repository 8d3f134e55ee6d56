"""What the landing zone holds now, which of its files have settled since the last look, and
which delivery each image and recording arrived in.

Plain code: the landing-zone sensor decides from it when to start a run, the registry
fingerprints the landing zone a model was trained on, and the ledger
(`<workdir>/deliveries.parquet`) says which files each delivery holds: a delivery is decoded
once (its Dagster partition), and a file that an earlier delivery held is never decoded again
(docs/architecture.md, "Deliveries").
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.paths import Zone, landing_entries, walk_entries


def scan_landing(root: Path) -> dict[str, int]:
    """Relative path -> size of every file in the landing zone, links included.

    A link is followed only when it resolves to a file inside the zone; any other link (out of
    the zone, to a folder, broken) is listed with the size of the link itself, so nothing outside
    is ever looked at and a linked folder is never walked (paths.py).
    """
    root = Path(root)
    if not root.is_dir():
        return {}
    zone = Zone.of(root)
    sizes: dict[str, int] = {}
    for path in landing_entries(root):
        try:
            sizes[str(path.relative_to(root))] = _size(zone, path)
        except OSError:  # gone since it was listed (a copy tool renaming its temporary file)
            continue
    return sizes


def _size(zone: Zone, path: Path) -> int:
    return _stamp(zone, path)[0]


def next_cursor(cursor: dict, current: dict[str, int]) -> tuple[list[str], dict]:
    """(files ready to ingest, the new cursor).

    A file is ready once it is new or changed and its size has not moved since the previous
    tick: a file still being copied is pending until then.
    """
    seen, pending = cursor.get("seen", {}), cursor.get("pending", {})
    changed = {p: s for p, s in current.items() if seen.get(p) != s}
    ready = sorted(p for p, s in changed.items() if pending.get(p) == s)
    still_pending = {p: s for p, s in changed.items() if p not in ready}
    new_seen = {**seen, **{p: current[p] for p in ready}}
    return ready, {"seen": new_seen, "pending": still_pending}


# --- deliveries: the decoded modalities' files, in the batches they arrived in ------------------

MEDIA_FOLDERS = ("dicom", "audio")
MANIFESTS = ("dicom/manifest.csv", "audio/manifest.csv")  # read whole on every run, never decoded
LEDGER = "deliveries.parquet"
LEDGER_COLUMNS = ["path", "size", "mtime_ns", "delivery"]


def scan_media(root: Path, folders: tuple[str, ...] = MEDIA_FOLDERS) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under dicom/ and audio/ (or `folders`)
    but the manifests.

    Links as in scan_landing: one that resolves to a file inside the zone is described by its
    target, any other by the link itself (its decoder quarantines it "outside landing zone").
    """
    root = Path(root)
    zone = Zone.of(root)
    found: dict[str, tuple[int, int]] = {}
    for folder in folders:
        if not (root / folder).is_dir():
            continue
        for path in walk_entries(root / folder):
            relative = path.relative_to(root).as_posix()
            if relative in MANIFESTS:
                continue
            try:
                found[relative] = _stamp(zone, path)
            except OSError:  # gone since it was listed
                continue
    return found


def _stamp(zone: Zone, path: Path) -> tuple[int, int]:
    real = zone.real(path) if path.is_symlink() else path
    info = real.stat() if real is not None and real.is_file() else os.lstat(path)
    return info.st_size, info.st_mtime_ns


def empty_ledger() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": pd.Series(dtype="string"),
            "size": pd.Series(dtype="int64"),
            "mtime_ns": pd.Series(dtype="int64"),
            "delivery": pd.Series(dtype="string"),
        }
    )


def read_ledger(workdir: Path) -> pd.DataFrame:
    """Which delivery each decoded-modality file of the landing zone arrived in (empty at first)."""
    path = Path(workdir) / LEDGER
    return (
        pd.read_parquet(path).astype(empty_ledger().dtypes.to_dict())
        if path.exists()
        else (empty_ledger())
    )


@contextmanager
def ledger_lock(workdir: Path) -> Iterator[None]:
    """Exclusive use of the ledger (flock): the DICOM and audio index steps, a sensor tick and
    a run may each record deliveries, and none may overwrite what another just wrote."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with open(Path(workdir) / f".{LEDGER}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def record(
    workdir: Path,
    root: Path,
    folders: tuple[str, ...] = MEDIA_FOLDERS,
    ready: set[str] | None = None,
    now: datetime | None = None,
) -> Reconciled:
    """reconcile against a scan of `folders`, written to the ledger, under the ledger's lock."""
    with ledger_lock(workdir):
        ledger = read_ledger(workdir)
        reconciled = reconcile(ledger, scan_media(root, folders), ready, now, folders)
        if reconciled.changed:
            write_ledger(workdir, reconciled.ledger)
    return reconciled


def write_ledger(workdir: Path, ledger: pd.DataFrame) -> None:
    path = Path(workdir) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ledger[LEDGER_COLUMNS].to_parquet(tmp, index=False)
    os.replace(tmp, path)  # a sensor tick and a run never see half a ledger


@dataclass(frozen=True)
class Reconciled:
    """The ledger after a look at the landing zone, and what changed in it."""

    ledger: pd.DataFrame
    added: str | None  # the new delivery's key: every new or changed file that is ready
    removed: tuple[str, ...]  # deliveries none of whose files is left

    @property
    def changed(self) -> bool:
        return self.added is not None or bool(self.removed)


def reconcile(
    ledger: pd.DataFrame,
    current: dict[str, tuple[int, int]],
    ready: set[str] | None = None,
    now: datetime | None = None,
    folders: tuple[str, ...] = MEDIA_FOLDERS,
) -> Reconciled:
    """One new delivery of the files that are new or changed (and `ready`: the sensor's settled
    ones; None: all of them); files gone from the zone leave the ledger, and so does a delivery
    with none left. A changed file moves to the new delivery, so the old one's decode of it is
    never used again. `current` is a scan of `folders`; the ledger's other files stay as they are.
    """
    in_scope = ledger["path"].str.split("/").str[0].isin(folders).astype(bool)
    untouched, ledger_all, ledger = ledger[~in_scope], ledger, ledger[in_scope]
    stamps = {
        p: (int(s), int(m))
        for p, s, m in ledger[["path", "size", "mtime_ns"]].itertuples(index=False)
    }
    kept = ledger[[stamps[p] == current.get(p) for p in ledger["path"]]] if len(ledger) else ledger
    fresh = sorted(
        p
        for p, stamp in current.items()
        if stamps.get(p) != stamp and (ready is None or p in ready)
    )
    added = None
    if fresh:
        added = delivery_key(fresh, now or datetime.now(UTC))
        rows = pd.DataFrame(
            {
                "path": fresh,
                "size": [current[p][0] for p in fresh],
                "mtime_ns": [current[p][1] for p in fresh],
                "delivery": added,
            }
        )
        kept = pd.concat([kept, rows], ignore_index=True)
    kept = pd.concat([untouched, kept], ignore_index=True)
    removed = tuple(sorted(set(ledger_all["delivery"]) - set(kept["delivery"])))
    return Reconciled(
        kept.astype(empty_ledger().dtypes.to_dict()).reset_index(drop=True), added, removed
    )


def delivery_key(paths: list[str], when: datetime) -> str:
    """`20261201T125547-1a2b3c`: sorts by arrival, and two deliveries in one second differ."""
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:6]
    return f"{when.astimezone(UTC):%Y%m%dT%H%M%S}-{digest}"


def deliveries_in_order(ledger: pd.DataFrame) -> list[str]:
    return sorted(set(ledger["delivery"]))


def files_by_delivery(ledger: pd.DataFrame, folder: str) -> dict[str, list[str]]:
    """delivery -> its files under `folder` (dicom or audio), for deliveries holding any."""
    mine = ledger[ledger["path"].str.startswith(f"{folder}/")]
    return {key: sorted(group["path"]) for key, group in mine.groupby("delivery", sort=True)}
