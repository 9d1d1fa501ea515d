"""Win chances calibrated per unit of revenue, on the open deals at the scorer's held-out dates, by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from models.revenue_calibration import PSEUDO_DEALS, PSEUDO_WINS, RevenueCalibration, money_band_edges, shrunk_factor
from models.scoring import ConstantRateScorer
from models.timing import CloseTiming
from tests.models.hand_crm import CATALOG, make_crm

# A Monday 00:00: a held-out prediction date of the scorer. A quarter (91 days) later is 2024-04-01.
SNAPSHOT = pd.Timestamp("2024-01-01")
AS_OF = "2024-06-30"
# deal: (amount, expected close date, outcome, when it closed)
DEALS = {
    "A": (100.0, "2024-02-01", "Closed Won", "2024-02-10 10:00"),
    "B": (100.0, "2024-02-15", "Closed Lost", "2024-02-20 10:00"),
    "C": (200.0, "2024-03-01", "Closed Won", "2024-03-05 10:00"),
    # Expected after the horizon, won inside it.
    "D": (200.0, "2024-05-01", "Closed Won", "2024-03-20 10:00"),
    "E": (900.0, "2024-03-10", "Closed Lost", "2024-03-12 10:00"),
    "F": (900.0, "2024-03-15", "Closed Lost", "2024-03-18 10:00"),
    # Won after the horizon (booked 2024-04-10): nothing inside it.
    "G": (900.0, "2024-03-25", "Closed Won", "2024-04-10 10:00"),
}


def world():
    deals = [
        {"deal_id": d, "created_at": "2023-12-01 09:00", "amount": a, "expected_close_date": close}
        for d, (a, close, _, _) in DEALS.items()
    ]
    events = [(d, "2023-12-01 09:00", "Qualify") for d in DEALS]
    events += [(d, closed, outcome) for d, (_, _, outcome, closed) in DEALS.items()]
    return make_crm(deals, events)


def scorer_result(dates: list[pd.Timestamp]):
    """What the calibration reads of a `models.scoring.ScorerResult`: the published scorer (here a
    constant 0.5), its held-out prediction dates and its label horizon (none: scores taken as they are)."""
    predictions = pd.DataFrame({"deal_id": "A", "snapshot_at": pd.to_datetime(dates), "label": 1, "published": 0.5})
    scorer = ConstantRateScorer(0.5, version="test", feature_names=[], typical={}, typical_stage_days=pd.DataFrame())
    return SimpleNamespace(scorer=scorer, test_predictions=predictions, label_horizon_days=None)


def test_money_bands_hold_equal_shares_of_the_amount():
    # Total 2,400: 100 + 100 + 200 + 200 = 600 stays below a third (800); the first 900 crosses it.
    assert money_band_edges(np.array([900.0, 100.0, 200.0, 100.0, 200.0, 900.0])) == (200.0,)
    # Six equal amounts: every edge would equal the largest amount and leave the band above empty.
    assert money_band_edges(np.ones(6)) == ()
    # 1..6 (total 21): running totals 1, 3, 6, 10, 15, 21; the last below 7 is at 3, below 14 at 4.
    assert money_band_edges(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])) == (3.0, 4.0)
    assert money_band_edges(np.array([])) == ()


def test_a_band_of_four_deals_by_hand():
    # Four deals in band 0 (100, 100, 200, 200), two in band 1 (900, 900); deal "a" seen on two dates.
    amount = np.array([100.0, 100.0, 200.0, 200.0, 900.0, 900.0, 100.0])
    deal = np.array(["a", "b", "c", "d", "e", "f", "a"])
    expected = np.array([50.0, 50.0, 100.0, 0.0, 450.0, 450.0, 50.0])
    won = np.array([100.0, 0.0, 200.0, 200.0, 0.0, 0.0, 0.0])
    calibration = RevenueCalibration.from_rows(amount, expected, won, deal, dates=2)
    assert calibration.edges == (200.0,)
    # Deals expected to win inside the horizon: 0.5 x 6 rows = 3 (d: 0); won: a, c, d: level 1.
    # Band 0: 4 distinct deals, expected 250, won 500: (4 x 2 + 20) / (4 + 20) = 28 / 24.
    # Band 1: 2 deals, expected 900, won 0: (0 + 20) / (2 + 20).
    assert calibration.factors == pytest.approx((28 / 24, 20 / 22))
    assert calibration.deals == (4, 2) and calibration.expected == pytest.approx((250.0, 900.0))
    assert calibration.won == pytest.approx((500.0, 0.0)) and calibration.rows == 7 and calibration.dates == 2
    assert PSEUDO_DEALS == 20.0
    # A deal at the edge is in the band below; above it, in the band above; no amount means band 0.
    assert calibration.factor([200.0, 200.01, np.nan]) == pytest.approx([28 / 24, 20 / 22, 28 / 24])
    table = calibration.table()
    assert table["factor"].tolist() == pytest.approx(list(calibration.factors))
    assert table["deals"].tolist() == [4, 2] and table["amount_to"].iloc[0] == 200.0


def test_the_factors_correct_money_relative_to_deals_by_hand():
    # Four deals, each P(win) 0.5 and sure to close inside the horizon if it wins: 2 deals expected
    # to win, 3 did (level 1.5). Money: band 0 (100, 100) expected 100, won 200; band 1 (1,000, 1,000)
    # expected 1,000, won 1,000.
    amount = np.array([100.0, 100.0, 1000.0, 1000.0])
    calibration = RevenueCalibration.from_rows(
        amount, 0.5 * amount, np.array([100.0, 100.0, 1000.0, 0.0]), np.array(["a", "b", "c", "d"]), dates=1
    )
    assert calibration.edges == (100.0,) and calibration.level == pytest.approx(1.5)
    # Band 0: 200 / (1.5 x 100) = 4/3 over 2 deals: (2 x 4/3 + 20) / 22 = 68/66.
    # Band 1: 1,000 / (1.5 x 1,000) = 2/3: (2 x 2/3 + 20) / 22 = 64/66. The large deals won as
    # much money as scored, but less often than the deals did: they are scaled down.
    assert calibration.factors == pytest.approx((68 / 66, 64 / 66))


def test_shrinkage_towards_one():
    assert shrunk_factor(won=0.0, expected=100.0, deals=20) == pytest.approx(0.5)
    assert shrunk_factor(won=300.0, expected=100.0, deals=0) == 1.0
    assert shrunk_factor(won=50.0, expected=0.0, deals=5) == 1.0


def test_fitted_on_the_open_deals_at_a_held_out_date_by_hand():
    deals, history = world()
    # Fewer won deals than min_deals in every pool: a deal closes within the horizon when its
    # expected close date is before 2024-04-01 (A, B, C, E, F, G: 1; D: 0).
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    calibration = RevenueCalibration.fit(scorer_result([SNAPSHOT]), deals, history, CATALOG, timing, AS_OF)
    # Amounts 100, 100, 200, 200, 900, 900, 900 (total 3,300; a third 1,100): the running total
    # stays below 1,100 up to the last 200 (600) and below 2,200 up to the first 900 (1,500).
    assert calibration.edges == (200.0,)
    # Deals expected to win inside the horizon: 0.5 x 6 (D: 0) = 3; won inside it: A, C, D. Level 1.
    # Band 0 (A, B, C, D): expected 0.5 x (100 + 100 + 200) = 200; won A 100 + C 200 + D 200 = 500.
    # Band 1 (E, F, G): expected 0.5 x 2,700 = 1,350; won nothing inside the horizon (G on 10 April).
    assert calibration.expected == pytest.approx((200.0, 1350.0))
    assert calibration.won == pytest.approx((500.0, 0.0))
    assert calibration.factors == pytest.approx(((4 * 2.5 + 20) / 24, 20 / 23))
    assert calibration.rows == 7 and calibration.dates == 1 and calibration.level == pytest.approx(1.0)
    assert calibration.source == "held_out_windows"


def test_without_a_date_a_quarter_back_the_held_out_rows_are_used_by_hand():
    # Six deals scored 0.5 on 2024-03-04, closed 2024-04-01; as_of 2024-04-30 is less than 91
    # days after the held-out date, so the scorer's held-out rows themselves are the evidence.
    amounts = {"A": 100.0, "B": 100.0, "C": 200.0, "D": 200.0, "E": 1000.0, "F": 1000.0}
    won = {"A": 1, "B": 1, "C": 1, "D": 0, "E": 0, "F": 0}
    deals = [{"deal_id": d, "created_at": "2024-03-01 09:00", "amount": a} for d, a in amounts.items()]
    events = [(d, "2024-03-01 09:00", "Qualify") for d in amounts]
    events += [(d, "2024-04-01 10:00", "Closed Won" if won[d] else "Closed Lost") for d in amounts]
    deals_frame, history = make_crm(deals, events)
    predictions = pd.DataFrame(
        {"deal_id": list(amounts), "snapshot_at": pd.Timestamp("2024-03-04"), "label": [won[d] for d in amounts], "published": 0.5}
    )
    result = SimpleNamespace(scorer=SimpleNamespace(scoring_method="stage_rate"), test_predictions=predictions, label_horizon_days=None)
    timing = CloseTiming.fit(deals_frame, history, CATALOG, "2024-04-30")
    calibration = RevenueCalibration.fit(result, deals_frame, history, CATALOG, timing, "2024-04-30")
    assert calibration.source == "held_out_rows"
    # Terciles of 100, 100, 200, 200, 1000, 1000 (linear interpolation): 166.67 and 466.67.
    assert calibration.edges == pytest.approx((100 + 200 / 3, 200 + 800 / 3))
    prior = PSEUDO_WINS * 2600 / 6
    # Band 1: won 200 of 200 predicted at 0.5 (expected 100); band 2: won 200, expected 200;
    # band 3: won 0, expected 1000.
    assert calibration.factors == pytest.approx(((200 + prior) / (100 + prior), 1.0, prior / (1000 + prior)))
    assert calibration.rows == 6 and calibration.deals == (2, 2, 2)
    # An older scorer result without `published` is read by its method's column.
    legacy = SimpleNamespace(
        scorer=result.scorer, test_predictions=predictions.rename(columns={"published": "stage_rate_baseline"}), label_horizon_days=None
    )
    assert RevenueCalibration.fit(legacy, deals_frame, history, CATALOG, timing, "2024-04-30") == calibration


def test_without_held_out_rows_nothing_changes():
    deals, history = world()
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    empty = RevenueCalibration.fit(scorer_result([]), deals, history, CATALOG, timing, AS_OF)
    assert empty == RevenueCalibration() and empty.source == "none"
    assert empty.factor([10.0, 1e6]) == pytest.approx([1.0, 1.0])
