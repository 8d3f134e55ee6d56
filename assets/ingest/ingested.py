"""What an ingest asset hands on: the rows it kept, the ones it rejected, how many it saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinfuse.assets.ingest.quarantine import rejects_frame


@dataclass
class Ingested:
    """The output of one ingest asset.

    rows is a DataFrame, or the Path of a Parquet file that the stage streamed itself (labevents:
    MIMIC's is tens of GB). The Parquet IO manager stores rows and rejects side by side, so that
    downstream assets load the rows and the `quarantine` asset loads the rejects.
    """

    rows: pd.DataFrame | Path
    rejects: pd.DataFrame
    seen: int
    # Rejects that are no input of their own: a dicom/manifest.csv row naming a missing file is
    # quarantined, but `seen` counts files for DICOM, so it must not count as a quarantined file.
    extra_rejects: int = 0
    # Files this run decoded (DICOM and audio: the deliveries decoded since the index was last
    # built); None for tables, which are read whole on every run.
    decoded: int | None = None

    @property
    def ingested(self) -> int:
        if isinstance(self.rows, Path):
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.rows).metadata.num_rows
        return len(self.rows)

    @property
    def quarantined(self) -> int:
        return len(self.rejects) - self.extra_rejects

    @classmethod
    def empty(cls, columns: list[str]) -> Ingested:
        """A modality the landing zone does not hold: nothing seen, nothing lost."""
        return cls(rows=pd.DataFrame(columns=columns), rejects=rejects_frame(), seen=0)


@dataclass(frozen=True)
class ShardSet:
    """Fixed-shape tensors in memory-mappable shards (see shards.py), addressed by an index."""

    directory: Path
    shards: tuple[str, ...]
    item_shape: tuple[int, ...]
