"""The new-deal stream follows the trend of the deal creation rate: worked by hand on creation
dates laid out at known daily rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.forecast import creation_trend_factors

QUARTERS = ["2023-Q1", "2023-Q2", "2023-Q3", "2023-Q4"]
# Days in each quarter of 2023: 90, 91, 92, 92.
DAYS = {"2023-Q1": ("2023-01-01", 90), "2023-Q2": ("2023-04-01", 91), "2023-Q3": ("2023-07-01", 92), "2023-Q4": ("2023-10-01", 92)}


def _created(per_day: dict[str, float]) -> pd.Series:
    """`per_day[q]` deals created on every day of quarter q (at noon; the first at 2023-01-01 00:00
    so the data covers the whole of 2023-Q1)."""
    stamps = []
    for quarter, rate in per_day.items():
        first, days = DAYS[quarter]
        count = int(round(rate * days))
        offsets = np.linspace(0, days, count, endpoint=False)
        stamps += list(pd.Timestamp(first) + pd.to_timedelta(offsets, unit="D"))
    return pd.Series(sorted(stamps))


def test_a_linear_creation_rate_scales_each_past_quarter_to_the_target_quarter():
    # 4, 5, 6, 7 deals a day in 2023-Q1..Q4 (360, 455, 552, 644 deals): positions -4..-1 before
    # 2024-Q1, the least-squares line is 8 + x, so 2024-Q1 is at 8 deals a day and the factors are
    # 8/4 = 2 (the upper bound), 8/5 = 1.6, 8/6, 8/7.
    created = _created({"2023-Q1": 4, "2023-Q2": 5, "2023-Q3": 6, "2023-Q4": 7})
    assert created.iloc[0] == pd.Timestamp("2023-01-01")
    factors = creation_trend_factors(created, QUARTERS, "2024-Q1")
    assert factors == pytest.approx([2.0, 1.6, 8 / 6, 8 / 7], rel=1e-9)
    # For the quarter after (2024-Q2) the same quarters sit one step further back (-5..-2):
    # the line is 9 + x, reading 9 at 0: factors 9/4 -> 2 (the bound), 9/5, 9/6, 9/7.
    assert creation_trend_factors(created, QUARTERS, "2024-Q2") == pytest.approx([2.0, 1.8, 1.5, 9 / 7], rel=1e-9)


def test_a_flat_creation_rate_leaves_the_stream_as_it_was():
    created = _created({"2023-Q1": 3, "2023-Q2": 3, "2023-Q3": 3, "2023-Q4": 3})
    assert creation_trend_factors(created, QUARTERS, "2024-Q1") == pytest.approx([1.0, 1.0, 1.0, 1.0], rel=1e-9)


def test_a_shrinking_rate_lowers_the_stream_within_the_bound():
    # 7, 6, 5, 4 a day: the line is 3 - x, reading 3 at 0; factors 3/7, 3/6, 3/5, 3/4, with 3/7
    # raised to the lower bound 0.5.
    created = _created({"2023-Q1": 7, "2023-Q2": 6, "2023-Q3": 5, "2023-Q4": 4})
    assert creation_trend_factors(created, QUARTERS, "2024-Q1") == pytest.approx([0.5, 0.5, 0.6, 0.75], rel=1e-9)


def test_too_little_evidence_means_no_trend():
    growing = _created({"2023-Q1": 4, "2023-Q2": 5, "2023-Q3": 6, "2023-Q4": 7})
    # Three past quarters only.
    assert creation_trend_factors(growing, QUARTERS[1:], "2024-Q1").tolist() == [1.0, 1.0, 1.0]
    # A quarter with fewer than 30 deals created (0.3 a day in 2023-Q2: 27 deals).
    thin = _created({"2023-Q1": 4, "2023-Q2": 0.3, "2023-Q3": 6, "2023-Q4": 7})
    assert creation_trend_factors(thin, QUARTERS, "2024-Q1").tolist() == [1.0, 1.0, 1.0, 1.0]
    # A line falling below zero by the target quarter: 40, 20, 1, 1 a day give the line
    # -18.5 - 13.6 x (slope: sum of (x - -2.5)(y - 15.5) = -68 over 5), -18.5 at 0: not a rate, so no
    # trend rather than a negative stream.
    falling = _created({"2023-Q1": 40, "2023-Q2": 20, "2023-Q3": 1, "2023-Q4": 1})
    assert creation_trend_factors(falling, QUARTERS, "2024-Q1").tolist() == [1.0, 1.0, 1.0, 1.0]
