"""How an org's reps key wins into the CRM, read from the won deals, for the new-deal run-rate.

Two habits change what a past quarter's won deals look like at as_of, and so what they say about
the deals not yet created (`models.forecast.new_deal_stream`):

- **Keyed in at close** (`keyed_at_close_share`): many reps enter a deal only once it is won, so it
  is never open in the CRM before its win. Under that habit a deal of the CRM's go-live import
  would have been entered at its win; the stream counts such a win by the share of the other wins
  keyed in at close.
- **Keyed in late** (`KeyingLag`): a win is often keyed in days or weeks after it happened, with its
  close date (the booking date, `etl.bookings`) set back to the real day. At as_of, the last weeks'
  wins are then only partly in the CRM. The lag of each recorded win (the day it was marked won
  minus its booking date) gives the share of wins booked w days before as_of that are already
  recorded, F(w); each recorded win of a past quarter counts 1 / F(w), so the quarter counts as it
  will once every win is keyed in.

F is the product-limit estimator for right-truncated delays (as used to nowcast reported events):
with lag_i and window w_i = as_of - booking day of each recorded win, for each lag j in days the
hazard h_j = #{lag_i = j} / #{lag_i <= j <= w_i} (the wins that would have been seen with lag j,
among those recorded with lag at most j), and F(l) = prod over j > l of (1 - h_j). Lags beyond
`MAX_LAG_DAYS` are not corrected (F is 1 from there), and one win counts at most `MAX_WEIGHT` times,
so a handful of recent wins cannot be blown up by a hazard read from few deals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.bookings import DEFAULT_KEYED_AT_CLOSE_HOURS, keyed_in_at_close

# Keying lags beyond half a year are not corrected (a win keyed in that late is a clean-up, not a habit).
MAX_LAG_DAYS = 182
# A recorded win stands for at most this many wins.
MAX_WEIGHT = 3.0
_DAY = np.timedelta64(1, "D")


def keyed_at_close_share(won: pd.DataFrame, hours: float = DEFAULT_KEYED_AT_CLOSE_HOURS) -> float:
    """The share of `won` deals (rows of a pipeline state: created_at, closed_at) created less than
    `hours` before they were marked won (`etl.bookings.keyed_in_at_close`): deals a rep keys in
    only once decided. 0 without won deals."""
    if won.empty:
        return 0.0
    return float(keyed_in_at_close(won["created_at"], won["closed_at"], hours).mean())


@dataclass(frozen=True)
class KeyingLag:
    """The share of wins already keyed in, F(w), by days w between their booking date and as_of.

    `recorded[w]` = F(w) for w in 0..MAX_LAG_DAYS (1 from there on); `wins` how many recorded wins
    the estimate rests on; `late_wins` how many of them were keyed in a day or more after their
    booking date.
    """

    recorded: np.ndarray
    wins: int
    late_wins: int

    @classmethod
    def fit(cls, closed_at: pd.Series, booked: pd.Series, end: pd.Timestamp, max_lag_days: int = MAX_LAG_DAYS) -> "KeyingLag":
        """From recorded wins: `closed_at` (the moment each was marked won), `booked` (its booking
        day) and `end` (the instant they are seen at). Wins booked after they were marked won
        count as lag 0; wins without either time are left out."""
        closed = pd.to_datetime(closed_at).to_numpy(dtype="datetime64[us]")
        day = pd.to_datetime(booked).to_numpy(dtype="datetime64[us]")
        known = ~np.isnat(closed) & ~np.isnat(day)
        closed, day = closed[known], day[known]
        end_day = np.datetime64(pd.Timestamp(end).normalize(), "us")
        lag = np.clip(((closed.astype("datetime64[D]") - day.astype("datetime64[D]")) // _DAY).astype("int64"), 0, None)
        window = ((end_day.astype("datetime64[D]") - day.astype("datetime64[D]")) // _DAY).astype("int64")
        window = np.maximum(window, lag)
        # Counts per day up to the longest lag corrected; longer lags and windows in one bucket past it.
        bins = max_lag_days + 2
        hits = np.bincount(np.minimum(lag, max_lag_days + 1), minlength=bins)
        windows = np.bincount(np.minimum(window, max_lag_days + 1), minlength=bins)
        # At risk at lag j: recorded with lag <= j and a window >= j, i.e. #{lag <= j} - #{window < j}
        # (a window below j implies a lag below j).
        lag_at_most = np.cumsum(hits)
        window_below = np.concatenate([[0], np.cumsum(windows)[:-1]])
        j = np.arange(1, max_lag_days + 1)
        at_risk = lag_at_most[j] - window_below[j]
        hazard = np.divide(hits[j], at_risk, out=np.zeros(len(j)), where=at_risk > 0)
        # F(l) = prod_{j > l} (1 - h_j): recorded[l] for l = 0..max_lag_days - 1, and 1 at max_lag_days.
        recorded = np.append(np.cumprod((1.0 - hazard)[::-1])[::-1], 1.0)
        return cls(recorded=recorded, wins=int(len(lag)), late_wins=int(np.count_nonzero(lag >= 1)))

    def weights(self, booked: pd.Series, end: pd.Timestamp) -> np.ndarray:
        """How many wins each recorded win booked on `booked` stands for at `end`: 1 / F(w), at
        most `MAX_WEIGHT`; 1 where the booking day is unknown."""
        day = pd.to_datetime(booked).to_numpy(dtype="datetime64[us]")
        end_day = np.datetime64(pd.Timestamp(end).normalize(), "us").astype("datetime64[D]")
        window = (end_day - day.astype("datetime64[D]")) // _DAY
        weight = np.ones(len(day))
        known = ~np.isnat(day)
        index = np.clip(window[known].astype("int64"), 0, len(self.recorded) - 1)
        share = self.recorded[index]
        weight[known] = np.where(share > 0, np.minimum(1.0 / np.maximum(share, 1e-12), MAX_WEIGHT), MAX_WEIGHT)
        return weight
