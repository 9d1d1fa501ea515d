"""Quarterly forecast: Monte Carlo over open deals plus the stream of deals not yet created.

Quantiles follow the inverted-CDF definition used by the forecast: the q-quantile of a revenue
distribution is the smallest revenue x with P(revenue <= x) >= q.

Sampling tolerance: with n = 10,000 draws the empirical CDF at any revenue has a standard
deviation of at most sqrt(0.25 / n) = 0.005. Where every atom's exact CDF is at least 0.025
(5 standard deviations) away from q, the sampled quantile equals the exact one except with
probability below 1e-6, so quantiles are asserted exactly (the test checks that margin). The
mean is asserted within 4 standard errors, sd / sqrt(n), computed from the exact distribution.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from etl.pipeline_state import as_of_end, pipeline_at
from etl.tables import TABLES
from models.forecast import (
    build_forecast,
    creation_growth,
    forecast_quarterly,
    level_factors,
    mix_revenue_shares,
    new_deal_segment_means,
    new_deal_stream,
    run_rate_level_sd,
    simulate_new_deals,
    simulate_quarter,
    stream_mix_share,
)
from models.timing import CloseTiming
from tests.models.hand_crm import CATALOG, half_within_thirty_days_crm, make_crm, open_at

DRAWS = 10_000
AS_OF = pd.Timestamp("2024-05-16")  # 2024-Q2 (calendar quarters); the next quarter is 2024-Q3
SAMPLING_MARGIN = 5 * np.sqrt(0.25 / DRAWS)


def exact_distribution(amounts, probabilities):
    """Every outcome of independent deals: {revenue: probability}, by enumerating all 2^n outcomes."""
    law: dict[float, float] = {}
    for outcome in itertools.product([0, 1], repeat=len(amounts)):
        probability = 1.0
        revenue = 0.0
        for won, amount, p in zip(outcome, amounts, probabilities):
            probability *= p if won else 1 - p
            revenue += amount if won else 0.0
        law[revenue] = law.get(revenue, 0.0) + probability
    return law


def exact_moments(law):
    """Mean and standard deviation of a discrete law."""
    mean = sum(v * p for v, p in law.items())
    return mean, np.sqrt(sum((v - mean) ** 2 * p for v, p in law.items()))


def exact_summary(law, shift=0.0):
    """Mean, standard deviation and inverted-CDF P10/P50/P90 of a discrete law, checking that
    no atom's CDF lies within the sampling margin of a quantile level."""
    values = sorted(law)
    cdf = np.cumsum([law[v] for v in values])
    mean, sd = exact_moments(law)
    quantiles = {}
    for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        assert np.min(np.abs(cdf - q)) > SAMPLING_MARGIN, f"test construction: an atom's CDF is too close to {q}"
        quantiles[name] = values[int(np.argmax(cdf >= q))] + shift
    return {"expected": mean + shift, "sd": sd, **quantiles}


# --- simulate_quarter ---------------------------------------------------------------------------

AMOUNTS = [100.0, 250.0, 400.0, 1000.0]
PROBABILITIES = [0.9, 0.6, 0.3, 0.2]


@pytest.mark.parametrize("chunk_size", [1 << 22, 7])
def test_monte_carlo_matches_the_enumerated_distribution(chunk_size):
    exact = exact_summary(exact_distribution(AMOUNTS, PROBABILITIES))
    draws = simulate_quarter(np.array(AMOUNTS), np.array(PROBABILITIES), np.zeros(4, dtype=int), 1, DRAWS, 11, chunk_size)
    assert draws.shape == (DRAWS, 1)
    sample = draws[:, 0]
    assert sample.mean() == pytest.approx(exact["expected"], abs=4 * exact["sd"] / np.sqrt(DRAWS))
    p10, p50, p90 = np.quantile(sample, [0.1, 0.5, 0.9], method="inverted_cdf")
    assert (p10, p50, p90) == (exact["p10"], exact["p50"], exact["p90"])


def test_segment_totals_add_up_to_the_total_in_every_draw():
    rng = np.random.default_rng(3)
    n = 50
    owner = rng.integers(0, 3, n)
    region = rng.integers(0, 2, n)
    codes = np.column_stack([np.zeros(n, dtype=int), 1 + owner, 4 + region])  # all | 3 owners | 2 regions
    amounts = rng.uniform(10, 1000, n).round(2)
    draws = simulate_quarter(amounts, rng.uniform(0, 1, n), codes, 6, 2_000, 5, chunk_size=333)
    assert np.allclose(draws[:, 1:4].sum(axis=1), draws[:, 0], rtol=0, atol=1e-6)
    assert np.allclose(draws[:, 4:6].sum(axis=1), draws[:, 0], rtol=0, atol=1e-6)
    assert draws[:, 0].std() > 0


def test_certain_outcomes_give_exact_segment_sums():
    amounts = np.array([10.0, 20.0, 40.0, 80.0])
    probabilities = np.array([1.0, 0.0, 1.0, 1.0])
    codes = np.column_stack([np.zeros(4, dtype=int), [1, 1, 2, 2]])
    draws = simulate_quarter(amounts, probabilities, codes, 3, 500, 1)
    assert (draws == np.array([130.0, 10.0, 120.0])).all()


def test_seeded_draws_repeat_and_different_seeds_differ():
    args = (np.array(AMOUNTS), np.array(PROBABILITIES), np.zeros(4, dtype=int), 1, 1_000)
    first = simulate_quarter(*args, seed=42)
    assert np.array_equal(first, simulate_quarter(*args, seed=42))
    assert not np.array_equal(first, simulate_quarter(*args, seed=43))


def test_draws_do_not_depend_on_the_number_of_threads():
    # chunk_size 7 splits the 3,500 draws into four blocks of at most 1,000, each seeded on its own.
    args = (np.array(AMOUNTS), np.array(PROBABILITIES), np.zeros(4, dtype=int), 1, 3_500, 9, 7)
    single = simulate_quarter(*args, workers=1)
    assert np.array_equal(single, simulate_quarter(*args, workers=3))
    assert len({tuple(block) for block in single[:3_000, 0].reshape(3, 1_000)}) == 3  # blocks differ


def test_simulate_quarter_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"probabilities\[1\] is 1.5"):
        simulate_quarter(np.ones(2), np.array([0.5, 1.5]), np.zeros(2, dtype=int), 1, 10, 0)
    with pytest.raises(ValueError, match="segment codes"):
        simulate_quarter(np.ones(2), np.array([0.5, 0.5]), np.array([0, 3]), 2, 10, 0)


# --- forecast_quarterly -------------------------------------------------------------------------


