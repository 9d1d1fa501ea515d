"""Pipeline health: month-end pipeline snapshots, the period waterfall, stalled and aged deals and
close-date slips, per segment, written per as_of."""


import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.analytics import health as pipeline_health
from etl.charts import image_markdown, markdown_table, waterfall_chart
from etl.stages import StageCatalog


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def pipeline_snapshots(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
    stage_durations: pd.DataFrame,
) -> dg.MaterializeResult:
    """The open pipeline as it stood at every month end and at as_of, by pipeline, stage and segment."""
    resolved = run_settings(context, settings)
    frame = pipeline_health.pipeline_snapshots(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of, stage_durations,
        keyed_at_close_hours=resolved.project.warnings.keyed_at_close_hours,
    )
    warehouse.publish(context, resolved.as_of, "pipeline_snapshots", frame)
    overall = frame[frame.segment_type == "all"]
    counted = ["open_deals", "pipeline_value", "stalled_deals", "aged_deals"]
    trend = overall.groupby("snapshot_date", as_index=False)[counted].sum()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "recent_month_ends": dg.MetadataValue.md(markdown_table(trend.tail(12))),
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def pipeline_waterfall(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.MaterializeResult:
    """Per month and quarter: start pipeline, created, pulled in, increased, decreased, pushed out, lost, won, end."""
    resolved = run_settings(context, settings)
    frame = pipeline_health.pipeline_waterfall(
        deals, deal_history, resolved.as_of, resolved.project.fiscal_year_start_month
    )
    warehouse.publish(context, resolved.as_of, "pipeline_waterfall", frame)
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(6)
    columns = ["period", "start_value", "created", "pulled_in", "increased", "decreased"]
    columns += ["pushed_out", "lost", "won", "end_value"]
    metadata = {
        "dagster/row_count": len(frame),
        "recent_quarters": dg.MetadataValue.md(markdown_table(recent[columns], floatfmt="{:,.0f}")),
    }
    if len(recent):
        latest = recent.iloc[-1]
        title = f"{latest['period']} pipeline: start to end (through {pd.Timestamp(latest['through_date']):%Y-%m-%d})"
        metadata["waterfall"] = dg.MetadataValue.md(image_markdown(waterfall_chart(latest, title), "pipeline waterfall"))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def stalled_deals(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    stage_durations: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Open deals stalled in their stage or open longer than most won deals, with the reason in words."""
    resolved = run_settings(context, settings)
    frame = pipeline_health.stalled_deals(
        deals, deal_history, stage_durations, resolved.as_of,
        keyed_at_close_hours=resolved.project.warnings.keyed_at_close_hours,
    )
    warehouse.publish(context, resolved.as_of, "stalled_deals", frame)
    largest = frame.sort_values("amount_reporting", ascending=False)
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "stalled": dg.MetadataValue.int(int(frame["is_stalled"].sum())),
            "aged": dg.MetadataValue.int(int(frame["is_aged"].sum())),
            "largest": dg.MetadataValue.md(
                markdown_table(largest[["deal_id", "owner", "stage", "amount_reporting", "reason"]], max_rows=15)
            ),
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def close_date_slips(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.MaterializeResult:
    """Every push of a deal's expected close date to a later date, with the days and value slipped."""
    resolved = run_settings(context, settings)
    frame = pipeline_health.close_date_slips(
        deals, deal_history, resolved.as_of, resolved.project.fiscal_year_start_month
    )
    warehouse.publish(context, resolved.as_of, "close_date_slips", frame)
    by_quarter = frame.groupby("quarter", as_index=False).agg(
        pushes=("deal_id", "size"), value_slipped=("amount_reporting", "sum"), days_slipped=("days_slipped", "sum")
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "by_quarter": dg.MetadataValue.md(markdown_table(by_quarter.tail(8), floatfmt="{:,.0f}")),
        },
    )
