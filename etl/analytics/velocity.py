"""Time in stage (`stage_durations`) and sales velocity (`velocity`), shaped exactly as the
warehouse tables of the same names in `etl.tables`, which BI tools read directly. Definitions
follow the project's metric definitions (design/metrics.md); each function's docstring states
exactly which deals each column counts.

Conventions are the kernel's (`etl.analytics.kernel`): everything is computed as it was known at
the end of the run's `as_of` day (`etl.pipeline_state.as_of_end`): deals created later do not
exist, a deal closed later is still open, and a deal's state at any instant comes from
`etl.pipeline_state.pipeline_at_many` (`kernel.point_in_time`). Deal attributes that define
segments are the deal's current ones. Money is in the reporting currency (`amount_reporting`).
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd

from etl.analytics.kernel import (
    LOST,
    OPEN,
    WON,
    Calendar,
    DealsAsOf,
    as_of_date,
    combine_codes,
    concat_pieces,
    deals_as_of,
    empty_table,
    first_day,
    grouped_percentiles,
    index_in,
    open_stage_layout,
    period_calendar,
    point_in_time,
    safe_ratio,
    segment_codes,
    stage_default_probability,
    stage_rows,
    status_codes,
    table_frame,
)
from etl.bookings import DEFAULT_KEYED_AT_CLOSE_HOURS, keyed_in_at_close
from etl.pipeline_state import as_of_end
from etl.schema import TIMESTAMP
from etl.stages import StageCatalog

log = logging.getLogger(__name__)

VELOCITY_GRAINS = ("month", "quarter")
THRESHOLD_CONFIGURED = "configured"
THRESHOLD_LEARNED = "learned"


# --------------------------------------------------------------------------------------------
# stage_durations
# --------------------------------------------------------------------------------------------


def _configured_thresholds(
    thresholds: dict[tuple[str, str], float], pipelines: np.ndarray, stage_names: np.ndarray
) -> np.ndarray:
    """The configured stall threshold of each (pipeline, stage) row, NaN where none is configured."""
    if not thresholds:
        return np.full(len(pipelines), np.nan)
    configured = pd.Series(
        [float(v) for v in thresholds.values()], index=pd.MultiIndex.from_tuples(list(thresholds))
    )
    keys = pd.MultiIndex.from_arrays([pipelines, stage_names])
    return configured.reindex(keys).to_numpy(dtype="float64", na_value=np.nan)


def stage_durations(
    deals: pd.DataFrame,
    events: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    thresholds: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """Days in stage: one row per pipeline x segment x open stage.

    `events` is `etl.pipeline_state.stage_events(history, as_of)`. Only stays that started by the
    end of as_of, of deals created by then, count.
    - deals: number of completed stays (the deal left the stage by the end of as_of, forward,
      backward or to won/lost); a deal that stayed in a stage twice counts twice;
    - median_days / mean_days / p90_days: of those completed stays (NULL if none);
    - backward_moves: stays in the stage, completed or current, that began with a move back from a
      later open stage (a re-opened won or lost deal is not a backward move);
    - stall_threshold_days: `thresholds[(pipeline, stage)]` when configured (threshold_source
      "configured"), else p90_days of the row ("learned"); NULL (and source NULL) if neither exists.
    Rows exist for every open stage of each (pipeline, segment) with at least one stay.
    Deals in pipelines without a configured stage order are left out (with a warning).
    """
    as_of_day = as_of_date(as_of)
    end = as_of_end(as_of).to_datetime64()
    thresholds = dict(thresholds or {})
    existing = deals.loc[(deals["created_at"] <= end).to_numpy(dtype=bool)].reset_index(drop=True)
    pipe, pipelines, n_open, names = open_stage_layout(existing, stages, "stage_durations")
    width = names.shape[1]

    deal = index_in(events["deal_id"], existing["deal_id"])
    order = events["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    entered = events["entered_at"].to_numpy(dtype=TIMESTAMP)
    keep = (deal >= 0) & (entered <= end)
    keep[keep] &= pipe[deal[keep]] >= 0
    keep[keep] &= ~np.isnan(order[keep]) & (order[keep] >= 1)
    keep[keep] &= order[keep] <= n_open[pipe[deal[keep]]]
    if not keep.any():
        return empty_table("stage_durations", as_of_day)
    deal, order = deal[keep], order[keep].astype("int64")
    stay_pipe = pipe[deal]
    exited = events["exited_at"].to_numpy(dtype=TIMESTAMP)[keep]
    days = events["days_in_stage"].to_numpy(dtype="float64", na_value=np.nan)[keep]
    completed = ~np.isnat(exited) & (exited <= end) & ~np.isnan(days)
    backward = events["is_backward"].to_numpy(dtype=bool)[keep]
    done_days = days[completed]
    done_order = np.argsort(done_days, kind="stable")

    pieces = []
    for segment_type, (segment, segment_names) in segment_codes(existing).items():
        group_ids, (g_pipe, g_segment) = combine_codes((stay_pipe, len(pipelines)), (segment[deal], len(segment_names)))
        cells = group_ids * width + order
        n_cells = len(g_pipe) * width
        done_cells = cells[completed]
        count = np.bincount(done_cells, minlength=n_cells)
        total = np.bincount(done_cells, weights=done_days, minlength=n_cells)
        quantiles = grouped_percentiles(done_cells, done_days, n_cells, (0.5, 0.9), done_order)
        back = np.bincount(cells[backward], minlength=n_cells)

        rows, stage_order = stage_rows(g_pipe, n_open)
        row_cells = rows * width + stage_order
        row_pipeline = pipelines[g_pipe[rows]]
        row_stage = names[g_pipe[rows], stage_order]
        p90 = quantiles[row_cells, 1]
        configured = _configured_thresholds(thresholds, row_pipeline, row_stage)
        has_configured = ~np.isnan(configured)
        source = np.full(len(rows), None, dtype=object)
        source[~np.isnan(p90)] = THRESHOLD_LEARNED
        source[has_configured] = THRESHOLD_CONFIGURED
        pieces.append(
            {
                "pipeline": row_pipeline,
                "segment_type": np.full(len(rows), segment_type, dtype=object),
                "segment": segment_names[g_segment[rows]],
                "stage": row_stage,
                "stage_order": stage_order,
                "deals": count[row_cells],
                "median_days": quantiles[row_cells, 0],
                "mean_days": safe_ratio(total[row_cells], count[row_cells]),
                "p90_days": p90,
                "stall_threshold_days": np.where(has_configured, configured, p90),
                "threshold_source": source,
                "backward_moves": back[row_cells],
            }
        )
    out = table_frame("stage_durations", concat_pieces(pieces), as_of_day)
    log.info("stage_durations: %d rows from %d completed stays as of %s", len(out), int(completed.sum()), as_of_day)
    return out

# --------------------------------------------------------------------------------------------
# velocity
# --------------------------------------------------------------------------------------------


def _open_pipeline_by_month(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    deals_now: DealsAsOf,
    stages: StageCatalog,
    months: Calendar,
    model_scores: pd.DataFrame | None,
) -> dict[str, np.ndarray]:
    """The open deals at each month's snapshot instant, from one `pipeline_at_many` call: per open
    (month, deal) row its month index, deal row (in `deals_now.frame`), amount, CRM probability
    (else the stage's configured default; NaN if neither) and model probability (as_of only)."""
    is_open = status_codes(history["stage_status"]) <= OPEN  # open or unknown stage
    probability = history["crm_probability"].to_numpy(dtype="float64", na_value=np.nan)
    probability = np.where(np.isnan(probability), stage_default_probability(history, stages), probability)
    # Only rows in which the deal is open: each covers exactly the snapshots at which it is open.
    state = {
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "crm_probability": probability,
    }
    snapshots = point_in_time(
        deals["created_at"].to_numpy(dtype=TIMESTAMP), history, deals_now.history_deal,
        list(pd.to_datetime(months.snapshot_at)), is_open, state,
    )
    instants = snapshots["snapshot_at"].to_numpy(dtype=TIMESTAMP)
    month = np.searchsorted(months.snapshot_at, instants)
    deal = deals_now.existing_row[snapshots["deal_id"].to_numpy(dtype="int64")]
    open_rows = {
        "month": month,
        "deal": deal,
        "amount": np.nan_to_num(snapshots["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)),
        "probability": snapshots["crm_probability"].to_numpy(dtype="float64", na_value=np.nan),
        "model_probability": np.full(len(month), np.nan),
    }
    if model_scores is not None:
        current = month == len(months.labels) - 1
        scores = _model_probabilities(model_scores, deals_now.frame["deal_id"])
        open_rows["model_probability"] = np.where(current, scores[deal], np.nan)
        missing = current & np.isnan(open_rows["model_probability"])
        if missing.any():
            log.warning(
                "velocity: %d open deal(s) at as_of have no model score; they add nothing to weighted_pipeline_model",
                int(missing.sum()),
            )
    return open_rows


def _model_probabilities(model_scores: pd.DataFrame, deal_ids: pd.Series) -> np.ndarray:
    """The model's win probability of each deal in `deal_ids` (NaN where it has no score)."""
    missing = [c for c in ("deal_id", "win_probability") if c not in model_scores.columns]
    if missing:
        raise KeyError(f"model_scores: missing column(s) {missing}; expected columns deal_id and win_probability")
    duplicated = model_scores["deal_id"].duplicated().to_numpy(dtype=bool)
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise ValueError(
            f"model_scores: row {row}, column deal_id: deal {model_scores['deal_id'].iloc[row]!r} is scored "
            "more than once; expected one score per deal"
        )
    if model_scores.empty:
        # No deal scored (for example no deal is open): every deal's model probability is unknown.
        return np.full(len(deal_ids), np.nan)
    where = index_in(deal_ids, model_scores["deal_id"])
    probability = model_scores["win_probability"].to_numpy(dtype="float64", na_value=np.nan)
    return np.where(where >= 0, probability[np.maximum(where, 0)], np.nan)


def velocity(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    model_scores: pd.DataFrame | None = None,
    keyed_at_close_hours: float = DEFAULT_KEYED_AT_CLOSE_HOURS,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Sales velocity: one row per period grain ("month", "quarter") x period x segment.

    `history` is the output of `etl.pipeline_state.prepare_history` with the catalogue `stages`,
    whose configured stage probabilities stand in for missing CRM probabilities. Periods run from the first
    period in which a deal (existing at the end of as_of) was created or booked through the period
    containing as_of; every segment value gets a row in every period (zeros where nothing
    happened). Deals' status, close time and amount are as they stood at the end of as_of: a deal
    marked closed after as_of is open, and a re-opened deal counts only by its latest close.
    - created_count: deals created in the period;
    - won_count / lost_count / won_amount / lost_amount: deals closed at as_of whose booking date
      (`etl.bookings`: by default the CRM's close date) falls in the period;
    - open_deals / pipeline_value / weighted_pipeline_crm: the open deals at the end of the period
      (the end of as_of for the period containing as_of), with their amount and probability then.
      The probability is the CRM's, else the stage's configured default; deals with neither add
      nothing to weighted_pipeline_crm, which is NULL when open deals exist but none has one;
    - weighted_pipeline_model: sum of amount x `model_scores.win_probability` over the open deals
      at the end of as_of, only in the period containing as_of and only when `model_scores`
      (deal_id, win_probability) is given; NULL otherwise. Unscored open deals add nothing;
    - avg_deal_value = won_amount / won_count; win_rate = won / (won + lost);
      win_rate_value = won_amount / (won_amount + lost_amount);
    - cycle_won_count: the period's wins whose cycle length was recorded: wins created less than
      `keyed_at_close_hours` before they were marked won (`etl.bookings.keyed_in_at_close`: keyed
      into the CRM at the moment of closing) are left out, since their created_at is not when the
      sale began; 0 counts every win;
    - cycle_days_median / mean / p90: days from created_at to closed_at (the moment the deal was
      marked won) of those wins;
    - velocity_per_day = open_deals x avg_deal_value x win_rate / cycle_days_mean.
    Ratios are NULL when a denominator is 0 or a part is NULL.
    `at` is the `etl.analytics.kernel.deals_at_as_of` frame of these deals (rebuilt when None).
    """
    as_of_day = as_of_date(as_of)
    deals_now = deals_as_of(deals, history, as_of, at)
    if len(deals_now.frame) == 0:
        return empty_table("velocity", as_of_day)
    calendars = {g: period_calendar(first_day(deals_now), as_of_day, g, fiscal_year_start_month) for g in VELOCITY_GRAINS}
    months, quarters = calendars["month"], calendars["quarter"]
    # Quarter ends are month ends, so each quarter's open pipeline is one month's.
    quarter_month = np.searchsorted(months.snapshot_at, quarters.snapshot_at)
    if not np.array_equal(months.snapshot_at[np.minimum(quarter_month, len(months.labels) - 1)], quarters.snapshot_at):
        raise ValueError(
            f"fiscal_year_start_month={fiscal_year_start_month}: quarter ends {quarters.snapshot_at} "
            "do not fall on month ends"
        )
    open_rows = _open_pipeline_by_month(deals, history, deals_now, stages, months, model_scores)

    won = deals_now.status == WON
    lost = deals_now.status == LOST
    closed = won | lost
    cycle_days = (deals_now.closed_at - deals_now.created_at) / np.timedelta64(1, "D")
    # A win keyed in at the moment of closing has no recorded cycle (etl.bookings.keyed_in_at_close).
    cycle_days[keyed_in_at_close(deals_now.created_at, deals_now.closed_at, keyed_at_close_hours)] = np.nan
    has_probability = ~np.isnan(open_rows["probability"])
    open_weighted = np.where(has_probability, open_rows["amount"] * np.nan_to_num(open_rows["probability"]), 0.0)
    has_model = ~np.isnan(open_rows["model_probability"])
    open_model = np.where(has_model, open_rows["amount"] * np.nan_to_num(open_rows["model_probability"]), 0.0)
    deal_periods = {
        grain: (calendar.period_of(deals_now.created_at), np.where(closed, calendar.period_of(deals_now.booked_at), -1))
        for grain, calendar in calendars.items()
    }

    pieces = []
    for segment_type, (segment, segment_names) in segment_codes(deals_now.frame).items():
        n_segments = len(segment_names)
        # The open pipeline per (month, segment); quarters take their last month's (or as_of's).
        open_cells = open_rows["month"] * n_segments + segment[open_rows["deal"]]
        n_month_cells = len(months.labels) * n_segments

        def per_month(weights=None, mask=None):
            cells = open_cells if mask is None else open_cells[mask]
            w = None if weights is None else (weights if mask is None else weights[mask])
            return np.bincount(cells, weights=w, minlength=n_month_cells).reshape(len(months.labels), n_segments)

        open_by_month = {
            "open_deals": per_month(),
            "pipeline_value": per_month(open_rows["amount"]),
            "weighted_pipeline_crm": per_month(open_weighted),
            "with_probability": per_month(mask=has_probability),
            "weighted_pipeline_model": per_month(open_model),
            "with_model": per_month(mask=has_model),
        }
        for grain, calendar in calendars.items():
            created_period, closed_period = deal_periods[grain]
            month_of_period = np.arange(len(months.labels)) if grain == "month" else quarter_month
            pieces.append(
                _velocity_rows(
                    grain,
                    calendar,
                    segment_type,
                    segment,
                    segment_names,
                    created_period,
                    closed_period,
                    won,
                    lost,
                    deals_now.amount,
                    cycle_days,
                    {key: value[month_of_period].reshape(-1) for key, value in open_by_month.items()},
                    model_given=model_scores is not None,
                )
            )
    out = table_frame("velocity", concat_pieces(pieces), as_of_day)
    log.info("velocity: %d rows for %d deals as of %s", len(out), len(deals_now.frame), as_of_day)
    return out


def _velocity_rows(
    grain: str,
    calendar: Calendar,
    segment_type: str,
    segment: np.ndarray,
    segment_names: np.ndarray,
    created_period: np.ndarray,
    closed_period: np.ndarray,
    won: np.ndarray,
    lost: np.ndarray,
    amount: np.ndarray,
    cycle_days: np.ndarray,
    open_cells: dict[str, np.ndarray],
    model_given: bool,
) -> dict[str, np.ndarray]:
    """The velocity rows of one grain and segment type: every period x segment cell. `open_cells`
    holds the open pipeline per cell; the model-weighted one is known for the last period only
    (the one containing as_of)."""
    n_periods, n_segments = len(calendar.labels), len(segment_names)
    n_cells = n_periods * n_segments

    def tally(period: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        keep = mask & (period >= 0)
        cells = period[keep] * n_segments + segment[keep]
        return np.bincount(cells, weights=None if weights is None else weights[keep], minlength=n_cells)

    created_count = tally(created_period, np.ones(len(segment), dtype=bool))
    won_count, lost_count = tally(closed_period, won), tally(closed_period, lost)
    won_amount, lost_amount = tally(closed_period, won, amount), tally(closed_period, lost, amount)
    # Cycle statistics: the period's wins whose cycle was recorded (NaN: keyed in at close).
    won_keep = won & (closed_period >= 0) & ~np.isnan(cycle_days)
    won_cells = closed_period[won_keep] * n_segments + segment[won_keep]
    won_cycles = cycle_days[won_keep]
    cycle_count = np.bincount(won_cells, minlength=n_cells)
    cycle_total = np.bincount(won_cells, weights=won_cycles, minlength=n_cells)
    cycle_quantiles = grouped_percentiles(won_cells, won_cycles, n_cells, (0.5, 0.9))

    open_deals = open_cells["open_deals"]
    no_probability = (open_deals > 0) & (open_cells["with_probability"] == 0)
    weighted_crm = np.where(no_probability, np.nan, open_cells["weighted_pipeline_crm"])
    weighted_model = np.full(n_cells, np.nan)
    if model_given:
        current = slice((n_periods - 1) * n_segments, n_periods * n_segments)
        weighted_model[current] = open_cells["weighted_pipeline_model"][current]

    avg_deal_value = safe_ratio(won_amount, won_count)
    win_rate = safe_ratio(won_count, won_count + lost_count)
    cycle_mean = safe_ratio(cycle_total, cycle_count)
    return {
        "period_grain": np.full(n_cells, grain, dtype=object),
        "period": calendar.labels[np.repeat(np.arange(n_periods), n_segments)],
        "segment_type": np.full(n_cells, segment_type, dtype=object),
        "segment": segment_names[np.tile(np.arange(n_segments), n_periods)],
        "created_count": created_count,
        "open_deals": open_deals,
        "pipeline_value": open_cells["pipeline_value"],
        "weighted_pipeline_crm": weighted_crm,
        "weighted_pipeline_model": weighted_model,
        "won_count": won_count,
        "lost_count": lost_count,
        "won_amount": won_amount,
        "lost_amount": lost_amount,
        "avg_deal_value": avg_deal_value,
        "win_rate": win_rate,
        "win_rate_value": safe_ratio(won_amount, won_amount + lost_amount),
        "cycle_won_count": cycle_count,
        "cycle_days_median": cycle_quantiles[:, 0],
        "cycle_days_mean": cycle_mean,
        "cycle_days_p90": cycle_quantiles[:, 1],
        "velocity_per_day": safe_ratio(open_deals * avg_deal_value * win_rate, cycle_mean),
    }
