"""Quality of the fusion model against each single modality and the generator's oracle.

Generates N admissions (default 2,000), runs the whole pipeline once with the first strategy
(late by default), then retrains the fusion model with the others (`retrain_and_evaluate`), and
prints, on the same test admissions: AUROC / AUPRC of each fusion strategy, each single-modality
model, and the oracle P(label | everything observable in the window), with fusion/oracle as a
ratio.

    python benchmarks/quality.py --admissions 2000 --workdir work/bench-quality [--joint]

Staged by default, as the pipeline is: the fusion model fuses the frozen encoders of the run's
single-modality models (`modality_models`) and trains only its head; `train s` counts both.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from clinfuse.orchestration.runner import retrain, run_pipeline
from clinfuse.synthetic import generate, truth_dir

SINGLE = ("ehr", "text", "image", "audio")


def scores(labels: pd.Series, p: pd.Series) -> tuple[float, float]:
    return roc_auc_score(labels, p), average_precision_score(labels, p)


def retrain_strategy(landing: Path, workdir: Path, strategy: str, training: dict):
    result = retrain(landing, workdir, {**training, "strategy": strategy})
    return result.output_for_node("predictions"), result.output_for_node("fusion_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="work/bench-quality")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--strategies", nargs="+", default=["late", "attention", "early"])
    parser.add_argument(
        "--joint", action="store_true", help="train encoders and fusion head together instead"
    )
    args = parser.parse_args()

    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    landing, workdir = root / "landing", root / "run"
    started = time.perf_counter()
    generate(landing, admissions=args.admissions, seed=args.seed, image_size=64, progress=True)
    print(f"generated in {time.perf_counter() - started:.0f} s")
    options = {"epochs": args.epochs, "pretrain": not args.joint}
    training = {**options, "strategy": args.strategies[0]}

    started = time.perf_counter()
    run_pipeline(landing, workdir, training=training)
    print(f"pipeline ({args.strategies[0]}) in {time.perf_counter() - started:.0f} s")
    tables = workdir / "tables"
    first = pd.read_parquet(tables / "predictions.parquet")
    fusion_first = pd.read_json(tables / "fusion_model.json", typ="series")
    runs = {args.strategies[0]: (first, fusion_first)}
    for strategy in args.strategies[1:]:
        runs[strategy] = retrain_strategy(landing, workdir, strategy, options)

    truth = pd.read_parquet(truth_dir(landing) / "admissions.parquet")
    test = first[first["split"] == "test"][["hadm_id", "label", *[f"p_{m}" for m in SINGLE]]]
    test = test.merge(truth[["hadm_id", "p_oracle"]], on="hadm_id")
    oracle_auroc, oracle_auprc = scores(test["label"], test["p_oracle"])

    rows = []
    for strategy, (predictions, fusion) in runs.items():
        p = predictions.set_index("hadm_id").loc[test["hadm_id"], "p_fusion"].to_numpy()
        auroc, auprc = scores(test["label"], pd.Series(p))
        rows.append(
            {
                "model": f"fusion ({strategy})",
                "AUROC": auroc,
                "AUPRC": auprc,
                "/oracle": auroc / oracle_auroc,
                "train s": fusion["train_seconds"] + fusion.get("encoder_train_seconds", 0.0),
            }
        )
    for modality in SINGLE:
        auroc, auprc = scores(test["label"], test[f"p_{modality}"])
        rows.append(
            {"model": modality, "AUROC": auroc, "AUPRC": auprc, "/oracle": auroc / oracle_auroc}
        )
    rows.append({"model": "oracle", "AUROC": oracle_auroc, "AUPRC": oracle_auprc, "/oracle": 1.0})
    table = pd.DataFrame(rows)
    positives = int(test["label"].sum())
    print(f"\n{args.admissions} admissions; {len(test)} test admissions, {positives} positive")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    best_single = table[table["model"].isin(SINGLE)]["AUROC"].max()
    best_fusion = table[table["model"].str.startswith("fusion")]["AUROC"].max()
    print(f"best fusion - best single modality: {best_fusion - best_single:+.3f} AUROC")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB (largest child process {children:.0f} MiB)")


if __name__ == "__main__":
    main()
