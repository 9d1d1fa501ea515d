"""Amounts in the reporting currency, from a dated exchange-rate file.

The rates file (`[currency] rates_file` in dealcast.toml) is a CSV with the columns
`date,currency,rate`: on `date` (YYYY-MM-DD), one unit of `currency` is worth `rate` units of the
reporting currency (`[reporting] currency`). For example, with USD reporting, `2024-03-14,EUR,1.08`
makes 1,000 EUR worth 1,080 USD on 2024-03-14.

Which rate a deal takes:
- a closed deal (one with `closed_at`) the rate of its close day; an open deal the rate of the
  run's `as_of` (a deal closed after `as_of` was still open then, so it also takes the `as_of`
  rate);
- the rate is the latest one on or before that day (a weekly or monthly rates file works); a
  day before the currency's first rate has no rate;
- the deal's stage history is converted with the deal's own rate, so that amounts in one deal's
  history stay comparable with each other.

A deal in the reporting currency needs no rate. A deal in another currency whose reader already
gave `amount_reporting` (a CRM's own converted amount) keeps it. Every other deal in another
currency with an amount needs a rate; without one it is rejected (`UNKNOWN_CURRENCY` when the
file has no rate at all for the currency, `NO_RATE_FOR_DATE` when the day is before the
currency's first rate). A deal without a currency is taken to be in the reporting currency.
`amount` and `currency` always keep the values from the export.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from etl.config import ProjectConfig
from etl.deal_ids import index_in, is_in
from etl.ingest.csvfiles import is_blank, load_csv, parse_numbers, parse_timestamps
from etl.schema import TIMESTAMP
from etl.validation.reason_codes import NO_RATE_FOR_DATE, UNKNOWN_CURRENCY

logger = logging.getLogger(__name__)

__all__ = [
    "NO_RATE_FOR_DATE",
    "UNKNOWN_CURRENCY",
    "CurrencyConversion",
    "ExchangeRates",
    "ExchangeRatesError",
    "convert_to_reporting",
    "find_rates_file",
    "load_rates",
    "rate_dates",
]


RATES_COLUMNS = ("date", "currency", "rate")
# A currency's rate may move less than this factor from one date of the rates file to the next.
MAX_RATE_JUMP = 10.0
_LABEL = "exchange-rate"


class ExchangeRatesError(ValueError):
    """The exchange-rate file is missing or holds a row Dealcast cannot use; the message names the
    file, the row and the column and what was expected."""


@dataclass(frozen=True)
class ExchangeRates:
    """Dated rates into the reporting currency: `table` has the columns date (midnight
    timestamps), currency (upper case) and rate, sorted by date; `source` names where they came
    from (the file's path) in messages."""

    reporting_currency: str
    source: str
    table: pd.DataFrame

    @property
    def currencies(self) -> list[str]:
        return sorted(self.table["currency"].unique())

    def first_dates(self) -> pd.Series:
        """The first day each currency has a rate, indexed by currency."""
        return self.table.groupby("currency")["date"].min()

    def rates_on(self, currencies: pd.Series, days: pd.Series) -> np.ndarray:
        """The rate of each (currency, day): the latest rate of that currency on or before that
        day; NaN where there is none. `currencies` upper case, `days` midnight timestamps."""
        left = pd.DataFrame(
            {
                "currency": currencies.astype("str").to_numpy(),
                "date": days.astype(TIMESTAMP).to_numpy(),
                "_pos": np.arange(len(currencies), dtype=np.int64),
            }
        )
        result = np.full(len(left), np.nan)
        usable = left["date"].notna().to_numpy()
        if not usable.any() or self.table.empty:
            return result
        left = left.loc[usable].sort_values("date", kind="stable")
        found = pd.merge_asof(left, self.table, on="date", by="currency", direction="backward")
        result[found["_pos"].to_numpy()] = found["rate"].to_numpy(dtype="float64")
        return result


def find_rates_file(project: ProjectConfig, exports_dir: Path) -> Path | None:
    """The `[currency] rates_file` of `project`: an absolute path as written, else looked up in the
    exports directory first, then next to dealcast.toml; None when none is configured.

    Raises `ExchangeRatesError` when one is configured but is in neither place."""
    name = project.rates_file
    if not name:
        return None
    candidate = Path(name)
    places = [candidate] if candidate.is_absolute() else [Path(exports_dir) / candidate, project.path.parent / candidate]
    for place in places:
        if place.is_file():
            return place
    raise ExchangeRatesError(
        f"{project.path}: [currency] rates_file {name!r} not found (looked at {', '.join(str(p) for p in places)}); "
        "expected a CSV with the columns date,currency,rate"
    )


def load_rates(path: Path, reporting_currency: str) -> ExchangeRates:
    """Read a `date,currency,rate` CSV. Every row must have a date (YYYY-MM-DD), a currency code
    and a positive rate, each (date, currency) at most once, and a row for the reporting currency
    itself must say 1. Raises `ExchangeRatesError` listing the first bad rows."""
    path = Path(path)
    reporting = reporting_currency.strip().upper()
    table = load_csv(path, _LABEL, RATES_COLUMNS)
    frame = pd.DataFrame(
        {
            "date_text": table.text("date"),
            "currency": table.text("currency").str.upper(),
            "rate_text": table.text("rate"),
            "source_row": table.source_row,
        }
    )
    dates, bad_date = parse_timestamps(frame["date_text"])
    rates, bad_rate = parse_numbers(frame["rate_text"])
    frame["date"] = dates
    frame["rate"] = rates
    problems: list[str] = [
        f"{path}: row {row['source_row']}: {row['reason']}" for row in table.malformed.to_dict("records")
    ]

    def report(mask: np.ndarray, column: str, expected: str, shown: str) -> None:
        for source_row, value in frame.loc[mask, ["source_row", shown]].itertuples(index=False):
            problems.append(f"{path}: row {source_row}, column {column}: expected {expected}, got {value!r}")

    report(is_blank(frame["date_text"]) | bad_date, "date", "a date like 2024-03-14", "date_text")
    report(is_blank(frame["currency"]), "currency", "a currency code like EUR", "currency")
    positive = frame["rate"].gt(0).to_numpy()
    report(~positive, "rate", "a positive number like 1.08 (reporting currency per unit)", "rate_text")
    report(
        frame["currency"].eq(reporting).to_numpy() & positive & frame["rate"].ne(1.0).to_numpy(),
        "rate",
        f"1 for the reporting currency {reporting} itself",
        "rate_text",
    )
    frame["date"] = frame["date"].dt.normalize()
    repeated = frame.duplicated(["date", "currency"], keep="first").to_numpy() & frame["date"].notna().to_numpy()
    report(repeated, "date", "each currency at most once per date", "date_text")
    problems += _rate_jumps(path, frame.loc[positive & frame["date"].notna().to_numpy() & ~repeated])
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExchangeRatesError(f"{path}: {len(problems)} unusable exchange-rate row(s): {shown}{more}")
    rates_table = (
        frame.loc[frame["currency"].ne(reporting), ["date", "currency", "rate"]]
        .sort_values(["date", "currency"], kind="stable")
        .reset_index(drop=True)
    )
    rates_table["currency"] = rates_table["currency"].astype("str")
    rates_table["date"] = rates_table["date"].astype(TIMESTAMP)
    logger.info(
        "%s: %d exchange rates into %s for %d currencies",
        path, len(rates_table), reporting, rates_table["currency"].nunique(),
    )
    return ExchangeRates(reporting_currency=reporting, source=str(path), table=rates_table)


def _rate_jumps(path: Path, frame: pd.DataFrame) -> list[str]:
    """A rate that differs from the currency's previous rate (by date) by a factor of
    `MAX_RATE_JUMP` or more: a typing slip (1.08 written 1080) or a rate quoted the wrong way round
    (0.93 for 1.08) would otherwise multiply every deal valued with it."""
    ordered = frame.sort_values(["currency", "date"], kind="stable")
    previous = ordered.groupby("currency", sort=False)["rate"].shift(1)
    previous_row = ordered.groupby("currency", sort=False)["source_row"].shift(1)
    factor = np.maximum(ordered["rate"] / previous, previous / ordered["rate"])
    jumps = ordered.loc[factor.ge(MAX_RATE_JUMP).to_numpy()]
    return [
        f"{path}: row {row.source_row}, column rate: {row.currency} {row.rate_text} on {row.date_text} is "
        f"{factor[index]:,.0f} times the previous rate {previous[index]:g} (row {int(previous_row[index])}); "
        f"expected a change of less than {MAX_RATE_JUMP:g}x from one date to the next"
        for index, row in zip(jumps.index, jumps.itertuples(index=False))
    ]


def rate_dates(deals: pd.DataFrame, as_of: dt.date) -> pd.Series:
    """The day whose rate values each deal: its close day when it has `closed_at`, else `as_of`
    (and `as_of` for a deal closed after `as_of`)."""
    as_of_day = pd.Timestamp(as_of)
    closed = pd.to_datetime(deals["closed_at"]).astype(TIMESTAMP).dt.normalize()
    return closed.where(closed.le(as_of_day), as_of_day).fillna(as_of_day).astype(TIMESTAMP)


@dataclass
class CurrencyConversion:
    """Deals and history with `amount_reporting` filled, plus the deals that could not be valued.

    `problem_code` (one per deal, None where fine) is `UNKNOWN_CURRENCY` or `NO_RATE_FOR_DATE`;
    `problem_reason` says which currency, which day and which rates file. The rows of rejected
    deals are still in `deals` and `history`; the caller quarantines them.
    """

    deals: pd.DataFrame
    history: pd.DataFrame
    problem_code: np.ndarray
    problem_reason: np.ndarray

    @property
    def rejected(self) -> np.ndarray:
        return np.not_equal(self.problem_code, None)


def convert_to_reporting(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    rates: ExchangeRates | None,
    reporting_currency: str,
    as_of: dt.date,
    no_rates_hint: str = "no exchange-rate file is configured ([currency] rates_file in dealcast.toml)",
) -> CurrencyConversion:
    """Fill `amount_reporting` of `deals` (`etl.schema.DEAL_COLUMNS`, one row per deal_id) and
    `history` (`DEAL_HISTORY_COLUMNS`) from `rates` (None: no rates file, so only the reporting
    currency can be valued; `no_rates_hint` then tells the user how to add one)."""
    reporting = reporting_currency.strip().upper()
    deals = deals.copy()
    history = history.copy()
    currency = deals["currency"].astype("string").str.strip().str.upper()
    currency = currency.where(currency.notna() & currency.ne("").fillna(False), reporting).astype("string")
    amount = deals["amount"].to_numpy(dtype="float64", na_value=np.nan)
    given = deals["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)
    foreign = currency.ne(reporting).to_numpy()
    if not foreign.any():
        # One currency: every amount is already in the reporting currency.
        deals["amount_reporting"] = deals["amount_reporting"].fillna(deals["amount"])
        history["amount_reporting"] = history["amount_reporting"].fillna(history["amount"])
        none = np.full(len(deals), None, dtype=object)
        return CurrencyConversion(deals=deals, history=history, problem_code=none, problem_reason=none.copy())
    needs_rate = foreign & np.isnan(given)
    if needs_rate.any():
        # A deal needs a rate only when there is an amount to convert (its own or its history's).
        history_amounts = history.loc[history["amount"].notna(), "deal_id"]
        in_history = is_in(deals["deal_id"], history_amounts)
        needs_rate &= ~np.isnan(amount) | in_history

    # Each deal's rate: 1 in the reporting currency, the file's rate where one is needed, the
    # ratio the reader gave otherwise (a CRM's own conversion), NaN where unknown.
    rate = np.where(foreign, np.nan, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = np.where(foreign & ~np.isnan(given) & (amount != 0), given / amount, np.nan)
    rate = np.where(np.isnan(implied), rate, implied)
    code = np.full(len(deals), None, dtype=object)
    reason = np.full(len(deals), None, dtype=object)
    if needs_rate.any():
        days = rate_dates(deals, as_of)
        wanted = np.flatnonzero(needs_rate)
        if rates is None:
            looked_up = np.full(len(wanted), np.nan)
            known = np.zeros(len(wanted), dtype=bool)
        else:
            looked_up = rates.rates_on(currency.iloc[wanted], days.iloc[wanted])
            known = currency.iloc[wanted].isin(rates.currencies).to_numpy()
        rate[wanted] = looked_up
        missing = np.isnan(looked_up)
        wanted_currency = currency.to_numpy(dtype=object)[wanted]
        wanted_days = days.iloc[wanted].dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
        unknown = missing & ~known
        code[wanted[unknown]] = UNKNOWN_CURRENCY
        if rates is None:
            text = [
                f"the amount is in {c}, not in the reporting currency {reporting}, and {no_rates_hint}"
                for c in wanted_currency[unknown]
            ]
        else:
            text = [
                f"the amount is in {c} and the exchange-rate file {rates.source} has no {c} rate; "
                f"expected rows 'date,{c},<{reporting} per {c}>'"
                for c in wanted_currency[unknown]
            ]
        reason[wanted[unknown]] = np.asarray(text, dtype=object)
        too_early = missing & known
        if too_early.any() and rates is not None:
            first = rates.first_dates()
            code[wanted[too_early]] = NO_RATE_FOR_DATE
            reason[wanted[too_early]] = np.asarray(
                [
                    f"the amount is in {c} and needs the {c} rate of {d}, but the exchange-rate file "
                    f"{rates.source} starts {c} on {first[c]:%Y-%m-%d}; expected a {c} rate on or before {d}"
                    for c, d in zip(wanted_currency[too_early], wanted_days[too_early])
                ],
                dtype=object,
            )

    converted = amount * rate
    deals["amount_reporting"] = np.where(np.isnan(given), converted, given)
    if not history.empty:
        position = index_in(history["deal_id"], deals["deal_id"])
        history_rate = np.where(position >= 0, rate[np.where(position >= 0, position, 0)], np.nan)
        history_amount = history["amount"].to_numpy(dtype="float64", na_value=np.nan)
        given_history = history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)
        history["amount_reporting"] = np.where(np.isnan(given_history), history_amount * history_rate, given_history)
    converted_count = int((needs_rate & ~np.not_equal(code, None)).sum())
    if converted_count:
        logger.info("%d deal(s) converted into %s with %s", converted_count, reporting, rates.source if rates else "")
    return CurrencyConversion(deals=deals, history=history, problem_code=code, problem_reason=reason)
