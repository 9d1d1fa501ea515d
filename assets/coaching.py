"""People, products and quotas: each rep's funnel against the team, deal value spread, product mix,
revenue growth, time from ask to decision and pipeline coverage against quota, written per as_of."""


import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.analytics import coaching
from etl.quotas import load_quotas
from etl.charts import markdown_table
from etl.stages import StageCatalog


def _output(frame: pd.DataFrame, previews: dict[str, pd.DataFrame]) -> dg.MaterializeResult:
    """The asset's metadata; its rows are in the warehouse table of its name, which is where they
    are read (no later step reads them, so nothing is kept in the intermediate-data store)."""
    metadata = {"dagster/row_count": len(frame)}
    metadata.update({name: dg.MetadataValue.md(markdown_table(preview, max_rows=20)) for name, preview in previews.items()})
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def rep_funnel(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    stage_conversion: pd.DataFrame,
) -> dg.MaterializeResult:
    """Each rep's stage conversion against the median of the team's reps, with the rep's weakest stage flagged."""
    resolved = run_settings(context, settings)
    frame = coaching.rep_funnel(stage_conversion, deals, resolved.as_of)
    warehouse.publish(context, resolved.as_of, "rep_funnel", frame)
    weakest = frame[frame.is_weakest_stage].sort_values("next_step_rate_vs_team")
    return _output(
        frame,
        {
            "weakest_stages": weakest[
                ["pipeline", "owner", "team", "stage", "reached", "next_step_rate", "team_median_next_step_rate", "next_step_rate_vs_team"]
            ]
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def deal_value_spread(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.MaterializeResult:
    """Count, mean, median, spread and percentiles of won deal values by close quarter and segment."""
    resolved = run_settings(context, settings)
    frame = coaching.deal_value_spread(deals, deal_history, resolved.as_of, resolved.project.fiscal_year_start_month)
    warehouse.publish(context, resolved.as_of, "deal_value_spread", frame)
    overall = frame[(frame.period_grain == "all") & frame.segment_type.isin(["all", "team", "product"])]
    return _output(
        frame,
        {"all_time": overall[["segment_type", "segment", "won_count", "mean_value", "median_value", "p10_value", "p90_value", "cv"]]},
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def product_mix(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.MaterializeResult:
    """Deals created and won per product per month and quarter, with each product's share of won value."""
    resolved = run_settings(context, settings)
    frame = coaching.product_mix(deals, deal_history, resolved.as_of, resolved.project.fiscal_year_start_month)
    warehouse.publish(context, resolved.as_of, "product_mix", frame)
    quarters = frame[frame.period_grain == "quarter"]
    recent = quarters[quarters.period.isin(sorted(quarters.period.unique())[-2:])]
    return _output(
        frame,
        {"recent_quarters": recent[["period", "product", "created_count", "won_count", "won_amount", "won_share"]]},
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def revenue_growth(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.MaterializeResult:
    """Won revenue per month and quarter and its growth over the previous period, per segment."""
    resolved = run_settings(context, settings)
    frame = coaching.revenue_growth(deals, deal_history, resolved.as_of, resolved.project.fiscal_year_start_month)
    warehouse.publish(context, resolved.as_of, "revenue_growth", frame)
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(8)
    return _output(
        frame, {"recent_quarters": recent[["period", "complete", "won_count", "won_amount", "previous_won_amount", "growth"]]}
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def ask_to_decision(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> dg.MaterializeResult:
    """Days from entering a proposal or negotiation stage to won or lost, per close quarter, segment and outcome."""
    resolved = run_settings(context, settings)
    stages = StageCatalog.from_frame(pipeline_stages)
    configured = resolved.project.analytics.ask_stages
    frame = coaching.ask_to_decision(
        deals, deal_history, stages, resolved.as_of, resolved.project.fiscal_year_start_month, configured
    )
    warehouse.publish(context, resolved.as_of, "ask_to_decision", frame)
    asks = pd.DataFrame(
        [
            (pipeline, ", ".join(names), coaching.ask_stage_notes(stages, configured)[pipeline])
            for pipeline, names in coaching.ask_stages(stages, configured).items()
        ],
        columns=["pipeline", "ask_stages", "note"],
    )
    overall = frame[(frame.period_grain == "all") & (frame.segment_type.isin(["all", "pipeline"]))]
    return _output(
        frame,
        {
            "ask_stages": asks,
            "overall": overall[["segment_type", "segment", "outcome", "deals", "median_days", "mean_days", "p90_days", "note"]],
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas", "sql"})
def pipeline_coverage(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    stage_conversion: pd.DataFrame,
) -> dg.MaterializeResult:
    """Coverage of the quota still to win and the pipeline needed at the open pipeline's historical stage-mix win rate."""
    resolved = run_settings(context, settings)
    quotas = load_quotas(resolved.quota_path())
    frame = coaching.pipeline_coverage(
        deals, deal_history, stage_conversion, quotas, resolved.as_of, resolved.project.fiscal_year_start_month
    )
    warehouse.publish(context, resolved.as_of, "pipeline_coverage", frame)
    company = frame[frame.segment_type == "all"]
    return _output(
        frame,
        {
            "company": company[
                ["quarter", "quota", "closed_won", "remaining", "open_pipeline", "coverage", "stage_mix_win_rate", "pipeline_needed", "pipeline_gap"]
            ]
        },
    )
