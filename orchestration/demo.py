"""`clinfuse demo`: a synthetic landing zone, the whole pipeline, and what it achieved."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from clinfuse.orchestration.runner import PipelineFailed, run_pipeline

MODELS = ("fusion", "ehr", "text", "image", "audio")


def _auroc(labels: pd.Series, scores: pd.Series) -> float | None:
    usable = scores.notna()
    if labels[usable].nunique() < 2:
        return None
    return float(roc_auc_score(labels[usable], scores[usable]))


def results_table(report: dict, truth_dir: Path) -> pd.DataFrame:
    """AUROC of each model and of the generator's oracle on the same test admissions."""
    predictions = pd.read_parquet(report["predictions_path"])
    truth = pd.read_parquet(truth_dir / "admissions.parquet")
    joined = predictions.merge(truth[["hadm_id", "p_oracle"]], on="hadm_id", how="left")
    rows = [
        {"model": model, "test AUROC": _auroc(joined["label"], joined[f"p_{model}"])}
        for model in MODELS
    ]
    rows.append(
        {"model": "oracle (generator)", "test AUROC": _auroc(joined["label"], joined["p_oracle"])}
    )
    return pd.DataFrame(rows)


def run_demo(workdir: Path, admissions: int = 1000, seed: int = 0) -> int:
    from clinfuse.synthetic import generate, truth_dir

    workdir = workdir.resolve()
    landing = workdir / "landing"
    started = time.perf_counter()
    if not landing.exists():
        print(f"generating {admissions} admissions into {landing} ...")
        generate(
            landing, admissions=admissions, seed=seed, messy=True, image_size=64, progress=True
        )
    print("running the pipeline (Dagster, in-process) ...")
    try:
        report = run_pipeline(landing, workdir / "run")
    except PipelineFailed as failure:
        print(f"clinfuse demo failed: {failure}", file=sys.stderr)
        return 1
    table = results_table(report, truth_dir(landing))
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    mlflow = report["mlflow"]
    print()
    print(f"cohort: {report['cohort']}")
    print(f"quarantined inputs: {len(report['quarantine'])}")
    name, version, aliases = mlflow["model_name"], mlflow["version"], mlflow["aliases"]
    print(f"registered: {name} version {version} aliases {aliases}")
    print(f"report: {workdir / 'run' / 'report.json'}  ({time.perf_counter() - started:.0f} s)")
    print("browse: `make ui` (Dagster on http://127.0.0.1:3000, MLflow on http://127.0.0.1:5000)")
    return 0
