"""The out-of-core engine of the big tables: one DuckDB connection per step, bounded.

labevents is MIMIC's largest table by two orders of magnitude (~118M rows). Its CSV is tokenized
by DuckDB's reader (csv_chunks.engine_chunks) and its window rows and per-admission aggregates
are computed by DuckDB queries over the Parquet file (cohort/window.py, features/labs.py), so no
step holds the table, or even its prediction-window rows, in memory.

Every connection is in-memory, with a memory limit (DuckDB spills what does not fit to
`temp_directory`, under the work directory), `threads` = the work directory's worker count, and
insertion order preserved (a plain scan returns rows in file order, which row numbers rely on).
Plain code: no Dagster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# DuckDB's own default is 80% of RAM; a step shares the machine with the run's other processes.
# 2 GiB is what the 50M-row benchmark needs to stay within 4 GiB of peak RSS (docs/benchmarks.md).
MAX_MEMORY_MB = 2048


@dataclass(frozen=True)
class EngineConfig:
    """How much of the machine one step's DuckDB may use."""

    threads: int = 1
    memory_limit_mb: int = MAX_MEMORY_MB
    temp_directory: Path | None = None  # None: DuckDB's default (beside the process)

    @classmethod
    def for_workdir(cls, root: Path, workers: int) -> EngineConfig:
        """threads = the run's worker count; spills go to <workdir>/tmp/duckdb."""
        return cls(
            threads=max(1, int(workers)),
            memory_limit_mb=default_memory_mb(),
            temp_directory=Path(root) / "tmp" / "duckdb",
        )


def default_memory_mb() -> int:
    """MAX_MEMORY_MB, or a quarter of the machine's memory where that is less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return MAX_MEMORY_MB
    return int(max(256, min(MAX_MEMORY_MB, total // 4)))


def connect(config: EngineConfig | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection set up as `config` says (the defaults when None)."""
    import duckdb  # here: the served model imports window.py, and needs no engine to score

    config = config or EngineConfig()
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(config.threads)}")
    con.execute(f"SET memory_limit = '{int(config.memory_limit_mb)}MB'")
    con.execute("SET preserve_insertion_order = true")
    if config.temp_directory is not None:
        Path(config.temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {quote_literal(str(config.temp_directory))}")
    return con


def quote_literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def quote_name(name: str) -> str:
    """A SQL identifier, whatever characters a CSV header gave it."""
    return '"' + name.replace('"', '""') + '"'
