"""The resources every asset shares: the landing zone, the work directory, the settings; and
the pool and partitions that several assets name."""

from __future__ import annotations

import dataclasses
import os
import shutil
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from clinfuse.assets.settings import Settings, field_types, keys, settings_from_dict, to_dict

# The Dagster pool of the stages that work in a process pool of every core (the delivery
# decodes, the study and recording indexes when they catch up, notes' de-identification): a
# limit of 1 (docs/dagster.yaml.example) keeps two such stages from oversubscribing the cores
# under a multiprocess executor.
DECODE_POOL = "decode"

# One partition per delivery: the images and recordings that arrived together, as the
# landing-zone sensor, the schedule or `clinfuse run` found them (assets/ingest/deliveries.py).
# The UI shows which deliveries are in; a backfill decodes a delivery again.
DELIVERIES = dg.DynamicPartitionsDefinition(name="deliveries")


class LandingZone(dg.ConfigurableResource):
    """A hospital export laid out as ../shared/landing-zone.md says. Read, never written."""

    path: str = Field(description="The landing-zone folder (ehr/, note/, dicom/, audio/).")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def has(self, modality_folder: str) -> bool:
        return (self.root / modality_folder).is_dir()


class WorkDir(dg.ConfigurableResource):
    """Everything clinfuse writes: tables, shards, models, report.json."""

    path: str = Field(description="The work directory of this deployment.")
    workers: int = Field(default=0, description="Processes for image/audio stages; 0 = all cores.")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def folder(self, *parts: str) -> Path:
        folder = self.root.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def fresh_folder(self, *parts: str) -> Path:
        """An empty folder: a rerun replaces what an earlier (or killed) run left, never appends."""
        folder = self.root.joinpath(*parts)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def config_class(schema: type) -> type[dg.Config]:
    """The Dagster config class of a schema dataclass, field for field (nested ones recursively).

    Generated, not written: the schema in assets/settings.py is the only place a key is defined.
    """
    types = field_types(schema)
    defined: dict[str, Any] = {}
    for spec in keys(schema):
        kind = types[spec.name]
        default = getattr(schema(), spec.name)
        if dataclasses.is_dataclass(kind):
            nested = config_class(kind)
            defined[spec.name] = (nested, Field(default_factory=nested))
        elif typing.get_origin(kind) is tuple:
            defined[spec.name] = (list[str], Field(default_factory=lambda d=default: list(d)))
        elif typing.get_origin(kind) in (Mapping, dict):
            defined[spec.name] = (dict[str, str], Field(default_factory=lambda d=default: dict(d)))
        else:
            defined[spec.name] = (kind, default)
    return create_model(f"{schema.__name__}Config", __base__=dg.Config, **defined)


SettingsConfig = config_class(Settings)


class PipelineSettings(dg.ConfigurableResource):
    """The run's settings (the YAML of `clinfuse run --config`; schema: assets/settings.py)."""

    run: SettingsConfig = Field(  # type: ignore[valid-type]
        default_factory=SettingsConfig, description="Every key of the run schema."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettings:
        return cls(run=SettingsConfig(**to_dict(settings)))

    @property
    def value(self) -> Settings:
        """The settings as the plain schema dataclasses that the code below the assets reads."""
        return settings_from_dict(self.run.model_dump())
