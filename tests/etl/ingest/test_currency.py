"""Amounts in the reporting currency from a dated rates file: the rates file itself, the rate a
deal takes, and the conversion applied to every export by `etl.ingest.exports.read_exports`.

The exports below are Salesforce files written by hand (config tests/fixtures/salesforce/dealcast.toml:
pipeline "New Business", reporting currency USD). The rates file (USD per unit):

  date        currency  rate
  2024-03-01  EUR       1.05
  2024-03-14  EUR       1.08
  2024-06-01  EUR       1.10
  2024-01-01  GBP       1.25

Deals, as_of 2024-06-15, worked out by hand:
  006A  1,000 EUR  won  2024-03-14      rate 1.08 (that day)            -> 1,080 USD
        history 900 EUR then 1,000 EUR, with the deal's rate 1.08      -> 972, 1,080 USD
  006B  2,000 EUR  open                 as_of rate: 06-01's 1.10        -> 2,200 USD
  006C    500 GBP  lost 2024-02-10      latest GBP rate 1.25            ->   625 USD
  006D    700 USD  open                 no conversion                   ->   700 USD
  006E  100,000 JPY open                no JPY rate at all              -> quarantined unknown_currency
        (its history row goes with it: deal_quarantined)
  006F    300 EUR  won  2024-02-01      before the first EUR rate       -> quarantined no_rate_for_date
  006G  1,000 EUR  won  2024-07-01      closed after as_of: as_of rate  -> 1,100 USD
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.ingest.crm_load import load_crm
from etl.config import Settings, load_project_config
from etl.ingest.currency import (
    NO_RATE_FOR_DATE,
    UNKNOWN_CURRENCY,
    ExchangeRatesError,
    convert_to_reporting,
    find_rates_file,
    load_rates,
    rate_dates,
)
from etl.ingest.exports import read_exports
from etl.ingest.readers.salesforce import read_salesforce
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "salesforce"
AS_OF = dt.date(2024, 6, 15)
T = pd.Timestamp

RATES = "date,currency,rate\n2024-03-01,EUR,1.05\n2024-03-14,EUR,1.08\n2024-06-01,EUR,1.10\n2024-01-01,GBP,1.25\n"

OPP_HEADER = [
    "Id", "Name", "StageName", "StageSortOrder", "Amount", "CloseDate", "CreatedDate", "IsClosed", "IsWon",
    "CurrencyIsoCode", "Pipeline__c",
]  # fmt: skip
OPPORTUNITIES = [
    ["006A", "Lyon", "Closed Won", "5", "1000", "2024-03-14", "2024-01-10 09:00:00", "1", "1", "EUR", "New Business"],
    ["006B", "Bonn", "Qualification", "2", "2000", "2024-09-30", "2024-04-02 09:00:00", "0", "0", "eur", "New Business"],
    ["006C", "Leeds", "Closed Lost", "6", "500", "2024-02-10", "2024-01-15 09:00:00", "1", "0", "GBP", "New Business"],
    ["006D", "Austin", "Prospecting", "1", "700", "2024-08-31", "2024-05-01 09:00:00", "0", "0", "USD", "New Business"],
    ["006E", "Osaka", "Prospecting", "1", "100000", "2024-08-31", "2024-05-02 09:00:00", "0", "0", "JPY", "New Business"],
    ["006F", "Lille", "Closed Won", "5", "300", "2024-02-01", "2024-01-03 09:00:00", "1", "1", "EUR", "New Business"],
    ["006G", "Gent", "Closed Won", "5", "1000", "2024-07-01", "2024-02-01 09:00:00", "1", "1", "EUR", "New Business"],
]
HISTORY_HEADER = ["Id", "OpportunityId", "CreatedDate", "StageName", "Amount", "CloseDate", "Probability"]
HISTORY = [
    ["008A1", "006A", "2024-01-10 09:00:00", "Prospecting", "900", "2024-03-31", "10"],
    ["008A2", "006A", "2024-03-14 00:00:00", "Closed Won", "1000", "2024-03-14", "100"],
    ["008E1", "006E", "2024-05-02 09:00:00", "Prospecting", "100000", "2024-08-31", "10"],
]


def _csv(rows: list[list[str]]) -> str:
    return "".join(",".join('"' + v + '"' for v in row) + "\n" for row in rows)


def _project(rates_file: str | None):
    return dataclasses.replace(load_project_config(FIXTURES / "dealcast.toml"), rates_file=rates_file)


@pytest.fixture
def exports(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "Opportunity.csv").write_text(_csv([OPP_HEADER, *OPPORTUNITIES]))
    (folder / "OpportunityHistory.csv").write_text(_csv([HISTORY_HEADER, *HISTORY]))
    (folder / "rates.csv").write_text(RATES)
    return folder


def _by_id(frame: pd.DataFrame, column: str) -> dict[str, float]:
    return dict(zip(frame["deal_id"], frame[column]))


# ---------------------------------------------------------------------------------------------
# End to end through ingest


def test_amounts_converted_at_close_date_or_as_of(exports):
    result = read_exports(exports, _project("rates.csv"), as_of=AS_OF)
    reporting = _by_id(result.deals, "amount_reporting")
    assert reporting == pytest.approx({"006A": 1080.0, "006B": 2200.0, "006C": 625.0, "006D": 700.0, "006G": 1100.0})
    # The original amount and currency are kept as exported.
    assert _by_id(result.deals, "amount") == {"006A": 1000, "006B": 2000, "006C": 500, "006D": 700, "006G": 1000}
    assert _by_id(result.deals, "currency") == {"006A": "EUR", "006B": "EUR", "006C": "GBP", "006D": "USD", "006G": "EUR"}
    # The deal's history uses the deal's own rate (1.08): 900 -> 972, 1,000 -> 1,080.
    history = result.history.loc[result.history["deal_id"] == "006A"].sort_values("changed_at")
    assert history["amount"].tolist() == [900, 1000]
    assert history["amount_reporting"].tolist() == pytest.approx([972.0, 1080.0])
    assert [p.name for p in result.skipped_files] == ["rates.csv"]


def test_deals_without_a_rate_are_quarantined_with_their_history(exports):
    result = read_exports(exports, _project("rates.csv"), as_of=AS_OF)
    q = result.quarantine.assign(name=result.quarantine["source_file"].map(lambda p: Path(p).name))
    rows = {(n, r): (c, col) for n, r, c, col in zip(q["name"], q["source_row"], q["reason_code"], q["column"])}
    # 006E is the 6th Opportunity data row (spreadsheet row 6), 006F row 7; 006E's history row 4.
    assert rows == {
        ("Opportunity.csv", 6): (UNKNOWN_CURRENCY, "currency"),
        ("Opportunity.csv", 7): (NO_RATE_FOR_DATE, "currency"),
        ("OpportunityHistory.csv", 4): ("deal_quarantined", "deal_id"),
    }
    reasons = dict(zip(q["source_row"].astype(str) + q["name"], q["reason"]))
    assert "JPY" in reasons["6Opportunity.csv"] and str(exports / "rates.csv") in reasons["6Opportunity.csv"]
    assert "2024-02-01" in reasons["7Opportunity.csv"] and "2024-03-01" in reasons["7Opportunity.csv"]
    assert "006E" in reasons["4OpportunityHistory.csv"] and UNKNOWN_CURRENCY in reasons["4OpportunityHistory.csv"]
    assert '"deal_id":"006E"' in q.loc[q["source_row"].eq(6) & q["name"].eq("Opportunity.csv"), "raw_record"].iloc[0]
    assert "006E" not in set(result.deals["deal_id"]) and "006E" not in set(result.history["deal_id"])
    counts = {f.path.name: (f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files}
    assert counts == {"Opportunity.csv": (7, 5, 2), "OpportunityHistory.csv": (3, 2, 1)}


def test_without_rates_file_only_the_reporting_currency_is_valued(exports):
    result = read_exports(exports, _project(None), as_of=AS_OF)
    assert result.deals["deal_id"].tolist() == ["006D"]
    reasons = result.quarantine.loc[result.quarantine["reason_code"] == UNKNOWN_CURRENCY, "reason"].tolist()
    assert len(reasons) == 6  # 006A, 006B, 006C, 006E, 006F, 006G
    assert "EUR" in reasons[0] and "no exchange-rate file is configured" in reasons[0]
    assert str(FIXTURES / "dealcast.toml") in reasons[0]
    # Their history rows go with them: 006A's two rows and 006E's one.
    assert (result.quarantine["reason_code"] == "deal_quarantined").sum() == 3


def test_open_deal_rate_follows_as_of(exports):
    """006B (open, 2,000 EUR): as_of 2024-05-31 takes 03-14's 1.08 -> 2,160; 2024-06-01 takes 1.10 -> 2,200."""
    project = _project("rates.csv")
    before = read_exports(exports, project, as_of=dt.date(2024, 5, 31))
    on = read_exports(exports, project, as_of=dt.date(2024, 6, 1))
    assert _by_id(before.deals, "amount_reporting")["006B"] == pytest.approx(2160.0)
    assert _by_id(on.deals, "amount_reporting")["006B"] == pytest.approx(2200.0)


