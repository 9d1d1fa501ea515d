"""Pipeline health tables: the open pipeline as it stood at every month end (`pipeline_snapshots`),
how each period's pipeline moved (`pipeline_waterfall`), the deals that need attention
(`stalled_deals`) and every close-date push (`close_date_slips`), shaped exactly as the warehouse
tables of the same names in `etl.tables`. Definitions follow the project's metric definitions
("Pipeline health"); each function's docstring states exactly what each column counts.

Conventions are the kernel's (`etl.analytics.kernel`): everything is as known at the end of the
run's `as_of` day (`etl.pipeline_state.as_of_end`); the deals as they stood then come from
`kernel.deals_at_as_of` (pass its frame as `at=` to share it between tables) and a deal's state at
any other instant from `etl.pipeline_state.pipeline_at_many` (`kernel.point_in_time`); segment
attributes are the deal's current ones (`etl.schema.segment_values`); periods and their labels
come from `etl.periods`; money is `amount_reporting`. Open means "not in a won or lost stage" (a
deal whose stage is unknown counts as open, as in `velocity`).

Built for millions of deals: deals are addressed by row number, segments by integer codes, and
every table is a few `numpy.bincount`s over history rows or point-in-time rows. Nothing loops over
deals, history rows or periods of data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from etl.analytics.kernel import (
    LOST,
    MICROSECOND,
    OPEN,
    WON,
    Calendar,
    DealsAsOf,
    codes,
    combine_codes,
    concat_pieces,
    deals_as_of,
    empty_table,
    grouped_percentiles,
    period_calendar,
    point_in_time,
    segment_codes,
    stage_default_probability,
    status_codes,
    table_frame,
)
from etl.bookings import DEFAULT_KEYED_AT_CLOSE_HOURS, keyed_in_at_close
from etl.periods import quarter_labels
from etl.pipeline_state import as_of_end
from etl.quarter_pipeline import closes_by
from etl.schema import SEGMENT_COLUMNS, TIMESTAMP, UNKNOWN_SEGMENT
from etl.stages import StageCatalog

log = logging.getLogger(__name__)

WATERFALL_GRAINS = ("month", "quarter")
# Buckets of the waterfall, in the order of the balance identity.
WATERFALL_BUCKETS = ("start", "created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won", "end")
_BUCKET = {name: i for i, name in enumerate(WATERFALL_BUCKETS)}
_VALUE_COLUMNS = {"start": "start_value", "end": "end_value"}
_DAY = np.timedelta64(1, "D")
_AGED_QUANTILE = 0.9
# The deal attributes the per-deal tables carry, so BI can slice them by any segment.
_DEAL_SEGMENT_COLUMNS = ("pipeline", "owner", "team", "product", "region", "lead_source", "deal_type")

# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def _cents(amount: np.ndarray) -> np.ndarray:
    """Amounts in whole cents (int64), rounded once; a missing amount is 0."""
    return np.rint(np.nan_to_num(np.asarray(amount, dtype="float64")) * 100).astype("int64")


def _open_rows(history: pd.DataFrame, deals_now: DealsAsOf) -> np.ndarray:
    """History rows of deals existing at as_of in which the deal is open (or its stage unknown)."""
    return (deals_now.history_existing >= 0) & (status_codes(history["stage_status"]) <= OPEN)


def _open_at(
    history: pd.DataFrame,
    deals_now: DealsAsOf,
    rows: np.ndarray,
    dates: np.ndarray,
    state: dict[str, np.ndarray],
) -> pd.DataFrame:
    """The deals at the instants `dates` (`kernel.point_in_time`) from the history rows selected by
    `rows` (open rows: so the result holds the open deals at each instant), carrying the `state`
    columns. The result's `deal_id` is the deal's row in `deals_now.frame`."""
    return point_in_time(
        deals_now.created_at, history, deals_now.history_existing, list(pd.to_datetime(dates)), rows, state
    )


def _check_sorted(history: pd.DataFrame, deal: np.ndarray, when: np.ndarray) -> None:
    """History must be grouped by deal and in time order within a deal (`prepare_history` output)."""
    same = deal[1:] == deal[:-1]
    backwards = same & (when[1:] < when[:-1])
    starts = int((~same).sum()) + (1 if len(deal) else 0)
    if backwards.any() or starts != np.count_nonzero(np.bincount(deal)):
        row = int(np.flatnonzero(backwards)[0]) + 1 if backwards.any() else 0
        raise ValueError(
            f"history row {row}, columns deal_id/changed_at: rows are not grouped by deal in time order; "
            "expected the output of etl.pipeline_state.prepare_history"
        )


def _stall_thresholds(
    stage_durations: pd.DataFrame | None, pipelines: np.ndarray, stage_names: np.ndarray
) -> np.ndarray:
    """Stall threshold (days) per (pipeline, stage name): `stage_durations.stall_threshold_days` of
    segment_type 'all'; NaN where none. Shape (len(pipelines), len(stage_names))."""
    out = np.full((len(pipelines), len(stage_names)), np.nan)
    if stage_durations is None or stage_durations.empty or out.size == 0:
        return out
    missing = [c for c in ("pipeline", "segment_type", "stage", "stall_threshold_days") if c not in stage_durations]
    if missing:
        raise KeyError(f"stage_durations: missing column(s) {missing}; expected the stage_durations table")
    overall = stage_durations.loc[(stage_durations["segment_type"] == "all").to_numpy(dtype=bool)]
    duplicated = overall.duplicated(["pipeline", "stage"]).to_numpy(dtype=bool)
    if duplicated.any():
        row = overall.iloc[int(np.flatnonzero(duplicated)[0])]
        raise ValueError(
            f"stage_durations: pipeline {row['pipeline']!r}, stage {row['stage']!r} appears twice for segment_type "
            "'all'; expected one row per pipeline and stage"
        )
    thresholds = pd.Series(
        overall["stall_threshold_days"].to_numpy(dtype="float64", na_value=np.nan),
        index=pd.MultiIndex.from_arrays([overall["pipeline"].astype(object), overall["stage"].astype(object)]),
    )
    grid = pd.MultiIndex.from_product([list(pipelines), list(stage_names)])
    return thresholds.reindex(grid).to_numpy(dtype="float64", na_value=np.nan).reshape(out.shape)


def _aged_thresholds(
    deals_now: DealsAsOf, pipeline: np.ndarray, n_pipelines: int, keyed_at_close_hours: float
) -> np.ndarray:
    """Per pipeline: the p90 (numpy's linear percentile) of days from creation to close of the deals
    won by as_of in that pipeline whose cycle was recorded (not keyed in at close,
    `etl.bookings.keyed_in_at_close`); all pipelines' such wins where a pipeline has none; NaN if
    there are none."""
    won = (deals_now.status == WON) & ~keyed_in_at_close(deals_now.created_at, deals_now.closed_at, keyed_at_close_hours)
    cycle = (deals_now.closed_at[won] - deals_now.created_at[won]) / _DAY
    per_pipeline = grouped_percentiles(pipeline[won], cycle, n_pipelines, (_AGED_QUANTILE,))[:, 0]
    overall = float(np.percentile(cycle, 100 * _AGED_QUANTILE)) if len(cycle) else np.nan
    return np.where(np.isnan(per_pipeline), overall, per_pipeline)


def _stage_codes(history: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per history row: a code of its stage name (-1 outside `rows`; `(unknown)` where the stage is
    not recorded), and the names."""
    names = history["stage"].to_numpy(dtype=object, na_value=None)[rows]
    stage_code, stage_names = codes(pd.Series(names, dtype=object).fillna(UNKNOWN_SEGMENT))
    out = np.full(len(history), -1, dtype="int64")
    out[rows] = stage_code
    return out, stage_names


def _push_rows(history: pd.DataFrame, deals_now: DealsAsOf, end: pd.Timestamp) -> dict[str, np.ndarray]:
    """The close-date pushes (`is_push` rows of `prepare_history`) of existing deals up to `end`:
    history row, deal row, time, close date before and after, days moved later. Rows with the same
    deal and time are one push (the first row's old date, the last row's new date, days summed)."""
    deal_all = deals_now.history_existing
    changed_all = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    close_all = history["expected_close_date"].to_numpy(dtype=TIMESTAMP)
    _check_sorted(history, deals_now.history_deal, changed_all)
    push = history["is_push"].to_numpy(dtype=bool) & (deal_all >= 0) & (changed_all <= end.to_datetime64())
    rows = np.flatnonzero(push)
    rows = rows[rows > 0]  # a push is never a deal's first row
    previous_close = close_all[rows - 1]
    days = (close_all[rows] - previous_close) / _DAY
    deal, changed = deal_all[rows], changed_all[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (deal[1:] != deal[:-1]) | (changed[1:] != changed[:-1])
    starts = np.flatnonzero(first)
    last = np.append(starts[1:] - 1, len(rows) - 1).astype("int64") if len(rows) else starts
    return {
        "row": rows[last],
        "deal": deal[starts],
        "changed_at": changed[starts],
        "from_close": previous_close[starts],
        "to_close": close_all[rows[last]],
        "days": np.add.reduceat(days, starts) if len(starts) else days,
    }


# --------------------------------------------------------------------------------------------
# pipeline_snapshots
# --------------------------------------------------------------------------------------------


def pipeline_snapshots(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    stage_durations: pd.DataFrame | None = None,
    keyed_at_close_hours: float = DEFAULT_KEYED_AT_CLOSE_HOURS,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The open pipeline as it stood at the end of every month, from the month of the first deal's
    creation through as_of, and at the end of as_of itself: one row per snapshot_date x segment x
    pipeline x stage with at least one open deal.

    `history` is the output of `etl.pipeline_state.prepare_history` with the catalogue `stages`.
    snapshot_date is the month's last day (the state at its last instant) or as_of. The deals are
    those open at that instant (`pipeline_at_many`), in the stage and with the amount, probability
    and dates they had then; a deal whose stage was not recorded counts under stage `(unknown)`.
    - open_deals, pipeline_value: their number and amount;
    - weighted_pipeline_crm: amount x the CRM probability then, else the stage's configured default;
      deals with neither add nothing; NULL when none of the row's deals has one;
    - stalled_deals: days in the current stage > the stage's stall threshold
      (`stage_durations.stall_threshold_days` of segment_type 'all', this run's);
    - aged_deals: days since creation > the p90 cycle length of the pipeline's won deals at as_of
      (as in `stalled_deals`, wins keyed in at close left out). Both use this run's thresholds at every snapshot date.
    Summed over stages, open_deals and pipeline_value at a month end equal `velocity`'s for that month.
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = pd.Timestamp(as_of).date()
    deals_now = deals_as_of(deals, history, as_of, at)
    if len(deals_now.frame) == 0:
        return empty_table("pipeline_snapshots", as_of_day)
    months = period_calendar(pd.Timestamp(deals_now.created_at.min()), as_of_day, "month", 1)
    rows = _open_rows(history, deals_now)
    stage_code, stage_names = _stage_codes(history, rows)
    probability = history["crm_probability"].to_numpy(dtype="float64", na_value=np.nan)
    probability = np.where(np.isnan(probability), stage_default_probability(history, stages), probability)
    state = {
        "stage": stage_code,
        "stage_order": history["stage_order"].to_numpy(dtype="float64", na_value=np.nan),
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "crm_probability": probability,
    }
    at = _open_at(history, deals_now, rows, months.snapshot_at, state)
    snapshot = np.searchsorted(months.snapshot_at, at["snapshot_at"].to_numpy(dtype=TIMESTAMP))
    deal = at["deal_id"].to_numpy(dtype="int64")
    stage = at["stage"].to_numpy(dtype="int64")
    amount = np.nan_to_num(at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan))
    chance = at["crm_probability"].to_numpy(dtype="float64", na_value=np.nan)
    has_chance = ~np.isnan(chance)
    weighted = np.where(has_chance, amount * np.nan_to_num(chance), 0.0)
    order = at["stage_order"].to_numpy(dtype="float64", na_value=np.nan)

    pipe_all, pipelines = codes(deals_now.frame["pipeline"])
    pipe = pipe_all[deal]
    stall = _stall_thresholds(stage_durations, pipelines, stage_names)[pipe, stage]
    with np.errstate(invalid="ignore"):
        stalled = at["days_in_stage"].to_numpy(dtype="float64", na_value=np.nan) > stall
        aged = at["age_days"].to_numpy(dtype="float64") > _aged_thresholds(
            deals_now, pipe_all, len(pipelines), keyed_at_close_hours
        )[pipe]
    snapshot_dates = months.snapshot_at.astype("datetime64[D]").astype(TIMESTAMP)

    pieces = []
    for segment_type, (segment_all, segment_names) in segment_codes(deals_now.frame).items():
        group, (g_snapshot, g_segment, g_pipe, g_stage) = combine_codes(
            (snapshot, len(months.snapshot_at)),
            (segment_all[deal], len(segment_names)),
            (pipe, len(pipelines)),
            (stage, len(stage_names)),
        )
        n = len(g_snapshot)
        with_chance = np.bincount(group[has_chance], minlength=n)
        stage_order = np.full(n, np.nan)
        stage_order[group] = order
        pieces.append(
            {
                "snapshot_date": snapshot_dates[g_snapshot],
                "segment_type": np.full(n, segment_type, dtype=object),
                "segment": segment_names[g_segment],
                "pipeline": pipelines[g_pipe],
                "stage": stage_names[g_stage],
                "stage_order": stage_order,
                "open_deals": np.bincount(group, minlength=n),
                "pipeline_value": np.bincount(group, weights=amount, minlength=n),
                "weighted_pipeline_crm": np.where(
                    with_chance > 0, np.bincount(group, weights=weighted, minlength=n), np.nan
                ),
                "stalled_deals": np.bincount(group[stalled], minlength=n),
                "aged_deals": np.bincount(group[aged], minlength=n),
                "segment_type_order": np.full(n, list(SEGMENT_COLUMNS).index(segment_type)),
            }
        )
    data = concat_pieces(pieces)
    # Snapshot date, then segment type, segment, pipeline and stage in pipeline order.
    stage_rank = np.where(np.isnan(data["stage_order"]), np.inf, data["stage_order"])
    by = np.lexsort(
        (data["stage"].astype(str), stage_rank, data["pipeline"].astype(str), data["segment"].astype(str),
         data["segment_type_order"], data["snapshot_date"])
    )
    out = table_frame("pipeline_snapshots", {key: value[by] for key, value in data.items()}, as_of_day)
    log.info("pipeline_snapshots: %d rows at %d snapshot dates as of %s", len(out), len(months.snapshot_at), as_of_day)
    return out


# --------------------------------------------------------------------------------------------
# pipeline_waterfall
# --------------------------------------------------------------------------------------------


def _history_moves(history: pd.DataFrame, deals_now: DealsAsOf, end: pd.Timestamp) -> dict[str, np.ndarray]:
    """The history rows that change a deal's state, up to `end`, each with the state before it.

    A row takes effect at max(changed_at, the deal's created_at) (a deal exists from its creation,
    as in `pipeline_at_many`); of several rows of a deal taking effect at the same instant only the
    last counts (the others held for no instant). `first` marks a deal's first row (its creation).
    """
    deal_all = deals_now.history_existing
    changed_all = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    _check_sorted(history, deals_now.history_deal, changed_all)
    rows = np.flatnonzero(deal_all >= 0)
    deal = deal_all[rows]
    when = np.maximum(changed_all[rows], deals_now.created_at[deal])
    keep = when <= end.to_datetime64()
    rows, deal, when = rows[keep], deal[keep], when[keep]
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = (deal[1:] != deal[:-1]) | (when[1:] != when[:-1])
    rows, deal, when = rows[last], deal[last], when[last]

    status = status_codes(history["stage_status"])[rows]
    close = history["expected_close_date"].to_numpy(dtype=TIMESTAMP)[rows]
    cents = _cents(history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan))[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = deal[1:] != deal[:-1]
    is_open = status <= OPEN
    return {
        "deal": deal,
        "when": when,
        "first": first,
        "status": status,
        "open": is_open,
        "close": close,
        "cents": cents,
        "was_open": np.concatenate([[False], is_open[:-1]]) & ~first,
        "was_closed": np.concatenate([[False], ~is_open[:-1]]) & ~first,
        "close_before": np.concatenate([np.array(["NaT"], dtype=TIMESTAMP), close[:-1]]),
        "cents_before": np.concatenate([[0], cents[:-1]]).astype("int64"),
    }


def _waterfall_events(
    moves: dict[str, np.ndarray], calendar: Calendar
) -> tuple[np.ndarray, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The period of each history move in `calendar` (the one containing its instant) and, per
    bucket (created ... won), the mask of the moves in it and their value in cents."""
    period = calendar.period_of(moves["when"])
    if (period < 0).any():
        raise ValueError("pipeline_waterfall: a history row falls outside the period calendar; expected none")
    period_end = calendar.end[period]
    # Membership of the period's pipeline: the one rule of etl.quarter_pipeline (closes_by).
    in_after = moves["open"] & closes_by(moves["close"], period_end)
    in_before = moves["was_open"] & closes_by(moves["close_before"], period_end)
    # A row that closes a deal which was open (or is created closed): if its close date lies
    # within the period, the deal passes through the period's pipeline on its way out.
    closing = ~moves["open"] & ~moves["was_closed"]
    entered = ~in_before & (in_after | (closing & closes_by(moves["close"], period_end)))
    left = (in_before | entered) & ~in_after
    cents = moves["cents"]
    delta = np.where(in_before, cents - moves["cents_before"], 0)
    return period, [
        ("created", entered & moves["first"], cents),
        ("pulled_in", entered & ~moves["first"], cents),
        ("increased", delta > 0, delta),
        ("decreased", delta < 0, -delta),
        ("pushed_out", left & moves["open"], cents),
        ("lost", left & (moves["status"] == LOST), cents),
        ("won", left & (moves["status"] == WON), cents),
    ]


def _restated(history: pd.DataFrame, deals_now: DealsAsOf) -> tuple[pd.DataFrame, DealsAsOf]:
    """History and deals as the waterfall books them: every deal closed at as_of whose booking date
    (`etl.bookings`) is not the day it was marked closed closes at the start of its booking day.

    For such a deal, the row that closed it (and any row at the same instant) moves to that instant
    r; rows after it that edit the closed deal move to r if they were earlier; open-state rows from r
    up to the real close are dropped (in the restated timeline they happen after the close); a deal
    booked before it was created is created at r. Other deals are unchanged. Only the columns the
    waterfall reads are returned, grouped by deal in time order, with valid_to recomputed.
    """
    columns = ["changed_at", "stage_status", "stage_entered_at", "expected_close_date", "amount_reporting"]
    closed_day = deals_now.closed_at.astype("datetime64[D]").astype(TIMESTAMP)
    moved = (deals_now.status != OPEN) & ~np.isnat(deals_now.booked_at) & (deals_now.booked_at != closed_day)
    if not moved.any():
        return history, deals_now
    deal = deals_now.history_existing
    inside = deal >= 0
    row_moved = np.zeros(len(history), dtype=bool)
    row_moved[inside] = moved[deal[inside]]
    changed = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    restate_at = np.full(len(history), np.datetime64("NaT"), dtype=TIMESTAMP)
    closed_at = np.full(len(history), np.datetime64("NaT"), dtype=TIMESTAMP)
    restate_at[row_moved] = deals_now.booked_at[deal[row_moved]]
    closed_at[row_moved] = deals_now.closed_at[deal[row_moved]]
    closing = row_moved & (changed == closed_at)
    after = row_moved & (changed > closed_at)
    keep = ~row_moved | closing | after | (changed < restate_at)
    new_changed = np.where(closing, restate_at, np.where(after, np.maximum(changed, restate_at), changed))

    kept = np.flatnonzero(keep)
    history_deal = deals_now.history_deal[kept]
    order = np.lexsort((kept, new_changed[kept], history_deal))
    rows = kept[order]
    out = pd.DataFrame({column: history[column].to_numpy()[rows] for column in columns if column != "changed_at"})
    out["changed_at"] = new_changed[rows]
    entered = history["stage_entered_at"].to_numpy(dtype=TIMESTAMP)
    out["stage_entered_at"] = np.where(closing[rows], restate_at[rows], entered[rows])
    same_deal = np.append(history_deal[order][1:] == history_deal[order][:-1], False) if len(rows) else np.array([], bool)
    following = np.append(out["changed_at"].to_numpy(dtype=TIMESTAMP)[1:], np.datetime64("NaT", "us"))[: len(rows)]
    out["valid_to"] = np.where(same_deal, following, np.datetime64("NaT", "us")).astype(TIMESTAMP)

    created = deals_now.created_at.copy()
    created[moved] = np.minimum(created[moved], deals_now.booked_at[moved])
    return out, replace(deals_now, created_at=created, history_deal=history_deal[order])


def pipeline_waterfall(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """How each period's pipeline moved: one row per period grain ("month", "quarter") x period x
    segment, for every period from the one of the first deal's creation (or booking) through the one
    containing as_of (cut at the end of as_of), and every segment value (zeros where nothing happened).

    Closed deals leave the pipeline on their booking date (`etl.bookings`), so won and lost here are
    the periods' bookings, restated with what is known at as_of: a deal closed at as_of whose
    booking date is not the day it was marked closed is taken to close at the start of its booking
    day (`_restated`: its open-state history from then to the real close is dropped; a deal booked
    before it was created is created then). Everything below applies to that restated history.

    The pipeline of period P at instant t (`etl.quarter_pipeline`, the definition the forecast and
    pipeline_coverage share) is the set of deals open at t (created by t, not in a won
    or lost stage) whose expected close date at t is on or before P's last day; overdue deals are
    in it, deals without an expected close date never are. Amounts are `amount_reporting` at t,
    rounded once to whole cents, so that, per row, exactly:

        start_value + created + pulled_in + increased - decreased - pushed_out - lost - won = end_value

    - start_value / deals_start: the pipeline of P at P's start (the state just before its first
      instant, `pipeline_at_many`); end_value / deals_end: at P's end, or at the end of as_of for
      the period containing it (`through_date`);
    - the movements in between walk the deal history rows (`prepare_history`) dated in P (a row
      counts from max(changed_at, the deal's created_at); of rows of one deal at the same instant
      only the last), comparing the deal's membership and amount just before and just after each:
      * was in: the amount change goes to increased or decreased;
      * was in, now out: to won or lost if the row closes the deal, else to pushed_out (its expected
        close date moved past P's last day, or was cleared), at the row's new amount;
      * was out, now in: to created if the row is the deal's first (the deal was created in P),
        else to pulled_in (its expected close date moved into P, or a won or lost deal re-opened),
        at the row's new amount;
      * was out, and the row closes the deal (won or lost, from open or at creation) with an expected
        close date on or before P's last day: the deal passes through the pipeline on its way out,
        so it counts in created or pulled_in and in won or lost, at the row's new amount (a deal
        expected next quarter and won early is pulled in and won). A closed deal whose close date
        lies after P counts in neither;
    - deals_*: the number of such movements (a deal that moves in and out twice counts twice), so
      deals_start + deals_created + deals_pulled_in - deals_pushed_out - deals_lost - deals_won
      = deals_end; deals_increased / deals_decreased count amount changes.
    - recorded_end_value / recorded_deals_end: the same pipeline at through_date as the recorded
      history rebuilds it (`pipeline_at_many`, closed deals open until marked closed), the view of
      `pipeline_snapshots`; end_value - recorded_end_value is the pipeline restated by booking, e.g.
      a win marked in July with a June close date is out of the June end here and in it there.
    Won and lost deals are counted when the pipeline loses them, so won here is the pipeline's
    share of bookings; `velocity.won_amount` counts every win of the period by its booking date.
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = pd.Timestamp(as_of).date()
    recorded = deals_as_of(deals, history, as_of, at)
    if len(recorded.frame) == 0:
        return empty_table("pipeline_waterfall", as_of_day)
    end = as_of_end(as_of)
    booked_history, deals_now = _restated(history, recorded)
    first_created = pd.Timestamp(deals_now.created_at.min())
    calendars = {g: period_calendar(first_created, as_of_day, g, fiscal_year_start_month) for g in WATERFALL_GRAINS}
    moves = _history_moves(booked_history, deals_now, end)

    # The pipeline at every period's start (its first instant minus one microsecond) and end, as
    # booked; and at every period's end as the recorded history rebuilds it.
    bounds = [np.concatenate([c.start - MICROSECOND, c.snapshot_at]) for c in calendars.values()]
    booked_at = _pipeline_members(booked_history, deals_now, np.unique(np.concatenate(bounds)))
    ends = np.unique(np.concatenate([c.snapshot_at for c in calendars.values()]))
    recorded_at = booked_at if booked_history is history else _pipeline_members(history, recorded, ends)
    segments = segment_codes(deals_now.frame)

    pieces = []
    for grain, calendar in calendars.items():
        n_periods = len(calendar.labels)
        period, buckets = _waterfall_events(moves, calendar)
        event_period, event_deal, event_bucket, event_cents = [], [], [], []
        for name, mask, cents in buckets:
            event_period.append(period[mask])
            event_deal.append(moves["deal"][mask])
            event_bucket.append(np.full(int(mask.sum()), _BUCKET[name]))
            event_cents.append(cents[mask])
        for name, bound in (("start", calendar.start - MICROSECOND), ("end", calendar.snapshot_at)):
            held, deal, cents = _members_of(booked_at, bound, calendar.end)
            event_period.append(held)
            event_deal.append(deal)
            event_bucket.append(np.full(len(held), _BUCKET[name]))
            event_cents.append(cents)
        event_period = np.concatenate(event_period)
        event_deal = np.concatenate(event_deal)
        event_bucket = np.concatenate(event_bucket)
        event_value = np.concatenate(event_cents).astype("float64")
        recorded_period, recorded_deal, recorded_cents = _members_of(recorded_at, calendar.snapshot_at, calendar.end)

        for segment_type, (segment, segment_names) in segments.items():
            n_segments = len(segment_names)
            shape = (n_periods, n_segments, len(WATERFALL_BUCKETS))
            cells = (event_period * n_segments + segment[event_deal]) * len(WATERFALL_BUCKETS) + event_bucket
            # Float sums of whole cents are exact below 2**53 cents (about 90 trillion).
            value = np.rint(np.bincount(cells, weights=event_value, minlength=int(np.prod(shape)))).astype("int64")
            count = np.bincount(cells, minlength=int(np.prod(shape)))
            value, count = value.reshape(-1, len(WATERFALL_BUCKETS)), count.reshape(-1, len(WATERFALL_BUCKETS))
            _check_balance(grain, segment_type, calendar.labels, segment_names, value, count)
            n_cells = n_periods * n_segments
            recorded_cells = recorded_period * n_segments + segment[recorded_deal]
            piece = {
                "period_grain": np.full(n_cells, grain, dtype=object),
                "period": calendar.labels[np.repeat(np.arange(n_periods), n_segments)],
                "segment_type": np.full(n_cells, segment_type, dtype=object),
                "segment": segment_names[np.tile(np.arange(n_segments), n_periods)],
                "period_start": np.repeat(calendar.start, n_segments),
                "through_date": np.repeat(calendar.snapshot_at.astype("datetime64[D]").astype(TIMESTAMP), n_segments),
                "recorded_end_value": np.rint(
                    np.bincount(recorded_cells, weights=recorded_cents.astype("float64"), minlength=n_cells)
                ) / 100,
                "recorded_deals_end": np.bincount(recorded_cells, minlength=n_cells),
            }
            for i, bucket in enumerate(WATERFALL_BUCKETS):
                piece[_VALUE_COLUMNS.get(bucket, bucket)] = value[:, i] / 100
                piece[f"deals_{bucket}"] = count[:, i]
            pieces.append(piece)
    data = concat_pieces(pieces)
    out = table_frame("pipeline_waterfall", data, as_of_day)
    log.info("pipeline_waterfall: %d rows from %d history moves as of %s", len(out), len(moves["deal"]), as_of_day)
    return out


def _pipeline_members(history: pd.DataFrame, deals_now: DealsAsOf, instants: np.ndarray) -> dict[str, np.ndarray]:
    """The open deals at each of `instants` (sorted, unique) with their expected close date and
    amount in cents then: instant index, deal row, close date, cents per (instant, open deal)."""
    rows = _open_rows(history, deals_now)
    state = {
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "expected_close_date": history["expected_close_date"].to_numpy(dtype=TIMESTAMP),
    }
    at = _open_at(history, deals_now, rows, instants, state)
    return {
        "instants": instants,
        "instant": np.searchsorted(instants, at["snapshot_at"].to_numpy(dtype=TIMESTAMP)),
        "deal": at["deal_id"].to_numpy(dtype="int64"),
        "close": at["expected_close_date"].to_numpy(dtype=TIMESTAMP),
        "cents": _cents(at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)),
    }


def _members_of(members: dict[str, np.ndarray], bound: np.ndarray, period_end: np.ndarray):
    """The deals in each period's pipeline at the instants `bound` (one per period, each one of
    `members["instants"]`): open then with an expected close date before the period's end. Returns
    (period index, deal row, cents) per member."""
    instants = members["instants"]
    period_of_instant = np.full(len(instants), -1)
    period_of_instant[np.searchsorted(instants, bound)] = np.arange(len(bound))
    held = period_of_instant[members["instant"]]
    inside = held >= 0
    inside[inside] &= closes_by(members["close"][inside], period_end[held[inside]])
    return held[inside], members["deal"][inside], members["cents"][inside]


def _check_balance(
    grain: str,
    segment_type: str,
    periods: np.ndarray,
    segment_names: np.ndarray,
    value: np.ndarray,
    count: np.ndarray,
) -> None:
    """The balance identity in cents and in movements, per (period, segment) cell; a failure is a
    defect (history not rebuilt consistently), so it stops the run naming the first bad cell."""
    b = _BUCKET
    signs = np.array([1, 1, 1, 1, -1, -1, -1, -1, -1], dtype="int64")
    value_gap = value @ signs
    count_signs = signs.copy()
    count_signs[[b["increased"], b["decreased"]]] = 0
    count_gap = count @ count_signs
    bad = (value_gap != 0) | (count_gap != 0)
    if bad.any():
        cell = int(np.flatnonzero(bad)[0])
        period, segment = periods[cell // len(segment_names)], segment_names[cell % len(segment_names)]
        raise ValueError(
            f"pipeline_waterfall: {grain} {period}, {segment_type} {segment!r}: start + movements - end is "
            f"{value_gap[cell]} cents and {count_gap[cell]} deals; expected 0"
        )


# --------------------------------------------------------------------------------------------
# stalled_deals and close_date_slips
# --------------------------------------------------------------------------------------------


def _whole(values: np.ndarray) -> pd.Series:
    """Numbers as whole-number text with thousands separators ("1,234")."""
    return pd.Series(np.floor(values)).map("{:,.0f}".format)


def _times(count: np.ndarray) -> np.ndarray:
    return np.select([count == 1, count == 2], ["once", "twice"], default=pd.Series(count).map("{:,} times".format))


def _reasons(
    stage: np.ndarray,
    days_in_stage: np.ndarray,
    threshold: np.ndarray,
    is_stalled: np.ndarray,
    pushes: np.ndarray,
    days_slipped: np.ndarray,
    age: np.ndarray,
    aged_threshold: np.ndarray,
    is_aged: np.ndarray,
) -> np.ndarray:
    """Why each deal needs attention, in plain words (parts joined with "; ")."""
    if len(stage) == 0:
        return np.array([], dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = pd.Series(days_in_stage / threshold).map("{:.1f}".format)
    stalled_part = (
        "in " + pd.Series(stage, dtype=object) + " for " + _whole(days_in_stage) + " days, " + ratio
        + "x the usual " + pd.Series(np.rint(threshold)).map("{:,.0f}".format) + " days"
    )
    pushed_part = "close date pushed " + pd.Series(_times(pushes)) + ", " + _whole(days_slipped) + " days in all"
    aged_part = (
        "open " + _whole(age) + " days, longer than 90% of won deals ("
        + pd.Series(np.rint(aged_threshold)).map("{:,.0f}".format) + " days)"
    )
    parts = pd.DataFrame(
        {
            "stalled": stalled_part.where(is_stalled, ""),
            "pushed": pushed_part.where(pushes > 0, ""),
            "aged": aged_part.where(is_aged, ""),
        }
    )
    text = parts["stalled"] + np.where((parts["stalled"] != "") & (parts["pushed"] != ""), "; ", "") + parts["pushed"]
    text = text + np.where((text != "") & (parts["aged"] != ""), "; ", "") + parts["aged"]
    return (text.str[:1].str.upper() + text.str[1:]).to_numpy(dtype=object)


def stalled_deals(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stage_durations: pd.DataFrame | None,
    as_of: dt.date | pd.Timestamp,
    keyed_at_close_hours: float = DEFAULT_KEYED_AT_CLOSE_HOURS,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The open deals at the end of as_of that are stalled or aged: one row per deal.

    `history` is the output of `etl.pipeline_state.prepare_history`; the deal's stage, amount, close
    date and stage entry time are as they stood at the end of as_of (`pipeline_at_many`).
    - stalled (is_stalled): days_in_stage > threshold_days, the stage's stall threshold from
      `stage_durations` (segment_type 'all': configured, else the p90 of completed stays); a stage
      without a threshold never stalls;
    - aged (is_aged): age_days (days since creation) > aged_threshold_days, the p90 (numpy's linear
      percentile) of days from creation to close of the deals won by as_of in the deal's pipeline
      (all pipelines' won deals when the pipeline has none); no deal is aged when none is won.
      Wins keyed in at close (created less than `keyed_at_close_hours` before they were marked won)
      have no recorded cycle and are left out of that p90;
    - push_count: close-date pushes up to as_of (`prepare_history`'s is_push: the expected close
      date moved later while open); days_slipped: the days they moved it in all; last_pushed_at;
    - reason: the above in plain words, e.g. "In Negotiation/Review for 48 days, 3.2x the usual 15
      days; close date pushed twice, 61 days in all; open 410 days, longer than 90% of won deals
      (190 days)" (days are whole days completed; thresholds rounded).
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = pd.Timestamp(as_of).date()
    deals_now = deals_as_of(deals, history, as_of, at)
    if len(deals_now.frame) == 0:
        return empty_table("stalled_deals", as_of_day)
    end = as_of_end(as_of)
    rows = _open_rows(history, deals_now)
    stage_code, stage_names = _stage_codes(history, rows)
    state = {
        "stage": stage_code,
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "expected_close_date": history["expected_close_date"].to_numpy(dtype=TIMESTAMP),
        "close_pushes": history["close_pushes"].to_numpy(dtype="int64"),
    }
    at = _open_at(history, deals_now, rows, np.array([end.to_datetime64()], dtype=TIMESTAMP), state)
    deal = at["deal_id"].to_numpy(dtype="int64")
    stage = at["stage"].to_numpy(dtype="int64")
    pipe_all, pipelines = codes(deals_now.frame["pipeline"])
    pipe = pipe_all[deal]
    threshold = _stall_thresholds(stage_durations, pipelines, stage_names)[pipe, stage]
    aged_threshold = _aged_thresholds(deals_now, pipe_all, len(pipelines), keyed_at_close_hours)[pipe]
    days_in_stage = at["days_in_stage"].to_numpy(dtype="float64", na_value=np.nan)
    age = at["age_days"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        is_stalled = days_in_stage > threshold
        is_aged = age > aged_threshold
    keep = is_stalled | is_aged

    pushes = _push_rows(history, deals_now, end)
    n_deals = len(deals_now.frame)
    days_slipped = np.bincount(pushes["deal"], weights=pushes["days"], minlength=n_deals)
    last_pushed = np.full(n_deals, np.datetime64("NaT"), dtype=TIMESTAMP)
    is_last = np.ones(len(pushes["deal"]), dtype=bool)
    is_last[:-1] = pushes["deal"][1:] != pushes["deal"][:-1]
    last_pushed[pushes["deal"][is_last]] = pushes["changed_at"][is_last]

    deal, stage = deal[keep], stage[keep]
    frame = deals_now.frame.iloc[deal]
    push_count = at["close_pushes"].to_numpy(dtype="int64")[keep]
    data = {
        "deal_id": frame["deal_id"].to_numpy(dtype=object),
        "deal_name": frame["deal_name"].to_numpy(dtype=object, na_value=None),
        **{c: frame[c].to_numpy(dtype=object, na_value=None) for c in _DEAL_SEGMENT_COLUMNS},
        "stage": stage_names[stage],
        "stage_entered_at": at["stage_entered_at"].to_numpy(dtype=TIMESTAMP)[keep],
        "days_in_stage": days_in_stage[keep],
        "threshold_days": threshold[keep],
        "is_stalled": is_stalled[keep],
        "age_days": age[keep],
        "aged_threshold_days": aged_threshold[keep],
        "is_aged": is_aged[keep],
        "amount_reporting": at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)[keep],
        "expected_close_date": at["expected_close_date"].to_numpy(dtype=TIMESTAMP)[keep],
        "push_count": push_count,
        "days_slipped": days_slipped[deal],
        "last_pushed_at": last_pushed[deal],
    }
    data["reason"] = _reasons(
        data["stage"], data["days_in_stage"], data["threshold_days"], data["is_stalled"], push_count,
        data["days_slipped"], data["age_days"], data["aged_threshold_days"], data["is_aged"],
    )
    out = table_frame("stalled_deals", data, as_of_day)
    log.info(
        "stalled_deals: %d of %d open deals stalled or aged as of %s (%d stalled, %d aged)",
        len(out), len(at), as_of_day, int(data["is_stalled"].sum()), int(data["is_aged"].sum()),
    )
    return out


def close_date_slips(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every close-date push up to the end of as_of: one row per deal and push time.

    A push is a history row that moves the expected close date later while the deal stays open
    (`prepare_history`'s is_push); pushes of one deal at the same instant are one row. from/to are
    the expected close dates before and after, days_slipped the days between them; stage,
    amount_reporting and push_number (pushes of the deal so far, this one included) are as of the
    push; quarter, from_quarter and to_quarter are fiscal quarters (`etl.periods`) of the push and
    of the two close dates, so slipped value can be charted per quarter it left.
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = pd.Timestamp(as_of).date()
    deals_now = deals_as_of(deals, history, as_of, at)
    if len(deals_now.frame) == 0:
        return empty_table("close_date_slips", as_of_day)
    pushes = _push_rows(history, deals_now, as_of_end(as_of))
    frame = deals_now.frame.iloc[pushes["deal"]]
    row = pushes["row"]

    def quarters(values: np.ndarray) -> np.ndarray:
        # Labelled once per distinct day: many pushes share a day.
        day_code, days = pd.factorize(values.astype("datetime64[D]"), use_na_sentinel=False)
        labels = quarter_labels(pd.Series(days.astype(TIMESTAMP)), fiscal_year_start_month)
        return labels.to_numpy(dtype=object, na_value=None)[day_code]

    data = {
        "deal_id": frame["deal_id"].to_numpy(dtype=object),
        "changed_at": pushes["changed_at"],
        **{c: frame[c].to_numpy(dtype=object, na_value=None) for c in _DEAL_SEGMENT_COLUMNS},
        "stage": history["stage"].to_numpy(dtype=object, na_value=None)[row],
        "from_close_date": pushes["from_close"],
        "to_close_date": pushes["to_close"],
        "days_slipped": pushes["days"],
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)[row],
        "push_number": history["close_pushes"].to_numpy(dtype="int64")[row],
        "quarter": quarters(pushes["changed_at"]),
        "from_quarter": quarters(pushes["from_close"]),
        "to_quarter": quarters(pushes["to_close"]),
    }
    out = table_frame("close_date_slips", data, as_of_day)
    log.info("close_date_slips: %d pushes of %d deals as of %s", len(out), len(np.unique(pushes["deal"])), as_of_day)
    return out
