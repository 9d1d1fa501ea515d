"""The funnel (`stage_conversion`): how deals move through each pipeline's open stages to won,
shaped exactly as the warehouse table of the same name in `etl.tables`, which BI tools read
directly. Definitions follow the project's metric definitions (design/metrics.md); the function's
docstring states exactly which deals each column counts.

Conventions are the kernel's (`etl.analytics.kernel`): everything is computed as it was known at
the end of the run's `as_of` day, from the deals as they stood then (`deals_at_as_of`); deal
attributes that define segments are the deal's current ones.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd

from etl.analytics.kernel import (
    LOST,
    WON,
    DealsAsOf,
    as_of_date,
    codes,
    combine_codes,
    concat_pieces,
    deals_as_of,
    empty_table,
    open_stage_layout,
    safe_ratio,
    segment_codes,
    stage_rows,
    table_frame,
)
from etl.periods import quarter_labels
from etl.pipeline_state import as_of_end
from etl.schema import TIMESTAMP
from etl.stages import StageCatalog

log = logging.getLogger(__name__)

FUNNEL_MODES = ("any_order", "in_order")


# --------------------------------------------------------------------------------------------
# stage_conversion
# --------------------------------------------------------------------------------------------


def _funnel_levels(
    history: pd.DataFrame, deals_now: DealsAsOf, end: pd.Timestamp, deal_open: np.ndarray
) -> dict[str, np.ndarray]:
    """Per existing deal: how far it got in each funnel mode.

    `deal_open` is the number of open stages of each deal's pipeline (0: left out).
    level = the highest stage order S the deal counts as having reached (0 = none, n+1 = won):
    any_order: the highest open stage it ever entered, or n+1 if it is won at as_of;
    in_order: the length of the unbroken run of open stages 1, 2, ... it entered, or n+1 if it
    is won and entered all n.
    lost_stage = the last open stage it was in before it was lost (0 if not lost or unknown).
    Stage entries are the history rows that change the stage (`is_stage_change`) up to `end`.
    """
    n_deals = len(deals_now.status)
    entry = history["is_stage_change"].to_numpy(dtype=bool) & (
        history["changed_at"].to_numpy(dtype=TIMESTAMP) <= end.to_datetime64()
    )
    deal = deals_now.history_existing[entry]
    order = history["stage_order"].to_numpy(dtype="float64", na_value=np.nan)[entry]
    entered = history["changed_at"].to_numpy(dtype=TIMESTAMP)[entry]
    keep = deal >= 0
    keep[keep] &= ~np.isnan(order[keep]) & (order[keep] >= 1) & (order[keep] <= deal_open[deal[keep]])
    deal, order, entered = deal[keep], order[keep].astype("int64"), entered[keep]

    # entered_stage[d, S]: deal d entered open stage S (column 0 unused).
    width = int(deal_open.max()) + 1 if n_deals else 1
    entered_stage = np.zeros((n_deals, width), dtype=bool)
    entered_stage[deal, order] = True
    highest = (entered_stage * np.arange(width)).max(axis=1)
    # In-order run: the number of leading stages 1, 2, ... all entered.
    unbroken = np.cumprod(entered_stage[:, 1:], axis=1).sum(axis=1)

    # Last open stage in time order (a stable sort keeps same-time entries in history order).
    by_time = np.lexsort((entered, deal))
    last_deal, last_order = deal[by_time], order[by_time]
    is_last = np.ones(len(last_deal), dtype=bool)
    is_last[:-1] = last_deal[1:] != last_deal[:-1]
    last_open = np.zeros(n_deals, dtype="int64")
    last_open[last_deal[is_last]] = last_order[is_last]

    won, lost = deals_now.status == WON, deals_now.status == LOST
    any_level = np.where(won, deal_open + 1, highest)
    in_level = np.where(won & (unbroken == deal_open), deal_open + 1, unbroken)
    any_lost_stage = np.where(lost & (last_open > 0), last_open, 0)
    in_lost_stage = np.where(lost & (last_open > 0) & (last_open <= in_level), last_open, 0)

    # Deals whose path is not recorded (no stage history, or a lost deal whose history shows no
    # open stage). In a one-stage pipeline the path is known: the deal was in that stage.
    recorded = deals_now.frame["has_history"].to_numpy(dtype=bool)
    single = deal_open == 1
    pathless_lost = lost & (highest == 0) & (deal_open > 0)
    # any_order: such a lost deal reached the first stage (every deal was open in some stage); where
    # it went from there and where it was lost is unknown unless the pipeline has one stage.
    any_level = np.where(pathless_lost, 1, any_level)
    any_lost_stage = np.where(pathless_lost & single, 1, any_lost_stage)
    # in_order: in a one-stage pipeline a deal without history entered that stage.
    unrecorded_single = single & ~recorded
    in_level = np.where(unrecorded_single & won, 2, np.where(unrecorded_single & (in_level == 0), 1, in_level))
    in_lost_stage = np.where(unrecorded_single & lost, 1, in_lost_stage)
    return {
        "any_order_level": any_level,
        "in_order_level": in_level,
        "any_order_lost_stage": any_lost_stage,
        "in_order_lost_stage": in_lost_stage,
        "any_order_unplaced": pathless_lost & ~single,
        "in_order_unplaced": ~recorded & (deal_open > 1) & (in_level == 0),
    }


def _funnel_rates(
    mode: str,
    stage_order: np.ndarray,
    unplaced: np.ndarray,
    advanced: np.ndarray,
    decided: np.ndarray,
    won: np.ndarray,
    closed: np.ndarray,
    lost_here: np.ndarray,
    reached: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The three funnel rates of each row, NULL where the deals whose path is not recorded
    (`unplaced`) could change them, and a note saying why (NULL when every rate is as computed).

    any_order: an unplaced deal is lost and reached the first stage, but where it went from there is
    unknown, so next_step_rate and drop_off_rate are unknown at every stage and stage_to_won_rate
    from the second stage on. in_order: unplaced deals are left out of every count (their in-order
    path is not recorded, and leaving out won and lost deals alike biases no rate); the note says so.
    """
    next_step, to_won, drop_off = safe_ratio(advanced, decided), safe_ratio(won, closed), safe_ratio(lost_here, reached)
    note = np.full(len(unplaced), None, dtype=object)
    has = unplaced > 0
    if not has.any():
        return {"next_step_rate": next_step, "stage_to_won_rate": to_won, "drop_off_rate": drop_off}, note
    count = pd.Series(unplaced[has]).map("{:,}".format).to_numpy(dtype=object)
    if mode == "any_order":
        later = has & (stage_order > 1)
        next_step = np.where(has, np.nan, next_step)
        drop_off = np.where(has, np.nan, drop_off)
        to_won = np.where(later, np.nan, to_won)
        text = np.where(
            stage_order[has] == 1,
            " lost deal(s) without recorded stages count as reaching this first stage, but whether they "
            "went further and where they were lost is unknown: next_step_rate and drop_off_rate are NULL",
            " lost deal(s) without recorded stages may have reached this stage: next_step_rate, "
            "stage_to_won_rate and drop_off_rate are NULL (the first stage's stage_to_won_rate is known)",
        )
        note[has] = count + text
    else:
        note[has] = count + " deal(s) without stage history are left out: their in-order path is not recorded"
    return {"next_step_rate": next_step, "stage_to_won_rate": to_won, "drop_off_rate": drop_off}, note


