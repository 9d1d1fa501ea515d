"""Close timing: P(a deal that will win closes before a date), learned from deals won by as_of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.pipeline_state import as_of_end, pipeline_at
from models.timing import (
    MIN_WITHIN_HORIZON,
    CloseTiming,
    closed_by_table,
    horizon_factor,
    win_in_quarter_probability,
    win_this_quarter_probability,
)
from tests.models.hand_crm import CATALOG, half_within_thirty_days_crm, make_crm, open_at

DAY = pd.Timedelta(days=1)
AS_OF = pd.Timestamp("2024-06-15")


def thirty_day_crm(extra_deals=(), extra_events=()):
    """40 won deals that each closed exactly 30 days after entering stage X (5 days after
    creation), created every 3 days from 2024-01-01; plus a deal that entered X on as_of."""
    deals, events = [], []
    for i in range(40):
        created = pd.Timestamp("2024-01-01") + 3 * i * DAY
        deal_id = f"W{i:02d}"
        deals.append({"deal_id": deal_id, "created_at": created})
        events += [
            (deal_id, created, "Qualify"),
            (deal_id, created + 5 * DAY, "X"),
            (deal_id, created + 35 * DAY, "Closed Won"),
        ]
    deals.append({"deal_id": "NEW", "created_at": AS_OF - 5 * DAY})
    events += [("NEW", AS_OF - 5 * DAY, "Qualify"), ("NEW", AS_OF + pd.Timedelta(hours=9), "X")]
    return make_crm(deals + list(extra_deals), events + list(extra_events))


def test_deals_that_close_30_days_after_entering_x():
    deals, history = thirty_day_crm()
    assert (deals.loc[deals["deal_id"].str.startswith("W"), "closed_at"] <= AS_OF).all()
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    new = open_at(deals, history, AS_OF, ["NEW"])
    start = as_of_end(AS_OF)

    assert timing.probability_closed_by(new, start + 20 * DAY) == pytest.approx([0.0], abs=1e-12)
    assert timing.probability_closed_by(new, start + 40 * DAY) == pytest.approx([1.0], abs=1e-12)
    assert list(timing.levels_used(new)) == ["pipeline_stage_days"]


def test_probability_is_zero_before_now_and_never_decreases():
    deals, history = thirty_day_crm()
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    new = open_at(deals, history, AS_OF, ["NEW"])
    start = as_of_end(AS_OF)
    assert timing.probability_closed_by(new, start - DAY) == pytest.approx([0.0])
    curve = [timing.probability_closed_by(new, start + h * DAY)[0] for h in range(0, 60)]
    assert all(b >= a for a, b in zip(curve, curve[1:]))
    assert curve[0] == 0.0 and curve[-1] == 1.0


def test_recent_slow_winners_not_yet_closed_do_not_bias_the_estimate():
    """Right truncation: one deal enters X every day for 120 days; even-numbered deals win 10
    days later, odd ones 60 days later, so P(close within 30 days | wins) is exactly 1/2. At
    as_of the slow deals of the last 60 days have not closed yet, so among the deals won by
    as_of the quick ones are over-represented."""
    day0 = pd.Timestamp("2024-01-01")
    as_of = day0 + 120 * DAY
    deals, events = [], []
    won_fast_observable = won_slow_observable = 0
    for i in range(120):
        created = day0 + i * DAY
        deal_id = f"D{i:03d}"
        fast = i % 2 == 0
        close = created + (10 if fast else 60) * DAY
        deals.append({"deal_id": deal_id, "created_at": created})
        events.append((deal_id, created, "X"))
        if close <= as_of:
            events.append((deal_id, close, "Closed Won"))
            if created <= as_of - 30 * DAY:
                won_fast_observable += fast
                won_slow_observable += not fast
    deals.append({"deal_id": "NEW", "created_at": as_of})
    events.append(("NEW", as_of, "X"))
    crm_deals, history = make_crm(deals, events)

    # The naive share of quick closers among winners observable for 30 days is far from 1/2 ...
    naive = won_fast_observable / (won_fast_observable + won_slow_observable)
    assert naive > 0.58
    # ... the fitted probability is not.
    timing = CloseTiming.fit(crm_deals, history, CATALOG, as_of)
    new = open_at(crm_deals, history, as_of, ["NEW"])
    p30 = timing.probability_closed_by(new, as_of_end(as_of) + 30 * DAY)[0]
    assert p30 == pytest.approx(0.5, abs=0.02)


def test_horizon_factor_turns_a_chance_within_the_horizon_into_a_chance_at_all():
    deals, history, as_of = half_within_thirty_days_crm()
    timing = CloseTiming.fit(deals, history, CATALOG, as_of)
    new = open_at(deals, history, as_of, ["NEW"])
    # P(closes within 30 days | wins) = 1/2 (up to the estimate's noise): a deal with a 30% chance
    # of winning within 30 days has a 60% chance of winning at all.
    within = timing.probability_closed_by(new, as_of_end(as_of) + 30 * DAY)[0]
    assert horizon_factor(new, timing, 30.0) == pytest.approx([1 / within])
    assert 1 / within == pytest.approx(2.0, rel=0.08)
    # Within a horizon of 61 days every winner has closed: nothing to correct.
    assert horizon_factor(new, timing, 61.0) == pytest.approx([1.0])
    # Within a day no winner closes (the quickest take 10 days in X, a snapshot is at most a week
    # into it): the timing says nothing, the score is taken as it is.
    assert timing.probability_closed_by(new, as_of_end(as_of) + 1 * DAY)[0] == 0.0
    assert horizon_factor(new, timing, 1.0) == pytest.approx([1.0])
    # No horizon (a run that did not record one): 1.
    assert horizon_factor(new, timing, None) == pytest.approx([1.0])


def test_horizon_factor_reads_the_chance_within_the_horizon_no_lower_than_a_quarter():
    # Deals that close 10 days (1 in 10) or 60 days (9 in 10) after entering X: within 30 days 1/10,
    # read as 1/4, so the factor is 4, not 10.
    day0 = pd.Timestamp("2024-01-01")
    as_of = day0 + 200 * DAY
    deals, events = [], []
    for i in range(130):
        created = day0 + i * DAY
        close = created + (10 if i % 10 == 0 else 60) * DAY
        deals.append({"deal_id": f"D{i:03d}", "created_at": created})
        events += [(f"D{i:03d}", created, "X"), (f"D{i:03d}", close, "Closed Won")]
    deals.append({"deal_id": "NEW", "created_at": as_of})
    events.append(("NEW", as_of, "X"))
    crm_deals, history = make_crm(deals, events)
    timing = CloseTiming.fit(crm_deals, history, CATALOG, as_of)
    new = open_at(crm_deals, history, as_of, ["NEW"])
    assert timing.probability_closed_by(new, as_of_end(as_of) + 30 * DAY)[0] == pytest.approx(0.1, abs=0.01)
    assert horizon_factor(new, timing, 30.0) == pytest.approx([1 / MIN_WITHIN_HORIZON])


def test_closed_by_table_is_the_truncation_product_limit_worked_by_hand():
    # Rows (R, W): (1, 5), (2, 2), (3, 5), (3, 4).
    # Rows at risk n(s) = #{R <= s <= W}: n(1)=1, n(2)=2, n(3)=3, n(4)=3, n(5)=2; closing d(1)=1, d(2)=1, d(3)=2.
    # Factors 1 - d/n: 0, 1/2, 1/3, 1, 1.  P(R <= h) = product over s > h:
    # h=0: 0; h=1: 1/2 * 1/3 = 1/6; h=2: 1/3; h>=3: 1.  (The naive share with R <= 2 would be 1/2.)
    table = closed_by_table(
        np.zeros(4, dtype="int64"), np.array([1, 2, 3, 3]), np.array([5, 2, 5, 4]), n_cells=1, max_days=5
    )
    assert table[0] == pytest.approx([0.0, 1 / 6, 1 / 3, 1.0, 1.0, 1.0])


def test_sparse_cells_fall_back_to_coarser_pools():
    # A deal in Negotiate: no winner was ever seen there, nor in that part of the sales process,
    # so its timing comes from the pipeline's deals of the same age.
    deals, history = thirty_day_crm(
        [{"deal_id": "NEG", "created_at": AS_OF - 10 * DAY}],
        [("NEG", AS_OF - 10 * DAY, "Qualify"), ("NEG", AS_OF - DAY, "Negotiate")],
    )
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    rows = open_at(deals, history, AS_OF, ["NEW", "NEG"]).set_index("deal_id").loc[["NEW", "NEG"]].reset_index()
    assert list(timing.levels_used(rows)) == ["pipeline_stage_days", "pipeline_age"]

    # With more deals required per pool than there are winners, no pool qualifies and the
    # CRM's expected close date decides.
    strict = CloseTiming.fit(deals, history, CATALOG, AS_OF, min_deals=41)
    assert set(strict.levels_used(rows)) == {"expected_close_date"}


def test_without_won_deals_the_expected_close_date_decides():
    created = AS_OF - 20 * DAY
    deals, history = make_crm(
        [
            {"deal_id": "INSIDE", "created_at": created, "expected_close_date": AS_OF + 10 * DAY},
            {"deal_id": "AFTER", "created_at": created, "expected_close_date": AS_OF + 45 * DAY},
            {"deal_id": "OVERDUE", "created_at": created, "expected_close_date": AS_OF - 5 * DAY},
            {"deal_id": "UNDATED", "created_at": created},
        ],
        [(d, created, "Qualify") for d in ("INSIDE", "AFTER", "OVERDUE", "UNDATED")],
    )
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    assert timing.won_deals == 0
    rows = open_at(deals, history, AS_OF).set_index("deal_id").loc[["INSIDE", "AFTER", "OVERDUE", "UNDATED"]].reset_index()
    probability = timing.probability_closed_by(rows, as_of_end(AS_OF) + 30 * DAY)
    assert list(probability) == [1.0, 0.0, 1.0, 0.0]


def test_win_probability_this_quarter_and_next():
    # as_of 2024-06-15: 15 days to the end of Q2, so a deal that just entered X (30 days to
    # close if it wins) cannot close this quarter, and closes in Q3 if it wins.
    deals, history = thirty_day_crm()
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    new = open_at(deals, history, AS_OF, ["NEW"])
    assert win_this_quarter_probability(new, [0.4], timing, AS_OF, 1) == pytest.approx([0.0], abs=1e-12)
    assert win_in_quarter_probability(new, [0.4], timing, "2024-Q3", 1) == pytest.approx([0.4])
    assert win_in_quarter_probability(new, [0.4], timing, "2024-Q4", 1) == pytest.approx([0.0], abs=1e-12)
    with pytest.raises(ValueError, match="1 open deals but"):
        win_in_quarter_probability(new, [0.4, 0.5], timing, "2024-Q3", 1)


def test_a_past_as_of_sees_only_what_was_known_then():
    # Refitted on 2024-03-01, only the deals won by then count (the backtest relies on this).
    deals, history = thirty_day_crm()
    early = pd.Timestamp("2024-03-01")
    known = deals.loc[deals["closed_at"] <= as_of_end(early)]
    assert CloseTiming.fit(deals, history, CATALOG, early).won_deals == len(known) > 0


def test_open_deals_must_be_pipeline_rows():
    deals, history = thirty_day_crm()
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    with pytest.raises(ValueError, match="snapshot_at"):
        timing.probability_closed_by(deals, AS_OF + 30 * DAY)
