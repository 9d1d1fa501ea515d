"""How reps key wins in: the share keyed in at close and the keying lag (models.keying), by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.keying import MAX_WEIGHT, KeyingLag, keyed_at_close_share

END = pd.Timestamp("2024-06-30 23:59:59.999999")


def lag_fixture():
    """Six wins seen at the end of 2024-06-30: (booking day, day marked won).

    Booked 2024-05-01 (60 days before END): two keyed in on the day, one 10 days later.
    Booked 2024-06-10 (20 days before): one on the day, one 10 days later.
    Booked 2024-06-25 (5 days before): one on the day.
    """
    booked = pd.to_datetime(["2024-05-01", "2024-05-01", "2024-05-01", "2024-06-10", "2024-06-10", "2024-06-25"])
    marked = pd.to_datetime(
        ["2024-05-01 10:00", "2024-05-01 15:00", "2024-05-11 09:00", "2024-06-10 12:00", "2024-06-20 12:00", "2024-06-25 16:00"]
    )
    return pd.Series(marked), pd.Series(booked)


def test_keying_lag_by_hand():
    marked, booked = lag_fixture()
    lag = KeyingLag.fit(marked, booked, END)
    # Lags 0, 0, 10, 0, 10, 0; windows 60, 60, 60, 20, 20, 5. The only lag with wins beyond 0 is
    # j = 10: at risk are the wins with lag <= 10 and window >= 10 (the five booked 2024-05-01 and
    # 2024-06-10), two of them with lag 10: h_10 = 2/5. So F(l) = 1 for l >= 10 and
    # F(l) = 1 - 2/5 = 3/5 for l < 10.
    assert lag.recorded[10] == 1.0 and lag.recorded[60] == 1.0
    assert lag.recorded[9] == pytest.approx(0.6) and lag.recorded[0] == pytest.approx(0.6)
    assert (lag.wins, lag.late_wins) == (6, 2)
    # A win booked 5 days before END stands for 1 / (3/5) = 5/3 wins; one booked 20 days before, 1.
    weights = lag.weights(pd.Series(pd.to_datetime(["2024-06-25", "2024-06-10", "2024-01-01"])), END)
    assert weights.tolist() == pytest.approx([5 / 3, 1.0, 1.0])


def test_a_win_never_counts_more_than_the_cap():
    # Nine wins booked 30 days before END, keyed in 20 days later, one keyed in on its day, and one
    # booked the day before END: h_20 = 9/10, F(l < 20) = 1/10, a weight of 10 capped at MAX_WEIGHT.
    booked = pd.Series(pd.to_datetime(["2024-05-31"] * 10 + ["2024-06-29"]))
    marked = pd.Series(pd.to_datetime(["2024-06-20 10:00"] * 9 + ["2024-05-31 10:00", "2024-06-29 10:00"]))
    lag = KeyingLag.fit(marked, booked, END)
    assert lag.recorded[0] == pytest.approx(0.1)
    assert lag.weights(pd.Series(pd.to_datetime(["2024-06-29"])), END).tolist() == [MAX_WEIGHT]


def test_wins_keyed_in_on_their_day_need_no_correction():
    booked = pd.Series(pd.to_datetime(["2024-06-01", "2024-06-28", "2024-06-30"]))
    lag = KeyingLag.fit(booked + pd.Timedelta(hours=9), booked, END)
    assert np.all(lag.recorded == 1.0) and lag.late_wins == 0
    assert lag.weights(booked, END).tolist() == [1.0, 1.0, 1.0]


def test_keyed_at_close_share_by_hand():
    won = pd.DataFrame(
        {
            "created_at": pd.to_datetime(["2024-01-01 09:00", "2024-01-02 09:00", "2024-01-03 09:00", "2024-01-04 09:00"]),
            # 2 hours, 23 hours, 25 hours, 30 days after creation
            "closed_at": pd.to_datetime(["2024-01-01 11:00", "2024-01-03 08:00", "2024-01-04 10:00", "2024-02-03 09:00"]),
        }
    )
    assert keyed_at_close_share(won) == pytest.approx(2 / 4)
    assert keyed_at_close_share(won.iloc[0:0]) == 0.0
