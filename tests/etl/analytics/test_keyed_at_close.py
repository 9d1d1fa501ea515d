"""Wins keyed into the CRM at the moment of closing have no recorded sales cycle: velocity's cycle
days and the aged-deal threshold leave them out (`[warnings] keyed_at_close_hours`, default 24).

Hand CRM, pipeline P (open stages A, B), as_of 2024-03-31 (to 23:59:59.999999):
  W1 won   created 01-01 00:00, won 01-31 00:00          cycle 30 days
  W2 won   created 01-10 00:00, won 02-19 00:00          cycle 40 days
  K1 won   created 02-01 10:00, won 02-01 10:05          keyed in at close (5 minutes)
  K2 won   created 02-03 09:00, won 02-03 15:00          keyed in at close (6 hours)
  K3 won   no history, created 02-10, won 02-10          keyed in at close (same day)
  O1 open  created 01-05 00:00                           age 86.0 days
  O3 open  created 02-23 00:00                           age 38.0 days (2024 is a leap year)
  O2 open  created 03-20 00:00                           age 12.0 days
All amounts 100. Recorded cycles [30, 40]: mean 35, median 35, p90 30 + 0.9 x 10 = 39.
Counting the keyed wins too, cycles [0, 0.0035, 0.25, 30, 40] would give p90 at position 3.6:
30 + 0.6 x 10 = 36, flagging O3 (38 days) as aged although it is younger than 90% of real cycles.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from etl.analytics.velocity import velocity
from etl.analytics.health import stalled_deals
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS
from etl.stages import PipelineStages, StageCatalog
from tests.etl.hand_frames import canonical, one_row as _one

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 31)
WON = "Closed Won"
CATALOG = StageCatalog([PipelineStages("P", ("A", "B"), probabilities={"A": 0.3, "B": 0.6})])


def crm() -> tuple[pd.DataFrame, pd.DataFrame]:
    def deal(deal_id, created, closed=None, has_history=True):
        won = closed is not None
        return dict(
            deal_id=deal_id, created_at=T(created), closed_at=T(closed) if won else pd.NaT,
            crm_close_date=T(closed).normalize() if won else pd.NaT, stage=WON if won else "A",
            status="won" if won else "open", has_history=has_history,
        )

    deals = [
        deal("W1", "2024-01-01", "2024-01-31"), deal("W2", "2024-01-10", "2024-02-19"),
        deal("K1", "2024-02-01 10:00", "2024-02-01 10:05"), deal("K2", "2024-02-03 09:00", "2024-02-03 15:00"),
        deal("K3", "2024-02-10", "2024-02-10", has_history=False),
        deal("O1", "2024-01-05"), deal("O3", "2024-02-23"), deal("O2", "2024-03-20"),
    ]
    defaults = dict(
        source_system="hand", source_file="deals.csv", source_row=1, pipeline="P", owner="Ana", currency="USD",
        amount=100.0, amount_reporting=100.0, expected_close_date=T("2024-06-30"), push_count=0,
    )
    events = [("W1", "2024-01-01", "A"), ("W1", "2024-01-31", WON), ("W2", "2024-01-10", "A"), ("W2", "2024-02-19", WON),
              ("K1", "2024-02-01 10:00", "A"), ("K1", "2024-02-01 10:05", WON),
              ("K2", "2024-02-03 09:00", "B"), ("K2", "2024-02-03 15:00", WON),
              ("O1", "2024-01-05", "A"), ("O3", "2024-02-23", "A"), ("O2", "2024-03-20", "B")]
    history = [dict(deal_id=d, changed_at=T(t), stage=s, amount=100.0, amount_reporting=100.0,
                    expected_close_date=T("2024-06-30"), source_row=i + 2) for i, (d, t, s) in enumerate(events)]
    deals_frame = canonical(deals, DEAL_COLUMNS, defaults, "deals")
    history_frame = canonical(history, DEAL_HISTORY_COLUMNS, dict(source_file="history.csv"), "history")
    return deals_frame, prepare_history(deals_frame, history_frame, CATALOG)


def test_velocity_cycle_leaves_out_wins_keyed_in_at_close():
    deals, history = crm()
    table = velocity(deals, history, CATALOG, AS_OF)
    q1 = _one(table, period_grain="quarter", period="2024-Q1", segment_type="all")
    assert (q1["won_count"], q1["cycle_won_count"]) == (5, 2)
    assert (q1["cycle_days_mean"], q1["cycle_days_median"]) == (35.0, 35.0)
    assert q1["cycle_days_p90"] == pytest.approx(39.0)
    # velocity = 3 open x 100 average x win rate 1 / 35 days.
    assert q1["velocity_per_day"] == pytest.approx(3 * 100 * 1.0 / 35)
    february = _one(table, period_grain="month", period="2024-02", segment_type="all")
    assert (february["won_count"], february["cycle_won_count"], february["cycle_days_mean"]) == (4, 1, 40.0)


def test_counting_every_win_when_the_rule_is_off():
    deals, history = crm()
    table = velocity(deals, history, CATALOG, AS_OF, keyed_at_close_hours=0)
    q1 = _one(table, period_grain="quarter", period="2024-Q1", segment_type="all")
    cycles = [30, 40, 5 / 1440, 0.25, 0.0]
    assert q1["cycle_won_count"] == 5 and q1["cycle_days_mean"] == pytest.approx(sum(cycles) / 5)


def test_aged_threshold_leaves_out_wins_keyed_in_at_close():
    deals, history = crm()
    stalled = stalled_deals(deals, history, None, AS_OF)
    aged = stalled.set_index("deal_id")
    assert list(aged.index) == ["O1"]
    assert aged.loc["O1", "aged_threshold_days"] == pytest.approx(39.0)
    # With every win counted, the threshold drops to 36 days and O3 (38 days old) is flagged.
    everyone = stalled_deals(deals, history, None, AS_OF, keyed_at_close_hours=0).set_index("deal_id")
    assert sorted(everyone.index) == ["O1", "O3"] and everyone.loc["O3", "aged_threshold_days"] == pytest.approx(36.0)
