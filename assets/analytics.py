"""Pipeline analytics in the asset graph: `deals_at_as_of`, the deals as they stood at the end of the
night (built once, kept in the intermediate-data store), and one asset per analytics table of
`etl.analytics` (funnel, time in stage, velocity, coaching, pipeline health), each written to the
warehouse table of its name, per night.

The table assets are made from `ANALYTICS_TABLES` by `table_asset`: adding a table is one entry
there (docs/architecture.md, "Adding an analytics table").
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.analytics import coaching, funnel, health, kernel, velocity
from etl.charts import funnel_chart, image_markdown, markdown_table, velocity_chart, waterfall_chart
from etl.config import Settings
from etl.quotas import load_quotas
from etl.stages import StageCatalog


@dg.asset(partitions_def=NIGHTS, group_name="analytics", kinds={"pandas"})
def deals_at_as_of(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Every deal that existed at the end of the night, with its status, stage, amount and dates as they stood then."""
    resolved = run_settings(context, settings)
    frame = kernel.deals_at_as_of(deals, deal_history, resolved.as_of)
    by_status = frame.groupby("status", as_index=False).agg(
        deals=("deal_id", "size"), amount_reporting=("amount_reporting", "sum")
    )
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "by_status": dg.MetadataValue.md(markdown_table(by_status, floatfmt="{:,.0f}")),
        },
    )


def _no_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    return {}


@dataclass(frozen=True)
class AnalyticsTable:
    """One analytics table in the graph.

    `compute(run, **upstream)` returns the table's frame (`etl.analytics`) for the run's settings
    `run` (its as_of and project config); the names of its parameters after `run` are the upstream
    assets it reads. The asset writes the frame to the warehouse table `name` (`etl.tables`) and
    shows the row count and `preview(frame)` in the UI. `keep` also stores the frame in the
    intermediate-data store for the assets downstream that read it.
    """

    name: str
    description: str
    compute: Callable[..., pd.DataFrame]
    preview: Callable[[pd.DataFrame], dict[str, dg.MetadataValue]] = _no_preview
    keep: bool = False

    @property
    def inputs(self) -> list[str]:
        return list(inspect.signature(self.compute).parameters)[1:]


def table_asset(table: AnalyticsTable) -> dg.AssetsDefinition:
    """The asset of `table`: partitioned by night, its upstream assets passed as parameters."""

    @dg.asset(
        name=table.name,
        description=table.description,
        ins={name: dg.AssetIn(name) for name in table.inputs},
        partitions_def=NIGHTS,
        group_name="analytics",
        kinds={"pandas", "sql"},
    )
    def analytics_table(
        context: dg.AssetExecutionContext, settings: DealcastSettings, warehouse: WarehouseResource, **upstream
    ):
        resolved = run_settings(context, settings)
        frame = table.compute(resolved, **upstream)
        # Without `keep` the rows are read from the warehouse only: nothing is kept in the intermediate-data store.
        return publish_table(
            context, warehouse, resolved.as_of, table.name, frame, metadata=table.preview(frame), keep=table.keep
        )

    return analytics_table


# --------------------------------------------------------------------------------------------
# What each table computes from and shows
# --------------------------------------------------------------------------------------------


def _fiscal(run: Settings) -> int:
    return run.project.fiscal_year_start_month


def _md(frame: pd.DataFrame, **options) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame, **options))


def _stage_conversion_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    overall = frame[(frame.period_grain == "all") & (frame.segment_type == "all") & (frame.funnel_mode == "any_order")]
    columns = ["pipeline", "stage", "reached", "advanced", "won", "next_step_rate", "stage_to_won_rate", "unplaced", "rate_note"]
    return {
        "funnel": dg.MetadataValue.md(image_markdown(funnel_chart(frame), "funnel")),
        "overall": _md(overall[columns], max_rows=40),
    }


def _stage_durations(run: Settings, deals: pd.DataFrame, stage_events: pd.DataFrame, pipeline_stages: pd.DataFrame) -> pd.DataFrame:
    stages = StageCatalog.from_frame(pipeline_stages)
    thresholds, unmatched = run.project.analytics.stall_thresholds(stages)
    if unmatched:
        dg.get_dagster_logger().warning(
            f"[analytics] stall_days names no open stage of this CRM: {unmatched}; "
            "those stages keep their learned threshold"
        )
    return velocity.stage_durations(deals, stage_events, stages, run.as_of, thresholds)


def _stage_durations_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    overall = frame[frame.segment_type == "all"]
    columns = ["pipeline", "stage", "deals", "median_days", "p90_days", "stall_threshold_days", "threshold_source"]
    return {"overall": _md(overall[columns], max_rows=40)}


