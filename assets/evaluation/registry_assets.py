"""Registry assets: every run registers a challenger; the gate decides who is champion."""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import numpy as np
import pandas as pd

from clinfuse.assets.evaluation import metrics as m
from clinfuse.assets.evaluation import registry
from clinfuse.assets.evaluation.model_card import VERSION_PLACEHOLDER
from clinfuse.assets.evaluation.serve_inputs import reading_from
from clinfuse.assets.evaluation.serving import serving_frames, serving_signature
from clinfuse.assets.ingest.deliveries import scan_landing
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.assets.resources import LandingZone, PipelineSettings, WorkDir
from clinfuse.assets.settings import to_dict

GROUP = "registry"
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")


class PromotionConfig(dg.Config):
    """A person may force promotion; the override is recorded as such with their note."""

    force: bool = False
    note: str = ""
    auroc_tolerance: float = registry.AUROC_TOLERANCE
    ece_tolerance: float = registry.ECE_TOLERANCE


def model_name(settings: PipelineSettings) -> str:
    return f"clinfuse-{settings.value.target.name}"


def landing_fingerprint(root: Path) -> str:
    """sha256 over (path, size) of every landing-zone file: which export a model saw."""
    return hashlib.sha256(json.dumps(sorted(scan_landing(root).items())).encode()).hexdigest()


def without_password(uri: str) -> str:
    """The tracking URI as report.json and Dagster metadata may show it: a password in it (a
    user's `postgresql://user:secret@host/db`) becomes `***`."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username}:***@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def input_example() -> pd.DataFrame:
    """One made-up admission, shaped as a request (../shared/cli-and-report.md): MLflow shows
    it on the model's page and serves it as the example; no patient's data is in it."""
    labs = [{"itemid": 50912, "charttime": "2180-01-01 09:30:00", "valuenum": 1.1}]
    row = {
        "hadm_id": 1,
        "subject_id": 1,
        "admittime": "2180-01-01 08:00:00",
        "gender": "F",
        "anchor_age": 60,
        "anchor_year": 2180,
        "labs": json.dumps(labs),
        "notes": "Cough for two days. No fever.",
    }
    return pd.DataFrame([row])


@dg.asset(
    group_name=GROUP,
    kinds={"mlflow"},
    owners=["team:clinical-ml"],
)
def registered_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    landing: LandingZone,
    workdir: WorkDir,
    mlflow: MLflowResource,
    fusion_model: dict,
    lab_featurizer: dict,
    note_embedder: dict,
    evaluation: dict,
) -> dict:
    """The fusion model as an MLflow pyfunc, registered as a new version with alias challenger;
    the model card is the version's description."""
    import mlflow as mlflow_api

    fusion = fusion_model
    run_id = fusion["mlflow_run_id"]
    folder = workdir.folder("models", context.run.run_id)
    artifacts = {"checkpoint": fusion["checkpoint"]}
    for name, state in (("lab_featurizer", lab_featurizer), ("note_embedder", note_embedder)):
        (folder / f"{name}.json").write_text(json.dumps(state))
        artifacts[name] = str(folder / f"{name}.json")
    (folder / "settings.json").write_text(json.dumps(to_dict(settings.value)))
    artifacts["settings"] = str(folder / "settings.json")
    client = mlflow.client()
    with mlflow.resume_run(run_id):
        info = mlflow_api.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            signature=serving_signature(),
            input_example=input_example(),
        )
    name = model_name(settings)
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset": "registered_model",
        "landing.path": str(landing.root),
        "landing.fingerprint": landing_fingerprint(landing.root),
        "test_auroc": str(evaluation["metrics"]["fusion"].get("auroc")),
        "strategy": fusion["strategy"],
    }
    with mlflow.activated():  # resolving models:/m-<id> goes through the fluent API
        version = registry.register_version(client, name, run_id, info.model_uri, tags)
    card = evaluation["model_card"].replace(VERSION_PLACEHOLDER, str(version.version))
    client.update_model_version(name, version.version, description=card)
    result = {
        "tracking_uri": without_password(mlflow.uri),
        "model_name": name,
        "version": str(version.version),
        "aliases": sorted(version.aliases),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version.version}",
    }
    context.add_output_metadata(
        {
            "model_name": name,
            "version": result["version"],
            "mlflow_run_id": run_id,
            "mlflow_url": dg.MetadataValue.url(mlflow.ui_url(run_id)),
        }
    )
    return result


