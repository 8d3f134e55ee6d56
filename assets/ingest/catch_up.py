"""Deliveries caught up by the index steps: what a run of the index alone still has to decode.

The landing-zone sensor, the nightly schedule and `clinfuse run` record new files as a delivery
and run its partition before the index is built, so the index finds everything decoded. A
materialization of the index alone (the UI, `dagster asset materialize`, a test selecting a few
assets) may find files nobody recorded, or deliveries decoded under other settings: rather than
leave them out (and the accounting off), the index step records and decodes them itself, with
the same code as the partition, and reports the partition's materialization. Nothing is lost and
nothing is decoded twice either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import dagster as dg

from clinfuse.assets.ingest.decoded import DecodeStore
from clinfuse.assets.ingest.deliveries import deliveries_in_order, files_by_delivery, record
from clinfuse.assets.resources import DELIVERIES, LandingZone, WorkDir

# decode(delivery, files) decodes and stores them, and returns the partition's metadata.
Decode = Callable[[str, list[str]], Mapping[str, object]]


def catch_up(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    workdir: WorkDir,
    folder: str,
    store: DecodeStore,
    decode: Decode,
) -> dict[str, list[str]]:
    """Records `folder`'s new, changed and removed files, decodes every delivery this store has
    not decoded, and returns delivery -> files of `folder` as the ledger now has them."""
    reconciled = record(workdir.root, landing.root, folders=(folder,))
    instance = context.instance
    known = set(instance.get_dynamic_partitions(DELIVERIES.name))
    missing = [key for key in deliveries_in_order(reconciled.ledger) if key not in known]
    if missing:
        instance.add_dynamic_partitions(DELIVERIES.name, missing)
    for key in reconciled.removed:
        store.forget(key)
        if key in known:
            instance.delete_dynamic_partition(DELIVERIES.name, key)
    deliveries = files_by_delivery(reconciled.ledger, folder)
    decoded = set(store.deliveries())
    for key, files in deliveries.items():
        if key in decoded:
            continue
        context.log.info(f"{folder}: delivery {key} was not decoded yet; decoding it here")
        metadata = decode(key, files)
        context.log_event(
            dg.AssetMaterialization(
                asset_key=f"{folder}_delivery", partition=key, metadata=dict(metadata)
            )
        )
    return deliveries
