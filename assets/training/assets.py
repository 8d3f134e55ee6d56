"""Training assets: per-modality learners chosen on validation, then the calibrated fusion.

`modality_models` cross-fits every candidate learner of each modality on the train split
(models/learners.py) and keeps the best by validation log-loss; `fusion_model` fits the fusion
head on their out-of-fold logits and calibrates it, and each single-modality model, on
validation (models/stacking.py). Both are tracked in MLflow.
"""

import dataclasses
import subprocess
from pathlib import Path

import dagster as dg
import joblib
import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import MODALITIES
from clinfuse.assets.features.text import allowed_notes
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.assets.training.inputs import modality_inputs, split_indices
from clinfuse.models.learners import ModalityChoice, candidates, fit_modality
from clinfuse.models.sources import CohortSource
from clinfuse.models.stacking import FusedModel, fit_fused_model
from clinfuse.models.training import TrainConfig
from clinfuse.orchestration.mlflow_resource import MLflowResource
from clinfuse.orchestration.resources import PipelineSettings, WorkDir

GROUP = "training"
OWNERS = ["team:clinical-ml"]
TRAINING_INS = (
    "cohort",
    "notes",
    "lab_features",
    "note_features",
    "dicom_index",
    "recording_index",
    "study_images",
    "recording_spectrograms",
)


# Cross-fitting needs each fold to hold both classes; below this a modality gets no model (it
# then counts as missing for every admission) rather than failing the run.
MIN_PER_CLASS = 2


class TrainingConfig(dg.Config):
    """Hyper-parameters of every model trained in a run."""

    # late: logistic regression on the chosen learners' out-of-fold logits (the default);
    # early | attention: the FusionModel network over the raw inputs, for comparison.
    strategy: str = "late"
    # Folds of the train split for cross-fitting: linear and boosted learners, and networks
    # (a network costs K trainings; docs/benchmarks.md measures what more folds buy).
    crossfit_folds: int = 5
    network_folds: int = 3
    # The PyTorch candidates (the encoders' own networks):
    width: int = 64
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    num_workers: int = 0
    augment: bool = True  # MONAI augmentation of train images and spectrograms
    ema_epochs: float = 1.5  # horizon of the weights' moving average that is kept (0: off)
    # Start a modality's network from encoder weights in a local file the user names
    # ({image: /path/encoder.pt}): a state_dict of that encoder, e.g. pretrained on their own
    # archive. Nothing is downloaded.
    init_encoders: dict[str, str] = {}
    # A negative control: train on permuted train labels. The result must not beat chance, and
    # the promotion gate must refuse it (tests use it; so can a person checking for leakage).
    shuffle_labels: bool = False

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            width=self.width,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            modality_dropout=0.0,
            seed=seed,
            num_workers=self.num_workers,
            augment=self.augment,
            ema_epochs=self.ema_epochs,
            init_encoders=dict(self.init_encoders),
        )

    @property
    def folds(self) -> dict[str, int]:
        return {"estimator": self.crossfit_folds, "network": self.network_folds}


def cohort_source(settings: PipelineSettings, tables: dict, shuffle_seed: int | None = None):
    """The cohort's inputs as learners read them; with `shuffle_seed`, permuted train labels."""
    cohort = tables["cohort"]
    inputs = modality_inputs(
        cohort,
        tables["lab_features"],
        tables["note_features"],
        tables["dicom_index"],
        tables["recording_index"],
        tables["study_images"],
        tables["recording_spectrograms"],
        settings.window_hours,
    )
    if shuffle_seed is not None:
        labels = inputs.labels.copy()
        train = split_indices(cohort, "train")
        labels[train] = np.random.default_rng(shuffle_seed).permutation(labels[train])
        inputs = dataclasses.replace(inputs, labels=labels)
    text = allowed_notes(tables["notes"], cohort, settings.window_hours)
    notes = [_text(text.get(int(h))) for h in cohort["hadm_id"]]
    groups = cohort["subject_id"].to_numpy(dtype=np.int64)
    return cohort, CohortSource(inputs, notes=notes, groups=groups)


def _text(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


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
    config: TrainingConfig,
    source: CohortSource,
    cohort: pd.DataFrame,
    seed: int,
    log_metric=None,
) -> dict[str, ModalityChoice]:
    """Every modality's candidates cross-fitted on train, the best kept on validation."""
    train, validation = split_indices(cohort, "train"), split_indices(cohort, "validation")
    network = config.train_config(seed)
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


def _save(value: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(value, path)
    return path


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "scikitlearn", "mlflow"},
    owners=OWNERS,
    pool="gpu",
    ins={name: dg.AssetIn() for name in TRAINING_INS},
)
def modality_models(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    settings: PipelineSettings,
    workdir: WorkDir,
    mlflow: MLflowResource,
    **tables,
) -> dict:
    """Per modality: every candidate learner cross-fitted on train, the best on validation."""
    import mlflow as mlflow_api

    cohort, source = cohort_source(settings, tables)
    tags = {"dagster.run_id": context.run.run_id, "dagster.asset": "modality_models"}
    with mlflow.start_run("modality-learners", tags) as run:
        mlflow_api.log_params({**config.folds, "seed": settings.seed})
        choices = choose_learners(context, config, source, cohort, settings.seed, _log_candidate)
        mlflow_api.log_params({f"chosen.{m}": c.chosen for m, c in choices.items()})
        run_id = run.info.run_id
    path = _save(choices, workdir.folder("models", context.run.run_id) / "modalities.joblib")
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
    ins={name: dg.AssetIn() for name in (*TRAINING_INS, "modality_models")},
    deps=["lab_featurizer", "note_embedder"],
)
def fusion_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    settings: PipelineSettings,
    workdir: WorkDir,
    mlflow: MLflowResource,
    **tables,
) -> dict:
    """The fusion head on out-of-fold logits, calibrated on validation; one MLflow run.

    The shuffled-label control never reuses modality_models: those learnt the true labels.
    """
    import mlflow as mlflow_api

    singles = tables.pop("modality_models")
    shuffle_seed = settings.seed if config.shuffle_labels else None
    cohort, source = cohort_source(settings, tables, shuffle_seed)
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
            choices = choose_learners(context, config, source, cohort, settings.seed)
        else:
            choices = joblib.load(singles["path"])
        model = fit_fused_model(
            choices,
            source,
            train,
            validation,
            settings.seed,
            config.strategy,
            config.train_config(settings.seed),
        )
        params = _fusion_params(config, settings, model, len(train), len(validation))
        mlflow_api.log_params(params)
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


def _fusion_params(
    config: TrainingConfig, settings: PipelineSettings, model: FusedModel, n_train: int, n_val: int
) -> dict:
    return {
        **config.model_dump(),
        "target": settings.target_name,
        "window_hours": settings.window_hours,
        "image_size": settings.image_size,
        "train_admissions": n_train,
        "validation_admissions": n_val,
        "calibration": model.head.calibrator.method_,
        **{f"chosen.{m}": c.chosen for m, c in model.choices.items()},
    }


__all__ = ["fusion_model", "modality_models", "ShardSet", "cohort_source", "TRAINING_INS"]
