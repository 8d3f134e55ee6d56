"""The evaluation asset: honest metrics on the frozen test split, logged to the model's run."""

import json
import math
from pathlib import Path

import dagster as dg
import pandas as pd

from clinfuse.assets.evaluation import metrics as m
from clinfuse.assets.evaluation import plots
from clinfuse.assets.evaluation.model_card import VERSION_PLACEHOLDER, model_card
from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.assets.resources import PipelineSettings, WorkDir
from clinfuse.models.calibration import calibration_line
from clinfuse.models.modalities import MODALITIES

GROUP = "evaluation"
MODELS = ("fusion", *MODALITIES)
# The fusion model's reliability diagram; the card links it by this name, and both are logged
# to the same MLflow artifact folder and written to the same work folder.
RELIABILITY_DIAGRAM = "calibration.png"


def score_models(predictions: pd.DataFrame) -> tuple[dict, dict]:
    """(metrics, thresholds) per model: each threshold chosen on validation, applied to test."""
    validation = predictions[predictions["split"] == "validation"]
    test = predictions[predictions["split"] == "test"]
    metrics, thresholds = {}, {}
    for model in MODELS:
        column = f"p_{model}"
        if predictions[column].isna().all():
            metrics[model] = {}
            continue
        thresholds[model] = m.choose_threshold(validation["label"], validation[column])
        metrics[model] = m.binary_metrics(test["label"], test[column], thresholds[model])
    return metrics, thresholds


def calibration_table(predictions: pd.DataFrame) -> dict[str, dict]:
    """{model: {"ece", "slope", "intercept"}} on the test split, for the models that scored it.

    slope and intercept are the logistic recalibration line (label regressed on logit p):
    slope 1 and intercept 0 are perfect, a slope below 1 is over-confident. Undefined values
    (one class in the test split) are None, as in the metrics.
    """
    test = predictions[predictions["split"] == "test"]
    table = {}
    for model in MODELS:
        y, p = m.drop_unscored(test["label"], test[f"p_{model}"])
        if not p.size:
            continue
        slope, intercept = calibration_line(y, p)
        values = {"ece": m.expected_calibration_error(y, p), "slope": slope, "intercept": intercept}
        table[model] = {k: v if math.isfinite(v) else None for k, v in values.items()}
    return table


def ablation(predictions: pd.DataFrame, threshold: float) -> dict[str, dict]:
    """Fusion metrics with each modality removed: what each modality adds."""
    test = predictions[predictions["split"] == "test"]
    return {
        modality: m.binary_metrics(test["label"], test[f"p_fusion_without_{modality}"], threshold)
        for modality in MODALITIES
    }


def write_plots(predictions: pd.DataFrame, threshold: float, folder: Path) -> list[Path]:
    test = predictions[predictions["split"] == "test"]
    curves = {
        model: (test["label"].to_numpy(), test[f"p_{model}"].to_numpy())
        for model in MODELS
        if test[f"p_{model}"].notna().any()
    }
    y, p = test["label"].to_numpy(), test["p_fusion"].to_numpy()
    paths = [folder / n for n in ("roc.png", "pr.png", RELIABILITY_DIAGRAM, "confusion.png")]
    plots.roc_plot(curves, paths[0])
    plots.pr_plot(curves, paths[1])
    plots.calibration_plot(y, p, paths[2])
    plots.confusion_matrix_plot(y, p, threshold, paths[3])
    return paths


@dg.asset(group_name=GROUP, kinds={"scikitlearn", "mlflow"}, owners=["team:clinical-ml"])
def evaluation(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    workdir: WorkDir,
    mlflow: MLflowResource,
    predictions: pd.DataFrame,
    cohort: pd.DataFrame,
    fusion_model: dict,
) -> dict:
    """AUROC, AUPRC, accuracy, recall, F1, Brier, ECE with 95% patient-bootstrap intervals, per
    model, calibration slope and intercept, the modality ablation, subgroups by sex and age
    band, plots and a model card."""
    import mlflow as mlflow_api

    metrics, thresholds = score_models(predictions)
    threshold = thresholds.get("fusion", m.DEFAULT_THRESHOLD)
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    intervals = {
        model: m.bootstrap_intervals(
            test["label"], test[f"p_{model}"], thresholds[model], groups=test["subject_id"]
        )
        for model in thresholds
    }
    calibration = calibration_table(predictions)
    removed = ablation(predictions, threshold)
    frame = pd.DataFrame({"sex": test["gender"], "age_band": test["anchor_age"].map(m.age_band)})
    subgroups = m.subgroup_metrics(test["label"], test["p_fusion"], threshold, frame)
    folder = workdir.folder("evaluation", context.run.run_id)
    card = model_card(
        model_name=f"clinfuse-{settings.value.target.name}",
        version=VERSION_PLACEHOLDER,
        target=settings.value.target.name,
        cohort_summary={
            "admissions": len(cohort),
            "positives": int(cohort["label"].sum()),
            **cohort["split"].value_counts().to_dict(),
        },
        metrics=metrics,
        intervals=intervals["fusion"],
        calibration=calibration,
        reliability_diagram=RELIABILITY_DIAGRAM,
        ablation=removed,
        subgroups=subgroups,
        limits=[
            f"Features only from the first {settings.value.window_hours:g} h of an admission.",
            "Discharge summaries are never used.",
            "Splits are by patient; thresholds are chosen on validation.",
        ],
    )
    (folder / "model_card.md").write_text(card)
    subgroups.to_csv(folder / "subgroups.csv", index=False)
    result = {
        "threshold": threshold,
        "thresholds": thresholds,
        "metrics": metrics,
        "intervals": {
            model: {k: list(v) for k, v in bounds.items()} for model, bounds in intervals.items()
        },
        "calibration": calibration,
        "ablation": removed,
        "test_admissions": len(test),
        "mlflow_run_id": fusion_model["mlflow_run_id"],
        "model_card": card,
    }
    (folder / "evaluation.json").write_text(json.dumps(result, indent=1, default=str))
    run_id = fusion_model["mlflow_run_id"]
    with mlflow.resume_run(run_id):
        mlflow_api.log_metrics(
            {
                f"test_{model}_{k}": v
                for model, row in metrics.items()
                for k, v in row.items()
                if isinstance(v, int | float)
            }
        )
        mlflow_api.log_metrics(
            {
                f"test_{model}_{k}_ci{side}": bound
                for model, bounds in intervals.items()
                for k, pair in bounds.items()
                for side, bound in zip(("low", "high"), pair, strict=True)
                if isinstance(bound, int | float)
            }
        )
        mlflow_api.log_metrics(
            {
                f"test_{model}_calibration_{k}": row[k]
                for model, row in calibration.items()
                for k in ("slope", "intercept")
                if row[k] is not None
            }
        )
        for path in [
            *write_plots(predictions, threshold, folder),
            folder / "model_card.md",
            folder / "subgroups.csv",
            folder / "evaluation.json",
        ]:
            mlflow_api.log_artifact(str(path), artifact_path="evaluation")
    fusion = metrics["fusion"]
    context.add_output_metadata(
        {
            "test_auroc": fusion.get("auroc"),
            "test_auprc": fusion.get("auprc"),
            "test_ece": fusion.get("ece"),
            "test_calibration_slope": calibration.get("fusion", {}).get("slope"),
            "test_calibration_intercept": calibration.get("fusion", {}).get("intercept"),
            "threshold": threshold,
            "mlflow_url": dg.MetadataValue.url(mlflow.ui_url(run_id)),
            "model_card": dg.MetadataValue.md(card),
        }
    )
    return result