def deal(deal_id, created, amount, owner, **extra):
    return {"deal_id": deal_id, "created_at": created, "amount": amount, "owner": owner, **extra}


def four_deal_crm():
    """Data starting inside 2024-Q2 (so no past quarter to learn new deals from): two deals won
    this quarter (Ana 70, Ben 30), a lost one, and four open deals closing this quarter."""
    ecd = "2024-06-20"
    deals = [
        deal("W1", "2024-04-02", 70.0, "Ana"),
        deal("W2", "2024-04-05", 30.0, "Ben"),
        deal("L1", "2024-04-03", 500.0, "Ben"),
        deal("O1", "2024-04-10", 100.0, "Ana", expected_close_date=ecd),
        deal("O2", "2024-04-11", 250.0, "Ana", expected_close_date=ecd),
        deal("O3", "2024-04-12", 400.0, "Ben", expected_close_date=ecd),
        deal("O4", "2024-04-13", 1000.0, "Ben", expected_close_date=ecd),
    ]
    events = [
        ("W1", "2024-04-02", "Qualify"), ("W1", "2024-04-20", "Closed Won"),
        ("W2", "2024-04-05", "Qualify"), ("W2", "2024-05-10", "Closed Won"),
        ("L1", "2024-04-03", "Qualify"), ("L1", "2024-04-30", "Closed Lost"),
        ("O1", "2024-04-10", "X"), ("O2", "2024-04-11", "X"), ("O3", "2024-04-12", "Qualify"), ("O4", "2024-04-13", "Negotiate"),
    ]
    return make_crm(deals, events)


def run_forecast(deals, history, scores, quotas=None, seed=5, as_of=AS_OF, **kwargs):
    timing = CloseTiming.fit(deals, history, CATALOG, as_of)
    return forecast_quarterly(
        deals, history, CATALOG, as_of, scores=scores, timing=timing, quotas=quotas,
        draws=DRAWS, seed=seed, model_version="test-v1", **kwargs,
    )


def row(frame, quarter, segment_type="all", segment="all"):
    match = frame[(frame["quarter"] == quarter) & (frame["segment_type"] == segment_type) & (frame["segment"] == segment)]
    assert len(match) == 1, (quarter, segment_type, segment)
    return match.iloc[0]


def test_forecast_matches_the_enumerated_distribution_per_segment():
    deals, history = four_deal_crm()
    # Too few won deals to learn timing, so each deal closes by its expected close date
    # (inside 2024-Q2): its probability of winning this quarter is its score.
    timing = CloseTiming.fit(deals, history, CATALOG, AS_OF)
    open_rows = pipeline_at(deals, history, as_of_end(AS_OF)).query("status == 'open'")
    assert set(timing.levels_used(open_rows)) == {"expected_close_date"}
    scores = pd.DataFrame({"deal_id": ["O1", "O2", "O3", "O4"], "win_probability": PROBABILITIES})
    frame = run_forecast(deals, history, scores)

    cases = [
        ("all", "all", [0, 1, 2, 3], 100.0),
        ("owner", "Ana", [0, 1], 70.0),
        ("owner", "Ben", [2, 3], 30.0),
        ("team", "East", [0, 1, 2, 3], 100.0),
    ]
    for segment_type, segment, index, closed in cases:
        law = exact_distribution([AMOUNTS[i] for i in index], [PROBABILITIES[i] for i in index])
        exact = exact_summary(law, shift=closed)
        got = row(frame, "2024-Q2", segment_type, segment)
        assert got["closed_won_to_date"] == pytest.approx(closed)
        assert got["expected"] == pytest.approx(exact["expected"], abs=4 * exact["sd"] / np.sqrt(DRAWS))
        assert (got["p10"], got["p50"], got["p90"]) == pytest.approx((exact["p10"], exact["p50"], exact["p90"]))
        assert got["new_deals_expected"] == 0.0

    # Next quarter: nothing won yet, every open deal closes this quarter if it wins.
    following = row(frame, "2024-Q3")
    assert (following["closed_won_to_date"], following["p10"], following["p50"], following["p90"]) == (0, 0, 0, 0)


def test_one_quarter_alone_has_the_enumerated_distribution_and_the_same_draws():
    # What the backtest asks for: 2024-Q2 only, without the second simulation that P90 without
    # outliers needs. Its quantiles are those of the enumerated law (closed won 100 added), and its
    # draws are the very draws of the full forecast (each quarter is seeded on its own).
    deals, history = four_deal_crm()
    scores = pd.DataFrame({"deal_id": ["O1", "O2", "O3", "O4"], "win_probability": PROBABILITIES})
    alone = run_forecast(deals, history, scores, only_quarter="2024-Q2", outlier_ranges=False)
    assert set(alone["quarter"]) == {"2024-Q2"}
    assert alone["p90_without_outliers"].isna().all()
    exact = exact_summary(exact_distribution(AMOUNTS, PROBABILITIES), shift=100.0)
    got = row(alone, "2024-Q2")
    assert (got["p10"], got["p50"], got["p90"]) == pytest.approx((exact["p10"], exact["p50"], exact["p90"]))
    # expected is exact: closed won + sum of amount x probability = 100 + 90 + 150 + 120 + 200
    assert got["expected"] == pytest.approx(660.0)
    full = run_forecast(deals, history, scores)
    columns = ["segment_type", "segment", "p10", "p50", "p90", "expected"]
    pd.testing.assert_frame_equal(
        alone[columns].reset_index(drop=True), full.loc[full["quarter"] == "2024-Q2", columns].reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="only_quarter must be the current quarter 2024-Q2 or the next 2024-Q3"):
        run_forecast(deals, history, scores, only_quarter="2024-Q4")


def test_forecast_columns_rows_and_ordering_of_quantiles():
    deals, history = four_deal_crm()
    scores = pd.DataFrame({"deal_id": ["O1", "O2", "O3", "O4"], "win_probability": PROBABILITIES})
    frame = run_forecast(deals, history, scores)
    assert list(frame.columns) == TABLES["forecast_quarterly"].columns
    assert set(frame["quarter"]) == {"2024-Q2", "2024-Q3"}
    assert set(frame["segment_type"]) == {"all", "pipeline", "owner", "team", "product", "region", "lead_source", "deal_type"}
    # each quarter lists the same segments: 1 total + 1 pipeline + 2 owners + 1 of each of the other five
    assert frame.groupby("quarter").size().tolist() == [9, 9]
    assert not frame.duplicated(["quarter", "segment_type", "segment"]).any()
    assert ((frame["p10"] <= frame["p50"]) & (frame["p50"] <= frame["p90"])).all()
    assert (frame["as_of"] == AS_OF).all() and (frame["draws"] == DRAWS).all() and (frame["model_version"] == "test-v1").all()


