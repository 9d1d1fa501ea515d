"""The coaching assets materialise for real (ingest, the funnel they read, then the six tables) into
SQLite, and what they write agrees with the export files read here with the csv module."""

import csv
import datetime as dt

import pandas as pd
import pytest

from assets.analytics import stage_conversion
from assets.coaching import ask_to_decision, deal_value_spread, pipeline_coverage, product_mix, rep_funnel, revenue_growth
from assets.ingest import crm_exports, crm_tables
from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse
from tests.e2e.conftest import materialize_graph, project_config

AS_OF = dt.date(2026, 11, 15)
TABLES = ["rep_funnel", "deal_value_spread", "product_mix", "revenue_growth", "ask_to_decision", "pipeline_coverage"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exports = tmp_path_factory.mktemp("exports")
    generate_sample(exports, n_deals=1200, seed=5, end_date=AS_OF)
    url = f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'w.sqlite'}"
    result = materialize_graph(
        exports, AS_OF, project_config(tmp_path_factory.mktemp("config")), url,
        assets=[crm_exports, crm_tables, stage_conversion, rep_funnel, deal_value_spread, product_mix, revenue_growth,
                ask_to_decision, pipeline_coverage],
    )
    return result, exports, url


def _won_in_quarter(exports) -> float:
    """Won amount closed from the start of AS_OF's quarter to AS_OF, from Opportunity.csv."""
    start = dt.date(AS_OF.year, 3 * ((AS_OF.month - 1) // 3) + 1, 1)
    total = 0.0
    with open(exports / "Opportunity.csv", newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            close = dt.date.fromisoformat(row["CloseDate"][:10])
            if row["IsWon"] == "1" and row["IsDeleted"] == "0" and start <= close <= AS_OF:
                total += float(row["Amount"])
    return total


def _quota(exports, quarter: str) -> float:
    with open(exports / "quotas.csv", newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            if (row["quarter"], row["segment_type"], row["segment"]) == (quarter, "all", "all"):
                return float(row["amount"])
    raise AssertionError(f"quotas.csv has no company quota for {quarter}")


def test_the_coaching_assets_write_their_tables(run):
    result, exports, url = run
    assert result.success
    warehouse = Warehouse(url)
    try:
        for table in TABLES:
            frame = warehouse.read(table, as_of=AS_OF)
            assert len(frame) > 0, table
            metadata = result.asset_materializations_for_node(table)[0].metadata
            assert metadata["dagster/row_count"].value == len(frame), table
        coverage = warehouse.read("pipeline_coverage", as_of=AS_OF)
        company = coverage[(coverage["quarter"] == "2026-Q4") & (coverage["segment_type"] == "all")].iloc[0]
        assert company["closed_won"] == pytest.approx(_won_in_quarter(exports), abs=0.01)
        assert company["quota"] == pytest.approx(_quota(exports, "2026-Q4"))
        assert company["remaining"] == pytest.approx(company["quota"] - company["closed_won"], abs=0.01)
        reps = warehouse.read("rep_funnel", as_of=AS_OF)
        # At most one weakest stage per rep and pipeline.
        assert reps[reps["is_weakest_stage"]].groupby(["pipeline", "owner"]).size().max() == 1
        spread = warehouse.read("deal_value_spread", as_of=AS_OF)
        total = spread[(spread["period_grain"] == "all") & (spread["segment_type"] == "all")].iloc[0]
        quarters = spread[(spread["period_grain"] == "quarter") & (spread["segment_type"] == "all")]
        assert quarters["won_count"].sum() == total["won_count"]
        assert pd.Series(quarters["won_amount"]).sum() == pytest.approx(total["won_amount"], abs=0.05)
    finally:
        warehouse.dispose()
