"""A table read chunk by chunk, stored as it is read: each chunk's kept rows appended to Parquet.

`read_table_chunks` calls a chunk hook on every chunk's kept rows and keeps what it returns.
`ParquetSink.storing` makes that hook write the rows out and return none, so the table is never
in memory (MIMIC-IV's notes are ~2.6M, its diagnoses_icd ~4.8M rows); with no `out`, the hook
only shapes the rows and the caller gets them back as one DataFrame (tests, small tables).

The file is written under a `.partial` name and renamed once complete, removed on an error, so
a killed run never leaves a cut-off table where a reader would take it for the whole one.
Plain code: no Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # reader.py stores its tables through this module
    from clinfuse.assets.ingest.ehr.reader import TableRead

Rows = Callable[[pd.DataFrame], pd.DataFrame]


class ParquetSink:
    """`with ParquetSink(out, empty) as sink:` ... `read_table_chunks(..., sink.storing(f))`."""

    def __init__(self, out: Path | None, empty: pd.DataFrame) -> None:
        self.out = None if out is None else Path(out)
        self.schema = pa.Schema.from_pandas(empty, preserve_index=False)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetSink:
        if self.out is not None:
            self._partial = self.out.with_name(self.out.name + ".partial")
            self._writer = pq.ParquetWriter(self._partial, self.schema)
        return self

    def storing(self, shape: Rows | None = None) -> Rows:
        """The chunk hook: `shape` the kept rows (de-identify, add columns), then store them."""

        def store(rows: pd.DataFrame) -> pd.DataFrame:
            rows = shape(rows) if shape is not None else rows
            if self._writer is None:
                return rows
            table = pa.Table.from_pandas(rows, schema=self.schema, preserve_index=False)
            self._writer.write_table(table)
            self.rows += len(rows)
            return rows.iloc[:0]

        return store

    def result(self, read: TableRead) -> TableRead:
        """`read` with `ingested` the rows stored (its own `rows` are then empty)."""
        if self._writer is not None:
            read.ingested = self.rows
        return read

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._writer is None:
            return
        self._writer.close()
        if exc_type is None:
            self._partial.replace(self.out)
        else:
            self._partial.unlink(missing_ok=True)