def test_closed_won_to_date_counts_only_this_quarter_up_to_as_of():
    # as_of in the past: a deal won after it is still open then; one won last quarter is not this quarter's.
    deals, history = make_crm(
        [
            deal("PREV", "2024-03-01", 11.0, "Ana"),
            deal("A1", "2024-03-05", 200.0, "Ana"),
            deal("B1", "2024-04-02", 45.5, "Ben"),
            deal("A2", "2024-04-03", 300.0, "Ana"),
            deal("LATE", "2024-04-04", 1000.0, "Ben", expected_close_date="2024-06-01"),
            deal("LOST", "2024-04-05", 77.0, "Ben"),
        ],
        [
            ("PREV", "2024-03-01", "Qualify"), ("PREV", "2024-03-30", "Closed Won"),
            ("A1", "2024-03-05", "X"), ("A1", "2024-04-01", "Closed Won"),
            ("B1", "2024-04-02", "X"), ("B1", "2024-05-16 18:30", "Closed Won"),
            ("A2", "2024-04-03", "X"), ("A2", "2024-05-02", "Closed Won"),
            ("LATE", "2024-04-04", "X"), ("LATE", "2024-05-20", "Closed Won"),
            ("LOST", "2024-04-05", "X"), ("LOST", "2024-05-01", "Closed Lost"),
        ],
    )
    frame = run_forecast(deals, history, pd.DataFrame({"deal_id": ["LATE"], "win_probability": [0.0]}))
    # By hand: A1 200 + A2 300 (Ana) and B1 45.5 (Ben, won on the as_of day itself).
    assert row(frame, "2024-Q2")["closed_won_to_date"] == pytest.approx(545.5)
    assert row(frame, "2024-Q2", "owner", "Ana")["closed_won_to_date"] == pytest.approx(500.0)
    assert row(frame, "2024-Q2", "owner", "Ben")["closed_won_to_date"] == pytest.approx(45.5)
    assert row(frame, "2024-Q2")["open_deals"] == 1  # LATE, as it stood at as_of
    # No open deal can win (score 0) and there is no finished quarter with new deals after the
    # matching point, so every quantile is the closed won amount.
    for _, r in frame.iterrows():
        assert r["p10"] == r["p50"] == r["p90"] == r["closed_won_to_date"]


def test_quota_gap_and_coverage_by_hand():
    deals, history = make_crm(
        [
            deal("W", "2024-04-02", 200.0, "Ana"),
            deal("A", "2024-04-03", 500.0, "Ana", expected_close_date="2024-06-10", crm_probability=0.6),
            deal("B", "2024-04-04", 300.0, "Ben", expected_close_date="2024-06-20", crm_probability=0.25),
            deal("C", "2024-04-05", 1000.0, "Ben", expected_close_date="2024-08-15"),  # no CRM probability
        ],
        [
            ("W", "2024-04-02", "X"), ("W", "2024-05-01", "Closed Won"),
            ("A", "2024-04-03", "X"), ("B", "2024-04-04", "Negotiate"), ("C", "2024-04-05", "Qualify"),
        ],
    )
    scores = pd.DataFrame({"deal_id": ["A", "B", "C"], "win_probability": [1.0, 0.0, 1.0]})
    quotas = pd.DataFrame(
        {
            "quarter": ["2024-Q2", "2024-Q3", "2024-Q2", "2023-Q4"],
            "segment_type": ["all", "all", "owner", "all"],
            "segment": ["all", "all", "Ana", "all"],
            "amount": [1000.0, 2000.0, 150.0, 5.0],
        }
    )
    frame = run_forecast(deals, history, scores, quotas)

    q2 = row(frame, "2024-Q2")
    # Won 200; A (500) wins for sure this quarter, B never; C closes next quarter.
    assert (q2["p10"], q2["p50"], q2["p90"], q2["expected"]) == pytest.approx((700.0, 700.0, 700.0, 700.0))
    assert q2["quota"] == 1000.0
    assert q2["gap"] == pytest.approx(1000.0 - 700.0)
    assert (q2["open_deals"], q2["open_pipeline"]) == (2, pytest.approx(800.0))
    assert q2["coverage"] == pytest.approx(800.0 / (1000.0 - 200.0))
    assert q2["weighted_pipeline_crm"] == pytest.approx(500 * 0.6 + 300 * 0.25)

    q3 = row(frame, "2024-Q3")
    assert (q3["closed_won_to_date"], q3["p50"]) == (0.0, pytest.approx(1000.0))
    assert q3["gap"] == pytest.approx(2000.0 - 1000.0)
    assert q3["coverage"] == pytest.approx(1000.0 / 2000.0)
    assert q3["weighted_pipeline_crm"] == pytest.approx(1000.0 * 0.2)  # Qualify's configured 0.2

    ana = row(frame, "2024-Q2", "owner", "Ana")
    assert ana["gap"] == pytest.approx(150.0 - 700.0)
    assert pd.isna(ana["coverage"])  # quota already exceeded by closed won: nothing left to cover
    ben = row(frame, "2024-Q2", "owner", "Ben")
    assert pd.isna(ben["quota"]) and pd.isna(ben["gap"]) and pd.isna(ben["coverage"])


def test_forecast_is_seeded():
    deals, history = four_deal_crm()
    scores = pd.DataFrame({"deal_id": ["O1", "O2", "O3", "O4"], "win_probability": PROBABILITIES})
    first = run_forecast(deals, history, scores, seed=1)
    pd.testing.assert_frame_equal(first, run_forecast(deals, history, scores, seed=1))
    # expected is exact, not a sample mean: the same for any seed. By hand: closed 100 +
    # 0.9 x 100 + 0.6 x 250 + 0.3 x 400 + 0.2 x 1000 = 660.
    other = run_forecast(deals, history, scores, seed=2)
    assert row(first, "2024-Q2")["expected"] == row(other, "2024-Q2")["expected"] == pytest.approx(660.0)


def test_unscored_open_deals_fall_back_to_the_crm_stage_probability():
    deals, history = four_deal_crm()
    frame = run_forecast(deals, history, pd.DataFrame({"deal_id": ["O1"], "win_probability": [0.9]}))
    # O2 in X (0.5), O3 in Qualify (0.2), O4 in Negotiate (0.8): the configured stage probabilities.
    probabilities = [0.9, 0.5, 0.2, 0.8]
    mean, sd = exact_moments(exact_distribution(AMOUNTS, probabilities))
    assert row(frame, "2024-Q2")["expected"] == pytest.approx(100.0 + mean, abs=4 * sd / np.sqrt(DRAWS))


