"""Training assets: the fusion model and the single-modality models, same code path."""

import dataclasses
import subprocess

import dagster as dg
import numpy as np
import pandas as pd

from clinfuse.assets.cohort.availability import MODALITIES
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.assets.training.checkpoints import load_checkpoint, save_checkpoint
from clinfuse.assets.training.inputs import modality_inputs, split_indices
from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.training import TrainConfig, single_modality, train_fusion
from clinfuse.orchestration.mlflow_resource import MLflowResource
from clinfuse.orchestration.resources import PipelineSettings, WorkDir

GROUP = "training"
OWNERS = ["team:clinical-ml"]
TRAINING_INS = (
    "cohort",
    "lab_features",
    "note_features",
    "dicom_index",
    "recording_index",
    "study_images",
    "recording_spectrograms",
)


class TrainingConfig(dg.Config):
    """Hyper-parameters of every model trained in a run."""

    strategy: str = "late"  # early | late | attention (docs/benchmarks.md compares them)
    width: int = 64
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    modality_dropout: float = 0.2
    num_workers: int = 0
    unimodal_loss: float = 1.0  # weight of each modality's own auxiliary loss (0: off)
    augment: bool = True  # MONAI augmentation of train images and spectrograms
    ema_epochs: float = 1.5  # horizon of the weights' moving average that is kept (0: off)
    # Staged: fuse the frozen encoders of this run's single-modality models (modality_models)
    # and train only the fusion head. False: train every encoder jointly with the head.
    pretrain: bool = True
    # A negative control: train on permuted train labels. The result must not beat chance, and
    # the promotion gate must refuse it (tests use it; so can a person checking for leakage).
    shuffle_labels: bool = False

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            strategy=self.strategy,
            width=self.width,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            modality_dropout=self.modality_dropout,
            seed=seed,
            num_workers=self.num_workers,
            unimodal_loss=self.unimodal_loss,
            augment=self.augment,
            ema_epochs=self.ema_epochs,
            pretrain=self.pretrain,
        )


def _inputs(settings: PipelineSettings, tables: dict) -> tuple[pd.DataFrame, ModalityInputs]:
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
    return cohort, inputs


def _datasets(cohort: pd.DataFrame, inputs: ModalityInputs, shuffle_seed: int | None = None):
    train_rows = split_indices(cohort, "train")
    if shuffle_seed is not None:
        labels = inputs.labels.copy()
        labels[train_rows] = np.random.default_rng(shuffle_seed).permutation(labels[train_rows])
        inputs = dataclasses.replace(inputs, labels=labels)
    train = AdmissionDataset(inputs, train_rows)
    validation = AdmissionDataset(inputs, split_indices(cohort, "validation"))
    return train, validation


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


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
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
    """The fusion model over every modality, tracked as one MLflow run.

    Staged (config.pretrain), its encoders are modality_models' own, frozen: the baselines and
    the fusion model then share every encoder weight, so the comparison isolates the fusion.
    """
    import mlflow as mlflow_api

    singles = tables.pop("modality_models")
    cohort, inputs = _inputs(settings, tables)
    shuffle_seed = settings.seed if config.shuffle_labels else None
    train, validation = _datasets(cohort, inputs, shuffle_seed)
    train_config = config.train_config(settings.seed)
    # The baselines learnt the true labels: a shuffled-label control trains its own encoders.
    reuse = train_config.pretrain and not config.shuffle_labels
    pretrained = {m: load_checkpoint(v["checkpoint"]) for m, v in singles.items()} if reuse else {}
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset": "fusion_model",
        "git.commit": git_commit(),
        "negative_control.shuffled_labels": str(config.shuffle_labels).lower(),
        **{f"data_version.{k}": v for k, v in input_data_versions(context).items()},
    }
    with mlflow.start_run(f"fusion-{train_config.strategy}", tags) as run:
        mlflow_api.log_params(
            {
                **dataclasses.asdict(train_config),
                "target": settings.target_name,
                "window_hours": settings.window_hours,
                "image_size": settings.image_size,
                "train_admissions": len(train),
                "validation_admissions": len(validation),
                "frozen_encoders": ",".join(pretrained) or "none",
            }
        )

        def on_epoch(row: dict) -> None:
            step = int(row["epoch"])
            mlflow_api.log_metrics(
                {k: float(v) for k, v in row.items() if k != "epoch" and v is not None}, step=step
            )
            context.log.info(
                f"epoch {step}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            )

        result = train_fusion(train, validation, train_config, on_epoch, pretrained)
        path = save_checkpoint(
            result.model, workdir.folder("models", context.run.run_id) / "fusion.pt"
        )
        mlflow_api.log_artifact(str(path), artifact_path="checkpoint")
        mlflow_api.log_metric("best_val_auroc", result.best_val_auroc)
        run_id = run.info.run_id
    context.add_output_metadata(
        {
            "mlflow_run_id": run_id,
            "mlflow_url": dg.MetadataValue.url(mlflow.ui_url(run_id)),
            "best_val_auroc": result.best_val_auroc,
            "best_epoch": result.best_epoch,
            "device": result.device,
        }
    )
    return {
        "checkpoint": str(path),
        "strategy": train_config.strategy,
        "mlflow_run_id": run_id,
        "best_val_auroc": result.best_val_auroc,
        "best_epoch": result.best_epoch,
        "device": result.device,
        "train_seconds": result.train_seconds,
        # What the frozen encoders cost to train (in modality_models), when staged.
        "encoder_train_seconds": sum(singles[m]["train_seconds"] for m in pretrained),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    owners=OWNERS,
    pool="gpu",
    ins={name: dg.AssetIn() for name in TRAINING_INS},
)
def modality_models(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    settings: PipelineSettings,
    workdir: WorkDir,
    **tables,
) -> dict:
    """One model per modality (the fusion code restricted to one input), for comparison."""
    cohort, inputs = _inputs(settings, tables)
    train, validation = _datasets(cohort, inputs)
    trained = {}
    for position, modality in enumerate(MODALITIES):
        if not inputs.mask[train.indices, position].any():
            context.log.warning(f"no train admission has {modality}: no {modality} model")
            continue
        alone = single_modality(config.train_config(settings.seed), modality)
        result = train_fusion(train, validation, alone)
        folder = workdir.folder("models", context.run.run_id)
        path = save_checkpoint(result.model, folder / f"{modality}.pt")
        trained[modality] = {
            "checkpoint": str(path),
            "best_val_auroc": result.best_val_auroc,
            "train_seconds": result.train_seconds,
        }
        context.log.info(f"{modality}: best validation AUROC {result.best_val_auroc:.3f}")
    context.add_output_metadata({f"{m}_val_auroc": v["best_val_auroc"] for m, v in trained.items()})
    return trained


__all__ = ["fusion_model", "modality_models", "ShardSet"]
