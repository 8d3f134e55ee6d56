"""Parquet storage for every table-like asset; no pickles.

An asset that returns a DataFrame is stored as `<base>/<asset>.parquet`. One that returns
`Ingested` also keeps its rejects (`<asset>.rejects.parquet`) and counts (`<asset>.counts.json`).
Downstream, an input annotated `Path` gets the Parquet file's path (for streaming readers), an
input whose AssetIn metadata says `{"part": "rejects"}` or `{"part": "counts"}` gets that part,
and anything else gets the rows as a DataFrame. `ShardSet`s are stored as a small JSON manifest
(with each shard's size and sha256, verified on every load) next to the shards they describe,
and dicts (fitted preprocessing state, model pointers) as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from clinfuse.assets.ingest.ingested import Ingested, ShardSet
from clinfuse.models.shards import ShardError, shard_digests, verify_shards


class ParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if isinstance(obj, Ingested):
            self._dump_rows(obj.rows, path)
            if isinstance(obj.rows, Path):
                obj.rows = Path(str(path))  # the staged file now lives at the asset's path
            obj.rejects.to_parquet(_sibling(path, ".rejects.parquet"), index=False)
            counts = {"seen": obj.seen, "ingested": obj.ingested, "quarantined": obj.quarantined}
            if obj.decoded is not None:
                counts["decoded"] = obj.decoded
            _sibling(path, ".counts.json").write_text(json.dumps(counts))
        elif isinstance(obj, ShardSet):
            manifest = {
                "directory": str(obj.directory),
                "shards": list(obj.shards),
                "item_shape": list(obj.item_shape),
                # What the writer wrote: a later run killed while rewriting these files must
                # not pass for them (shards.py).
                "digests": shard_digests(obj.directory, obj.shards),
            }
            _sibling(path, ".shards.json").write_text(json.dumps(manifest))
            self._dump_rows(pd.DataFrame({"shard": list(obj.shards)}), path)
        elif isinstance(obj, pd.DataFrame):
            self._dump_rows(obj, path)
        elif isinstance(obj, dict):
            # Fitted preprocessing state and model pointers: small, JSON, readable by people.
            _sibling(path, ".json").write_text(json.dumps(obj, indent=1, default=str))
            self._dump_rows(pd.DataFrame({"kind": ["json"]}), path)
        else:
            raise TypeError(f"{context.asset_key}: cannot store {type(obj).__name__} as Parquet")

    def _dump_rows(self, rows: pd.DataFrame | Path, path: UPath) -> None:
        local = Path(str(path))
        if isinstance(rows, Path):
            if rows.resolve() != local.resolve():
                os.replace(rows, local) if rows.parent == local.parent else shutil.move(rows, local)
            return
        tmp = local.with_suffix(".parquet.tmp")
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, local)  # a run killed mid-write never leaves a half file behind

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        part = (context.definition_metadata or {}).get("part")
        if part == "rejects":
            return pd.read_parquet(str(_sibling(path, ".rejects.parquet")))
        if part == "counts":
            return json.loads(_sibling(path, ".counts.json").read_text())
        as_json = _sibling(path, ".json")
        if as_json.exists():
            return json.loads(as_json.read_text())
        shard_manifest = _sibling(path, ".shards.json")
        if shard_manifest.exists():
            return _load_shard_set(context, json.loads(shard_manifest.read_text()))
        if context.dagster_type.typing_type is Path:
            return Path(str(path))
        return pd.read_parquet(str(path))

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, Any]:
        """Row count and column schema of every table (the UI's "Columns" tab), counts of every
        ingest; read from what was stored, so they are what a reader gets."""
        if isinstance(obj, Ingested):
            return {
                "seen": obj.seen,
                "ingested": obj.ingested,
                "quarantined": obj.quarantined,
                "dagster/row_count": obj.ingested,
                **_table_metadata(obj.rows),
            }
        if isinstance(obj, pd.DataFrame):
            return {"dagster/row_count": len(obj), **_table_metadata(obj)}
        return {}


def _load_shard_set(context: dg.InputContext, raw: dict[str, Any]) -> ShardSet:
    """The stored ShardSet, once every shard is verified to be the one its asset wrote."""
    shards = ShardSet(
        directory=Path(raw["directory"]),
        shards=tuple(raw["shards"]),
        item_shape=tuple(raw["item_shape"]),
    )
    asset = context.asset_key.to_user_string()
    rerun = "run `clinfuse run` again to ingest it anew"
    if "digests" not in raw:  # stored before shards had checksums: nothing vouches for them
        raise ShardError(f"{asset}: its shards were stored without checksums; {rerun}")
    try:
        verify_shards(shards.directory, {name: raw["digests"][name] for name in shards.shards})
    except (ShardError, KeyError) as error:
        raise ShardError(f"{asset}: {error} (a killed run's leftover?); {rerun}") from None
    return shards


def _table_metadata(rows: pd.DataFrame | Path) -> dict[str, Any]:
    schema = pq.read_schema(rows) if isinstance(rows, Path) else pa.Schema.from_pandas(rows)
    columns = [
        dg.TableColumn(name=field.name, type=str(field.type))
        for field in schema
        if not field.name.startswith("__index_level_")
    ]
    return {"dagster/column_schema": dg.TableSchema(columns=columns)}


def _sibling(path: UPath, suffix: str) -> UPath:
    return path.with_name(path.name.removesuffix(".parquet") + suffix)


class ParquetIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Where the tables live: `<workdir>/tables` by default."""

    base_dir: str

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetIOManager:
        return ParquetIOManager(base_path=UPath(self.base_dir))