def test_rates_file_looked_up_in_exports_then_next_to_config(tmp_path, exports):
    project = _project("rates.csv")
    assert find_rates_file(project, exports) == exports / "rates.csv"
    (exports / "rates.csv").unlink()
    with pytest.raises(ExchangeRatesError, match=r"rates_file 'rates.csv' not found") as error:
        read_exports(exports, project, as_of=AS_OF)
    assert str(exports / "rates.csv") in str(error.value) and str(FIXTURES / "rates.csv") in str(error.value)
    assert find_rates_file(_project(None), exports) is None
    beside_config = tmp_path / "config"
    beside_config.mkdir()
    (beside_config / "fx.csv").write_text(RATES)
    moved = dataclasses.replace(project, path=beside_config / "dealcast.toml", rates_file="fx.csv")
    assert find_rates_file(moved, exports) == beside_config / "fx.csv"


def test_load_crm_passes_its_as_of(exports):
    """etl.ingest.crm_load reads the exports with the run's as_of: 006B at as_of 2024-05-31 is 2,160 USD."""
    settings = Settings(
        project=_project("rates.csv"),
        exports_dir=exports,
        exports_are_sample=False,
        as_of=dt.date(2024, 5, 31),
        project_dir=exports,
    )
    load = load_crm(settings)
    assert _by_id(load.ingest.deals, "amount_reporting")["006B"] == pytest.approx(2160.0)


