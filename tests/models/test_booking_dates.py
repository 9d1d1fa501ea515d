"""The forecast's closed won to date and the backtest's actuals count wins by their booking date
(`etl.bookings`: the CRM's close date), as every analytics table does, while whether a deal is won
at a checkpoint still follows the moment it was marked won.

Hand CRM (pipeline Sales, amounts in the reporting currency), as_of 2024-07-20 (2024-Q3):
  LATE  500  created 2024-05-02, marked won 2024-07-08 with a CRM close date of 2024-06-27 -> Q2
  ON    300  created 2024-05-10, won 2024-06-05, close date 2024-06-05                    -> Q2
  JULY   40  created 2024-06-20, won 2024-07-03, close date 2024-07-03                    -> Q3
  OPEN  100  created 2024-06-01, open in X
  EARLY 100  created 2024-03-01, lost 2024-03-20 (the data start)
"""

from __future__ import annotations

import pandas as pd
import pytest

from models.backtest import quarter_actuals
from models.forecast import forecast_quarterly, new_deal_stream
from models.timing import CloseTiming
from tests.models.hand_crm import CATALOG, make_crm

AS_OF = pd.Timestamp("2024-07-20")


@pytest.fixture(scope="module")
def crm():
    deals, history = make_crm(
        [
            {"deal_id": "LATE", "created_at": "2024-05-02", "amount": 500.0},
            {"deal_id": "ON", "created_at": "2024-05-10", "amount": 300.0},
            {"deal_id": "JULY", "created_at": "2024-06-20", "amount": 40.0},
            {"deal_id": "OPEN", "created_at": "2024-06-01", "amount": 100.0, "expected_close_date": "2024-08-30"},
            {"deal_id": "EARLY", "created_at": "2024-03-01", "amount": 100.0},
        ],
        [
            ("LATE", "2024-05-02", "Qualify"), ("LATE", "2024-07-08 11:00", "Closed Won"),
            ("ON", "2024-05-10", "Qualify"), ("ON", "2024-06-05", "Closed Won"),
            ("JULY", "2024-06-20", "Qualify"), ("JULY", "2024-07-03", "Closed Won"),
            ("OPEN", "2024-06-01", "X"),
            ("EARLY", "2024-03-01", "Qualify"), ("EARLY", "2024-03-20", "Closed Lost"),
        ],
    )
    deals.loc[deals["deal_id"] == "LATE", "crm_close_date"] = pd.Timestamp("2024-06-27")
    return deals, history


def _forecast(deals, history, as_of):
    timing = CloseTiming.fit(deals, history, CATALOG, as_of)
    scores = pd.DataFrame({"deal_id": ["OPEN"], "win_probability": [0.0]})
    return forecast_quarterly(deals, history, CATALOG, as_of, scores=scores, timing=timing, quotas=None, draws=200, seed=1)


def _all(frame, quarter):
    row = frame[(frame["quarter"] == quarter) & (frame["segment_type"] == "all")]
    assert len(row) == 1
    return row.iloc[0]


def test_closed_won_to_date_counts_this_quarters_bookings(crm):
    deals, history = crm
    # Q3 so far: JULY (40). LATE was marked won in July but booked on its CRM close date in June.
    assert _all(_forecast(deals, history, AS_OF), "2024-Q3")["closed_won_to_date"] == pytest.approx(40.0)


def test_closed_won_to_date_at_the_end_of_q2_does_not_see_a_win_marked_later(crm):
    deals, history = crm
    # On 2024-06-30 LATE is still open (marked won on 07-08): Q2 closed won is ON alone.
    assert _all(_forecast(deals, history, pd.Timestamp("2024-06-30")), "2024-Q2")["closed_won_to_date"] == pytest.approx(300.0)


def test_backtest_actuals_by_booking_date(crm):
    deals, history = crm
    actuals = quarter_actuals(deals, history, AS_OF, ["2024-Q2", "2024-Q3"])
    overall = actuals[actuals["segment_type"] == "all"].set_index("quarter")["actual"]
    assert overall.to_dict() == {"2024-Q2": pytest.approx(800.0), "2024-Q3": pytest.approx(40.0)}


def test_the_new_deal_stream_counts_wins_by_booking_date(crm):
    deals, history = crm
    # As of 2024-07-20, 2024-Q3's stand-in is 2024-Q2 (its point matching the as_of, 2024-04-20, is
    # after the data start): deals created after it and booked in Q2 are ON (300) and LATE (500,
    # marked won in July but booked on 06-27). By the day marked won, LATE would be left out.
    stream = new_deal_stream(deals, history, AS_OF, "2024-Q3")
    assert list(stream.index) == ["2024-Q2"] and stream["all"].tolist() == [pytest.approx(800.0)]


def test_close_timing_learns_from_booking_dates():
    # One win, created Wednesday 2024-05-01, marked won 2024-07-08 11:00 with a CRM close date of
    # 2024-06-27. Weekly (Monday) prediction dates while it was open by its history: May 6 ... Jul 1
    # (9). It closed, by its booking date, on Jun 27: only the 8 dates up to Jun 24 are before it.
    deals, history = make_crm(
        [{"deal_id": "W", "created_at": "2024-05-01", "amount": 100.0}],
        [("W", "2024-05-01", "Qualify"), ("W", "2024-07-08 11:00", "Closed Won")],
    )
    deals.loc[deals["deal_id"] == "W", "crm_close_date"] = pd.Timestamp("2024-06-27")
    assert CloseTiming.fit(deals, history, CATALOG, AS_OF, min_deals=1).snapshot_rows == 8
    # Booked on the day it was marked won, the ninth date (Jul 1) counts too.
    deals.loc[deals["deal_id"] == "W", "crm_close_date"] = pd.Timestamp("2024-07-08")
    assert CloseTiming.fit(deals, history, CATALOG, AS_OF, min_deals=1).snapshot_rows == 9
