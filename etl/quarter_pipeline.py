"""The open pipeline of a period: one definition for the forecast, pipeline coverage and the waterfall.

At an instant t (a run's as_of: the end of that day), the **open pipeline of a period P** is the
set of deals open at t whose expected close date, as it stood at t, is before P's end, and:

- for the period containing t: any date before its end. Deals whose expected close date has
  already passed are in it (they are **overdue**: if they close at all, they close from t on, so in
  this period or later); they are never left out, and `overdue` marks them.
- for a later period: a date inside that period.
- for an earlier period: none. It is over; its deals still open are overdue deals of the
  current period.

Deals without an expected close date are in no period's pipeline. Every open deal with a date is
therefore in exactly one period's pipeline: the one containing its **pipeline date**
max(expected close date, first day of the current period) (`pipeline_dates`).

`pipeline_waterfall` uses the same rule at every instant it looks at (`closes_by`: a period's
pipeline at t is the deals open at t expected to close before the period ends), so its end value
for the period containing as_of is the open pipeline here; `pipeline_coverage` and
`models.forecast` place deals in quarters with `pipeline_dates`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from etl.periods import quarter_start
from etl.schema import TIMESTAMP


def _dates(values) -> np.ndarray:
    """Dates or timestamps as datetime64[us] (NaT where missing)."""
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
        return values.astype(TIMESTAMP, copy=False)
    return np.asarray(pd.to_datetime(pd.Series(values)).to_numpy(dtype=TIMESTAMP))


def closes_by(expected_close, period_end) -> np.ndarray:
    """True where a deal's expected close date is known and before `period_end` (the instant just
    after the period's last day): the waterfall's and this module's membership rule, vectorised
    (`period_end` a scalar or an array as long as `expected_close`)."""
    expected = _dates(expected_close)
    end = np.asarray(period_end, dtype=TIMESTAMP)
    with np.errstate(invalid="ignore"):
        return ~np.isnat(expected) & (expected < end)


def overdue(expected_close, as_of: dt.date | pd.Timestamp) -> np.ndarray:
    """True where an open deal's expected close date is before the as_of day (already past at the
    end of as_of). The same rule as the `overdue_open_deals` data-quality warning."""
    expected = _dates(expected_close)
    day = np.datetime64(pd.Timestamp(as_of).date(), "D").astype(TIMESTAMP)
    return ~np.isnat(expected) & (expected < day)


def pipeline_dates(expected_close, as_of: dt.date | pd.Timestamp, fiscal_year_start_month: int = 1) -> np.ndarray:
    """The date that places each open deal in a quarter's open pipeline at the end of `as_of`:
    its expected close date, or the first day of the quarter containing as_of when that is later
    (overdue deals belong to the current quarter). NaT where the expected close date is unknown.
    Put a deal in the quarter whose [start, end) holds this date."""
    expected = _dates(expected_close)
    first = np.datetime64(quarter_start(pd.Timestamp(as_of), fiscal_year_start_month), "us")
    return np.where(np.isnat(expected), expected, np.maximum(expected, first))


def in_quarter_pipeline(
    expected_close, as_of: dt.date | pd.Timestamp, start: pd.Timestamp, end: pd.Timestamp, fiscal_year_start_month: int = 1
) -> np.ndarray:
    """True for the open deals (at the end of as_of) in the open pipeline of the quarter [start, end)."""
    dates = pipeline_dates(expected_close, as_of, fiscal_year_start_month)
    lo, hi = np.datetime64(pd.Timestamp(start), "us"), np.datetime64(pd.Timestamp(end), "us")
    with np.errstate(invalid="ignore"):
        return ~np.isnat(dates) & (dates >= lo) & (dates < hi)
