"""Quality of the fusion model over a family of synthetic tasks, against the generator's oracle.

    python benchmarks/quality.py --tasks all --admissions 1500 5000 --seeds 0 1 2 \
        [--workdir work/bench-quality] [--out docs/quality] [--fresh] [--keep] [--epochs N]
        [--cached-only]   # tabulate the finished runs of that grid, start none

For each task x admissions x seed: generate a landing zone (the seed is both the data and the
training seed), run the whole pipeline once (`run_pipeline`, the task's target and the seed in
its YAML config), then score its test admissions against the truth beside the landing zone:

- fusion AUROC / oracle AUROC (`p_oracle`, the exact Bayes oracle);
- each modality's AUROC / its ceiling's AUROC (`p_<m>` vs `p_oracle_<m>`); a ceiling at ~0.5 (a
  modality without signal in that task) has no ratio ("n/a") and the raw AUROC is shown;
- fusion AUROC minus the best single modality's;
- fusion ECE (10 equal-width bins) and the perfect-calibration bound: the 99th percentile of the
  ECE of labels drawn from the fusion model's own probabilities (1,000 draws, fixed rng);
- train seconds (encoders + fusion head), the pipeline's wall seconds and its peak RSS.

Generation and the pipeline each run in a fresh child process, so the peak RSS is the run's own.
Runs are resumable: `<workdir>/<task>-<admissions>-<seed>/row.json` is reused unless `--fresh`
(which deletes those folders first); a run whose pipeline finished (pipeline.json) but whose
scoring did not is only scored again.
By default a finished run's landing zone and pipeline workdir are deleted (`--keep` keeps them);
`test.parquet` (the test predictions joined with the truth) and `report.json` stay.

Then, per size: mean and minimum over tasks (of each task's mean over seeds) of fusion/oracle,
and the tasks that miss the goals (`GOALS`, `check_goals`). Rows go to `<out>/rows.json` and
`<out>/rows.csv`, the per-size summary to `<out>/summary.json`, and the learning curve (AUROC /
oracle-or-ceiling vs admissions, one panel per task) to `<out>/learning_curve.png`.

Tasks come from `clinfuse.synthetic.tasks` (`TASKS`, `get_task`); without that module `--tasks
all` is just pneumonia with the pipeline's default target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from clinfuse.assets.evaluation.metrics import expected_calibration_error
from clinfuse.models.modalities import MODALITIES

DEFAULT_TASK = "pneumonia"
TASKS_MODULE = "clinfuse.synthetic.tasks"
TARGET_KEYS = ("name", "icd10_prefixes", "icd9_prefixes")
# A ceiling within this of 0.5 is a modality without signal: its ratio would be noise.
NO_SIGNAL_MARGIN = 0.03
ECE_BINS = 10
BOUND_DRAWS = 1000
BOUND_QUANTILE = 0.99
BOUND_SEED = 0
IMAGE_SIZE = 64  # the pipeline's default image_size; the generator's default is larger


@dataclasses.dataclass(frozen=True)
class Goal:
    """What every task must reach at one size (None: no such goal at that size)."""

    mean_ratio: float | None = None  # mean over tasks of fusion/oracle
    min_ratio: float | None = None  # every task's fusion/oracle
    max_ece: float | None = None  # every task's mean ECE


# At every size, also: fusion above the best single modality, and ECE within the bound.
GOALS = {1500: Goal(mean_ratio=0.93, min_ratio=0.90), 5000: Goal(min_ratio=0.95, max_ece=0.05)}


# ---------------------------------------------------------------- pure scoring


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (Mann-Whitney, ties half); NaN with one class or no scores."""
    y = np.asarray(labels, dtype=float).ravel()
    p = np.asarray(scores, dtype=float).ravel()
    keep = ~(np.isnan(y) | np.isnan(p))
    y, p = y[keep].astype(bool), p[keep]
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibrated_eces(
    p: Any, draws: int = BOUND_DRAWS, seed: int = BOUND_SEED, bins: int = ECE_BINS
) -> np.ndarray:
    """ECE of `draws` label vectors drawn from p itself: what a perfectly calibrated model gets.

    The same binning as expected_calibration_error (bins depend on p only), vectorized.
    """
    p = np.asarray(p, dtype=float).ravel()
    p = p[~np.isnan(p)]
    if p.size == 0:
        return np.full(draws, math.nan)
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    onehot = np.zeros((p.size, bins))
    onehot[np.arange(p.size), index] = 1.0
    labels = np.random.default_rng(seed).random((draws, p.size)) < p
    label_sums = labels.astype(float) @ onehot  # draws x bins
    prob_sums = p @ onehot
    return np.abs(label_sums - prob_sums).sum(axis=1) / p.size


