"""The quarterly revenue forecast with P10/P50/P90 ranges, quota, gap and coverage, and each open
deal's contribution to it (`forecast_contributions`), appended per as_of."""


import dagster as dg
import pandas as pd

from assets.checks import FORECAST_CHECK_SPEC, forecast_check_result
from assets.execution import step_thread_limit
from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.periods import quarter_label
from etl.quotas import load_quotas
from etl.charts import fan_chart, image_markdown, markdown_table
from etl.stages import StageCatalog
from models.backtest import forecast_fan, not_backtested_reason
from models.forecast import build_forecast
from models.revenue_calibration import RevenueCalibration
from models.scoring import ScorerResult
from models.timing import CloseTiming


@dg.asset(partitions_def=NIGHTS, group_name="forecasting", kinds={"pandas", "sql"}, check_specs=[FORECAST_CHECK_SPEC])
def forecast_quarterly(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
    deal_scores: pd.DataFrame,
    close_timing: CloseTiming,
    deal_scoring_model: ScorerResult,
) -> dg.MaterializeResult:
    """Revenue for the current and next quarter by segment: closed won to date, expected, P10/P50/P90, quota, gap and coverage."""
    resolved = run_settings(context, settings)
    forecast_cfg = resolved.project.forecast
    fiscal_start = resolved.project.fiscal_year_start_month
    quotas = load_quotas(resolved.quota_path())
    stages = StageCatalog.from_frame(pipeline_stages)
    # Learnt on the open deals at tonight's scorer's held-out dates; each deal's factor is a column
    # of forecast_contributions.
    with step_thread_limit(context) as threads:
        calibration = RevenueCalibration.fit(
            deal_scoring_model, deals, deal_history, stages, close_timing, resolved.as_of, fiscal_start
        )
        forecast = build_forecast(
            deals, deal_history, stages, resolved.as_of,
            scores=deal_scores, timing=close_timing, quotas=quotas,
            fiscal_year_start_month=fiscal_start,
            draws=forecast_cfg.draws, seed=forecast_cfg.seed,
            # The model whose scores fed the forecast (an earlier run's when tonight's did not qualify).
            model_version=deal_scores["model_version"].iloc[0] if len(deal_scores) else deal_scoring_model.scorer.version,
            outlier_factor=resolved.project.warnings.outlier_factor,
            revenue_calibration=calibration,
            label_horizon_days=deal_scoring_model.label_horizon_days,
            workers=threads,
        )
    frame = forecast.quarterly
    totals = frame[frame.segment_type == "all"]
    quarter = quarter_label(resolved.as_of, fiscal_start)
    # Every nightly forecast of this quarter up to this night (a backfilled night does not show later
    # nights): earlier nights' published rows, which only the warehouse holds, so they are read there
    # rather than taken as an input of tonight's graph, then tonight's own rows.
    written = warehouse.warehouse.read("forecast_quarterly")
    earlier = written[written["as_of"] < pd.Timestamp(resolved.as_of)]
    tonight = frame.assign(as_of=pd.Timestamp(resolved.as_of))
    trail = forecast_fan(pd.concat([earlier, tonight], ignore_index=True), quarter, fiscal_start)
    chart = fan_chart(trail, f"{quarter}: forecast by night (P10-P90, P50) against quota", quota=trail["quota"].iloc[-1])
    metadata = {
        "company": dg.MetadataValue.md(
            markdown_table(totals[["quarter", "closed_won_to_date", "p10", "p50", "p90", "quota", "gap", "coverage"]])
        ),
        "reconciliation": dg.MetadataValue.md(
            markdown_table(
                totals[
                    ["quarter", "closed_won_to_date", "pipeline_expected", "overdue_expected", "other_open_expected",
                     "new_deals_expected", "new_deals_trend", "new_deals_imported",
                     "new_deals_keying_lag", "revenue_calibration", "expected", "open_pipeline", "overdue_pipeline"]
                ]
            )
        ),
        "outliers": dg.MetadataValue.md(
            markdown_table(totals[["quarter", "outlier_deals", "outlier_pipeline", "p90", "p90_without_outliers"]])
        ),
        "revenue_calibration": dg.MetadataValue.md(markdown_table(calibration.table())),
        "not_yet_backtested": bool(frame["not_yet_backtested"].any()),
        "fan_chart": dg.MetadataValue.md(image_markdown(chart, f"{quarter} fan chart")),
    }
    if frame["not_yet_backtested"].any():
        _, reason = not_backtested_reason(deals, resolved.as_of, fiscal_start, forecast_cfg.backtest_quarters)
        metadata["backtest"] = f"not yet backtested: {reason}"
        context.log.warning(f"forecast_quarterly: not yet backtested: {reason}")
    # The forecast and the contributions it adds up from land together (one transaction).
    return publish_table(
        context, warehouse, resolved.as_of, "forecast_quarterly", frame,
        together={"forecast_contributions": forecast.contributions},
        metadata=metadata, check_results=[forecast_check_result(frame)],
    )  # fmt: skip