def test_bad_scores_and_quotas_are_named():
    deals, history = four_deal_crm()
    with pytest.raises(ValueError, match="scores row 1, column deal_id: deal 'O1'"):
        run_forecast(deals, history, pd.DataFrame({"deal_id": ["O1", "O1"], "win_probability": [0.5, 0.5]}))
    with pytest.raises(ValueError, match="column win_probability"):
        run_forecast(deals, history, pd.DataFrame({"deal_id": ["O1"], "win_probability": [1.2]}))
    quotas = pd.DataFrame({"quarter": ["2024-Q2"], "segment_type": ["country"], "segment": ["FR"], "amount": [1.0]})
    with pytest.raises(ValueError, match="quotas row 0, column segment_type"):
        run_forecast(deals, history, pd.DataFrame({"deal_id": ["O1"], "win_probability": [0.5]}), quotas)


# --- deals not yet created ----------------------------------------------------------------------


def stream_crm():
    """Finished quarters 2023-Q3 .. 2024-Q1 with deals created late in the quarter and won inside it.

    as_of 2024-05-16 is 45 days and a day into 2024-Q2, so a past quarter's matching point is the
    end of its 46th day (Aug 15, Nov 15, Feb 15); for 2024-Q3 it is 45 days before the quarter
    starts (Aug 16 for 2023-Q4, Nov 16 for 2024-Q1).
    """
    deals = [
        deal("START", "2023-07-02", 5.0, "Ben"),  # the data start
        deal("N0", "2023-08-20", 60.0, "Ben"),
        deal("N2", "2023-11-20", 30.0, "Ana"),
        deal("N3", "2024-02-20", 100.0, "Ben"),
        deal("N4", "2024-02-10", 50.0, "Ana"),
        deal("N5", "2024-03-01", 70.0, "Ana"),
    ]
    events = [
        ("START", "2023-07-02", "Qualify"), ("START", "2023-07-20", "Closed Lost"),
        ("N0", "2023-08-20", "X"), ("N0", "2023-09-10", "Closed Won"),
        ("N2", "2023-11-20", "X"), ("N2", "2023-12-01", "Closed Won"),
        ("N3", "2024-02-20", "X"), ("N3", "2024-03-10", "Closed Won"),
        ("N4", "2024-02-10", "X"), ("N4", "2024-03-01", "Closed Won"),
        ("N5", "2024-03-01", "X"), ("N5", "2024-04-05", "Closed Won"),
    ]
    return make_crm(deals, events)


# Creation growth of each past quarter (models.forecast.creation_growth), by hand. Deals created on
# the data's first day (START, 2023-07-02) are not counted; a window is at most a year and ends at a
# past quarter's matching point, against the same length ending at as_of (the end of 2024-05-16);
# under 182 days of data after the first day's end (2023-07-03 00:00) the growth is 1.
# - 2023-Q3 (point Aug 15), 2023-Q4 (Nov 15: 136 days) and, for 2024-Q3, 2023-Q4 (Aug 16) and
#   2024-Q1 (Nov 16: 137 days): 1.
# - 2024-Q1 for 2024-Q2 (point Feb 15, window 228 days, from 2023-10-01 now): N0 N2 N4 then,
#   N2 N3 N4 N5 now: (4 + 10) / (3 + 10).
GROWTH_Q1 = 14 / 13


def test_new_deal_stream_by_hand():
    deals, history = stream_crm()
    # 2024-Q2: 2023-Q3 N0 60; 2023-Q4 N2 30; 2024-Q1 N3 100 (N4 was created before Feb 15, N5 won in Q2),
    # each times its quarter's creation growth.
    # 2023-Q2's matching point (May 16) is before the data start: not used.
    total = new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "all")
    assert list(total.index) == ["2023-Q3", "2023-Q4", "2024-Q1"]
    assert total["all"].tolist() == pytest.approx([60.0, 30.0, 100.0 * GROWTH_Q1])
    owners = new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "owner")
    assert owners["Ana"].tolist() == pytest.approx([0.0, 30.0, 0.0])
    assert owners["Ben"].tolist() == pytest.approx([60.0, 0.0, 100.0 * GROWTH_Q1])
    # 2024-Q3: 2024-Q2 is not finished; 2024-Q1 gets N3 100 + N4 50; 2023-Q4 gets N2 30.
    following = new_deal_stream(deals, history, AS_OF, "2024-Q3", 1, "all")
    assert list(following.index) == ["2023-Q4", "2024-Q1"] and following["all"].tolist() == [30.0, 150.0]
    # Looking back one quarter only.
    assert new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "all", lookback_quarters=1)["all"].tolist() == pytest.approx(
        [100.0 * GROWTH_Q1]
    )
    # Before any quarter has finished since the data start there is no stream.
    assert new_deal_stream(deals, history, "2023-09-01", "2023-Q3", 1, "all").empty


def test_creation_growth_by_hand():
    # 50 deals imported on the data's first day (not counted), 30 created 2023-06-15, 20 on
    # 2024-02-01, 60 on 2024-06-15; as seen at the end of 2024-12-31.
    created = pd.Series(
        pd.to_datetime(["2023-01-01 09:00"] * 50 + ["2023-06-15 10:00"] * 30 + ["2024-02-01 10:00"] * 20 + ["2024-06-15 10:00"] * 60)
    )
    end = pd.Timestamp("2024-12-31 23:59:59.999999")
    cuts = [pd.Timestamp(d) + pd.Timedelta(days=1, microseconds=-1) for d in ("2024-03-31", "2023-03-01", "2023-07-31")]
    # 2024-03-31: a full year each: now 2024-02-01 and 2024-06-15 (80); then 2023-06-15 and
    # 2024-02-01 (50): (80 + 10) / (50 + 10) = 1.5.
    # 2023-03-01: 59 days after the first day, under 182: 1.
    # 2023-07-31: 211 days after the first day's end; then 2023-06-15 (30), now (from 2024-06-04) 60:
    # (60 + 10) / (30 + 10) = 1.75.
    assert creation_growth(created, end, cuts) == pytest.approx([1.5, 1.0, 1.75])
    # Kept within a factor of max_growth either way.
    assert creation_growth(created, end, cuts, max_growth=1.6) == pytest.approx([1.5, 1.0, 1.6])
    # A falling volume lowers the run-rate: seen at the end of 2025-03-31, the year to then holds
    # 2024-06-15 (60) against 80 in the year to 2024-06-30: (60 + 10) / (80 + 10).
    falling = creation_growth(created, pd.Timestamp("2025-03-31 23:59:59.999999"), [pd.Timestamp("2024-06-30 23:59:59.999999")])
    assert falling == pytest.approx([7 / 9])
    assert creation_growth(pd.Series([], dtype="datetime64[ns]"), end, cuts).tolist() == [1.0, 1.0, 1.0]