def ece_bound(
    p: Any,
    draws: int = BOUND_DRAWS,
    quantile: float = BOUND_QUANTILE,
    seed: int = BOUND_SEED,
    bins: int = ECE_BINS,
) -> float:
    """The perfect-calibration bound: the `quantile` of calibrated_eces(p)."""
    return float(np.quantile(calibrated_eces(p, draws, seed, bins), quantile))


def ratio_to(value: float, reference: float, margin: float = NO_SIGNAL_MARGIN) -> float | None:
    """value / reference, or None when the reference has no signal (|reference - 0.5| < margin)."""
    if math.isnan(reference) or abs(reference - 0.5) < margin:
        return None
    return value / reference


def score_modalities(test: pd.DataFrame) -> dict[str, Any]:
    """Per modality: AUROC, its ceiling's AUROC and their ratio (None: no signal)."""
    out: dict[str, Any] = {}
    y = test["label"]
    for m in MODALITIES:
        value = auroc(y, test[f"p_{m}"]) if f"p_{m}" in test else math.nan
        ceiling = auroc(y, test[f"p_oracle_{m}"]) if f"p_oracle_{m}" in test else math.nan
        out[f"auroc_{m}"] = value
        out[f"ceiling_{m}"] = ceiling
        out[f"{m}_over_ceiling"] = ratio_to(value, ceiling)
        # The fusion model with this modality marked missing: on a modality without signal,
        # fusion must not be worse than this.
        if f"p_fusion_without_{m}" in test:
            out[f"auroc_fusion_without_{m}"] = auroc(y, test[f"p_fusion_without_{m}"])
    return out


def best_single(scores: Mapping[str, Any]) -> tuple[str | None, float]:
    """The single modality with the highest AUROC (NaNs ignored)."""
    found = {m: scores[f"auroc_{m}"] for m in MODALITIES if not math.isnan(scores[f"auroc_{m}"])}
    if not found:
        return None, math.nan
    name = max(found, key=found.__getitem__)
    return name, found[name]


def score_run(test: pd.DataFrame, draws: int = BOUND_DRAWS, seed: int = BOUND_SEED) -> dict:
    """Scores one run's test admissions (label, p_fusion, p_<m>, p_oracle, p_oracle_<m>)."""
    y, p = test["label"].to_numpy(), test["p_fusion"].to_numpy(dtype=float)
    fusion, oracle = auroc(y, p), auroc(y, test["p_oracle"])
    row: dict[str, Any] = {
        "test_admissions": len(test),
        "test_positives": int(test["label"].sum()),
        "auroc_fusion": fusion,
        "auroc_oracle": oracle,
        "fusion_over_oracle": ratio_to(fusion, oracle, margin=0.0),
        **score_modalities(test),
    }
    name, value = best_single(row)
    ece, bound = expected_calibration_error(y, p, bins=ECE_BINS), ece_bound(p, draws, seed=seed)
    row.update(
        best_single=name,
        fusion_minus_best=fusion - value,
        ece=ece,
        ece_bound=bound,
        ece_within_bound=bool(ece <= bound),
    )
    return row