# Admissions the gate sends the champion at once: a block's served requests (window labs as
# JSON, note texts) are all it holds, however large the validation and test splits are.
GATE_BLOCK = 2_000


def champion_metrics_now(
    model_uri: str, chosen: pd.DataFrame, frames: Iterable[pd.DataFrame]
) -> dict:
    """The champion scored on today's validation (threshold) and test (metrics) admissions.

    frames: the served requests of `chosen`'s rows, in order, one block at a time."""
    import mlflow as mlflow_api

    model = mlflow_api.pyfunc.load_model(model_uri)
    blocks = [_probabilities(model.predict(frame)) for frame in frames]
    probabilities = np.concatenate(blocks) if blocks else np.zeros(0)
    if len(probabilities) != len(chosen):
        raise ValueError(f"{len(probabilities)} served probabilities for {len(chosen)} rows")
    validation = (chosen["split"] == "validation").to_numpy()
    test = (chosen["split"] == "test").to_numpy()
    labels = chosen["label"].to_numpy()
    threshold = m.choose_threshold(labels[validation], probabilities[validation])
    return m.binary_metrics(labels[test], probabilities[test], threshold)


def _probabilities(served: pd.DataFrame | np.ndarray) -> np.ndarray:
    # A version logged before responses carried `errors` returns the bare probabilities.
    served = served["p_fusion"] if isinstance(served, pd.DataFrame) else served
    return np.asarray(served, dtype=np.float64).ravel()


@dg.asset(
    group_name=GROUP,
    kinds={"mlflow"},
    owners=["team:clinical-ml"],
)
def champion(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    settings: PipelineSettings,
    landing: LandingZone,
    workdir: WorkDir,
    mlflow: MLflowResource,
    registered_model: dict,
    evaluation: dict,
    cohort: pd.DataFrame,
    window_labs: Path,
    notes: Path,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
) -> dict:
    """Challenger vs champion on the same test admissions; `champion` moves only if earned."""
    client = mlflow.client()
    registered = registered_model
    name, version = registered["model_name"], registered["version"]
    current = registry.champion_version(client, name)
    champion_numbers = None
    if current is not None and str(current.version) != version:
        chosen = cohort[cohort["split"].isin(("validation", "test"))].reset_index(drop=True)
        frames = serving_frames(
            chosen,
            window_labs,  # the window's rows, cut once; read by admission, never held whole
            notes,
            dicom_index,
            recording_index,
            landing.root,
            settings.value.window_hours,
            workdir.folder("tmp"),
            GATE_BLOCK,
            EngineConfig.for_workdir(workdir.root, workdir.worker_count),
        )
        # serving_frame's paths are in the landing zone: the model may read them, as it would
        # behind a server whose CLINFUSE_SERVE_ROOT is this landing zone.
        with mlflow.activated(), reading_from(landing.root):
            champion_numbers = champion_metrics_now(f"models:/{name}@champion", chosen, frames)
    decision = registry.promote(
        client,
        name,
        version,
        evaluation["metrics"]["fusion"],
        champion_numbers,
        force=config.force,
        force_note=config.note,
        auroc_tolerance=config.auroc_tolerance,
        ece_tolerance=config.ece_tolerance,
    )
    aliases = sorted(client.get_model_version(name, version).aliases)
    context.add_output_metadata(
        {
            "decision": "promoted" if decision.promoted else "refused",
            "forced": decision.forced,
            "reason": decision.reason,
            "champion_before": str(decision.champion_before),
            "version": version,
            "aliases": ", ".join(aliases),
            "window_hours": settings.value.window_hours,
            **{k: v for k, v in decision.numbers.items() if isinstance(v, int | float)},
        }
    )
    return {**registered, "aliases": aliases, "decision": decision.as_dict()}
