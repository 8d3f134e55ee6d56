"""Per-modality learners and fusion on a finished run's tables, without rerunning the pipeline.

Reads a workdir that `clinfuse run` left (its Parquet tables and shards), cross-fits every
candidate of each modality, fits the fusion head and calibration, and prints each candidate's
validation scores, its seconds, and the test AUROC / ECE of the chosen models; against the
generator's oracle when the landing zone's truth folder is given.

    python benchmarks/learners.py --workdir work/bench/run [--truth work/bench/landing.truth]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from clinfuse.assets.evaluation.metrics import expected_calibration_error
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.assets.settings import Settings
from clinfuse.assets.training.inputs import CohortTables, cohort_source, split_indices
from clinfuse.models.learners import candidates, fit_modality
from clinfuse.models.stacking import fit_fused_model


def load_tables(workdir: Path) -> CohortTables:
    tables = {}
    for name in (f.name for f in dataclasses.fields(CohortTables)):
        shards = workdir / "tables" / f"{name}.shards.json"
        if shards.exists():
            raw = json.loads(shards.read_text())
            tables[name] = ShardSet(
                Path(raw["directory"]), tuple(raw["shards"]), tuple(raw["item_shape"])
            )
        else:
            tables[name] = pd.read_parquet(workdir / "tables" / f"{name}.parquet")
    return CohortTables(**tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="modalities to fit (default: all)")
    args = parser.parse_args()
    baseline = time.perf_counter()
    tables = load_tables(args.workdir)
    cohort, config = tables.cohort, Settings().training
    source = cohort_source(tables, Settings().window_hours)
    train, validation = split_indices(cohort, "train"), split_indices(cohort, "validation")
    test = split_indices(cohort, "test")
    choices = {}
    for modality in args.only or ("ehr", "text", "image", "audio"):
        makers = candidates(modality, config.network(args.seed), args.seed)

        def show(name: str, s: dict) -> None:
            print(
                f"  {name:32s} val logloss {s['val_logloss']:.4f} "
                f"auroc {s['val_auroc']:.3f}  {s['seconds']:6.1f} s",
                flush=True,
            )

        choices[modality] = fit_modality(
            source, modality, train, validation, makers, config.folds, args.seed, show
        )
        print(f"{modality}: chose {choices[modality].chosen}", flush=True)
    fused = fit_fused_model(choices, source, train, validation, args.seed)
    logits = fused.logits(source, test)
    y = source.labels[test]
    p = fused.predict_proba(source, test, logits)
    truth = _truth(args.truth, cohort.iloc[test]["hadm_id"]) if args.truth else None
    print(f"weights {fused.head.fusion.weights}, calibration {fused.head.calibrator.method_}")
    rows = [("fusion", p, "p_oracle")] + [
        (m, fused.single_proba(m, logits), f"p_oracle_{m}") for m in fused.modalities
    ]
    for name, prob, oracle in rows:
        auroc = roc_auc_score(y, prob)
        line = f"{name:8s} test AUROC {auroc:.3f}  ECE {expected_calibration_error(y, prob):.3f}"
        if truth is not None:
            ceiling = roc_auc_score(y, truth[oracle])
            line += f"  ceiling {ceiling:.3f}  ratio {auroc / ceiling:.3f}"
        print(line)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"total {time.perf_counter() - baseline:.0f} s, peak RSS {peak:.0f} MiB")


def _truth(folder: Path, ids: pd.Series) -> pd.DataFrame:
    frame = pd.read_parquet(next(folder.glob("admissions*.parquet")))
    return frame.set_index("hadm_id").loc[ids.to_numpy()]


if __name__ == "__main__":
    main()