def test_a_score_within_the_label_horizon_becomes_a_chance_to_win_at_all():
    # half_within_thirty_days_crm: a deal just entered in X closes within 30 days with chance 1/2 if
    # it wins, and always within 61. as_of 2024-04-30 leaves 61 days of 2024-Q2. NEW is scored 0.3
    # as a chance of winning within H = 30 days: a chance of 0.3 / (1/2) = 0.6 of winning at all,
    # all of it inside 2024-Q2. The other open deals have no score: their stage's 0.5 is used as it is.
    deals, history, as_of = half_within_thirty_days_crm()
    timing = CloseTiming.fit(deals, history, CATALOG, as_of)
    scores = pd.DataFrame({"deal_id": ["NEW"], "win_probability": [0.3]})
    common = dict(scores=scores, timing=timing, quotas=None, draws=200, seed=3, only_quarter="2024-Q2", outlier_ranges=False)
    forecast = build_forecast(deals, history, CATALOG, as_of, label_horizon_days=30.0, **common)
    new = forecast.contributions.set_index("deal_id").loc["NEW"]
    within = timing.probability_closed_by(open_at(deals, history, as_of, ["NEW"]), as_of_end(as_of) + pd.Timedelta(days=30))[0]
    assert within == pytest.approx(0.5, rel=0.05)
    assert new["horizon_factor"] == pytest.approx(1 / within)
    assert new["close_in_quarter_probability"] == pytest.approx(1.0)
    assert new["win_in_quarter_probability"] == pytest.approx(0.3 / within)
    others = forecast.contributions[forecast.contributions["deal_id"] != "NEW"]
    assert len(others) > 0 and (others["horizon_factor"] == 1.0).all() and (others["win_probability"] == 0.5).all()
    # Without a label horizon the score is taken as it is.
    plain = build_forecast(deals, history, CATALOG, as_of, **common).contributions.set_index("deal_id").loc["NEW"]
    assert plain["horizon_factor"] == 1.0 and plain["win_in_quarter_probability"] == pytest.approx(0.3)
    # Either way the contributions add up to the expected revenue.
    total = forecast.quarterly.query("segment_type == 'all'").iloc[0]
    assert total["expected"] == pytest.approx(total["closed_won_to_date"] + forecast.contributions["contribution"].sum() + total["new_deals_expected"])


def go_live_crm(keyed_at_close: bool):
    """A CRM that went live on 2023-07-01 with a bulk import (I1, I2, I3 all created at 09:00 that
    day, whatever their real age), then deals entered as they come. With `keyed_at_close` the reps
    enter K1, K2, K3 only once won (won an hour or two after creation); otherwise they are won ten
    days after creation. N1 is entered early and won 86 days later either way."""
    won_after = {True: " 11:00", False: ""}
    deals = [
        deal("I1", "2023-07-01 09:00", 200.0, "Ben"),
        deal("I2", "2023-07-01 09:00", 80.0, "Ana"),
        deal("I3", "2023-07-01 09:00", 500.0, "Ana"),
        deal("K1", "2023-09-05 10:00", 40.0, "Ana"),
        deal("N1", "2023-09-20 10:00", 50.0, "Ben"),
        deal("K2", "2023-11-20 10:00", 30.0, "Ana"),
        deal("K3", "2024-01-10 10:00", 60.0, "Ben"),
    ]
    def won(created_day, ten_days_later):
        return created_day + won_after[True] if keyed_at_close else ten_days_later
    events = [
        ("I1", "2023-07-01 09:00", "X"), ("I1", "2023-12-10", "Closed Won"),
        ("I2", "2023-07-01 09:00", "X"), ("I2", "2024-02-20", "Closed Won"),
        ("I3", "2023-07-01 09:00", "X"), ("I3", "2023-10-02", "Closed Lost"),
        ("K1", "2023-09-05 10:00", "Negotiate"), ("K1", won("2023-09-05", "2023-09-15"), "Closed Won"),
        ("N1", "2023-09-20 10:00", "Qualify"), ("N1", "2023-12-15", "Closed Won"),
        ("K2", "2023-11-20 10:00", "Negotiate"), ("K2", won("2023-11-20", "2023-11-30"), "Closed Won"),
        ("K3", "2024-01-10 10:00", "Negotiate"), ("K3", won("2024-01-10", "2024-01-20"), "Closed Won"),
    ]
    return make_crm(deals, events)


# go_live_crm seen at the end of AS_OF (2024-05-16), forecasting 2024-Q2: the matching points are
# the ends of 2023-08-15, 2023-11-15 and 2024-02-15. Creation growth is 1 for the first two (under
# 182 days of data); for 2024-Q1 a 228-day window (from the end of the import day, 2023-07-02):
# K2 and K3 now, K1, N1, K2 and K3 then: (2 + 10) / (4 + 10).
GO_LIVE_GROWTH_Q1 = 12 / 14


def test_wins_of_a_go_live_import_count_as_new_deals_by_the_keyed_at_close_share():
    deals, history = go_live_crm(keyed_at_close=True)
    # Won deals not imported: K1, K2 and K3 were entered at most a day before their win, N1 was not.
    share = 3 / 4
    # 2023-Q3: K1 (40, entered after Aug 15). 2023-Q4: K2 (30); N1 was entered before Nov 15; I1
    # (imported, won Dec 10, after the point) counts 200 x 3/4. 2024-Q1: K3 was entered before
    # Feb 15; I2 (imported, won Feb 20) counts 80 x 3/4, times the quarter's growth.
    expected = [40.0, 30.0 + 200.0 * share, 80.0 * share * GO_LIVE_GROWTH_Q1]
    stream = new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "all")
    assert list(stream.index) == ["2023-Q3", "2023-Q4", "2024-Q1"]
    assert stream["all"].tolist() == pytest.approx(expected)
    owners = new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "owner")
    assert owners["Ben"].tolist() == pytest.approx([0.0, 150.0, 0.0])  # I1
    assert owners["Ana"].tolist() == pytest.approx([40.0, 30.0, 60.0 * GO_LIVE_GROWTH_Q1])  # K1, K2, I2

    frame = run_forecast(deals, history, pd.DataFrame({"deal_id": [], "win_probability": []}))
    q2 = row(frame, "2024-Q2")
    assert q2["new_deals_expected"] == pytest.approx(sum(expected) / 3)
    assert q2["new_deals_imported"] == pytest.approx((150.0 + 60.0 * GO_LIVE_GROWTH_Q1) / 3)
    assert q2["expected"] == pytest.approx(sum(expected) / 3)  # nothing won or open in 2024-Q2


