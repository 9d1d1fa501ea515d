"""When a closed deal counts: its booking date, and whether a win was keyed in at the moment of closing.

Two dates describe a closed deal:
- `closed_at`: the moment the deal was marked closed in the CRM (from its stage history; for a source
  without history, the close time the source gives). Point-in-time rebuilds use it: a deal is open
  at instant t when it was created by t and not yet marked closed at t
  (`etl.pipeline_state.pipeline_at_many`).
- `crm_close_date`: the close date the CRM itself reports closed deals by, and finance reconciles
  quotas against: Salesforce `CloseDate`, HubSpot Close Date, Pipedrive Won time / Lost time, a
  mapped file's close date. Reps often key a win in weeks after it happened and backdate the close
  date, so the two differ.

The **booking date** decides the period in which a closed deal's amount counts, in every table that
counts won or lost amounts (velocity, pipeline coverage, the waterfall, the forecast's closed-won to
date, backtest actuals, the coaching tables). `[reporting] booking_date` chooses it:
- `crm_close_date` (default): the CRM's close date. A deal marked won on 15 July with a CloseDate of
  28 June counts in Q2, once it is marked won: a rebuild at 1 July still sees it open. A close date
  after the run's as_of is not booked in the future: such a deal is booked on the day it was marked
  closed (and counted by the `future_close_date` warning). A deal without a CRM close date is booked
  on the day it was marked closed.
- `closed_stage_at`: the day the deal was marked closed.

`booking_dates` is the one function that applies this rule, at the run's as_of (`etl.ingest.crm_load.load_crm`
stores the result as `deals.booking_date`) and at any earlier instant of a point-in-time rebuild.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from etl.deal_ids import deal_positions
from etl.schema import TIMESTAMP

BOOKING_CRM_CLOSE_DATE = "crm_close_date"
BOOKING_CLOSED_STAGE_AT = "closed_stage_at"
BOOKING_RULES = (BOOKING_CRM_CLOSE_DATE, BOOKING_CLOSED_STAGE_AT)
DEFAULT_BOOKING_RULE = BOOKING_CRM_CLOSE_DATE

# A win created less than this many hours before it was marked won was keyed in at the moment of
# closing: its cycle length (created to won) says nothing about how long the sale took.
DEFAULT_KEYED_AT_CLOSE_HOURS = 24.0

_NAT = np.datetime64("NaT", "us")


def _days(values) -> np.ndarray:
    """Timestamps as datetime64[us] at midnight of their day (NaT stays NaT)."""
    stamps = np.asarray(pd.to_datetime(pd.Series(values)).to_numpy(dtype=TIMESTAMP))
    return stamps.astype("datetime64[D]").astype(TIMESTAMP)


def booking_dates(anchor, closed_at, as_of: dt.date | pd.Timestamp) -> np.ndarray:
    """The booking date of each deal as known at the end of day `as_of`: `anchor` (the date the
    deal is booked by, e.g. its CRM close date) where it is known and not after as_of, else the
    day of `closed_at` (the moment it was marked closed). NaT where `closed_at` is NaT (open).

    Vectorised over equally long arrays or Series; returns datetime64[us] dates (midnight).
    """
    anchor_day = _days(anchor)
    closed_day = _days(closed_at)
    if len(anchor_day) != len(closed_day):
        raise ValueError(f"booking_dates: {len(anchor_day)} anchors for {len(closed_day)} close times")
    last_day = np.datetime64(pd.Timestamp(as_of).date(), "D").astype(TIMESTAMP)
    usable = ~np.isnat(anchor_day) & (anchor_day <= last_day)
    return np.where(np.isnat(closed_day), _NAT, np.where(usable, anchor_day, closed_day))


def check_rule(rule: str) -> str:
    """`rule` if it is a booking rule, else a ValueError naming the choices."""
    if rule not in BOOKING_RULES:
        raise ValueError(f"booking_date must be one of {', '.join(repr(r) for r in BOOKING_RULES)}, got {rule!r}")
    return rule


def with_booking_dates(deals: pd.DataFrame, as_of: dt.date | pd.Timestamp, rule: str = DEFAULT_BOOKING_RULE) -> pd.DataFrame:
    """`deals` (canonical, `etl.schema.DEAL_COLUMNS`) with `booking_date`: by `rule`, as known at
    the end of as_of, for the deals closed in the export (NaT for open ones)."""
    check_rule(rule)
    anchor = deals["crm_close_date"] if rule == BOOKING_CRM_CLOSE_DATE else pd.Series(pd.NaT, index=deals.index)
    closed = deals["closed_at"].where(deals["status"].isin(["won", "lost"]))
    out = deals.copy()
    out["booking_date"] = pd.Series(booking_dates(anchor, closed, as_of), index=deals.index)
    return out


def booking_anchor(deals: pd.DataFrame) -> np.ndarray:
    """The date each deal of `deals` is booked by when it is closed at a rebuild's instant:
    `booking_date` as `with_booking_dates` set it (so `[reporting] booking_date` is honoured), else
    (a frame built without it) the CRM close date, the default rule. Pass it to `booking_dates` with
    the deal's closed_at at the rebuild's instant."""
    for column in ("booking_date", "crm_close_date"):
        if column in deals.columns:
            return _days(deals[column])
    return np.full(len(deals), _NAT)


def keyed_in_at_close(created_at, closed_at, hours: float = DEFAULT_KEYED_AT_CLOSE_HOURS) -> np.ndarray:
    """True for each closed deal created less than `hours` before it was marked closed (or after
    it): keyed into the CRM at the moment of closing, so its cycle length was not recorded.
    `hours` 0 turns the rule off. False where either time is NaT."""
    created = np.asarray(pd.to_datetime(pd.Series(created_at)).to_numpy(dtype=TIMESTAMP))
    closed = np.asarray(pd.to_datetime(pd.Series(closed_at)).to_numpy(dtype=TIMESTAMP))
    if hours <= 0:
        return np.zeros(len(created), dtype=bool)
    known = ~np.isnat(created) & ~np.isnat(closed)
    gap = np.where(known, closed - created, np.timedelta64(0, "us"))
    return known & (gap < np.timedelta64(int(round(hours * 3600 * 1e6)), "us"))


def state_booking_dates(state: pd.DataFrame, deals: pd.DataFrame, at: dt.date | pd.Timestamp) -> pd.Series:
    """The booking date of each row of `state`, a point-in-time rebuild at instant `at`
    (`etl.pipeline_state.pipeline_at` output: deal_id, closed_at), with the anchors of `deals`
    (`booking_anchor`); NaT for rows open at `at`. Same index as `state`."""
    position = deal_positions(deals, state["deal_id"])
    anchors = booking_anchor(deals)
    anchor = np.where(position >= 0, anchors[np.maximum(position, 0)] if len(anchors) else _NAT, _NAT)
    return pd.Series(booking_dates(anchor, state["closed_at"], pd.Timestamp(at)), index=state.index)
