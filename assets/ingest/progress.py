"""Progress of long stages in the run log: "dicom 1200/5000 (24%)", at most every 10%."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg


def log_progress(context: dg.AssetExecutionContext, stage: str) -> Callable[[int, int], None]:
    last_decile = -1

    def report(done: int, total: int) -> None:
        nonlocal last_decile
        decile = (10 * done) // max(total, 1)
        if decile != last_decile or done == total:
            last_decile = decile
            context.log.info(f"{stage} {done}/{total} ({100 * done // max(total, 1)}%)")

    return report