def test_without_the_keyed_at_close_habit_a_go_live_import_adds_no_new_deals():
    deals, history = go_live_crm(keyed_at_close=False)
    # Every won deal not imported was open for days: share 0, so I1 and I2 count for nothing.
    stream = new_deal_stream(deals, history, AS_OF, "2024-Q2", 1, "all")
    assert stream["all"].tolist() == pytest.approx([40.0, 30.0, 0.0])
    q2 = row(run_forecast(deals, history, pd.DataFrame({"deal_id": [], "win_probability": []})), "2024-Q2")
    assert q2["new_deals_imported"] == 0.0 and q2["new_deals_expected"] == pytest.approx(70.0 / 3)


def new_deal_law(quarters, shift=0.0, max_count=60):
    """The exact law of the new-deal stream: one of the L past quarters picked uniformly, then each
    of its wins (amounts) taken K times, independently, K negative binomial with r = L and
    p = L / (L + 1): P(K = k) = C(k + L - 1, k) p^L (1 - p)^k (mean 1, variance 1 + 1/L).
    {revenue: probability}, by enumerating K up to `max_count` (the remaining mass is below 1e-15)."""
    r = len(quarters)
    p = r / (r + 1)
    counts_law = [math.comb(k + r - 1, k) * p**r * (1 - p) ** k for k in range(max_count + 1)]
    law: dict[float, float] = {}
    for wins in quarters:
        for counts in itertools.product(range(max_count + 1), repeat=len(wins)) if len(wins) < 3 else []:
            probability = np.prod([counts_law[k] for k in counts]) / len(quarters)
            revenue = shift + sum(k * a for k, a in zip(counts, wins))
            law[revenue] = law.get(revenue, 0.0) + probability
    return law


def quantile_range(law, q):
    """Where the inverted-CDF q-quantile of 10,000 draws must land: between the exact quantiles at
    q -/+ the sampling margin."""
    values = sorted(law)
    cdf = np.cumsum([law[v] for v in values])
    return values[int(np.argmax(cdf >= q - SAMPLING_MARGIN))], values[int(np.argmax(cdf >= q + SAMPLING_MARGIN))]


def quantile_range_with_level(law, q, sd, shift=0.0):
    """`quantile_range` when each draw's new-deal revenue (the law's value less `shift`) is also
    multiplied by a log-normal factor of mean 1 and log spread `sd`: the exact q -/+ margin
    quantiles of the mixture, P(X <= t) = sum_x P(x) Phi((ln((t - shift) / (x - shift)) + sd^2 / 2) / sd),
    found by bisection."""
    values = np.array(sorted(law))
    weights = np.array([law[v] for v in values])
    new = values - shift

    def cdf(t):
        if t < shift:
            return 0.0
        at_zero = weights[new <= 0].sum()
        positive = new > 0
        if t == shift:
            return at_zero
        z = (np.log((t - shift) / new[positive]) + sd * sd / 2) / sd
        return at_zero + float(np.sum(weights[positive] * 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))))

    def quantile(p):
        if cdf(shift) >= p:
            return shift
        low, high = shift, shift + 50 * max(new.max(), 1.0)
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if cdf(middle) < p else (low, middle)
        return high

    return quantile(q - SAMPLING_MARGIN), quantile(q + SAMPLING_MARGIN)


def test_the_level_factor_of_new_deals_by_hand():
    # One past quarter (a CRM's first): nothing to read its spread from, the prior's 0.25 and
    # sd^2 = 0.25^2 x 2 / 1: the draws would otherwise all repeat that quarter's level.
    assert run_rate_level_sd(np.array([5.0, 7.0]), np.array([0, 0]), 1) == pytest.approx(0.25 * math.sqrt(2))
    # Two quarters of 100 wins each: of 1 (total 100) and of 4 (400). Log spread (ln 4)^2 / 2 =
    # 0.9609, count noise 100 / 100^2 = 0.01 in each; one degree of freedom:
    # sigma^2 = (4 x 0.0625 + 0.9609 - 0.01) / (4 + 1) = 0.24018; sd^2 = sigma^2 x 2 / 2.
    amounts = np.r_[np.ones(100), np.full(100, 4.0)]
    quarters = np.r_[np.zeros(100, dtype=int), np.ones(100, dtype=int)]
    assert run_rate_level_sd(amounts, quarters, 2) == pytest.approx(math.sqrt((0.25 + math.log(4) ** 2 / 2 - 0.01) / 5), rel=1e-6)
    # The same totals from one win each: the count noise (1 a quarter) explains the spread; the prior alone.
    assert run_rate_level_sd(np.array([100.0, 400.0]), np.array([0, 1]), 2) == pytest.approx(math.sqrt(0.25 / 5))
    # Eight quarters exactly alike: sigma^2 = 4 x 0.0625 / (4 + 7) and sd^2 = sigma^2 x 2 / 8.
    eight = run_rate_level_sd(np.full(800, 1.0), np.repeat(np.arange(8), 100), 8)
    assert eight == pytest.approx(math.sqrt(0.25 / 11 * 2 / 8))
    assert run_rate_level_sd(np.array([]), np.array([], dtype=int), 0) == 0.0
    # The factors: mean 1 (the forecast's expected does not move), log spread sd.
    factors = level_factors(400_000, 0.5, 3)
    assert factors.mean() == pytest.approx(1.0, abs=0.005)
    assert np.log(factors).std() == pytest.approx(0.5, abs=0.002)
    assert (level_factors(10, 0.0, 3) == 1.0).all()


def test_a_young_crm_forecasts_its_next_quarter_with_the_level_it_cannot_read_yet():
    # Data from 2024-01-02; 2024-Q1 is the only past quarter: 300 deals of 10 created after its
    # matching point (Feb 15) and won inside it. Nothing is open or won in 2024-Q2 yet.
    deals = [deal("START", "2024-01-02", 5.0, "Ben")]
    events = [("START", "2024-01-02", "Qualify"), ("START", "2024-01-20", "Closed Lost")]
    for i in range(300):
        deals.append(deal(f"W{i}", "2024-02-20", 10.0, "Ben"))
        events += [(f"W{i}", "2024-02-20", "X"), (f"W{i}", "2024-03-10", "Closed Won")]
    deals_frame, history = make_crm(deals, events)
    q2 = row(run_forecast(deals_frame, history, pd.DataFrame({"deal_id": [], "win_probability": []})), "2024-Q2")
    assert q2["expected"] == pytest.approx(3000.0)
    # The draws: 10 x K, K the sum of 300 NB(1, 1/2) counts = NB(300, 1/2) (mean 300, sd 24.5: the
    # count noise alone puts P90 near 3,314), times the level factor of one past quarter,
    # log-normal with sd 0.25 x sqrt 2.
    counts = np.arange(0, 1200)
    law = dict(zip(10.0 * counts, stats.nbinom.pmf(counts, 300, 0.5)))
    for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        low, high = quantile_range_with_level(law, q, sd=0.25 * math.sqrt(2))
        assert low <= q2[name] <= high, (name, low, q2[name], high)
    assert q2["p90"] > 4000.0 and q2["p10"] < 2100.0