def _velocity_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(8)
    columns = ["period", "open_deals", "pipeline_value", "won_count", "won_amount", "win_rate", "cycle_days_median", "velocity_per_day"]
    return {
        "trend": dg.MetadataValue.md(image_markdown(velocity_chart(frame), "velocity trend")),
        "recent_quarters": _md(recent[columns]),
    }


def _rep_funnel_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    weakest = frame[frame.is_weakest_stage].sort_values("next_step_rate_vs_team")
    columns = ["pipeline", "owner", "team", "stage", "reached", "next_step_rate", "team_median_next_step_rate", "next_step_rate_vs_team"]
    return {"weakest_stages": _md(weakest[columns])}


def _deal_value_spread_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    overall = frame[(frame.period_grain == "all") & frame.segment_type.isin(["all", "team", "product"])]
    columns = ["segment_type", "segment", "won_count", "mean_value", "median_value", "p10_value", "p90_value", "cv"]
    return {"all_time": _md(overall[columns])}


def _product_mix_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    quarters = frame[frame.period_grain == "quarter"]
    recent = quarters[quarters.period.isin(sorted(quarters.period.unique())[-2:])]
    return {"recent_quarters": _md(recent[["period", "product", "created_count", "won_count", "won_amount", "won_share"]])}


def _revenue_growth_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(8)
    return {"recent_quarters": _md(recent[["period", "complete", "won_count", "won_amount", "previous_won_amount", "growth"]])}


def _ask_to_decision(
    run: Settings, deals: pd.DataFrame, deal_history: pd.DataFrame, pipeline_stages: pd.DataFrame, deals_at_as_of: pd.DataFrame
) -> pd.DataFrame:
    return coaching.ask_to_decision(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), run.as_of, _fiscal(run),
        run.project.analytics.ask_stages, at=deals_at_as_of,
    )


def _ask_to_decision_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    overall = frame[(frame.period_grain == "all") & (frame.segment_type.isin(["all", "pipeline"]))]
    # Each pipeline's row says which stages are its asks and how they were found.
    asks = overall[(overall.segment_type == "pipeline") & (overall.outcome == "all")]
    return {
        "ask_stages": _md(asks[["segment", "note"]].rename(columns={"segment": "pipeline"})),
        "overall": _md(overall[["segment_type", "segment", "outcome", "deals", "median_days", "mean_days", "p90_days", "note"]]),
    }


def _pipeline_coverage(
    run: Settings, deals: pd.DataFrame, deal_history: pd.DataFrame, stage_conversion: pd.DataFrame, deals_at_as_of: pd.DataFrame
) -> pd.DataFrame:
    quotas = load_quotas(run.quota_path())
    return coaching.pipeline_coverage(
        deals, deal_history, stage_conversion, quotas, run.as_of, _fiscal(run), at=deals_at_as_of
    )


def _pipeline_coverage_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    company = frame[frame.segment_type == "all"]
    columns = ["quarter", "quota", "closed_won", "remaining", "open_pipeline", "coverage", "stage_mix_win_rate", "pipeline_needed", "pipeline_gap"]
    return {"company": _md(company[columns])}


def _pipeline_snapshots_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    overall = frame[frame.segment_type == "all"]
    trend = overall.groupby("snapshot_date", as_index=False)[["open_deals", "pipeline_value", "stalled_deals", "aged_deals"]].sum()
    return {"recent_month_ends": _md(trend.tail(12))}


def _pipeline_waterfall_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    recent = frame[(frame.period_grain == "quarter") & (frame.segment_type == "all")].tail(6)
    columns = ["period", "start_value", "created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won", "end_value"]
    metadata = {"recent_quarters": _md(recent[columns], floatfmt="{:,.0f}")}
    if len(recent):
        latest = recent.iloc[-1]
        title = f"{latest['period']} pipeline: start to end (through {pd.Timestamp(latest['through_date']):%Y-%m-%d})"
        metadata["waterfall"] = dg.MetadataValue.md(image_markdown(waterfall_chart(latest, title), "pipeline waterfall"))
    return metadata


def _stalled_deals_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    largest = frame.sort_values("amount_reporting", ascending=False)
    return {
        "stalled": dg.MetadataValue.int(int(frame["is_stalled"].sum())),
        "aged": dg.MetadataValue.int(int(frame["is_aged"].sum())),
        "largest": _md(largest[["deal_id", "owner", "stage", "amount_reporting", "reason"]], max_rows=15),
    }


