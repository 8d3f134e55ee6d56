"""Running a GX Core 1.x expectation suite on a pandas DataFrame, into a plain result.

One ephemeral context per process (nothing is written to disk), with one pandas datasource,
dataframe asset and whole-dataframe batch definition reused by every call; each call builds its
own ExpectationSuite and validates the batch. GX is imported on first use: importing it costs
seconds, which a Dagster code location or the CLI should not pay before a check runs.
Plain code: no Dagster.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

_LOCK = threading.Lock()  # the shared context's batch is not made for concurrent validations


@dataclass
class QualityOutcome:
    """A suite's verdict. metadata is small and JSON-able: counts and observed aggregates only,
    never a row's value (so it may be shown in the UI and stored without leaking PHI)."""

    passed: bool
    blocking: bool
    description: str
    failed_expectations: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _batch_definition():
    """The shared ephemeral context's whole-dataframe batch definition (built once)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    # tqdm bars on stderr for every validation are noise in Dagster's logs and in CI.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("clinfuse").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def gx_expectations():
    """The `great_expectations.expectations` module (imported lazily)."""
    import great_expectations as gx

    return gx.expectations


def run_suite(
    name: str,
    frame: pd.DataFrame,
    expectations: list,
    blocking: bool,
    metadata: dict[str, Any] | None = None,
) -> QualityOutcome:
    """Validate `frame` against the expectations; failed ones are named like
    `expect_column_values_to_not_be_null(subject_id)`."""
    import great_expectations as gx

    batch_definition = _batch_definition()  # first: a suite needs an active context
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GX's own deprecation chatter, not the pipeline's
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format="BASIC")
    return _outcome(name, result, blocking, len(frame), metadata or {})


def label(config) -> str:
    """`expect_x(column)`, `expect_pair(column_A,column_B)`: how a failure is named."""
    kwargs = config.kwargs
    if "column_A" in kwargs:
        target = f"{kwargs['column_A']},{kwargs['column_B']}"
    elif "column_list" in kwargs:
        target = ",".join(kwargs["column_list"])
    else:
        target = kwargs.get("column", "")
    return f"{config.type}({target})" if target else config.type


def _outcome(name: str, result, blocking: bool, rows: int, extra: dict[str, Any]) -> QualityOutcome:
    failed: list[str] = []
    metadata: dict[str, Any] = {"suite": name, "rows": rows, **extra}
    for item in result.results:
        key = label(item.expectation_config)
        raised = (item.exception_info or {}).get("raised_exception", False)
        if not item.success or raised:
            failed.append(key)
        metadata[key] = "error" if raised else ("passed" if item.success else "failed")
        metadata.update(_numbers(key, item.result or {}))
    metadata["expectations"] = len(result.results)
    metadata["expectations_failed"] = len(failed)
    passed = not failed
    if passed:
        description = f"{name}: all {len(result.results)} expectations met"
    else:
        description = f"{name}: {len(failed)} of {len(result.results)} expectations failed: "
        description += ", ".join(failed)
    return QualityOutcome(passed, blocking, description, failed, metadata)


def _numbers(key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Counts and the observed aggregate, flat (Dagster shows scalars), NaN as None."""
    out: dict[str, Any] = {}
    for field_name in ("unexpected_count", "unexpected_percent", "missing_count"):
        if field_name in result:
            out[f"{key} {field_name}"] = _scalar(result[field_name])
    if "observed_value" in result:
        observed = _scalar(result["observed_value"])
        if isinstance(observed, bool | int | float | str) or observed is None:
            out[f"{key} observed_value"] = observed
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _scalar(value.item())
    return value


_SUMMED = ("unexpected_count", "missing_count")


def merged_outcome(name: str, outcomes: list[QualityOutcome]) -> QualityOutcome:
    """One verdict for a suite of row-by-row expectations run on consecutive batches of a table.

    Only for expectations that look at one row at a time (not null, in a set, a pair in order):
    the table meets one exactly when every batch does. Counts are summed and percentages taken
    of all rows; an observed aggregate (a batch's own) is not kept.
    """
    if not outcomes:
        raise ValueError(f"{name}: no batch was validated")
    failed = list(dict.fromkeys(key for o in outcomes for key in o.failed_expectations))
    rows = sum(int(o.metadata.get("rows", 0)) for o in outcomes)
    metadata: dict[str, Any] = {**outcomes[0].metadata, "suite": name, "rows": rows}
    for key in list(metadata):
        if key.endswith(" unexpected_percent") or key.endswith(" observed_value"):
            del metadata[key]
    for key, value in outcomes[0].metadata.items():
        if key.endswith(_SUMMED):
            metadata[key] = sum(o.metadata.get(key) or 0 for o in outcomes)
        elif value in ("passed", "failed", "error"):
            states = {o.metadata.get(key) for o in outcomes}
            metadata[key] = next(s for s in ("error", "failed", "passed") if s in states)
    for key in [k for k in metadata if k.endswith(" unexpected_count")]:
        percent = 100.0 * metadata[key] / rows if rows else 0.0
        metadata[key.replace("unexpected_count", "unexpected_percent")] = percent
    metadata["expectations_failed"] = len(failed)
    total = int(metadata.get("expectations", 0))
    if failed:
        description = f"{name}: {len(failed)} of {total} expectations failed: " + ", ".join(failed)
    else:
        description = f"{name}: all {total} expectations met"
    return QualityOutcome(not failed, outcomes[0].blocking, description, failed, metadata)