def test_new_deal_copies_move_to_the_mix_without_changing_the_total():
    # One past quarter with one win of 100 in segment A (codes: column 0 the total, 0; column 1 the
    # segment, A = 1, B = 2); the mix is one row in B. K ~ NB(1, 1/2): P(K = k) = (1/2)^(k + 1).
    # Each copy stays in A with probability 1/2, so P(nothing in A) = sum_k (1/2)^(k + 1) (1/2)^k
    # = (1/2) / (1 - 1/4) = 2/3, while P(total 0) stays P(K = 0) = 1/2; A and B 50 each on average.
    draws = 200_000
    result = simulate_new_deals(
        np.array([100.0]), np.array([0]), np.array([[0, 1]]), 1, 3, draws, 7,
        mix_share=0.5, mix_codes=np.array([[0, 2]]), mix_weights=np.array([1.0]),
    )
    total, a, b = result[:, 0], result[:, 1], result[:, 2]
    assert np.array_equal(total, a + b)
    margin = 5 * np.sqrt(0.25 / draws)
    assert (a == 0).mean() == pytest.approx(2 / 3, abs=margin)
    assert (total == 0).mean() == pytest.approx(1 / 2, abs=margin)
    # mean 50 each: the standard deviation of 100 K is 100 sqrt(2)
    assert a.mean() == pytest.approx(50.0, abs=5 * 100 * np.sqrt(2) / np.sqrt(draws))
    assert b.mean() == pytest.approx(50.0, abs=5 * 100 * np.sqrt(2) / np.sqrt(draws))
    # Without the mix every copy stays in A; the total's law is the same.
    plain = simulate_new_deals(np.array([100.0]), np.array([0]), np.array([[0, 1]]), 1, 3, draws, 7)
    assert np.array_equal(plain[:, 0], plain[:, 1]) and (plain[:, 2] == 0).all()
    assert (plain[:, 0] == 0).mean() == pytest.approx(1 / 2, abs=margin)


def test_a_new_deal_copy_can_take_any_past_win_s_amount():
    # One past quarter: a win of 100 in A (code 1) and one of 900 in B (code 2); column 0 the total.
    # Each copy keeps its win's amount with probability 1/2, else takes 100 or 900 alike. A's win is
    # taken K ~ NB(1, 1/2) times, P(K = k) = (1/2)^(k + 1); each copy is 900 with probability 1/4, so
    # P(no copy of 900 in A) = sum_k (1/2)^(k + 1) (3/4)^k = (1/2) / (1 - 3/8) = 0.8. Means: A
    # 1/2 x 100 + 1/2 x 500 = 300, B 1/2 x 900 + 1/2 x 500 = 700, the total 1,000 as without.
    draws = 200_000
    result = simulate_new_deals(
        np.array([100.0, 900.0]), np.array([0, 0]), np.array([[0, 1], [0, 2]]), 1, 3, draws, 11, amount_share=0.5,
    )
    total, a, b = result[:, 0], result[:, 1], result[:, 2]
    assert np.array_equal(total, a + b)
    assert (a >= 900).mean() == pytest.approx(0.2, abs=5 * np.sqrt(0.16 / draws))
    assert a.mean() == pytest.approx(300.0, rel=0.02)
    assert b.mean() == pytest.approx(700.0, rel=0.02)
    assert total.mean() == pytest.approx(1000.0, rel=0.02)
    assert new_deal_segment_means(
        np.array([100.0, 900.0]), np.array([0, 0]), np.array([[0, 1], [0, 2]]), 1, 3, amount_share=0.5
    ).tolist() == pytest.approx([1000.0, 300.0, 700.0])
    # Without the share A only ever holds multiples of 100 below 900 with the same probability.
    plain = simulate_new_deals(np.array([100.0, 900.0]), np.array([0, 0]), np.array([[0, 1], [0, 2]]), 1, 3, draws, 11)
    assert (plain[:, 1] % 100 == 0).all() and plain[:, 1].mean() == pytest.approx(100.0, rel=0.02)
    with pytest.raises(ValueError, match="amount_share"):
        simulate_new_deals(np.array([1.0]), np.array([0]), np.array([[0, 1]]), 1, 3, 10, 1, amount_share=1.5)


def test_new_deal_segment_means_with_amounts_and_segments_drawn_towards_everyone():
    # Quarter 0: 100 in A (code 1), 300 in B (code 2) and a win with no amount in A (not drawn);
    # quarter 1: 300 in B. Amount share 1/2: quarter 0's pool mean is 200, so A 50 + 100 = 150,
    # B 150 + 100 = 250; quarter 1: B 300. Over the two quarters: total 350, A 75, B 275. Mix share
    # 0.2 towards a mix of half A, half B: A 0.8 x 75 + 0.2 x 350 / 2 = 95, B 0.8 x 275 + 35 = 255.
    values = np.array([100.0, 300.0, 0.0, 300.0])
    codes = np.array([[0, 1], [0, 2], [0, 1], [0, 2]])
    means = new_deal_segment_means(
        values, np.array([0, 0, 0, 1]), codes, 2, 3, mix_share=0.2, mix_shares=np.array([1.0, 0.5, 0.5]), amount_share=0.5,
    )
    assert means.tolist() == pytest.approx([350.0, 95.0, 255.0])
    # The draws sample that law: the same wins, mix rows one in A and one in B of equal weight.
    draws = 200_000
    result = simulate_new_deals(
        values, np.array([0, 0, 0, 1]), codes, 2, 3, draws, 5,
        mix_share=0.2, mix_codes=np.array([[0, 1], [0, 2]]), mix_weights=np.array([1.0, 1.0]), amount_share=0.5,
    )
    assert result.mean(axis=0).tolist() == pytest.approx([350.0, 95.0, 255.0], rel=0.02)


