"""Data-quality warnings a sales manager needs (non-blocking): each warning is an asset check of
WARN severity on `data_quality_warnings`, with its counts and examples in the UI, and a row per
pipeline in the warehouse table of the same name."""


import json

import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.quality_warnings import ALL_PIPELINES, WARNINGS, data_quality_warnings as compute_warnings
from etl.charts import markdown_table


@dg.asset(
    partitions_def=NIGHTS,
    group_name="data_quality",
    kinds={"pandas", "sql"},
    check_specs=[
        dg.AssetCheckSpec(name, asset="data_quality_warnings", blocking=False, description=f"Warning (non-blocking): {text}")
        for name, text in WARNINGS.items()
    ],
)
def data_quality_warnings(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    stalled_deals: pd.DataFrame,
):
    """Warnings about data that is usable but bends some numbers (wins keyed in at close, overdue deals, outliers, contradictory history, stalled pipelines), with counts and examples."""
    resolved = run_settings(context, settings)
    frame = compute_warnings(deals, deal_history, stalled_deals, resolved.as_of, resolved.project.warnings)
    overall = frame[frame["pipeline"] == ALL_PIPELINES]
    fired = overall[overall["fired"]]
    for row in fired.itertuples():
        context.log.warning(f"{row.check_name}: {row.message}")
    yield publish_table(
        context, warehouse, resolved.as_of, "data_quality_warnings", frame,
        previews={"warnings": overall[["check_name", "fired", "affected", "population", "share", "affected_amount", "message"]]},
        metadata={"fired": dg.MetadataValue.int(len(fired))},
    )  # fmt: skip
    for row in overall.itertuples():
        pipelines = frame[(frame["check_name"] == row.check_name) & (frame["pipeline"] != ALL_PIPELINES)]
        examples = pd.DataFrame(json.loads(row.examples))
        metadata = {
            "message": dg.MetadataValue.text(row.message),
            "affected": dg.MetadataValue.int(int(row.affected)),
            "population": dg.MetadataValue.int(int(row.population)),
            "by_pipeline": dg.MetadataValue.md(markdown_table(pipelines[["pipeline", "fired", "affected", "population", "share"]])),
        }
        if not examples.empty:
            metadata["examples"] = dg.MetadataValue.md(markdown_table(examples))
        yield dg.AssetCheckResult(
            check_name=row.check_name,
            passed=not bool(row.fired),
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
        )
