"""The analytics assets materialise for real (ingest, the deals at as_of, the funnel the coaching
tables read, then the six coaching tables) into SQLite, and what they write agrees with the export
files read here with the csv module. deals_at_as_of is also called as a function on hand-built
frames, and the table assets are checked against the warehouse contract."""

import csv
import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from assets.analytics import ANALYTICS_TABLES, TABLE_ASSETS, AnalyticsTable, deals_at_as_of, table_asset
from assets.ingest import crm_exports, crm_tables
from assets.partitions import NIGHTS
from assets.resources import DealcastSettings
from etl.tables import TABLES as CONTRACT
from etl.warehouse import Warehouse
from sample_crm.generate import generate_sample
from tests.e2e.conftest import materialize_graph, project_config, won_in_quarter_from_export

AS_OF = dt.date(2026, 11, 15)
TABLES = ["rep_funnel", "deal_value_spread", "product_mix", "revenue_growth", "ask_to_decision", "pipeline_coverage"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exports = tmp_path_factory.mktemp("exports")
    generate_sample(exports, n_deals=1200, seed=5, end_date=AS_OF)
    url = f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'w.sqlite'}"
    result = materialize_graph(
        exports, AS_OF, project_config(tmp_path_factory.mktemp("config")), url,
        assets=[crm_exports, crm_tables, deals_at_as_of, *(TABLE_ASSETS[name] for name in ["stage_conversion", *TABLES])],
    )
    return result, exports, url


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
        assert company["closed_won"] == pytest.approx(won_in_quarter_from_export(exports, AS_OF), abs=0.01)
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


# ------------------------------------------------------------------------------------------------
# deals_at_as_of and the table factory, without a run


def test_deals_at_as_of_called_as_a_function_keeps_the_existing_deals_of_the_night():
    # The kernel's hand-built CRM (tests/etl/analytics/test_kernel.py): at the end of 2024-03-01, A is
    # open at 150 and B lost at 200; C did not exist yet.
    from tests.etl.analytics.test_kernel import _crm

    deals, history = _crm()
    context = dg.build_asset_context(partition_key="2024-03-01", resources={"settings": DealcastSettings()})
    output = deals_at_as_of(context, deals=deals, deal_history=history)
    assert list(output.value["deal_id"]) == ["A", "B"]
    assert list(output.value["status"]) == ["open", "lost"]
    assert output.metadata["dagster/row_count"].value == 2
    by_status = output.metadata["by_status"].value
    assert "| lost | 1 | 200 |" in by_status and "| open | 1 | 150 |" in by_status


def test_every_analytics_table_is_a_contract_table_read_from_the_shared_deals_at_as_of():
    assert [table.name for table in ANALYTICS_TABLES] == list(TABLE_ASSETS)
    for table in ANALYTICS_TABLES:
        assert table.name in CONTRACT, f"{table.name} is not a warehouse table (etl/tables.py)"
        asset = TABLE_ASSETS[table.name]
        upstream = {name: key.to_user_string() for name, key in asset.keys_by_input_name.items()}
        assert upstream == {name: name for name in table.inputs}
        # A table that reads the deal history reads the deals at as_of too: none rebuilds them.
        if "deal_history" in upstream:
            assert "deals_at_as_of" in upstream, f"{table.name} rebuilds the deals at as_of"


def test_a_new_table_is_one_entry():
    entry = AnalyticsTable(
        "product_mix",
        "Deals created and won per product per month and quarter, with each product's share of won value.",
        lambda run, deals, deal_history, deals_at_as_of: pd.DataFrame(),
    )
    asset = table_asset(entry)
    assert asset.key == dg.AssetKey("product_mix")
    assert [key.to_user_string() for key in asset.keys_by_input_name.values()] == ["deals", "deal_history", "deals_at_as_of"]
    spec = next(iter(asset.specs))
    assert spec.group_name == "analytics" and spec.partitions_def == NIGHTS
    assert spec.description == entry.description
