"""Training assets: per-modality learners chosen on validation, then the calibrated fusion.

`modality_models` cross-fits every candidate learner of each modality on the train split
(models/learners.py) and keeps the best by validation log-loss; `fusion_model` fits the fusion
head on their out-of-fold logits and calibrates it, and each single-modality model, on
validation (models/stacking.py). Both are tracked in MLflow.
"""

import subprocess
from pathlib import Path

import dagster as dg
import joblib
import numpy as np
import pandas as pd

from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.assets.resources import PipelineSettings, WorkDir
from clinfuse.assets.settings import Settings, TrainingSettings, to_dict
from clinfuse.assets.training.inputs import CohortTables, cohort_source, flat_params, split_indices
from clinfuse.assets.training.lineage import log_cohort_datasets
from clinfuse.models.learners import ModalityChoice, candidates, fit_modality
from clinfuse.models.modalities import MODALITIES
from clinfuse.models.sources import CohortSource
from clinfuse.models.stacking import FusedModel, fit_fused_model

GROUP = "training"
OWNERS = ["team:clinical-ml"]
# Cross-fitting needs each fold to hold both classes; below this a modality gets no model (it
# then counts as missing for every admission) rather than failing the run.
MIN_PER_CLASS = 2


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def input_data_versions(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The data version of each upstream asset this run read (for MLflow tags)."""
    versions = {}
    for key in context.assets_def.dependency_keys:
        record = context.instance.get_latest_materialization_event(key)
        tags = record.asset_materialization.tags if record and record.asset_materialization else {}
        versions[key.to_user_string()] = (tags or {}).get("dagster/data_version", "unknown")
    return versions


def choose_learners(
    context: dg.AssetExecutionContext,
    config: TrainingSettings,
    source: CohortSource,
    cohort: pd.DataFrame,
    seed: int,
    log_metric=None,
) -> dict[str, ModalityChoice]:
    """Every modality's candidates cross-fitted on train, the best kept on validation."""
    train, validation = split_indices(cohort, "train"), split_indices(cohort, "validation")
    network = config.network(seed)
    choices = {}
    for modality in MODALITIES:
        labels = source.labels[train][source.present(modality)[train]]
        if min(labels.sum(), (1 - labels).sum()) < MIN_PER_CLASS:
            context.log.warning(
                f"{modality}: {int(labels.sum())} positive and {int((1 - labels).sum())} negative "
                f"train admissions have it, fewer than {MIN_PER_CLASS} of each: no {modality} model"
            )
            continue

        def report(name: str, scores: dict, modality: str = modality) -> None:
            context.log.info(
                f"{modality} {name}: val log-loss {scores['val_logloss']:.4f}, "
                f"AUROC {scores['val_auroc']:.3f} ({scores['seconds']:.1f} s)"
            )
            if log_metric is not None:
                log_metric(name, scores)

        makers = candidates(modality, network, seed)
        choices[modality] = fit_modality(
            source, modality, train, validation, makers, config.folds, seed, report
        )
        context.log.info(f"{modality}: chose {choices[modality].chosen}")
    return choices


def _log_candidate(name: str, scores: dict) -> None:
    import mlflow as mlflow_api

    mlflow_api.log_metrics({f"{name}.{k}": float(v) for k, v in scores.items() if np.isfinite(v)})


def _log_modality_runs(choices: dict[str, ModalityChoice], folder: Path) -> None:
    """One nested MLflow run per modality under the active one: its candidates' validation
    scores, the choice, and the chosen learner itself (so a single-modality model can be
    loaded and compared from MLflow alone)."""
    import mlflow as mlflow_api

    experiment_id = mlflow_api.active_run().info.experiment_id
    for modality, choice in choices.items():
        tags = {"clinfuse.modality": modality}
        with mlflow_api.start_run(
            run_name=f"modality-{modality}", experiment_id=experiment_id, nested=True, tags=tags
        ):
            mlflow_api.log_params({"chosen": choice.chosen, "candidates": ", ".join(choice.scores)})
            for name, scores in choice.scores.items():
                _log_candidate(name, scores)
            best = choice.scores[choice.chosen]
            _log_candidate("chosen", best)
            path = _save(choice, folder / f"{modality}.joblib")
            mlflow_api.log_artifact(str(path), artifact_path="learner")


def _save(value: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(value, path)
    return path


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "scikitlearn", "mlflow"},
    owners=OWNERS,
    pool="gpu",
)
def modality_models(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    workdir: WorkDir,
    mlflow: MLflowResource,
    cohort: pd.DataFrame,
    notes: Path,
    lab_features: pd.DataFrame,
    note_features: pd.DataFrame,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    study_images: ShardSet,
    recording_spectrograms: ShardSet,
) -> dict:
    """Per modality: every candidate learner cross-fitted on train, the best on validation."""
    import mlflow as mlflow_api

    run_settings = settings.value
    config = run_settings.training
    tables = CohortTables(
        cohort,
        notes,
        lab_features,
        note_features,
        dicom_index,
        recording_index,
        study_images,
        recording_spectrograms,
    )
    source = cohort_source(tables, run_settings.window_hours)
    tags = {"dagster.run_id": context.run.run_id, "dagster.asset": "modality_models"}
    with mlflow.start_run("modality-learners", tags) as run:
        mlflow_api.log_params({**config.folds, "seed": run_settings.seed})
        choices = choose_learners(
            context, config, source, cohort, run_settings.seed, _log_candidate
        )
        mlflow_api.log_params({f"chosen.{m}": c.chosen for m, c in choices.items()})
        folder = workdir.folder("models", context.run.run_id)
        _log_modality_runs(choices, folder / "modalities")
        run_id = run.info.run_id
    path = _save(choices, folder / "modalities.joblib")
    summary = {m: {"chosen": c.chosen, "candidates": c.scores} for m, c in choices.items()}
    context.add_output_metadata(
        {
            "mlflow_run_id": run_id,
            **{f"{m}_chosen": c.chosen for m, c in choices.items()},
            "candidates": dg.MetadataValue.json(summary),
        }
    )
    return {
        "path": str(path),
        "mlflow_run_id": run_id,
        "modalities": summary,
        "train_seconds": sum(c.learner.seconds for c in choices.values()),
        "all_candidates_seconds": sum(
            s["seconds"] for c in choices.values() for s in c.scores.values()
        ),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn", "mlflow"},
    owners=OWNERS,
    pool="gpu",
    deps=["lab_featurizer", "note_embedder"],
)
def fusion_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    workdir: WorkDir,
    mlflow: MLflowResource,
    cohort: pd.DataFrame,
    notes: Path,
    lab_features: pd.DataFrame,
    note_features: pd.DataFrame,
    dicom_index: pd.DataFrame,
    recording_index: pd.DataFrame,
    study_images: ShardSet,
    recording_spectrograms: ShardSet,
    modality_models: dict,
) -> dict:
    """The fusion head on out-of-fold logits, calibrated on validation; one MLflow run.

    The shuffled-label control never reuses modality_models: those learnt the true labels.
    """
    import mlflow as mlflow_api

    run_settings = settings.value
    config, seed = run_settings.training, run_settings.seed
    tables = CohortTables(
        cohort,
        notes,
        lab_features,
        note_features,
        dicom_index,
        recording_index,
        study_images,
        recording_spectrograms,
    )
    shuffle_seed = seed if config.shuffle_labels else None
    source = cohort_source(tables, run_settings.window_hours, shuffle_seed)
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset": "fusion_model",
        "git.commit": git_commit(),
        "negative_control.shuffled_labels": str(config.shuffle_labels).lower(),
        **{f"data_version.{k}": v for k, v in input_data_versions(context).items()},
    }
    train, validation = split_indices(cohort, "train"), split_indices(cohort, "validation")
    with mlflow.start_run(f"fusion-{config.strategy}", tags) as run:
        if config.shuffle_labels:
            choices = choose_learners(context, config, source, cohort, seed)
        else:
            choices = joblib.load(modality_models["path"])
        model = fit_fused_model(
            choices, source, train, validation, seed, config.strategy, config.network(seed)
        )
        params = _fusion_params(run_settings, model, len(train), len(validation))
        mlflow_api.log_params(params)
        cohort_table = workdir.root / "tables" / "cohort.parquet"
        log_cohort_datasets(cohort, cohort_table, run_settings.target.name)
        path = _save(model, workdir.folder("models", context.run.run_id) / "fusion.joblib")
        mlflow_api.log_metrics({f"weight.{m}": w for m, w in model.head.fusion.weights.items()})
        run_id = run.info.run_id
    context.add_output_metadata(
        {
            "mlflow_run_id": run_id,
            "mlflow_url": dg.MetadataValue.url(mlflow.ui_url(run_id)),
            "calibration": model.head.calibrator.method_,
            **{f"weight_{m}": w for m, w in model.head.fusion.weights.items()},
        }
    )
    seconds = sum(c.learner.seconds for c in choices.values())
    return {
        "checkpoint": str(path),
        "strategy": config.strategy,
        "mlflow_run_id": run_id,
        "calibration": model.head.calibrator.method_,
        "chosen": {m: c.chosen for m, c in choices.items()},
        "train_seconds": seconds if config.shuffle_labels else 0.0,
        "encoder_train_seconds": 0.0 if config.shuffle_labels else seconds,
    }


def _fusion_params(settings: Settings, model: FusedModel, n_train: int, n_val: int) -> dict:
    return {
        **flat_params(to_dict(settings.training)),
        "target": settings.target.name,
        "window_hours": settings.window_hours,
        "image_size": settings.image_size,
        "train_admissions": n_train,
        "validation_admissions": n_val,
        "calibration": model.head.calibrator.method_,
        **{f"chosen.{m}": c.chosen for m, c in model.choices.items()},
    }
