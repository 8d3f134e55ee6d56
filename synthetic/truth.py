"""What the generator knows and the pipeline must find out: the truth folder beside the zone.

<out>.truth/admissions.parquet   hadm_id, subject_id, label, p_oracle, p_oracle_<m>, has_<m>
<out>.truth/quarantine.csv       modality, source, reason: every planted bad input
<out>.truth/leaks.csv            kind, modality, source, subject_id, hadm_id, time
<out>.truth/summary.json         counts, oracle AUROCs, parameters (no paths, no clock)
<out>.truth/task.json            the task: name, target, channels, signs, no-signal modalities
<out>.truth/config.yaml          a `clinfuse run --config` that labels the task's target
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import rankdata

from clinfuse.assets.ingest.quarantine import COLUMNS as QUARANTINE_COLUMNS
from clinfuse.synthetic.evidence import MODALITIES
from clinfuse.synthetic.writers import Table

LEAK_COLUMNS = ("kind", "modality", "source", "subject_id", "hadm_id", "time")
ORACLES = ("p_oracle", *(f"p_oracle_{m}" for m in MODALITIES))


def truth_dir(out: Path) -> Path:
    """The truth's folder: a sibling of the landing zone, never inside it."""
    return Path(str(out).rstrip("/") + ".truth")


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def oracle_aurocs(truth: pd.DataFrame) -> dict[str, float | None]:
    return {name: auroc(truth["label"].to_numpy(), truth[name].to_numpy()) for name in ORACLES}


def write_rows(folder: Path, name: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    table = Table(folder, name, columns)
    for row in rows:
        table.write(row)
    table.close()


def write_truth(
    folder: Path,
    admissions: pd.DataFrame,
    quarantine: list[dict],
    leaks: list[dict],
    summary: dict,
    task: dict | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    admissions.to_parquet(folder / "admissions.parquet", index=False)
    write_rows(folder, "quarantine.csv", tuple(QUARANTINE_COLUMNS), quarantine)
    write_rows(folder, "leaks.csv", LEAK_COLUMNS, leaks)
    text = json.dumps(summary, indent=2, sort_keys=True)
    (folder / "summary.json").write_text(text + "\n", encoding="utf-8")
    if task is not None:
        _write_json(folder / "task.json", task)
        config = yaml.safe_dump({"target": task["target"]}, sort_keys=False)
        (folder / "config.yaml").write_text(config, encoding="utf-8")


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
