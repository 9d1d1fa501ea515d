"""The analytics tables on real CRM data: the Maven Analytics CRM (../shared/data/maven_crm, 8,800
deals, no stage history) read through the shipped mapping (examples/maven_crm/mapping.toml), checked
against numbers computed here straight from the raw CSV files with pandas.

The mapping values every deal at its product's list price (products.csv sales_price; the file's
"GTXPro" is products.csv's "GTX Pro"), so won value is the sum of list prices of the won deals.
"""

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from etl.analytics import coaching, kernel
from etl.analytics.velocity import velocity as velocity_table
from etl.config import resolve_settings
from etl.ingest.crm_load import load_crm

ROOT = Path(__file__).resolve().parents[3]
MAVEN = ROOT.parent / "shared" / "data" / "maven_crm"
AS_OF = dt.date(2017, 12, 31)


@pytest.fixture(scope="module")
def maven(tmp_path_factory):
    config = tmp_path_factory.mktemp("maven") / "dealcast.toml"
    text = (ROOT / "dealcast.toml").read_text(encoding="utf-8")
    mapping = (ROOT / "examples" / "maven_crm" / "mapping.toml").as_posix()
    config.write_text(text.replace("[validation]", f'[sources]\nmappings = ["{mapping}"]\n\n[validation]', 1))
    load = load_crm(resolve_settings(exports_dir=MAVEN, as_of=AS_OF, config_file=config))
    assert load.publishable and len(load.deals) == 8800
    return load


@pytest.fixture(scope="module")
def raw_won() -> pd.DataFrame:
    """Won deals straight from the raw files: close quarter and list price."""
    pipeline = pd.read_csv(MAVEN / "sales_pipeline.csv")
    prices = pd.read_csv(MAVEN / "products.csv").set_index("product")["sales_price"]
    won = pipeline.loc[pipeline["deal_stage"] == "Won"].copy()
    won["product"] = won["product"].replace({"GTXPro": "GTX Pro"})
    won["price"] = won["product"].map(prices)
    assert won["price"].notna().all()
    close = pd.to_datetime(won["close_date"])
    won["quarter"] = close.dt.year.astype(str) + "-Q" + close.dt.quarter.astype(str)
    return won


@pytest.fixture(scope="module")
def velocity(maven):
    return velocity_table(maven.deals, maven.history, maven.stages, AS_OF)


def test_win_rate_is_4238_of_6711(velocity):
    quarters = velocity[(velocity["period_grain"] == "quarter") & (velocity["segment_type"] == "all")]
    won, lost = int(quarters["won_count"].sum()), int(quarters["lost_count"].sum())
    assert (won, lost) == (4238, 2473)
    assert won / (won + lost) == pytest.approx(4238 / 6711)
    assert round(100 * won / (won + lost), 1) == 63.2


def test_won_value_and_count_per_close_quarter_match_the_raw_file(velocity, raw_won):
    expected = raw_won.groupby("quarter").agg(won_count=("price", "size"), won_amount=("price", "sum"))
    quarters = velocity[(velocity["period_grain"] == "quarter") & (velocity["segment_type"] == "all")]
    table = quarters.set_index("period")[["won_count", "won_amount"]]
    assert set(expected.index) <= set(table.index)
    for quarter, row in table.iterrows():
        want = expected.loc[quarter] if quarter in expected.index else pd.Series({"won_count": 0, "won_amount": 0.0})
        assert row["won_count"] == want["won_count"], quarter
        assert row["won_amount"] == pytest.approx(want["won_amount"]), quarter
    assert table["won_amount"].sum() == pytest.approx(raw_won["price"].sum())


def test_coaching_tables_agree_with_the_raw_file(maven, raw_won):
    at = kernel.deals_at_as_of(maven.deals, maven.history, AS_OF)
    mix = coaching.product_mix(maven.deals, maven.history, AS_OF, at=at)
    by_product = raw_won.groupby(["quarter", "product"])["price"].agg(["size", "sum"])
    quarters = mix[(mix["period_grain"] == "quarter") & (mix["won_count"] > 0)].set_index(["period", "product"])
    assert sorted(quarters.index) == sorted(by_product.index)
    for key, row in by_product.iterrows():
        assert quarters.loc[key, "won_count"] == row["size"], key
        assert quarters.loc[key, "won_amount"] == pytest.approx(row["sum"]), key

    spread = coaching.deal_value_spread(maven.deals, maven.history, AS_OF, at=at)
    company = spread[(spread["period_grain"] == "all") & (spread["segment_type"] == "all")].iloc[0]
    assert company["won_count"] == len(raw_won)
    assert company["mean_value"] == pytest.approx(raw_won["price"].mean())
    assert company["median_value"] == pytest.approx(raw_won["price"].median())
    assert company["std_value"] == pytest.approx(raw_won["price"].std())
    per_agent = raw_won.groupby("sales_agent")["price"].agg(["mean", "std"])
    owners = spread[(spread["period_grain"] == "all") & (spread["segment_type"] == "owner")].set_index("segment")
    assert owners["mean_value"].to_dict() == pytest.approx(per_agent["mean"].to_dict())
    assert owners["std_value"].to_dict() == pytest.approx(per_agent["std"].to_dict())

    growth = coaching.revenue_growth(maven.deals, maven.history, AS_OF, at=at)
    totals = growth[(growth["period_grain"] == "quarter") & (growth["segment_type"] == "all")].set_index("period")
    per_quarter = raw_won.groupby("quarter")["price"].sum()
    for quarter, amount in per_quarter.items():
        assert totals.loc[quarter, "won_amount"] == pytest.approx(amount)
    # 2017-Q2 over 2017-Q1, from the raw file.
    assert totals.loc["2017-Q2", "growth"] == pytest.approx(per_quarter["2017-Q2"] / per_quarter["2017-Q1"] - 1)
    # as_of 2017-12-31 is the last day of 2017-Q4: every period is complete.
    assert totals["complete"].all()
