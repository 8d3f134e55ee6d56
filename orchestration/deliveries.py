"""Deliveries as Dagster partitions: what the sensor, the schedule and `clinfuse run` record.

A look at the landing zone (assets/ingest/deliveries.py `reconcile`) makes the new or changed
images and recordings one new delivery, and drops the deliveries whose files are all gone. Here
that becomes Dagster's state: a partition of `deliveries` added or deleted, the decode store of a
removed delivery emptied, and the run that follows: `full_pipeline` for the new delivery's
partition (decode it, then rebuild everything downstream), or, when no file is new, the same job
without its delivery assets (the index is rebuilt from what is already decoded: decoded 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

from clinfuse.assets.ingest.audio.assets import spectrogram_store
from clinfuse.assets.ingest.deliveries import Reconciled, deliveries_in_order, record
from clinfuse.assets.ingest.dicom.assets import image_store
from clinfuse.assets.resources import DELIVERIES, WorkDir
from clinfuse.assets.settings import Settings

DELIVERY_ASSETS = ("dicom_delivery", "audio_delivery")


@dataclass(frozen=True)
class DeliveryPlan:
    """What a look at the landing zone changed, and what must run because of it."""

    reconciled: Reconciled
    stale: tuple[str, ...]  # recorded deliveries with no decode under the current settings
    to_add: tuple[str, ...] = ()  # partitions of `deliveries` to add
    to_delete: tuple[str, ...] = ()  # and to delete

    @property
    def added(self) -> str | None:
        return self.reconciled.added


def record_deliveries(
    landing: Path,
    workdir: Path,
    settings: Settings,
    instance: dg.DagsterInstance,
    ready: set[str] | None = None,
    now: datetime | None = None,
) -> DeliveryPlan:
    """Updates the ledger to what the landing zone holds now; the plan says which partitions of
    `deliveries` to add and delete (apply_partitions, or a sensor's partition requests).

    `ready`: the files the sensor found settled (None: every file, as `clinfuse run` takes it).
    """
    reconciled = record(workdir, landing, ready=ready, now=now)
    known = set(instance.get_dynamic_partitions(DELIVERIES.name))
    current = deliveries_in_order(reconciled.ledger)
    stores = _stores(workdir, settings)
    for key in reconciled.removed:
        for store in stores:
            store.forget(key)
    decoded = [set(store.deliveries()) for store in stores]
    stale = tuple(
        key
        for key in current
        if key != reconciled.added and any(key not in done for done in decoded)
    )
    return DeliveryPlan(
        reconciled,
        stale,
        to_add=tuple(k for k in current if k not in known),
        to_delete=tuple(sorted(known - set(current))),
    )


def apply_partitions(plan: DeliveryPlan, instance: dg.DagsterInstance) -> None:
    """The plan's partition changes, made now (a sensor returns them as requests instead)."""
    if plan.to_add:
        instance.add_dynamic_partitions(DELIVERIES.name, list(plan.to_add))
    for key in plan.to_delete:
        instance.delete_dynamic_partition(DELIVERIES.name, key)


def partition_requests(plan: DeliveryPlan) -> list:
    requests: list = []
    if plan.to_add:
        requests.append(DELIVERIES.build_add_request(list(plan.to_add)))
    if plan.to_delete:
        requests.append(DELIVERIES.build_delete_request(list(plan.to_delete)))
    return requests


def _stores(workdir: Path, settings: Settings):
    resource = WorkDir(path=str(workdir))
    return (image_store(resource, settings), spectrogram_store(resource, settings.audio))


def rebuild_selection(job: dg.JobDefinition) -> list[dg.AssetKey]:
    """Every asset of `job` but the delivery partitions: a run that decodes nothing."""
    keys = job.asset_layer.executable_asset_keys
    return sorted(k for k in keys if k.to_user_string() not in DELIVERY_ASSETS)


def run_request(
    plan: DeliveryPlan,
    job: dg.JobDefinition,
    run_key: str | None,
    tags: dict[str, str] | None = None,
) -> dg.RunRequest:
    """The run that follows a look: the new delivery's partition, else the rebuild alone."""
    tags = {"clinfuse/delivery": plan.added or "none", **(tags or {})}
    if plan.added is not None:
        return dg.RunRequest(run_key=run_key, partition_key=plan.added, tags=tags)
    return dg.RunRequest(run_key=run_key, asset_selection=rebuild_selection(job), tags=tags)
