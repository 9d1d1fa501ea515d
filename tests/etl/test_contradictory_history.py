"""Contradictory stage history is flagged, and the deal's own record is the one truth.

A hand-written Salesforce export (pipeline Sales: Prospecting, Proposal, Closed Won / Closed Lost),
read through the real reader and load, as_of 2026-03-31:
  X1  history Prospecting 03-01, Closed Won 03-10, Prospecting 03-20; the record says Prospecting:
      a won deal re-opened. Consistent, but Closed Won -> Prospecting is a contradictory move.
  X2  the same history; the record says Closed Won (CloseDate 03-10): the history ends open while
      the deal is won. The record wins: a Closed Won row is added one microsecond after the last
      history row (03-20 00:00:00.000001), so the deal, its stage events and every rebuild say won.
  X3  history Prospecting 03-01, Proposal 03-05; the record says Closed Lost with CloseDate 03-25:
      the closing row is missing from the history; it is added at the record's close, 03-25.
  X4  history Prospecting 03-02, Proposal 03-12, back to Prospecting 03-15; the record says
      Prospecting: an ordinary backward move, not contradictory.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from etl.analytics.velocity import velocity
from etl.pipeline_state import as_of_end, pipeline_at
from tests.etl.hand_frames import load_salesforce

T = pd.Timestamp
AS_OF = dt.date(2026, 3, 31)
CONFIG = """
[reporting]
currency = "USD"

[[pipelines]]
name = "Sales"
stages = [{ name = "Prospecting", probability = 0.1 }, { name = "Proposal", probability = 0.6 }]
"""


def _opportunity(deal_id, stage, close, closed, won):
    return [deal_id, "0", deal_id, stage, "1000", "50", close, closed, won, "USD", "005A", "2026-03-01 00:00:00", "Sales"]


OPPORTUNITIES = [
    _opportunity("X1", "Prospecting", "2026-04-30", "0", "0"),
    _opportunity("X2", "Closed Won", "2026-03-10", "1", "1"),
    _opportunity("X3", "Closed Lost", "2026-03-25", "1", "0"),
    _opportunity("X4", "Prospecting", "2026-04-30", "0", "0"),
]
HISTORY = [
    ["H1", "X1", "2026-03-01 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H2", "X1", "2026-03-10 00:00:00", "Closed Won", "1000", "2026-03-10", "100", "0"],
    ["H3", "X1", "2026-03-20 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H4", "X2", "2026-03-01 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H5", "X2", "2026-03-10 00:00:00", "Closed Won", "1000", "2026-03-10", "100", "0"],
    ["H6", "X2", "2026-03-20 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H7", "X3", "2026-03-01 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H8", "X3", "2026-03-05 00:00:00", "Proposal", "1000", "2026-04-30", "60", "0"],
    ["H9", "X4", "2026-03-02 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
    ["H10", "X4", "2026-03-12 00:00:00", "Proposal", "1000", "2026-04-30", "60", "0"],
    ["H11", "X4", "2026-03-15 00:00:00", "Prospecting", "1000", "2026-04-30", "10", "0"],
]


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    load = load_salesforce(tmp_path_factory.mktemp("contradictions"), CONFIG, OPPORTUNITIES, HISTORY, AS_OF)
    assert load.publishable and load.validation.quarantine.empty
    return load


def test_contradictory_moves_are_flagged(crm):
    history = crm.history
    flagged = history.loc[history["is_contradictory"], ["deal_id", "changed_at", "stage"]]
    assert [tuple(r) for r in flagged.itertuples(index=False)] == [
        ("X1", T("2026-03-20"), "Prospecting"),  # Closed Won -> Prospecting
        ("X2", T("2026-03-20"), "Prospecting"),  # Closed Won -> Prospecting
        ("X2", T("2026-03-20 00:00:00.000001"), "Closed Won"),  # the record's state, added
        ("X3", T("2026-03-25"), "Closed Lost"),  # the record's close, added
    ]
    # Re-opening is not a backward move among open stages; X4's Proposal -> Prospecting is.
    assert history.loc[history["is_backward"], "deal_id"].tolist() == ["X4"]
    events = crm.events
    assert events.loc[events["is_contradictory"], "deal_id"].tolist() == ["X1", "X2", "X2", "X3"]


def test_the_record_is_the_truth_everywhere(crm):
    deals = crm.deals.set_index("deal_id")
    assert deals["status"].to_dict() == {"X1": "open", "X2": "won", "X3": "lost", "X4": "open"}
    # Stage events end where the record is; the rebuild at as_of says the same.
    last = crm.events.sort_values("entered_at").groupby("deal_id")["stage"].last()
    assert last.to_dict() == deals["stage"].to_dict()
    state = pipeline_at(crm.deals, crm.history, as_of_end(AS_OF)).set_index("deal_id")
    assert state["status"].to_dict() == deals["status"].to_dict()
    # closed_at is when the completed history closes the deal; bookings still follow the CRM close date.
    assert deals.loc["X2", "closed_at"] == T("2026-03-20 00:00:00.000001")
    assert deals.loc["X2", "booking_date"] == T("2026-03-10")
    assert deals.loc["X3", "closed_at"] == T("2026-03-25")
    march = velocity(crm.deals, crm.history, crm.stages, AS_OF)
    row = march[(march["period_grain"] == "month") & (march["period"] == "2026-03") & (march["segment_type"] == "all")].iloc[0]
    assert (row["won_count"], row["lost_count"], row["open_deals"]) == (1, 1, 2)
