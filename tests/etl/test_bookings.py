"""Booking dates: closed deals count in the period of the CRM's close date, while point-in-time
rebuilds keep the moment the deal was marked closed. Checked on a tiny hand-written Salesforce
export read through the real reader, with every number worked out by hand below.

Pipeline "Sales": Prospecting (0.1), Proposal (0.6), then Closed Won / Closed Lost. The run is for
as_of 2026-08-01 unless a test says otherwise. Amounts in USD (the reporting currency).

  A1 1000  created 05-04 09:00 in Prospecting (expected to close 06-30), Proposal 06-10, marked
           Closed Won on 07-15 10:00 with its CloseDate set to 06-28 (keyed in two weeks late)
                                                                         -> booked 06-28 (2026-Q2)
  B2 2000  created 06-01 09:00 (expected 09-30), marked Closed Lost on 07-20 09:00 with a CloseDate of 09-30, after
           as_of                                                         -> booked 07-20 (2026-Q3)
  C3 4000  created 04-02 09:00 (expected 05-31), won 05-20 12:00, CloseDate 05-20        -> booked 05-20 (2026-Q2)
  D4  500  created 07-01 08:00, open in Proposal, CloseDate 08-31
  E5  700  created 07-10 09:00 and marked Closed Won five minutes later, with a CloseDate of 07-06:
           keyed in after the sale closed                                -> booked 07-06 (2026-Q3)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from etl.bookings import booking_dates, keyed_in_at_close, with_booking_dates
from etl.analytics.coaching import deal_value_spread, pipeline_coverage, product_mix, revenue_growth
from etl.config import ConfigError, load_project_config
from etl.analytics.funnel import stage_conversion
from etl.analytics.velocity import velocity
from etl.analytics.health import pipeline_waterfall
from tests.etl.hand_frames import load_salesforce, one_row as _one

T = pd.Timestamp
AS_OF = dt.date(2026, 8, 1)

CONFIG = """
[reporting]
currency = "USD"
{booking}