def stage_conversion(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The funnel: one row per pipeline x period x segment x funnel mode x open stage S.

    `history` is the output of `etl.pipeline_state.prepare_history`.
    Periods: period_grain "all" (period "all": every deal that existed at the end of as_of) and
    period_grain "quarter" (the fiscal quarter in which the deal was created, `etl.periods`).
    Segments: every segment type of `etl.schema.SEGMENT_COLUMNS` (`all`/`all` is the total).
    A deal's outcome (open/won/lost) is its status at the end of as_of; a win that was later
    reversed (the deal re-opened) is not a win.

    Funnel modes, with n the number of open stages of the pipeline and stages 1..n in order:
    - any_order: the deal reached S if it entered S or any later open stage at any time up to
      as_of, or is won (skipped stages count as reached);
    - in_order: the deal reached S if it entered every open stage 1..S (in any order over time);
      a won deal counts at the won step only if it entered all n open stages.

    Counts per row (each a number of deals):
    - reached: reached S in this mode;
    - advanced: reached S+1 in this mode; for the last open stage, won;
    - won: reached S and won;
    - lost_here: reached S and lost while in S (S is the last open stage the deal was in before it
      was lost, so a deal that moved back from S+1 to S and was lost counts at S);
    - decided: reached S and either advanced or closed (won or lost). This is the denominator of
      next_step_rate, "deals whose outcome is known or which have passed S": open deals that
      reached S but never went past it are not yet decided and are left out;
    - closed: reached S and closed (won or lost) at as_of.
    Rates (NULL when the denominator is 0): next_step_rate = advanced / decided;
    stage_to_won_rate = won / closed; drop_off_rate = lost_here / reached.

    Deals without stage history (`has_history` False; only their current stage is known, see
    `etl.pipeline_state.prepare_history`):
    - open: counted as having entered their current stage only, so in any_order they reached
      stages 1..current; in in_order they count only if the current stage is the first one;
    - won: in any_order they reached every open stage and advanced past each (a win passes them
      all);
    - lost (and any lost deal whose history records no open stage): in any_order they reached the
      first stage (every deal was open in some stage), but where they went from there and where they
      were lost is unknown: they are `unplaced`. Where a row's pipeline, period and segment have
      unplaced deals, next_step_rate and drop_off_rate (every stage) and stage_to_won_rate (from the
      second stage on) are NULL, and `rate_note` says why; the first stage's stage_to_won_rate (won
      over all closed deals: the creation-to-outcome rate) stays. Counts hold the deals known to
      have reached, advanced or been lost at a stage;
    - in in_order every deal without history other than an open one in the first stage is unplaced
      and left out of every count (won and lost alike, so the rates of the deals with a recorded
      path are unbiased); `rate_note` says how many.
    In a pipeline with one open stage every deal was in it: deals without history are placed exactly
    in both modes (a lead funnel read creation to outcome: 842 won of 8,000 leads is 10.5%).
    Deals in pipelines without a configured stage order are left out (with a warning).
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = as_of_date(as_of)
    deals_now = deals_as_of(deals, history, as_of, at)
    frame = deals_now.frame
    pipe, pipelines, n_open, names = open_stage_layout(frame, stages, "stage_conversion")
    counted = pipe >= 0
    if not counted.any():
        return empty_table("stage_conversion", as_of_day)
    deal_open = np.where(counted, n_open[np.maximum(pipe, 0)], 0)
    levels = _funnel_levels(history, deals_now, as_of_end(as_of), deal_open)
    width = names.shape[1] + 1  # levels 0..max n + 1

    status = deals_now.status[counted]
    levels = {key: value[counted] for key, value in levels.items()}
    frame = frame.loc[counted].reset_index(drop=True)
    pipe = pipe[counted]
    periods = {
        "all": (np.zeros(len(frame), dtype="int64"), np.array(["all"], dtype=object)),
        "quarter": codes(quarter_labels(frame["created_at"], fiscal_year_start_month)),
    }
    pieces = []
    for segment_type, (segment, segment_names) in segment_codes(frame).items():
        for grain, (period, period_names) in periods.items():
            group_ids, (g_pipe, g_period, g_segment) = combine_codes(
                (pipe, len(pipelines)), (period, len(period_names)), (segment, len(segment_names))
            )
            n_groups = len(g_pipe)
            rows, stage_order = stage_rows(g_pipe, n_open)
            for mode in FUNNEL_MODES:
                level, lost_stage = levels[f"{mode}_level"], levels[f"{mode}_lost_stage"]
                # at[g, status, L]: deals of group g with that status at level L; at_or_above: level >= L.
                cells = (group_ids * 3 + status) * width + level
                at = np.bincount(cells, minlength=n_groups * 3 * width).reshape(n_groups, 3, width)
                at_or_above = at[:, :, ::-1].cumsum(axis=2)[:, :, ::-1]
                lost_cells = group_ids[lost_stage > 0] * width + lost_stage[lost_stage > 0]
                lost = np.bincount(lost_cells, minlength=n_groups * width).reshape(n_groups, width)

                reached = at_or_above[rows, :, stage_order].sum(axis=1)
                advanced = at_or_above[rows, :, stage_order + 1].sum(axis=1)
                won = at_or_above[rows, WON, stage_order]
                closed = won + at_or_above[rows, LOST, stage_order]
                decided = advanced + at[rows, WON, stage_order] + at[rows, LOST, stage_order]
                lost_here = lost[rows, stage_order]
                unplaced = np.bincount(group_ids[levels[f"{mode}_unplaced"]], minlength=n_groups)[rows]
                rates, note = _funnel_rates(mode, stage_order, unplaced, advanced, decided, won, closed, lost_here, reached)
                n_rows = len(rows)
                pieces.append(
                    {
                        "pipeline": pipelines[g_pipe[rows]],
                        "period_grain": np.full(n_rows, grain, dtype=object),
                        "period": period_names[g_period[rows]],
                        "segment_type": np.full(n_rows, segment_type, dtype=object),
                        "segment": segment_names[g_segment[rows]],
                        "funnel_mode": np.full(n_rows, mode, dtype=object),
                        "stage": names[g_pipe[rows], stage_order],
                        "stage_order": stage_order,
                        "reached": reached,
                        "advanced": advanced,
                        "won": won,
                        "lost_here": lost_here,
                        "decided": decided,
                        "closed": closed,
                        "unplaced": unplaced,
                        **rates,
                        "rate_note": note,
                    }
                )
    out = table_frame("stage_conversion", concat_pieces(pieces), as_of_day)
    log.info("stage_conversion: %d rows for %d deals as of %s", len(out), len(frame), as_of_day)
    return out