def join_truth(predictions: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The test predictions with the truth's oracles, on hadm_id; every admission must match.

    `label` stays the pipeline's (what the models were scored on); `label_truth` is the
    generator's, for the mismatch count.
    """
    if "split" in predictions:
        predictions = predictions[predictions["split"] == "test"]
    oracles = [c for c in truth.columns if c.startswith("p_oracle")]
    right = truth[["hadm_id", "label", *oracles]].rename(columns={"label": "label_truth"})
    joined = predictions.merge(right, on="hadm_id", how="inner", validate="one_to_one")
    if len(joined) != len(predictions):
        raise ValueError(f"{len(predictions) - len(joined)} test admissions are not in the truth")
    return joined.reset_index(drop=True)


def task_means(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (admissions, task): means over seeds; ece_within_bound: all seeds."""
    frame = pd.DataFrame(list(rows))
    ratios = [f"{m}_over_ceiling" for m in MODALITIES if f"{m}_over_ceiling" in frame]
    for column in ["fusion_over_oracle", *ratios]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    means = ["fusion_over_oracle", "fusion_minus_best", "ece", "ece_bound", *ratios]
    grouped = frame.groupby(["admissions", "task"], sort=True)
    out = grouped[means].mean()
    out["ece_within_bound"] = grouped["ece_within_bound"].all()
    out["seeds"] = grouped.size()
    return out.reset_index()


def check_goals(per_task: pd.DataFrame, goal: Goal) -> dict[str, list[str]]:
    """{task (or "(mean over tasks)"): [the goals it misses]} at one size."""
    misses: dict[str, list[str]] = {}
    for t in per_task.itertuples(index=False):
        found = []
        if goal.min_ratio is not None and not t.fusion_over_oracle >= goal.min_ratio:
            found.append(f"fusion/oracle {t.fusion_over_oracle:.3f} < {goal.min_ratio}")
        if not t.fusion_minus_best > 0:
            found.append(f"fusion - best single {t.fusion_minus_best:+.3f} <= 0")
        if not t.ece_within_bound:
            found.append("ECE above the perfect-calibration bound")
        if goal.max_ece is not None and not t.ece <= goal.max_ece:
            found.append(f"ECE {t.ece:.3f} > {goal.max_ece}")
        if found:
            misses[t.task] = found
    mean = per_task["fusion_over_oracle"].mean()
    if goal.mean_ratio is not None and not mean >= goal.mean_ratio:
        misses["(mean over tasks)"] = [f"fusion/oracle {mean:.3f} < {goal.mean_ratio}"]
    return misses


def summarize(
    rows: Sequence[Mapping[str, Any]], goals: Mapping[int, Goal] | None = None
) -> list[dict[str, Any]]:
    """Per size: mean and minimum over tasks of fusion/oracle, per-task means, goal misses."""
    goals = GOALS if goals is None else goals
    if not rows:
        return []
    per_task = task_means(rows)
    out = []
    for size, group in per_task.groupby("admissions", sort=True):
        worst = group.loc[group["fusion_over_oracle"].idxmin()]
        out.append(
            {
                "admissions": int(size),
                "tasks": int(len(group)),
                "mean_fusion_over_oracle": float(group["fusion_over_oracle"].mean()),
                "min_fusion_over_oracle": float(worst["fusion_over_oracle"]),
                "min_task": str(worst["task"]),
                "per_task": _records(group.drop(columns="admissions")),
                "misses": check_goals(group, goals.get(int(size), Goal())),
            }
        )
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


# ---------------------------------------------------------------- tasks


def tasks_module() -> ModuleType | None:
    """clinfuse.synthetic.tasks, or None while it does not exist (other import errors raise)."""
    import importlib

    try:
        return importlib.import_module(TASKS_MODULE)
    except ModuleNotFoundError as error:
        if error.name != TASKS_MODULE:
            raise
        return None


def task_names(requested: Sequence[str]) -> list[str]:
    """The tasks to run: `all` is every task of the generator (just pneumonia without them)."""
    module = tasks_module()
    known = list(module.TASKS) if module is not None else [DEFAULT_TASK]
    names = known if list(requested) == ["all"] else list(requested)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; known: {known}")
    return names


def _get_task(module: ModuleType, name: str) -> Any:
    getter = getattr(module, "get_task", None)
    return getter(name) if getter is not None else module.TASKS[name]


def as_target(target: Any) -> dict[str, Any]:
    """{name, icd10_prefixes, icd9_prefixes} from a dataclass, a mapping or any object."""
    if dataclasses.is_dataclass(target) and not isinstance(target, type):
        raw = dataclasses.asdict(target)
    elif isinstance(target, Mapping):
        raw = dict(target)
    else:
        raw = {k: getattr(target, k) for k in TARGET_KEYS if hasattr(target, k)}
    if "name" not in raw:
        raise ValueError(f"a task's target has no name: {target!r}")
    return {
        "name": str(raw["name"]),
        "icd10_prefixes": [str(p) for p in raw.get("icd10_prefixes", ())],
        "icd9_prefixes": [str(p) for p in raw.get("icd9_prefixes", ())],
    }


def task_target(name: str) -> dict[str, Any] | None:
    """The task's target for the pipeline's config; None: the pipeline's default (pneumonia)."""
    module = tasks_module()
    if module is None:
        if name != DEFAULT_TASK:
            raise ValueError(f"no {TASKS_MODULE}: only {DEFAULT_TASK} can run")
        return None
    task = _get_task(module, name)
    target = (
        task.get("target", task) if isinstance(task, Mapping) else getattr(task, "target", task)
    )
    return as_target(target)


def pipeline_config(name: str, seed: int, epochs: int | None = None) -> dict[str, Any]:
    """The run's YAML config: the task's target (when not the default) and the seed."""
    config: dict[str, Any] = {"seed": seed}
    target = task_target(name)
    if target is not None:
        config["target"] = target
    if epochs is not None:
        config["training"] = {"epochs": epochs}
    return config


# ---------------------------------------------------------------- one run


def peak_rss_mib() -> dict[str, float]:
    """This process's peak RSS and its largest waited-for child's, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": own, "peak_child_rss_mib": children}


def in_child(function: Callable[..., dict], *args: Any) -> dict:
    """function(*args) in a fresh spawned process (its own peak RSS, nothing left behind)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def generate_zone(landing: Path, admissions: int, seed: int, task: str) -> dict:
    """Child: the landing zone (and truth beside it) for this task, size and seed."""
    from clinfuse.synthetic import generate

    started = time.perf_counter()
    extra = {"task": task} if tasks_module() is not None else {}
    progress = sys.stderr.isatty()
    generate(
        landing, admissions=admissions, seed=seed, image_size=IMAGE_SIZE, progress=progress, **extra
    )
    return {"generate_seconds": time.perf_counter() - started, **peak_rss_mib()}


def pipeline_step(landing: Path, workdir: Path, config: Path) -> dict:
    """Child: the whole pipeline once; its report, wall seconds and peak RSS."""
    from clinfuse.orchestration.runner import run_pipeline

    started = time.perf_counter()
    report = run_pipeline(landing, workdir, config=config)
    return {"report": report, "pipeline_seconds": time.perf_counter() - started, **peak_rss_mib()}


TRAINING_STEPS = ("modality_models", "fusion_model")


def training_time(workdir: Path) -> dict[str, float]:
    """Training time, the one place that knows where the pipeline keeps it.

    train_seconds: the wall time of the Dagster steps modality_models + fusion_model (every
    candidate of every modality, cross-fitting, the fusion head and calibration);
    chosen_train_seconds: what cross-fitting the chosen learners alone cost.
    """
    singles = _read_json(workdir / "tables" / "modality_models.json")
    return {
        "train_seconds": sum(dagster_step_seconds(workdir, TRAINING_STEPS).values()),
        "chosen_train_seconds": float(singles.get("train_seconds", math.nan)),
    }


def dagster_step_seconds(workdir: Path, steps: Sequence[str]) -> dict[str, float]:
    """Wall seconds of these steps in the workdir's latest Dagster run (NaN if unreadable)."""
    from clinfuse.orchestration.runner import dagster_instance

    try:
        with dagster_instance(workdir) as instance:
            run = instance.get_runs(limit=1)[0]
            stats = {s.step_key: s for s in instance.get_run_step_stats(run.run_id)}
        return {k: stats[k].end_time - stats[k].start_time for k in steps}
    except Exception:  # Dagster internals: a missing timing must not lose the run's scores
        return {k: math.nan for k in steps}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def read_predictions(report: Mapping[str, Any], workdir: Path) -> pd.DataFrame:
    """The report's predictions_path (absolute, or relative to the workdir)."""
    path = Path(report["predictions_path"])
    return pd.read_parquet(path if path.is_absolute() else workdir / path)


def with_ablations(predictions: pd.DataFrame, workdir: Path) -> pd.DataFrame:
    """Adds p_fusion_without_<m> from the pipeline's own predictions table, when it is there."""
    path = workdir / "tables" / "predictions.parquet"
    if not path.exists():
        return predictions
    table = pd.read_parquet(path)
    columns = ["hadm_id", *[c for c in table.columns if c.startswith("p_fusion_without_")]]
    return predictions.merge(table[columns], on="hadm_id", how="left", validate="one_to_one")


def run_dir(root: Path, task: str, admissions: int, seed: int) -> Path:
    return root / f"{task}-{admissions}-{seed}"


def run_fresh(folder: Path, task: str, admissions: int, seed: int, epochs: int | None) -> dict:
    """Generate and run the pipeline in a clean folder; keeps what they return in pipeline.json."""
    import yaml

    from clinfuse.synthetic import truth_dir

    landing, workdir, config = folder / "landing", folder / "run", folder / "config.yaml"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(truth_dir(landing), ignore_errors=True)
    folder.mkdir(parents=True)
    config.write_text(yaml.safe_dump(pipeline_config(task, seed, epochs), sort_keys=False))
    generated = in_child(generate_zone, landing, admissions, seed, task)
    ran = in_child(pipeline_step, landing, workdir, config)
    ran["generate_seconds"] = generated["generate_seconds"]
    ran["generate_peak_rss_mib"] = generated["peak_rss_mib"]
    (folder / "pipeline.json").write_text(json.dumps(ran, indent=1, default=str))
    return ran


def score_folder(folder: Path, task: str, admissions: int, seed: int, ran: dict) -> dict:
    """The row of one finished run: its test admissions against the truth, times, memory."""
    from clinfuse.synthetic import truth_dir

    landing, workdir = folder / "landing", folder / "run"
    report = ran["report"]
    truth = pd.read_parquet(truth_dir(landing) / "admissions.parquet")
    test = join_truth(with_ablations(read_predictions(report, workdir), workdir), truth)
    row = {"task": task, "admissions": admissions, "seed": seed, **score_run(test)}
    row["label_mismatches"] = int((test["label"] != test["label_truth"]).sum())
    row.update(training_time(workdir))
    for key in ("pipeline_seconds", "generate_seconds", "peak_rss_mib", "peak_child_rss_mib"):
        row[key] = ran[key]
    test.to_parquet(folder / "test.parquet", index=False)
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return row


def benchmark_one(
    folder: Path, task: str, admissions: int, seed: int, epochs: int | None, keep: bool
) -> dict:
    """One run, scored; writes row.json. A run whose pipeline finished is only scored again."""
    from clinfuse.synthetic import truth_dir

    landing, workdir = folder / "landing", folder / "run"
    ran = _read_json(folder / "pipeline.json")
    if not (ran and workdir.is_dir() and truth_dir(landing).is_dir()):
        ran = run_fresh(folder, task, admissions, seed, epochs)
    row = score_folder(folder, task, admissions, seed, ran)
    (folder / "row.json").write_text(json.dumps(row, indent=1))
    if not keep:
        shutil.rmtree(landing, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return row


def cached_row(folder: Path) -> dict | None:
    path = folder / "row.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------- output


COLUMNS = (
    ("task", "task"),
    ("adm", "admissions"),
    ("seed", "seed"),
    ("fusion/oracle", "fusion_over_oracle"),
    *((f"{m}/ceil", m) for m in MODALITIES),
    ("fusion-best", "fusion_minus_best"),
    ("ECE", "ece"),
    ("bound", "ece_bound"),
    ("ECE ok", "ece_within_bound"),
    ("train s", "train_seconds"),
    ("wall s", "pipeline_seconds"),
    ("RSS MiB", "peak_rss_mib"),
)


def _cell(row: Mapping[str, Any], key: str) -> str:
    if key in MODALITIES:
        ratio = row.get(f"{key}_over_ceiling")
        return f"{ratio:.3f}" if ratio is not None else f"n/a ({row[f'auroc_{key}']:.3f})"
    value = row.get(key)
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key == "fusion_minus_best":
        return f"{value:+.3f}"
    if key in ("train_seconds", "pipeline_seconds", "peak_rss_mib"):
        return f"{value:.0f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k) for _, k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def summary_text(summary: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for s in summary:
        lines.append(
            f"\n{s['admissions']} admissions, {s['tasks']} task(s): fusion/oracle mean over tasks "
            f"{s['mean_fusion_over_oracle']:.3f}, min {s['min_fusion_over_oracle']:.3f} "
            f"({s['min_task']})"
        )
        misses = s["misses"]
        lines += [f"  MISS {task}: {'; '.join(why)}" for task, why in misses.items()]
        lines += [] if misses else ["  every goal met"]
    return "\n".join(lines)


def plot_learning_curve(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """AUROC / oracle (fusion) or / ceiling (modality) vs admissions; one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = task_means(rows)
    tasks = sorted(means["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    series = [("fusion", "fusion_over_oracle")] + [(m, f"{m}_over_ceiling") for m in MODALITIES]
    for ax, task in zip(axes[0], tasks, strict=True):
        group = means[means["task"] == task].sort_values("admissions")
        for label, column in series:
            if column in group and group[column].notna().any():
                # One colour per modality in every panel, also where a modality has no ceiling.
                style = (
                    {"color": "black", "linewidth": 2.5}
                    if label == "fusion"
                    else {"color": f"C{MODALITIES.index(label)}"}
                )
                ax.plot(group["admissions"], group[column], marker="o", label=label, **style)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=task, xlabel="admissions", ylabel="AUROC / oracle (modality: / ceiling)")
        ax.set_xscale("log")
        sizes = sorted(group["admissions"].unique())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], summary: list[dict], failures: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    pd.DataFrame(rows).to_csv(out / "rows.csv", index=False)
    body = {"goals": {k: dataclasses.asdict(v) for k, v in GOALS.items()}, "sizes": summary}
    (out / "summary.json").write_text(json.dumps({**body, "failures": failures}, indent=1) + "\n")
    if rows:
        plot_learning_curve(rows, out / "learning_curve.png")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["all"])
    parser.add_argument("--admissions", nargs="+", type=int, default=[1500, 5000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", default="work/bench-quality")
    parser.add_argument("--out", default="docs/quality")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs' cached row.json")
    parser.add_argument("--keep", action="store_true", help="keep landing zones and workdirs")
    parser.add_argument("--epochs", type=int, default=None, help="override the pipeline's epochs")
    parser.add_argument(
        "--cached-only", action="store_true", help="tabulate finished runs, start none"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.workdir).resolve()
    rows, failures = [], []
    for task in task_names(args.tasks):
        for size in args.admissions:
            for seed in args.seeds:
                folder = run_dir(root, task, size, seed)
                if args.fresh:
                    shutil.rmtree(folder, ignore_errors=True)
                row = cached_row(folder)
                if row is not None:
                    print(f"{folder.name}: cached", flush=True)
                elif args.cached_only:
                    continue
                else:
                    print(f"{folder.name}: running (new or unfinished)", flush=True)
                    try:
                        row = benchmark_one(folder, task, size, seed, args.epochs, args.keep)
                    except Exception as error:  # one failed run must not lose the others
                        traceback.print_exc()
                        failures.append({"run": folder.name, "error": str(error)})
                        continue
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
    summary = summarize(rows)
    print("\n" + markdown_table(rows) + "\n" + summary_text(summary))
    for failure in failures:
        print(f"FAILED {failure['run']}: {failure['error']}")
    write_outputs(rows, summary, failures, Path(args.out))
    print(f"\nwrote {Path(args.out) / 'rows.json'}, rows.csv, summary.json, learning_curve.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
