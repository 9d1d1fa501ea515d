"""The named asset checks of the night, wired from the pure checks in `etl.validation.blocking` and
`models.checks`:

- blocking, on `deals` (every downstream asset reads it, so one failure stops the night): `deals_not_empty`,
  `volume_not_collapsed`, `reconciliation_balanced`, `quarantine_share_within_limit` and
  `stage_events_consistent` (the last also on `stage_events`, the table it describes);
- warnings: `model_beats_baseline` on `deal_scoring_model`, `forecast_ordered` on `forecast_quarterly`.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from etl.charts import markdown_table
from etl.validation.blocking import BLOCKING_CHECKS, blocking_verdicts
from etl.validation.outcome import ValidationOutcome
from models.checks import ModelCheck, forecast_ordered, model_beats_baseline

STAGE_EVENTS_CHECK = "stage_events_consistent"
# (asset, check) pairs of the blocking checks.
BLOCKING_TARGETS = [("deals", check.name) for check in BLOCKING_CHECKS] + [("stage_events", STAGE_EVENTS_CHECK)]
_DESCRIPTIONS = {check.name: check.description for check in BLOCKING_CHECKS}

BLOCKING_CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=asset, blocking=True, description=f"Blocking: {_DESCRIPTIONS[name]}")
    for asset, name in BLOCKING_TARGETS
]
MODEL_CHECK_SPEC = dg.AssetCheckSpec(
    "model_beats_baseline", asset="deal_scoring_model", blocking=False,
    description="Warning: the published scorer's held-out log loss is at most the constant win rate's.",
)  # fmt: skip
FORECAST_CHECK_SPEC = dg.AssetCheckSpec(
    "forecast_ordered", asset="forecast_quarterly", blocking=False,
    description="Warning: every forecast row has P10 <= P50 <= P90.",
)  # fmt: skip


def blocking_check_results(validation: ValidationOutcome) -> Iterator[dg.AssetCheckResult]:
    """One result per blocking check spec: passed, the failing result rows and sample failing rows."""
    verdicts = {verdict.name: verdict for verdict in blocking_verdicts(validation.results)}
    for asset, name in BLOCKING_TARGETS:
        verdict = verdicts[name]
        failed = verdict.failed
        metadata: dict[str, dg.MetadataValue] = {
            "results": dg.MetadataValue.int(len(verdict.results)),
            "failed_results": dg.MetadataValue.int(len(failed)),
        }
        if not failed.empty:
            metadata["failures"] = dg.MetadataValue.md(
                markdown_table(failed[["check_name", "observed", "expected", "failing_rows"]])
            )
            metadata["sample_rows"] = dg.MetadataValue.json(
                {check: validation.sample_rows(check) for check in failed["check_name"]}
            )
        yield dg.AssetCheckResult(
            asset_key=asset, check_name=name, passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata
        )


def _warning(asset: str, name: str, outcome: ModelCheck) -> dg.AssetCheckResult:
    metadata: dict[str, dg.MetadataValue] = {
        "observed": dg.MetadataValue.text(outcome.observed),
        "expected": dg.MetadataValue.text(outcome.expected),
    }
    if not outcome.failing.empty:
        metadata["failing_rows"] = dg.MetadataValue.md(markdown_table(outcome.failing))
    return dg.AssetCheckResult(
        asset_key=asset, check_name=name, passed=outcome.passed, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )


def model_check_result(metrics: dict) -> dg.AssetCheckResult:
    """`model_beats_baseline` for the published scorer's metrics (`ScorerResult.metrics`)."""
    return _warning("deal_scoring_model", MODEL_CHECK_SPEC.name, model_beats_baseline(metrics))


def forecast_check_result(quarterly) -> dg.AssetCheckResult:
    """`forecast_ordered` for the `forecast_quarterly` frame."""
    return _warning("forecast_quarterly", FORECAST_CHECK_SPEC.name, forecast_ordered(quarterly))
