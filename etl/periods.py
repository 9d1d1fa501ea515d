"""Period bucketing: months and (fiscal) quarters, the one place dates become periods.

Quarters are labelled by the calendar year in which they end and their number within the fiscal
year, e.g. `2026-Q4`. With `fiscal_year_start_month = 1` these are calendar quarters; with 2, Q1
runs February-April and is labelled by the year of its end (FY2027-Q1 = Feb-Apr 2026 ... ends in
2026). Months are labelled `2026-11`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd


def _fiscal_shift(fiscal_year_start_month: int) -> int:
    if not 1 <= fiscal_year_start_month <= 12:
        raise ValueError(f"fiscal_year_start_month must be 1..12, got {fiscal_year_start_month}")
    return fiscal_year_start_month - 1


def quarter_start(when: dt.date | pd.Timestamp, fiscal_year_start_month: int = 1) -> pd.Timestamp:
    """Midnight of the first day of the quarter containing `when`."""
    ts = pd.Timestamp(when)
    shift = _fiscal_shift(fiscal_year_start_month)
    months = ts.year * 12 + ts.month - 1 - shift
    start_index = months - months % 3 + shift
    return pd.Timestamp(year=start_index // 12, month=start_index % 12 + 1, day=1)


def quarter_end(when: dt.date | pd.Timestamp, fiscal_year_start_month: int = 1) -> pd.Timestamp:
    """Midnight of the first day after the quarter containing `when` (an exclusive bound)."""
    return quarter_start(when, fiscal_year_start_month) + pd.DateOffset(months=3)


def _fiscal_year_and_quarter(months_since_fiscal_epoch, shift: int):
    """Fiscal year (named by the calendar year it ends in) and quarter number from a month index."""
    return months_since_fiscal_epoch // 12 + (1 if shift else 0), (months_since_fiscal_epoch % 12) // 3 + 1


def quarter_label(when: dt.date | pd.Timestamp, fiscal_year_start_month: int = 1) -> str:
    ts = pd.Timestamp(when)
    shift = _fiscal_shift(fiscal_year_start_month)
    year, number = _fiscal_year_and_quarter(ts.year * 12 + ts.month - 1 - shift, shift)
    return f"{year}-Q{number}"


def quarter_labels(values: pd.Series, fiscal_year_start_month: int = 1) -> pd.Series:
    """Vectorised `quarter_label` for a datetime series (NA stays NA)."""
    ts = pd.to_datetime(values)
    shift = _fiscal_shift(fiscal_year_start_month)
    valid = ts.notna()
    months = (ts.dt.year * 12 + ts.dt.month - 1 - shift)[valid].astype("int64")
    year, number = _fiscal_year_and_quarter(months, shift)
    labels = pd.Series(pd.NA, index=values.index, dtype="string")
    labels[valid] = year.astype(str) + "-Q" + number.astype(str)
    return labels


def month_labels(values: pd.Series) -> pd.Series:
    ts = pd.to_datetime(values)
    labels = pd.Series(pd.NA, index=values.index, dtype="string")
    valid = ts.notna()
    labels[valid] = ts[valid].dt.strftime("%Y-%m")
    return labels


def period_labels(values: pd.Series, grain: str, fiscal_year_start_month: int = 1) -> pd.Series:
    """Month (`grain='month'`) or quarter (`grain='quarter'`) labels for a datetime series."""
    if grain == "month":
        return month_labels(values)
    if grain == "quarter":
        return quarter_labels(values, fiscal_year_start_month)
    raise ValueError(f"grain must be 'month' or 'quarter', got {grain!r}")


def period_bounds(label: str, fiscal_year_start_month: int = 1) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of a period label produced by `period_labels`."""
    if "-Q" in label:
        year_text, number_text = label.split("-Q")
        fiscal_year, number = int(year_text), int(number_text)
        shift = _fiscal_shift(fiscal_year_start_month)
        # Inverse of _fiscal_year_and_quarter.
        first_month_index = (fiscal_year - (1 if shift else 0)) * 12 + shift + 3 * (number - 1)
        start = pd.Timestamp(year=first_month_index // 12, month=first_month_index % 12 + 1, day=1)
        return start, start + pd.DateOffset(months=3)
    start = pd.Timestamp(label + "-01")
    return start, start + pd.DateOffset(months=1)
