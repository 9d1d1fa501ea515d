"""The forecast backtest: past quarters forecast again with only what was known then, against the actual."""


import dagster as dg
import pandas as pd

from assets.execution import HEAVY_STEP_TAGS, step_thread_limit
from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.quotas import load_quotas
from etl.charts import fan_chart, image_markdown, markdown_table
from etl.stages import StageCatalog
from models.backtest import backtest_fan, backtest_summary, backtested_rows, quota_of, run_backtest


@dg.asset(partitions_def=NIGHTS, group_name="forecasting", kinds={"pandas", "sql"}, op_tags=HEAVY_STEP_TAGS["backtest"])
def forecast_backtest(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> dg.MaterializeResult:
    """How accurate the forecast was: recent past quarters forecast again at their start, week 4 and week 8 with only what was known then, against the actual and two baselines."""
    resolved = run_settings(context, settings)
    project = resolved.project
    # Past quarters computed on earlier nights (any machine): reused while their key holds. Earlier nights'
    # results live only in the warehouse, so they are read there, not taken as an input of tonight's graph.
    cache = warehouse.warehouse.read("forecast_backtest_cache")
    with step_thread_limit(context) as threads:
        run = run_backtest(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
            project.model, project.forecast, project.fiscal_year_start_month,
            cache=cache, new_quarters=project.forecast.backtest_new_quarters, workers=threads,
        )
    frame = run.frame
    context.log.info(
        f"forecast_backtest: quarters reused {list(run.reused)}, computed {list(run.computed)}, "
        f"pending {list(run.pending)} (at most {project.forecast.backtest_new_quarters} computed per night)"
    )
    backtested = backtested_rows(frame)
    metadata = {
        "quarters": backtested["quarter"].nunique(),
        "quarters_reused": len(run.reused),
        "quarters_computed": len(run.computed),
        "quarters_pending": len(run.pending),
        "computed": ", ".join(run.computed) or "none",
    }
    if run.pending:
        metadata["pending"] = (
            f"{', '.join(run.pending)}: not backtested yet; at most {project.forecast.backtest_new_quarters} "
            "past quarters are computed per night ([forecast] backtest_new_quarters), the rest on the nights after"
        )
    if backtested.empty:
        reason = str(frame["status_reason"].iloc[0]) if len(frame) else "no rows"
        context.log.warning(f"forecast_backtest: nothing backtested: {reason}")
        metadata["status"] = "not_backtested"
        metadata["why"] = reason
    else:
        metadata["status"] = "backtested"
        metadata["accuracy"] = dg.MetadataValue.md(
            markdown_table(backtest_summary(backtested, by=("method", "checkpoint")), floatfmt="{:,.3f}")
        )
        metadata["accuracy_company_total"] = dg.MetadataValue.md(
            markdown_table(
                backtest_summary(backtested[backtested["segment_type"] == "all"], by=("method", "checkpoint")),
                floatfmt="{:,.3f}",
            )
        )
        latest = backtested["quarter"].max()
        points = backtest_fan(backtested, latest)
        chart = fan_chart(
            points, f"{latest}: forecast at start, week 4 and week 8 (backtest)",
            quota=quota_of(load_quotas(resolved.quota_path()), latest), actual=float(points["actual"].iloc[0]),
        )
        metadata["fan_chart"] = dg.MetadataValue.md(image_markdown(chart, f"{latest} backtest fan chart"))
    # The night's rows and the past quarters computed for them land together (one transaction).
    return publish_table(
        context, warehouse, resolved.as_of, "forecast_backtest", frame,
        together={"forecast_backtest_cache": run.cache_rows}, metadata=metadata,
    )  # fmt: skip
