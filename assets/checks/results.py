"""A GX validation outcome (expectations.py) as the Dagster check result the UI shows."""

import dagster as dg

from clinfuse.assets.checks import expectations


def outcome_result(outcome: expectations.QualityOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata={
            "failed_expectations": ", ".join(outcome.failed_expectations) or "none",
            **{k: v for k, v in outcome.metadata.items() if isinstance(v, int | float | str)},
        },
    )