def test_salesforce_reader_leaves_foreign_amounts_to_ingest(exports):
    export = read_salesforce(
        {"salesforce_opportunity": [exports / "Opportunity.csv"], "salesforce_history": [exports / "OpportunityHistory.csv"]},
        _project(None),
    )
    assert export.quarantine.empty
    deals = export.deals.set_index("deal_id")
    assert np.isnan(deals.at["006A", "amount_reporting"]) and deals.at["006A", "currency"] == "EUR"
    assert deals.at["006D", "amount_reporting"] == 700
    assert deals.at["006B", "currency"] == "EUR"  # "eur" in the file
    assert export.history.loc[export.history["deal_id"] == "006A", "amount_reporting"].isna().all()


# ---------------------------------------------------------------------------------------------
# The rates file and the conversion on their own


def test_load_rates_and_lookup(tmp_path):
    path = tmp_path / "rates.csv"
    path.write_text(RATES + "2024-05-01,usd,1\n")
    rates = load_rates(path, "usd")
    assert rates.currencies == ["EUR", "GBP"]  # the reporting currency's own row is not a rate
    found = rates.rates_on(
        pd.Series(["EUR", "EUR", "EUR", "GBP", "EUR", "CHF"]),
        pd.Series([T("2024-03-13"), T("2024-03-14"), T("2030-01-01"), T("2023-12-31"), pd.NaT, T("2024-04-01")]),
    )
    np.testing.assert_allclose(found, [1.05, 1.08, 1.10, np.nan, np.nan, np.nan])


