"""The quarterly revenue forecast with P10/P50/P90 ranges, quota, gap and coverage, appended per as_of."""


import dagster as dg
import pandas as pd

from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.quotas import load_quotas
from etl.report import markdown_table
from etl.stages import StageCatalog
from models.forecast import forecast_quarterly as simulate_forecast
from models.scoring import ScorerResult
from models.timing import CloseTiming


@dg.asset(group_name="forecasting", kinds={"pandas", "sql"})
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
) -> dg.Output[pd.DataFrame]:
    """Revenue for the current and next quarter by segment: closed won to date, expected, P10/P50/P90, quota, gap and coverage."""
    resolved = run_settings(context, settings)
    forecast_cfg = resolved.project.forecast
    quotas = load_quotas(resolved.quota_path())
    frame = simulate_forecast(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
        scores=deal_scores[["deal_id", "win_probability"]], timing=close_timing, quotas=quotas,
        fiscal_year_start_month=resolved.project.fiscal_year_start_month,
        draws=forecast_cfg.draws, seed=forecast_cfg.seed, model_version=deal_scoring_model.scorer.version,
    )
    warehouse.publish(context, resolved.as_of, "forecast_quarterly", frame)
    totals = frame[frame.segment_type == "all"]
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "company": dg.MetadataValue.md(
                markdown_table(totals[["quarter", "closed_won_to_date", "p10", "p50", "p90", "quota", "gap", "coverage"]])
            ),
        },
    )
