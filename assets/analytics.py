"""Pipeline analytics: the funnel, time in stage and sales velocity, per segment, written per as_of."""


import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.analytics import funnel, velocity as velocity_tables
from etl.charts import funnel_chart, image_markdown, markdown_table, velocity_chart
from etl.stages import StageCatalog


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def stage_conversion(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Stage-to-stage and stage-to-won conversion, any-order and in-order, by creation quarter and segment."""
    resolved = run_settings(context, settings)
    frame = funnel.stage_conversion(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
        resolved.project.fiscal_year_start_month,
    )
    warehouse.publish(context, resolved.as_of, "stage_conversion", frame)
    overall = frame[(frame.period_grain == "all") & (frame.segment_type == "all") & (frame.funnel_mode == "any_order")]
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "funnel": dg.MetadataValue.md(image_markdown(funnel_chart(frame), "funnel")),
            "overall": dg.MetadataValue.md(
                markdown_table(overall[["pipeline", "stage", "reached", "advanced", "won", "next_step_rate", "stage_to_won_rate", "unplaced", "rate_note"]], max_rows=40)
            ),
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def stage_durations(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    stage_events: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Median, mean and p90 days in each stage, with the stall threshold per stage."""
    resolved = run_settings(context, settings)
    stages = StageCatalog.from_frame(pipeline_stages)
    thresholds, unmatched = resolved.project.analytics.stall_thresholds(stages)
    if unmatched:
        context.log.warning(
            f"[analytics] stall_days names no open stage of this CRM: {unmatched}; "
            "those stages keep their learned threshold"
        )
    frame = velocity_tables.stage_durations(deals, stage_events, stages, resolved.as_of, thresholds)
    warehouse.publish(context, resolved.as_of, "stage_durations", frame)
    overall = frame[frame.segment_type == "all"]
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "overall": dg.MetadataValue.md(
                markdown_table(overall[["pipeline", "stage", "deals", "median_days", "p90_days", "stall_threshold_days", "threshold_source"]], max_rows=40)
            ),
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def velocity(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
    deal_scores: pd.DataFrame,
) -> dg.MaterializeResult:
    """Pipeline, wins, win rate, cycle length and sales velocity per month and quarter and segment."""
    resolved = run_settings(context, settings)
    frame = velocity_tables.velocity(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
        resolved.project.fiscal_year_start_month, model_scores=deal_scores[["deal_id", "win_probability"]],
        keyed_at_close_hours=resolved.project.warnings.keyed_at_close_hours,
    )
    warehouse.publish(context, resolved.as_of, "velocity", frame)
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(8)
    # Read from the warehouse only: nothing is kept in the intermediate-data store.
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "trend": dg.MetadataValue.md(image_markdown(velocity_chart(frame), "velocity trend")),
            "recent_quarters": dg.MetadataValue.md(
                markdown_table(recent[["period", "open_deals", "pipeline_value", "won_count", "won_amount", "win_rate", "cycle_days_median", "velocity_per_day"]])
            ),
        },
    )