[[pipelines]]
name = "Sales"
stages = [{{ name = "Prospecting", probability = 0.1 }}, {{ name = "Proposal", probability = 0.6 }}]
"""

OPPORTUNITIES = [
    ["A1", "0", "Alpha", "Closed Won", "1000", "100", "2026-06-28", "1", "1", "USD", "005A", "2026-05-04 09:00:00", "Sales"],
    ["B2", "0", "Beta", "Closed Lost", "2000", "0", "2026-09-30", "1", "0", "USD", "005A", "2026-06-01 09:00:00", "Sales"],
    ["C3", "0", "Gamma", "Closed Won", "4000", "100", "2026-05-20", "1", "1", "USD", "005B", "2026-04-02 09:00:00", "Sales"],
    ["D4", "0", "Delta", "Proposal", "500", "60", "2026-08-31", "0", "0", "USD", "005B", "2026-07-01 08:00:00", "Sales"],
    ["E5", "0", "Epsilon", "Closed Won", "700", "100", "2026-07-06", "1", "1", "USD", "005B", "2026-07-10 09:00:00", "Sales"],
]
HISTORY = [
    ["H1", "A1", "2026-05-04 09:00:00", "Prospecting", "1000", "2026-06-30", "10", "0"],
    ["H2", "A1", "2026-06-10 10:00:00", "Proposal", "1000", "2026-06-30", "60", "0"],
    ["H3", "A1", "2026-07-15 10:00:00", "Closed Won", "1000", "2026-06-28", "100", "0"],
    ["H4", "B2", "2026-06-01 09:00:00", "Prospecting", "2000", "2026-09-30", "10", "0"],
    ["H5", "B2", "2026-07-20 09:00:00", "Closed Lost", "2000", "2026-09-30", "0", "0"],
    ["H6", "C3", "2026-04-02 09:00:00", "Prospecting", "4000", "2026-05-31", "10", "0"],
    ["H7", "C3", "2026-05-20 12:00:00", "Closed Won", "4000", "2026-05-20", "100", "0"],
    ["H8", "D4", "2026-07-01 08:00:00", "Proposal", "500", "2026-08-31", "60", "0"],
    ["H9", "E5", "2026-07-10 09:00:00", "Prospecting", "700", "2026-07-06", "10", "0"],
    ["H10", "E5", "2026-07-10 09:05:00", "Closed Won", "700", "2026-07-06", "100", "0"],
]


def _load(folder: Path, booking: str = "", as_of: dt.date = AS_OF):
    load = load_salesforce(folder, CONFIG.format(booking=booking), OPPORTUNITIES, HISTORY, as_of)
    assert load.publishable and load.validation.quarantine.empty
    return load


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("bookings"))


def _deal(load, deal_id: str) -> pd.Series:
    return load.deals.set_index("deal_id").loc[deal_id]


def test_booking_date_rule_by_hand():
    anchor = pd.to_datetime(pd.Series(["2026-06-28", None, "2026-09-30", "2026-06-28", "2026-07-15"]))
    closed = pd.to_datetime(pd.Series(["2026-07-15 10:00", "2026-07-20 09:00", "2026-07-20 09:00", None, "2026-06-01 16:00"]))
    # The CRM date where known and not after as_of; else the day the deal was marked closed; open: NaT.
    # The last deal was marked won on 06-01 with a close date of 07-15: booked 07-15 once as_of reaches it.
    expected = pd.to_datetime(pd.Series(["2026-06-28", "2026-07-20", "2026-07-20", None, "2026-07-15"]))
    got = pd.Series(booking_dates(anchor, closed, AS_OF))
    pd.testing.assert_series_equal(got, expected.astype("datetime64[us]"), check_names=False)
    # At an as_of before the CRM's dates they are not yet usable.
    early = pd.Series(booking_dates(anchor, closed, dt.date(2026, 6, 27)))
    assert list(early.dt.strftime("%Y-%m-%d").fillna("-")) == ["2026-07-15", "2026-07-20", "2026-07-20", "-", "2026-06-01"]


def test_reader_keeps_both_dates_and_load_books_by_the_crm_close_date(crm):
    a1, b2, c3, d4, e5 = (_deal(crm, i) for i in ("A1", "B2", "C3", "D4", "E5"))
    # closed_at: the moment the history says the deal was marked closed (no history: the CloseDate).
    assert a1["closed_at"] == T("2026-07-15 10:00") and a1["crm_close_date"] == T("2026-06-28")
    assert a1["booking_date"] == T("2026-06-28")
    assert b2["closed_at"] == T("2026-07-20 09:00") and b2["crm_close_date"] == T("2026-09-30")
    assert b2["booking_date"] == T("2026-07-20")  # a close date after as_of is not booked in the future
    assert c3["booking_date"] == T("2026-05-20")
    assert pd.isna(d4["crm_close_date"]) and pd.isna(d4["booking_date"]) and pd.isna(d4["closed_at"])
    assert e5["closed_at"] == T("2026-07-10 09:05") and e5["booking_date"] == T("2026-07-06")


def test_closed_stage_at_books_by_the_day_marked_closed(tmp_path):
    load = _load(tmp_path, 'booking_date = "closed_stage_at"')
    assert _deal(load, "A1")["booking_date"] == T("2026-07-15")
    assert _deal(load, "B2")["booking_date"] == T("2026-07-20")
    assert _deal(load, "E5")["booking_date"] == T("2026-07-10")
    quarters = velocity(load.deals, load.history, load.stages, AS_OF)
    q2 = _one(quarters, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert (q2["won_count"], q2["won_amount"]) == (1, 4000.0)  # C3 only: A1 was marked won in July


def test_unknown_booking_rule_is_refused(tmp_path):
    config = tmp_path / "dealcast.toml"
    config.write_text(CONFIG.format(booking='booking_date = "invoice_date"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"booking_date must be one of 'crm_close_date', 'closed_stage_at', got 'invoice_date'"):
        load_project_config(config)


def test_velocity_books_by_crm_close_date(crm):
    table = velocity(crm.deals, crm.history, crm.stages, AS_OF)
    # Quarters run from 2026-Q2 (C3 created 04-02). Q2: C3 4000 and A1 1000 (CloseDate 06-28) won.
    q2 = _one(table, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert (q2["won_count"], q2["won_amount"], q2["lost_count"]) == (2, 5000.0, 0)
    # Q3: E5 700 won (07-06), B2 2000 lost (marked 07-20: its CloseDate 09-30 is after as_of).
    q3 = _one(table, period_grain="quarter", period="2026-Q3", segment_type="all")
    assert (q3["won_count"], q3["won_amount"], q3["lost_count"], q3["lost_amount"]) == (1, 700.0, 1, 2000.0)
    june = _one(table, period_grain="month", period="2026-06", segment_type="all")
    assert (june["won_count"], june["won_amount"]) == (1, 1000.0)
    # Cycle length stays created -> marked closed: A1 05-04 09:00 -> 07-15 10:00 = 72 days 1 hour.
    assert june["cycle_days_mean"] == pytest.approx(72 + 1 / 24)


def test_rebuild_before_the_deal_was_marked_closed_sees_it_open(crm):
    # At 2026-07-01 A1 is still open (marked won on 07-15): Q2 has only C3; A1 is in the open pipeline.
    table = velocity(crm.deals, crm.history, crm.stages, dt.date(2026, 7, 1))
    q2 = _one(table, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert (q2["won_count"], q2["won_amount"]) == (1, 4000.0)
    assert q2["open_deals"] == 2 and q2["pipeline_value"] == 3000.0  # A1 1000 and B2 2000 open at 06-30
    july = _one(table, period_grain="month", period="2026-07", segment_type="all")
    assert july["won_count"] == 0 and july["open_deals"] == 3  # A1, B2, D4 (E5 is created on 07-10)


def test_calendar_starts_at_a_booking_before_any_creation(tmp_path):
    # Only E5 (created 07-10, booked 07-06) and D4: the month of the booking is in the table.
    load = _load(tmp_path)
    keep = load.deals["deal_id"].isin(["E5", "D4"]).to_numpy()
    deals = load.deals.loc[keep].reset_index(drop=True)
    history = load.history.loc[load.history["deal_id"].isin(["E5", "D4"]).to_numpy()].reset_index(drop=True)
    table = velocity(deals, history, load.stages, AS_OF)
    months = table.loc[(table["period_grain"] == "month") & (table["segment_type"] == "all"), "period"].tolist()
    assert months == ["2026-07", "2026-08"]
    assert _one(table, period_grain="month", period="2026-07", segment_type="all")["won_amount"] == 700.0
    # A close date in a month before the first creation opens the calendar there.
    deals.loc[deals["deal_id"] == "E5", "booking_date"] = T("2026-06-29")
    table = velocity(deals, history, load.stages, AS_OF)
    june = _one(table, period_grain="month", period="2026-06", segment_type="all")
    assert (june["created_count"], june["won_amount"]) == (0, 700.0)


def test_coaching_tables_book_by_crm_close_date(crm):
    spread = deal_value_spread(crm.deals, crm.history, AS_OF)
    q2 = _one(spread, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert (q2["won_count"], q2["won_amount"], q2["min_value"]) == (2, 5000.0, 1000.0)
    mix = product_mix(crm.deals, crm.history, AS_OF)
    june = _one(mix, period_grain="month", period="2026-06")
    assert (june["won_count"], june["won_amount"]) == (1, 1000.0)
    growth = revenue_growth(crm.deals, crm.history, AS_OF)
    q3 = _one(growth, period_grain="quarter", period="2026-Q3", segment_type="all")
    # Q3 won 700 against Q2's 5000: (700 - 5000) / 5000.
    assert (q3["won_amount"], q3["previous_won_amount"]) == (700.0, 5000.0)
    assert q3["growth"] == pytest.approx(-0.86)


def test_coverage_closed_won_is_this_quarters_bookings(crm):
    conversion = stage_conversion(crm.deals, crm.history, crm.stages, AS_OF)
    quotas = pd.DataFrame({"quarter": ["2026-Q3"], "segment_type": ["all"], "segment": ["all"], "amount": [10_000.0]})
    coverage = pipeline_coverage(crm.deals, crm.history, conversion, quotas, AS_OF)
    q3 = _one(coverage, quarter="2026-Q3", segment_type="all")
    # Only E5 (700) is booked in Q3 so far; A1 (marked won in July) belongs to Q2.
    assert q3["closed_won"] == 700.0 and q3["remaining"] == 9300.0
    # D4 (500, expected 08-31) is the open pipeline: coverage 500 / 9300.
    assert q3["open_pipeline"] == 500.0 and q3["coverage"] == pytest.approx(500 / 9300)


def test_frames_without_a_booking_date_column_book_by_crm_close_date(crm):
    deals = crm.deals.drop(columns=["booking_date"])
    table = velocity(deals, crm.history, crm.stages, AS_OF)
    q2 = _one(table, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert q2["won_amount"] == 5000.0
    again = with_booking_dates(deals, AS_OF)
    pd.testing.assert_series_equal(again["booking_date"], crm.deals["booking_date"])


def test_keyed_in_at_close_by_hand():
    created = pd.to_datetime(pd.Series(["2026-07-10 09:00", "2026-07-10 09:00", "2026-07-10 09:00", "2026-07-10 09:00", None]))
    closed = pd.to_datetime(pd.Series(["2026-07-10 09:30", "2026-07-11 08:59", "2026-07-11 09:00", "2026-07-06 00:00", "2026-07-06 00:00"]))
    # Under 24 hours (or closed before creation) is keyed in at close; exactly 24 hours is not.
    assert keyed_in_at_close(created, closed).tolist() == [True, True, False, True, False]
    assert keyed_in_at_close(created, closed, hours=0).tolist() == [False] * 5


# ---------------------------------------------------------------------------------------------
# The waterfall books closed deals on their booking date too, restating the timeline: A1 closes
# (won) on 06-28 although it was marked won on 07-15; E5 is created and won on 07-06 (it was keyed
# in on 07-10). A period's pipeline is the open deals expected to close by its last day.
#   2026-Q2: created C3 4000 (05-31) and A1 1000 (06-30); won C3 (05-20) and A1 (06-28); end 0.
#            A rebuild at 06-30 still sees A1 open, expected 06-30: recorded end 1000 (1 deal).
#   2026-Q3: start B2 2000 (expected 09-30); created D4 500 (08-31) and E5 700 (07-06, won at once);
#            lost B2 (07-20); won E5; end D4 500 = the recorded end.
#   2026-06: start A1 1000 (at 05-31 it was expected 06-30); won A1 on 06-28; end 0 (recorded 1000).
#   2026-07: start 0 (A1 closed in June); E5 created and won (700); B2, expected 09-30, is outside.
# ---------------------------------------------------------------------------------------------


def test_waterfall_books_closed_deals_on_their_booking_date(crm):
    table = pipeline_waterfall(crm.deals, crm.history, AS_OF)

    def check(grain, period, **expected):
        row = _one(table, period_grain=grain, period=period, segment_type="all")
        assert {k: row[k] for k in expected} == expected

    check("quarter", "2026-Q2", start_value=0.0, created=5000.0, pulled_in=0.0, won=5000.0, lost=0.0, end_value=0.0,
          deals_won=2, recorded_end_value=1000.0, recorded_deals_end=1)
    check("quarter", "2026-Q3", start_value=2000.0, created=1200.0, won=700.0, lost=2000.0, end_value=500.0,
          recorded_end_value=500.0, recorded_deals_end=1)
    check("month", "2026-06", start_value=1000.0, created=0.0, won=1000.0, end_value=0.0, recorded_end_value=1000.0)
    check("month", "2026-07", start_value=0.0, created=700.0, won=700.0, lost=0.0, end_value=0.0, recorded_end_value=0.0)
    # Waterfall won per quarter = velocity's bookings of the deals that were in the pipeline.
    speed = velocity(crm.deals, crm.history, crm.stages, AS_OF)
    for quarter in ("2026-Q2", "2026-Q3"):
        assert _one(table, period_grain="quarter", period=quarter, segment_type="all")["won"] == _one(
            speed, period_grain="quarter", period=quarter, segment_type="all")["won_amount"]


def test_waterfall_books_on_the_day_marked_closed_when_configured(tmp_path):
    load = _load(tmp_path, 'booking_date = "closed_stage_at"')
    table = pipeline_waterfall(load.deals, load.history, AS_OF)
    # Nothing is restated: A1 leaves in July as it was recorded, and the recorded end is the end.
    q2 = _one(table, period_grain="quarter", period="2026-Q2", segment_type="all")
    assert (q2["won"], q2["end_value"], q2["recorded_end_value"]) == (4000.0, 1000.0, 1000.0)
    assert (table["end_value"] == table["recorded_end_value"]).all()
    july = _one(table, period_grain="month", period="2026-07", segment_type="all")
    assert (july["start_value"], july["won"]) == (1000.0, 1700.0)
