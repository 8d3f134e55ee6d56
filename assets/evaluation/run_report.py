"""The run's report: report.json, splits.parquet and predictions.parquet in the work directory."""

import json

import dagster as dg
import pandas as pd

from clinfuse.assets.evaluation.report import build_report, reported_predictions
from clinfuse.assets.resources import WorkDir


@dg.asset(group_name="registry", kinds={"json"}, owners=["team:clinical-ml"])
def run_report(
    context: dg.AssetExecutionContext,
    workdir: WorkDir,
    input_accounting: pd.DataFrame,
    quarantine: pd.DataFrame,
    cohort: pd.DataFrame,
    predictions: pd.DataFrame,
    evaluation: dict,
    champion: dict,
) -> dict:
    """What `clinfuse run` reports (../shared/cli-and-report.md): inputs seen, ingested and
    quarantined, every reject, the cohort, test metrics, and the registered version."""
    splits_path = workdir.root / "splits.parquet"
    cohort[["hadm_id", "subject_id", "split", "label"]].to_parquet(splits_path, index=False)
    predictions_path = workdir.root / "predictions.parquet"
    reported_predictions(predictions).to_parquet(predictions_path, index=False)
    report = build_report(
        input_accounting,
        quarantine,
        cohort,
        evaluation,
        champion,
        str(splits_path),
        str(predictions_path),
    )
    (workdir.root / "report.json").write_text(json.dumps(report, indent=2))
    context.add_output_metadata(
        {"path": str(workdir.root / "report.json"), "quarantined": len(report["quarantine"])}
    )
    return report