def test_a_small_org_s_owner_can_win_a_deal_as_large_as_anyone_s():
    # 2024-Q1 is the only past quarter: after its matching point Ana won a new deal of 100 and Ben
    # one of 900. Two wins a quarter: share 10 / (2 + 10) = 5/6, for the amount and the segment.
    # Ana's own run-rate with amounts drawn towards the quarter's mean (500): 1/6 x 100 + 5/6 x 500
    # = 433.33; towards the last year's won money (Ana 100 of 1,000): 1/6 x 433.33 + 5/6 x 1,000 x
    # 0.1 = 155.56; Ben 1/6 x (150 + 416.67) + 5/6 x 900 = 844.44. (Amounts kept: Ana 100.)
    deals = [deal("START", "2024-01-02", 5.0, "Ben")]
    events = [("START", "2024-01-02", "Qualify"), ("START", "2024-01-20", "Closed Lost")]
    for name, owner, amount in (("WA", "Ana", 100.0), ("WB", "Ben", 900.0)):
        deals.append(deal(name, "2024-02-20", amount, owner))
        events += [(name, "2024-02-20", "X"), (name, "2024-03-10", "Closed Won")]
    deals_frame, history = make_crm(deals, events)
    frame = run_forecast(deals_frame, history, pd.DataFrame({"deal_id": [], "win_probability": []}))
    assert row(frame, "2024-Q2")["new_deals_expected"] == pytest.approx(1000.0)
    assert row(frame, "2024-Q2", "owner", "Ana")["new_deals_expected"] == pytest.approx(1400 / 9)
    assert row(frame, "2024-Q2", "owner", "Ben")["new_deals_expected"] == pytest.approx(7600 / 9)


def test_new_deal_mix_share_and_where_the_mix_puts_money():
    # Three wins with an amount in one past quarter: 10 / (3 + 10); over two quarters 1.5 a quarter.
    assert stream_mix_share(np.array([5.0, 0.0, 7.0, 9.0]), 1) == pytest.approx(10 / 13)
    assert stream_mix_share(np.array([5.0, 0.0, 7.0, 9.0]), 2) == pytest.approx(10 / 11.5)
    assert stream_mix_share(np.array([5.0]), 0) == 0.0
    # Mix rows: 30 in A (code 1), 10 in B (code 2), 60 in A again: A 90 / 100, B 10 / 100, total 1.
    shares = mix_revenue_shares(np.array([[0, 1], [0, 2], [0, 1]]), np.array([30.0, 10.0, 60.0]), 3)
    assert shares.tolist() == pytest.approx([1.0, 0.9, 0.1])
    with pytest.raises(ValueError, match="mix"):
        simulate_new_deals(
            np.array([1.0]), np.array([0]), np.array([[0, 1]]), 1, 3, 10, 1,
            mix_share=0.5, mix_codes=np.array([[0]]), mix_weights=np.array([1.0]),
        )


def test_forecast_bootstraps_past_quarters_for_new_deals():
    deals, history = stream_crm()
    frame = run_forecast(deals, history, pd.DataFrame({"deal_id": [], "win_probability": []}))

    # 2024-Q2: won so far N5 (Ana, 70); new deals: a past quarter with 60, 30 or 100 x 14/13
    # (one win each, scaled by its creation growth), each win taken K ~ NB(3, 3/4) times.
    stream = [60.0, 30.0, 100.0 * GROWTH_Q1]
    q2 = row(frame, "2024-Q2")
    assert q2["new_deals_expected"] == pytest.approx(sum(stream) / 3)
    assert q2["new_deals_trend"] == pytest.approx((sum(stream) - 190.0) / 3)
    assert q2["expected"] == pytest.approx(70 + sum(stream) / 3)
    law = new_deal_law([[v] for v in stream], shift=70.0)
    assert sum(law.values()) == pytest.approx(1.0)
    # P(no new deal) = (3/4)^3 = 0.42 > 0.1: P10 is the closed won amount alone.
    assert q2["p10"] == 70.0
    # Each draw's new deals times a log-normal level factor: three quarters of one win each, whose
    # log spread (0.82) is less than their wins' count noise explains (1 a quarter, 2 degrees of
    # freedom), so the prior alone: sigma^2 = 4 x 0.25^2 / (4 + 2) = 1/24; sd^2 = sigma^2 x 2 / 3 = 1/36.
    for name, q in (("p50", 0.5), ("p90", 0.9)):
        low, high = quantile_range_with_level(law, q, sd=1 / 6, shift=70.0)
        assert low <= q2[name] <= high, (name, low, q2[name], high)
    ana, ben = row(frame, "2024-Q2", "owner", "Ana"), row(frame, "2024-Q2", "owner", "Ben")
    # Which owner the new deals go to: one win a quarter, so a copy keeps its owner with probability
    # 1 - 10 / (1 + 10) and otherwise goes where the last year's won money went: N0 60, N3 100 for
    # Ben, N2 30, N4 50, N5 70 for Ana (booked 2023-05-17 .. 2024-05-16): Ana 150 / 310.
    total, share = sum(stream) / 3, 10 / 11
    ana_new = (1 - share) * stream[1] / 3 + share * total * 150 / 310
    ben_new = (1 - share) * (stream[0] + stream[2]) / 3 + share * total * 160 / 310
    assert ana["new_deals_expected"] == pytest.approx(ana_new) and ben["new_deals_expected"] == pytest.approx(ben_new)
    assert ana["expected"] == pytest.approx(70 + ana_new) and ben["expected"] == pytest.approx(ben_new)
    # Without the mix Ana would get only N2's 30, a third of the time: 10 on average.
    assert ana_new > stream[1] / 3
    assert ana["p10"] == 70.0 and ben["p10"] == 0.0
    # the same past quarter is drawn for every segment: owners add up to the total
    assert ana["expected"] + ben["expected"] == pytest.approx(q2["expected"])

    # 2024-Q3: a past quarter with {30} or {100, 50}: expected (30 + 150) / 2 = 90.
    q3 = row(frame, "2024-Q3")
    assert q3["expected"] == pytest.approx(90.0) and q3["new_deals_trend"] == 0.0
    law = new_deal_law([[30.0], [100.0, 50.0]])
    assert q3["p10"] == 0.0  # P(0) = ((2/3)^2 + (2/3)^4) / 2 = 0.32 (K ~ NB(2, 2/3))
    # The level: log totals ln 30, ln 150 spread (ln 5)^2 / 2 = 1.2951; count noise 1 and
    # (100^2 + 50^2) / 150^2 = 5/9, mean 7/9, one degree of freedom: (0.25 + 1.2951 - 0.7778) / 5.
    sd = math.sqrt((0.25 + math.log(5) ** 2 / 2 - 7 / 9) / 5 * 2 / 2)
    low, high = quantile_range_with_level(law, 0.9, sd=sd)
    assert low <= q3["p90"] <= high