@pytest.mark.parametrize(
    "rows, message",
    [
        ("2024-03-01,EUR,0\n", r"row 2, column rate: expected a positive number"),
        ("2024-03-01,EUR,1,05\n", r"row 2: .*4 fields"),
        ("03/01/2024,EUR,1.05\n", r"row 2, column date: expected a date like 2024-03-14, got '03/01/2024'"),
        ("2024-03-01,,1.05\n", r"row 2, column currency: expected a currency code"),
        ("2024-03-01,EUR,1.05\n2024-03-01,eur,1.06\n", r"row 3, column date: expected each currency at most once per date"),
        ("2024-03-01,USD,0.9\n", r"row 2, column rate: expected 1 for the reporting currency USD"),
    ],
)
def test_unusable_rates_rows_are_errors_naming_row_and_column(tmp_path, rows, message):
    path = tmp_path / "rates.csv"
    path.write_text("date,currency,rate\n" + rows)
    with pytest.raises(ExchangeRatesError, match=message) as error:
        load_rates(path, "USD")
    assert str(path) in str(error.value)


def test_rates_file_without_the_expected_columns(tmp_path):
    path = tmp_path / "rates.csv"
    path.write_text("day,code,usd\n2024-03-01,EUR,1.05\n")
    with pytest.raises(ValueError, match=r"missing required column\(s\) date, currency, rate"):
        load_rates(path, "USD")


def test_rate_dates():
    deals = pd.DataFrame({"closed_at": [T("2024-03-14 11:15"), pd.NaT, T("2024-07-01")]})
    assert rate_dates(deals, AS_OF).tolist() == [T("2024-03-14"), T("2024-06-15"), T("2024-06-15")]


def _deal_frame(rows: list[dict]) -> pd.DataFrame:
    base = {c: None for c in DEAL_COLUMNS}
    base.update(source_row=2, push_count=0, has_history=False, source_file="x.csv", amount_reporting=np.nan)
    return conform(pd.DataFrame([{**base, **r} for r in rows]), DEAL_COLUMNS, "deals")


def test_reader_given_reporting_amount_is_kept_and_its_ratio_converts_history(tmp_path):
    """A CRM's own converted amount (say 1,000 EUR given as 1,070 USD) wins over the rates file, and
    the deal's history uses the same ratio 1.07: 800 EUR -> 856 USD. A deal without currency or
    amount needs no rate."""
    deals = _deal_frame(
        [
            {"deal_id": "H1", "amount": 1000.0, "currency": "EUR", "amount_reporting": 1070.0},
            {"deal_id": "H2", "amount": 50.0, "currency": None},
            {"deal_id": "H3", "amount": np.nan, "currency": "CHF"},
        ]
    )
    history = conform(
        pd.DataFrame(
            {
                "deal_id": ["H1"], "changed_at": [T("2024-01-01")], "stage": ["A"], "amount": [800.0],
                "amount_reporting": [np.nan], "expected_close_date": [T("2024-02-01")], "crm_probability": [0.1],
                "forecast_category": [None], "source_file": ["x.csv"], "source_row": [3],
            }
        ),
        DEAL_HISTORY_COLUMNS,
        "deal_history",
    )
    out = convert_to_reporting(deals, history, None, "USD", AS_OF)
    assert not out.rejected.any()
    assert out.deals["amount_reporting"].tolist()[:2] == pytest.approx([1070.0, 50.0])
    assert np.isnan(out.deals["amount_reporting"].iloc[2])
    assert out.history["amount_reporting"].tolist() == pytest.approx([856.0])
    assert out.deals["currency"].isna().tolist() == [False, True, False]  # the currency stays as exported
