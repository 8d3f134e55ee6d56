"""What long ingest stages tell the run log and metadata: progress ("dicom 1200/5000 (24%)", at
most every 10%), the encoding a manifest was read in, and how many files a run decoded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from clinfuse.assets.ingest.decoded import DecodeStore
from clinfuse.assets.ingest.encodings import is_fallback, manifest_encodings
from clinfuse.assets.resources import LandingZone


def log_progress(context: dg.AssetExecutionContext, stage: str) -> Callable[[int, int], None]:
    last_decile = -1

    def report(done: int, total: int) -> None:
        nonlocal last_decile
        decile = (10 * done) // max(total, 1)
        if decile != last_decile or done == total:
            last_decile = decile
            context.log.info(f"{stage} {done}/{total} ({100 * done // max(total, 1)}%)")

    return report


def manifest_metadata(
    context: dg.AssetExecutionContext, landing: LandingZone, folder: str
) -> dict[str, dg.MetadataValue]:
    """The manifest's encoding, named in the run log when it is a legacy fallback."""
    found = manifest_encodings(landing.root, folder)
    for name, encoding in found.items():
        if is_fallback(encoding):
            context.log.warning(f"{name} is not UTF-8: read as {encoding}")
    return {"encodings": dg.MetadataValue.json(found)} if found else {}


@dataclass(frozen=True)
class Decodes:
    """Files decoded since the index was last built, and the decodes it is now built from."""

    count: int
    tokens: dict[str, str]  # delivery -> the token of the decode its records come from

    def metadata(self) -> dict[str, dg.MetadataValue]:
        return {
            "decoded": dg.MetadataValue.int(self.count),
            "delivery_decodes": dg.MetadataValue.json(self.tokens),
        }


def newly_decoded(
    context: dg.AssetExecutionContext, index_asset: str, store: DecodeStore, deliveries: list[str]
) -> Decodes:
    """What the report calls `decoded`: the files of the decodes that the index's previous
    materialization did not use yet (a rerun with nothing new: 0). The decodes are the delivery
    partitions' runs, so "this run" is everything since the index last looked."""
    now = store.decodes(deliveries)
    event = context.instance.get_latest_materialization_event(dg.AssetKey(index_asset))
    before: dict = {}
    if event is not None and event.asset_materialization is not None:
        stored = event.asset_materialization.metadata.get("delivery_decodes")
        before = dict(stored.value) if stored is not None else {}  # type: ignore[arg-type]
    count = sum(d["decoded"] for key, d in now.items() if before.get(key) != d["token"])
    return Decodes(count, {key: d["token"] for key, d in now.items()})
