"""The Dagster entry point: `dagster dev -m assets.definitions`, `dg dev`, or, for one night,
`dagster asset materialize -m assets.definitions --select '*' --partition YYYY-MM-DD`."""


import dagster as dg

from assets.analytics import ANALYTICS_ASSETS
from assets.automation import night_job, nightly_schedule
from assets.backtest import forecast_backtest
from assets.data_quality import data_quality_warnings
from assets.execution import executor_from_env
from assets.forecasting import forecast_quarterly
from assets.ingest import crm_exports, crm_tables
from assets.publication import published_night_asset
from assets.resources import DealcastSettings, WarehouseResource
from assets.scoring import close_timing, deal_scores, deal_scoring_model, model_runs
from assets.sensors import exports_sensor
from assets.store import DealcastStore

ALL_ASSETS = [
    crm_exports,
    crm_tables,
    *ANALYTICS_ASSETS,
    data_quality_warnings,
    deal_scoring_model,
    close_timing,
    deal_scores,
    model_runs,
    forecast_quarterly,
    forecast_backtest,
]
# Last: the night's manifest, after every asset above (the latest_* views show published nights).
ALL_ASSETS.append(published_night_asset(ALL_ASSETS))

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[night_job],
    schedules=[nightly_schedule()],
    sensors=[exports_sensor()],
    resources={"settings": DealcastSettings(), "warehouse": WarehouseResource(), "io_manager": DealcastStore()},
    # Unset DEALCAST_EXECUTOR: Dagster's multiprocess executor on this machine (see assets/execution.py).
    executor=executor_from_env(),
)
