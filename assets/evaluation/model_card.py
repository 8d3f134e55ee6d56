"""The model card: one markdown page per registered version, logged next to the model.

It states what the model predicts, on whom it was evaluated, how well (with intervals), how
well calibrated its probabilities are, what each modality contributes, how it does per
subgroup, and what it must not be used for.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

# The card is written before the registry numbers the version; registration fills it in.
VERSION_PLACEHOLDER = "(registered next)"

CARD_METRICS = (
    "auroc",
    "auprc",
    "accuracy",
    "recall",
    "precision",
    "specificity",
    "f1",
    "brier",
    "ece",
)
SUBGROUP_METRICS = ("n", "positives", "auroc", "auprc", "recall", "specificity", "f1", "ece")


def _cell(value: Any) -> str:
    """A table cell: 3 decimals for fractions, integers as is, n/a for undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        # Counts that went through a float column (pandas with missing values) stay counts.
        return str(int(value)) if value > 1 and float(value).is_integer() else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _present(columns: Sequence[str], tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The columns that at least one row has, in the given order."""
    return [c for c in columns if any(c in row for row in tables.values())]


def _metrics_section(metrics: Mapping[str, Mapping[str, Any]], first: str = "model") -> str:
    columns = _present(CARD_METRICS, metrics)
    rows = [[name, *(values.get(c) for c in columns)] for name, values in metrics.items()]
    return _table([first, *columns], rows)


def _interval_section(metrics: Mapping[str, Any], intervals: Mapping[str, Sequence]) -> str:
    rows = []
    for key in CARD_METRICS:
        if key not in intervals:
            continue
        low, high = intervals[key]
        rows.append([key, metrics.get(key), f"{_cell(low)} - {_cell(high)}"])
    return _table(["metric", "estimate", "95% interval"], rows)


def _calibration_section(
    calibration: Mapping[str, Mapping[str, Any]], reliability_diagram: str | None
) -> str:
    text = (
        "Calibration slope and intercept come from logistic recalibration on the test split: "
        "the label regressed on logit(p). A perfectly calibrated model has slope 1 and "
        "intercept 0; a slope below 1 means over-confident probabilities (too extreme), above "
        "1 under-confident. The intercept is read with the slope: at slope 1, a negative "
        "intercept means risks are over-estimated. ECE is over 10 equal-width probability "
        "bins.\n\n"
    )
    rows = [
        [name, values.get("ece"), values.get("slope"), values.get("intercept")]
        for name, values in calibration.items()
    ]
    text += _table(["model", "ECE", "slope", "intercept"], rows)
    if reliability_diagram:
        text += (
            "\n\nReliability diagram of the fusion model (the same bins as the ECE, admissions "
            f"per bin underneath):\n\n![Reliability diagram]({reliability_diagram})"
        )
    return text


def _ablation_section(ablation: Mapping[str, Any]) -> str:
    if all(isinstance(v, Mapping) for v in ablation.values()):
        return _metrics_section(ablation, first="variant")
    return _table(["variant", "AUROC"], [[name, value] for name, value in ablation.items()])


def _subgroup_section(subgroups: pd.DataFrame) -> str:
    if subgroups.empty:
        return "No subgroup table was computed."
    columns = [c for c in SUBGROUP_METRICS if c in subgroups.columns]
    keys = [c for c in ("attribute", "group") if c in subgroups.columns]
    rows = subgroups[keys + columns].astype(object).itertuples(index=False, name=None)
    return _table([*keys, *columns], list(rows))


def _cohort_section(cohort_summary: Mapping[str, Any]) -> str:
    return "\n".join(f"- {key}: {_cell(value)}" for key, value in cohort_summary.items())


def model_card(
    *,
    model_name: str,
    version: str,
    target: str,
    cohort_summary: dict,
    metrics: dict,
    intervals: dict,
    ablation: dict,
    subgroups: pd.DataFrame,
    limits: list[str],
    calibration: dict | None = None,
    reliability_diagram: str | None = None,
) -> str:
    """Markdown model card.

    metrics: {model: {metric: value}} on the test split, the fusion model first by convention;
    intervals: {metric: (low, high)} for the fusion model (patient-level bootstrap);
    ablation: {variant: {metric: value}} or {variant: auroc};
    calibration: {model: {"ece", "slope", "intercept"}} on the test split (the evaluation's
    calibration_table); reliability_diagram: the file name of the fusion model's reliability
    diagram, linked relative to the card (both are logged to the same artifact folder);
    subgroups: metrics.subgroup_metrics's table; limits: one sentence each.
    """
    fusion = metrics.get("fusion", {})
    sections = [
        f"# Model card: {model_name} v{version}",
        "## What it predicts\n\n"
        f"The probability that a hospital admission carries the target **{target}** (a "
        "discharge diagnosis, see the cohort rules), from the data available within the "
        "prediction window: EHR laboratory values, clinical notes, chest images and lung-sound "
        "recordings. Missing modalities are allowed; the model falls back on the others.",
        "## Intended use\n\n"
        "Research and decision support under clinical oversight: ranking admissions for "
        "review. It is not a diagnostic device and must not replace a clinician's judgement.",
        f"## Evaluation cohort\n\n{_cohort_section(cohort_summary)}",
        "## Performance on the test split\n\n"
        "Test admissions belong to patients never seen in training or validation. The decision "
        "threshold was chosen on the validation split (maximum F1).\n\n"
        + _metrics_section(metrics),
        "### Fusion model, 95% intervals\n\n"
        "Percentile bootstrap over test patients (a drawn patient brings all their admissions), "
        "threshold held fixed.\n\n" + _interval_section(fusion, intervals),
    ]
    if calibration:
        sections.append(
            "## Calibration\n\n" + _calibration_section(calibration, reliability_diagram)
        )
    sections += [
        f"## Ablation\n\n{_ablation_section(ablation)}",
        "## Subgroups\n\n"
        "Small groups are shown as they are; read their numbers with n and positives.\n\n"
        + _subgroup_section(subgroups),
        "## Limitations\n\n" + "\n".join(f"- {limit}" for limit in limits),
    ]
    return "\n\n".join(sections) + "\n"
