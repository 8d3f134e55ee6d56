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


README_BEGIN = "<!-- demo output: written by `make readme` (clinfuse demo --readme) -->"
README_END = "<!-- end of demo output -->"


def summary_lines(report: dict, table: pd.DataFrame, workdir: Path, seconds: float) -> list[str]:
    """What the demo prints after the run, line by line (also what the README shows)."""
    mlflow = report["mlflow"]
    name, version, aliases = mlflow["model_name"], mlflow["version"], mlflow["aliases"]
    return [
        *table.to_string(index=False, float_format=lambda v: f"{v:.3f}").splitlines(),
        "",
        f"cohort: {report['cohort']}",
        f"quarantined inputs: {len(report['quarantine'])}",
        f"registered: {name} version {version} aliases {aliases}",
        f"report: {_shown(workdir / 'run' / 'report.json')}  ({seconds:.0f} s)",
        "browse: `make ui` (Dagster on http://127.0.0.1:3000, MLflow on http://127.0.0.1:5000)",
    ]


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def replace_readme_block(text: str, lines: list[str]) -> str:
    """`text` with the fenced block between the demo markers replaced by `lines`."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError("the README has no demo markers")
    block = "\n".join([README_BEGIN, "```", *lines, "```", ""])
    return text[:begin] + block + text[end:]


def run_demo(
    workdir: Path, admissions: int = 1000, seed: int = 0, readme: Path | None = None
) -> int:
    """Generates (once) and runs; with `readme`, writes what it printed into that README."""
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
    lines = summary_lines(report, table, workdir, time.perf_counter() - started)
    print()
    print("\n".join(lines))
    if readme is not None:
        readme.write_text(replace_readme_block(readme.read_text(), lines))
        print(f"wrote the output above into {readme}")
    return 0