def _close_date_slips_preview(frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    by_quarter = frame.groupby("quarter", as_index=False).agg(
        pushes=("deal_id", "size"), value_slipped=("amount_reporting", "sum"), days_slipped=("days_slipped", "sum")
    )
    return {"by_quarter": _md(by_quarter.tail(8), floatfmt="{:,.0f}")}


# --------------------------------------------------------------------------------------------
# The analytics tables: one entry each
# --------------------------------------------------------------------------------------------

ANALYTICS_TABLES = [
    AnalyticsTable(
        "stage_conversion",
        "Stage-to-stage and stage-to-won conversion, any-order and in-order, by creation quarter and segment.",
        lambda run, deals, deal_history, pipeline_stages, deals_at_as_of: funnel.stage_conversion(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _stage_conversion_preview,
        keep=True,
    ),
    AnalyticsTable(
        "stage_durations",
        "Median, mean and p90 days in each stage, with the stall threshold per stage.",
        _stage_durations,
        _stage_durations_preview,
        keep=True,
    ),
    AnalyticsTable(
        "velocity",
        "Pipeline, wins, win rate, cycle length and sales velocity per month and quarter and segment.",
        lambda run, deals, deal_history, pipeline_stages, deal_scores, deals_at_as_of: velocity.velocity(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), run.as_of, _fiscal(run),
            model_scores=deal_scores[["deal_id", "win_probability"]],
            keyed_at_close_hours=run.project.warnings.keyed_at_close_hours, at=deals_at_as_of,
        ),
        _velocity_preview,
    ),
    AnalyticsTable(
        "rep_funnel",
        "Each rep's stage conversion against the median of the team's reps, with the rep's weakest stage flagged.",
        lambda run, deals, stage_conversion: coaching.rep_funnel(stage_conversion, deals, run.as_of),
        _rep_funnel_preview,
    ),
    AnalyticsTable(
        "deal_value_spread",
        "Count, mean, median, spread and percentiles of won deal values by close quarter and segment.",
        lambda run, deals, deal_history, deals_at_as_of: coaching.deal_value_spread(
            deals, deal_history, run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _deal_value_spread_preview,
    ),
    AnalyticsTable(
        "product_mix",
        "Deals created and won per product per month and quarter, with each product's share of won value.",
        lambda run, deals, deal_history, deals_at_as_of: coaching.product_mix(
            deals, deal_history, run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _product_mix_preview,
    ),
    AnalyticsTable(
        "revenue_growth",
        "Won revenue per month and quarter and its growth over the previous period, per segment.",
        lambda run, deals, deal_history, deals_at_as_of: coaching.revenue_growth(
            deals, deal_history, run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _revenue_growth_preview,
    ),
    AnalyticsTable(
        "ask_to_decision",
        "Days from entering a proposal or negotiation stage to won or lost, per close quarter, segment and outcome.",
        _ask_to_decision,
        _ask_to_decision_preview,
    ),
    AnalyticsTable(
        "pipeline_coverage",
        "Coverage of the quota still to win and the pipeline needed at the open pipeline's historical stage-mix win rate.",
        _pipeline_coverage,
        _pipeline_coverage_preview,
    ),
    AnalyticsTable(
        "pipeline_snapshots",
        "The open pipeline as it stood at every month end and at as_of, by pipeline, stage and segment.",
        lambda run, deals, deal_history, pipeline_stages, stage_durations, deals_at_as_of: health.pipeline_snapshots(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), run.as_of, stage_durations,
            keyed_at_close_hours=run.project.warnings.keyed_at_close_hours, at=deals_at_as_of,
        ),
        _pipeline_snapshots_preview,
    ),
    AnalyticsTable(
        "pipeline_waterfall",
        "Per month and quarter: start pipeline, created, pulled in, increased, decreased, pushed out, lost, won, end.",
        lambda run, deals, deal_history, deals_at_as_of: health.pipeline_waterfall(
            deals, deal_history, run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _pipeline_waterfall_preview,
    ),
    AnalyticsTable(
        "stalled_deals",
        "Open deals stalled in their stage or open longer than most won deals, with the reason in words.",
        lambda run, deals, deal_history, stage_durations, deals_at_as_of: health.stalled_deals(
            deals, deal_history, stage_durations, run.as_of,
            keyed_at_close_hours=run.project.warnings.keyed_at_close_hours, at=deals_at_as_of,
        ),
        _stalled_deals_preview,
        keep=True,
    ),
    AnalyticsTable(
        "close_date_slips",
        "Every push of a deal's expected close date to a later date, with the days and value slipped.",
        lambda run, deals, deal_history, deals_at_as_of: health.close_date_slips(
            deals, deal_history, run.as_of, _fiscal(run), at=deals_at_as_of
        ),
        _close_date_slips_preview,
    ),
]

TABLE_ASSETS = {table.name: table_asset(table) for table in ANALYTICS_TABLES}
# deals_at_as_of first: every table asset that reads it runs after it.
ANALYTICS_ASSETS = [deals_at_as_of, *TABLE_ASSETS.values()]
