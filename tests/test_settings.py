"""The run schema round-trips: every key, set to a value other than its default, reaches the code.

One YAML with every key of assets/settings.py changed goes through each entry point (the YAML
reader, `--set`, `clinfuse config`, the Dagster resource both as bound and as launch-time run
config) and must come back whole; then the audio settings must shape a real spectrogram and the
size limit must quarantine a real DICOM through a real Dagster materialization.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from clinfuse.assets.resources import PipelineSettings
from clinfuse.assets.settings import (
    Settings,
    field_types,
    keys,
    settings_from_dict,
    to_dict,
)
from clinfuse.orchestration.cli import main
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.runner import PipelineFailed, read_config

# Text keys take one of a few values; a changed value must still be a valid one.
OTHER_TEXT = {
    "name": "sepsis",
    "strategy": "attention",
    "device": "cpu",
    "text_backend": "auto",
}


def changed(schema: type, prefix: str = "") -> dict:
    """Every key of `schema` with a value other than its default (nested sections too)."""
    default, types, raw = schema(), field_types(schema), {}
    for spec in keys(schema):
        kind, value = types[spec.name], getattr(schema(), spec.name)
        if dataclasses.is_dataclass(kind):
            raw[spec.name] = changed(kind, f"{prefix}{spec.name}.")
        elif kind is bool:
            raw[spec.name] = not value
        elif kind is int:
            raw[spec.name] = value + 3
        elif kind is float:
            raw[spec.name] = value * 0.5 + 0.25
        elif kind is str:
            raw[spec.name] = OTHER_TEXT[spec.name]
        elif typing.get_origin(kind) is tuple:
            raw[spec.name] = ["X99", "Y98"]
        else:
            raw[spec.name] = {"image": "/nowhere/encoder.pt"}
        assert raw[spec.name] != to_dict(getattr(default, spec.name)), prefix + spec.name
    return raw


def leaves(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value and key != "init_encoders":
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.fixture
def every_key(tmp_path: Path) -> tuple[dict, Path]:
    raw = changed(Settings)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


def test_every_key_is_in_the_schema_walk():
    names = set(leaves(changed(Settings)))
    # The contract's keys (../shared/cli-and-report.md) and the ones that drifted before.
    for key in ("target.name", "window_hours", "seed", "limits.max_image_mb", "audio.n_mels"):
        assert key in names
    assert {"training.epochs", "training.crossfit_folds", "training.init_encoders"} <= names
    # The run's seed is the one seed; keys no model of a run reads are not keys at all.
    assert not {"training.seed", "training.pretrain", "training.modality_dropout"} & names


def test_yaml_round_trip(every_key):
    raw, path = every_key
    settings = read_config(path)
    assert to_dict(settings) == raw
    assert settings.training.network(settings.seed).seed == raw["seed"]
    assert settings.training.network(settings.seed).epochs == raw["training"]["epochs"]


def test_set_assignments_override_the_yaml(every_key):
    raw, path = every_key
    settings = read_config(path, None, ["training.epochs=2", "audio.n_mels=16", "seed=11"])
    assert (settings.training.epochs, settings.audio.n_mels, settings.seed) == (2, 16, 11)
    assert settings.window_hours == raw["window_hours"]


def test_clinfuse_config_prints_every_key(every_key, capsys):
    raw, path = every_key
    assert main(["config", "--config", str(path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == raw
    assert main(["config"]) == 0
    assert settings_from_dict(yaml.safe_load(capsys.readouterr().out)) == Settings()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"training": {"seed": 1}}, "training.seed"),
        ({"audio": {"n_mel": 3}}, "audio.n_mel"),
        ({"limits": {"max_image_mb": "big"}}, "limits.max_image_mb"),
        ({"window_hours": True}, "window_hours"),
        ({"target": {"icd10_prefixes": "J18"}}, "target.icd10_prefixes"),
    ],
)
def test_bad_keys_and_values_are_errors_that_name_the_key(tmp_path, raw, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineFailed, match=message.replace(".", r"\.")):
        read_config(path)


def test_a_served_model_reads_settings_an_older_version_stored():
    """Keys a later version dropped must not stop an older champion from loading."""
    stored = {"window_hours": 12, "training": {"pretrain": True, "gone": 1}, "retired": "x"}
    settings = settings_from_dict(stored, strict=False)
    assert settings.window_hours == 12 and settings.training == Settings().training
    with pytest.raises(ValueError, match="retired"):
        settings_from_dict(stored)


def test_dagster_resource_round_trip(every_key):
    raw, path = every_key
    settings = read_config(path)
    assert PipelineSettings.from_settings(settings).value == settings

    @dg.asset
    def probe(settings: PipelineSettings) -> dict:
        return to_dict(settings.value)

    launched = dg.materialize(
        [probe],
        resources={"settings": PipelineSettings.configure_at_launch()},
        run_config={"resources": {"settings": {"config": {"run": raw}}}},
    )
    assert launched.output_for_node("probe") == raw


def test_the_code_location_reads_a_config_with_every_key(every_key, tmp_path, monkeypatch):
    """`dagster dev` / the UI load the location from CLINFUSE_CONFIG: the same schema applies."""
    from clinfuse.orchestration import definitions

    raw, path = every_key
    monkeypatch.setenv("CLINFUSE_CONFIG", str(path))
    monkeypatch.setenv("CLINFUSE_WORKDIR", str(tmp_path / "work"))
    defs = definitions._from_environment()
    assert defs.resolve_job_def("full_pipeline").name == "full_pipeline"  # the location resolves
    assert to_dict(defs.resources["settings"].value) == raw


def test_audio_settings_shape_the_spectrograms_of_a_real_run(tmp_path):
    """Through a real materialization of `recordings`: n_mels, hop_length and seconds decide the
    shard's item shape and every stored spectrogram (a key accepted and dropped would not)."""
    from clinfuse.models.shards import ShardReader
    from clinfuse.synthetic import generate

    landing = tmp_path / "landing"
    generate(landing, admissions=12, seed=5, image_size=32)
    settings = settings_from_dict(
        {"audio": {"n_mels": 24, "hop_length": 100, "seconds": 2.0}, "limits": {"max_image_mb": 0}}
    )
    defs = build_definitions(landing, tmp_path / "work", settings, workers=1)
    selection = ["admissions", "patients", "recording_index", "recording_spectrograms"]
    selection += ["dicom_index", "study_images"]
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(asset_selection=[dg.AssetKey(k) for k in selection])
    assert result.success
    shards = result.output_for_node("recordings", "recording_spectrograms")
    frames = int(4000 * 2.0) // 100 + 1
    assert tuple(shards.item_shape) == (1, 24, frames)
    first = ShardReader(shards.directory).get(shards.shards[0], 0)
    assert first.shape == (1, 24, frames)
    # max_image_mb = 0: every DICOM is quarantined "image too large", none is decoded.
    ingested = result.output_for_node("dicom_studies", "dicom_index")
    reasons = pd.Series(ingested.rejects["reason"])
    assert len(ingested.rows) == 0 and reasons.str.startswith("image too large").any()
