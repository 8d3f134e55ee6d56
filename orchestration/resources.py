"""The resources every asset shares: the landing zone, the work directory, the settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

from clinfuse.assets.settings import (
    PNEUMONIA_ICD9,
    PNEUMONIA_ICD10,
    AudioSettings,
    Settings,
    Target,
)


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


class PipelineSettings(dg.ConfigurableResource):
    """The run's settings (the YAML of `clinfuse run --config`)."""

    target_name: str = "pneumonia"
    icd10_prefixes: list[str] = Field(default_factory=lambda: list(PNEUMONIA_ICD10))
    icd9_prefixes: list[str] = Field(default_factory=lambda: list(PNEUMONIA_ICD9))
    window_hours: float = 24.0
    seed: int = 0
    image_size: int = 64
    audio_sample_rate: int = 4000
    audio_seconds: float = 8.0
    text_backend: str = "tfidf"

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettings:
        return cls(
            target_name=settings.target.name,
            icd10_prefixes=list(settings.target.icd10_prefixes),
            icd9_prefixes=list(settings.target.icd9_prefixes),
            window_hours=settings.window_hours,
            seed=settings.seed,
            image_size=settings.image_size,
            audio_sample_rate=settings.audio.sample_rate,
            audio_seconds=settings.audio.seconds,
            text_backend=settings.text_backend,
        )

    def settings(self) -> Settings:
        return Settings(
            target=Target(
                name=self.target_name,
                icd10_prefixes=tuple(self.icd10_prefixes),
                icd9_prefixes=tuple(self.icd9_prefixes),
            ),
            window_hours=self.window_hours,
            seed=self.seed,
            image_size=self.image_size,
            audio=AudioSettings(sample_rate=self.audio_sample_rate, seconds=self.audio_seconds),
            text_backend=self.text_backend,
        )
