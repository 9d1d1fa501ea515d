"""The whole graph on a young messy org (five months of data: no quarter can be backtested yet),
into PostgreSQL: the backtest says why in a status row, the forecast carries its not-yet-backtested
flag, `dealcast summary` repeats the reason, and the warehouse's forecast tables reconcile with
each other, with pipeline_coverage and with the waterfall."""

import datetime as dt

import pandas as pd
import pytest

from etl.cli import summary_lines
from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import AS_OF, materialize_graph, project_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Five months of simulated sales before 2026-11-15; the export's first deal (many early wins are
# keyed in only at close) is created in the second half of July. The first full quarter of data is
# then 2026-Q4, so 2027-Q1 is the first quarter with a full quarter of history before it.
YEARS = 5 / 12


def test_a_young_org_is_not_yet_backtested_and_its_forecast_reconciles(tmp_path, pg_url, pg_schema):
    exports = tmp_path / "exports"
    generate_sample(exports, seed=3, end_date=AS_OF, years=YEARS, profile="messy")
    config = project_config(tmp_path)
    result = materialize_graph(exports, AS_OF, config, pg_url, pg_schema)
    assert result.success
    warehouse = Warehouse(pg_url, schema=pg_schema)
    try:
        names = ("deals", "forecast_backtest", "forecast_quarterly", "forecast_contributions", "pipeline_coverage",
                 "pipeline_waterfall", "deal_scores")
        tables = {name: warehouse.read(name, as_of=None if name == "deals" else AS_OF) for name in names}
    finally:
        warehouse.dispose()
    first_created = pd.to_datetime(tables["deals"]["created_at"]).min()
    assert dt.date(2026, 7, 2) <= first_created.date() < dt.date(2026, 10, 1)

    backtest = tables["forecast_backtest"]
    assert len(backtest) == 1
    status = backtest.iloc[0]
    assert status["status"] == "not_backtested" and status["quarter"] == "2027-Q1"
    assert f"data start on {first_created:%Y-%m-%d}" in status["status_reason"]
    assert "2027-Q1 (2027-01-01 to 2027-03-31), not finished by as_of 2026-11-15" in status["status_reason"]
    forecast = tables["forecast_quarterly"]
    assert forecast["not_yet_backtested"].all()

    # dealcast summary says why.
    warehouse = Warehouse(pg_url, schema=pg_schema)
    try:
        lines = summary_lines(warehouse, "USD", 1, AS_OF)
    finally:
        warehouse.dispose()
    assert f"  forecast not yet backtested: {status['status_reason']}" in lines

    # One open pipeline for the quarter: forecast = coverage = waterfall, overdue deals included.
    fc = forecast[(forecast["quarter"] == "2026-Q4") & (forecast["segment_type"] == "all")].iloc[0]
    coverage = tables["pipeline_coverage"]
    cov = coverage[(coverage["quarter"] == "2026-Q4") & (coverage["segment_type"] == "all")].iloc[0]
    waterfall = tables["pipeline_waterfall"]
    wf = waterfall[(waterfall["period_grain"] == "quarter") & (waterfall["period"] == "2026-Q4")
                   & (waterfall["segment_type"] == "all")].iloc[0]
    assert fc["open_pipeline"] == pytest.approx(cov["open_pipeline"], abs=0.01) == pytest.approx(wf["end_value"], abs=0.01)
    assert fc["open_deals"] == cov["open_deals"] == wf["deals_end"]
    assert fc["overdue_deals"] == cov["overdue_deals"] > 0

    # Per-deal contributions add up to expected, segment by segment; and they use deal_scores.
    contributions = tables["forecast_contributions"]
    for r in forecast.itertuples():
        part = contributions[contributions["quarter"] == r.quarter]
        if r.segment_type != "all":
            part = part[part[r.segment_type].fillna("(unknown)") == r.segment]
        total = r.closed_won_to_date + part["contribution"].sum() + r.new_deals_expected
        assert total == pytest.approx(r.expected, rel=1e-3, abs=0.05), (r.quarter, r.segment_type, r.segment)
    scores = tables["deal_scores"].set_index("deal_id")["win_probability"]
    current = contributions[contributions["quarter"] == "2026-Q4"].set_index("deal_id")
    assert current["win_probability"].to_numpy() == pytest.approx(scores.loc[current.index].to_numpy())
