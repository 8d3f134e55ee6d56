"""What long ingest stages tell the run log and metadata: progress ("dicom 1200/5000 (24%)", at
most every 10%) and the encoding a manifest was read in."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

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
