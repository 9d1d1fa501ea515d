"""Pipeline analytics tables: the funnel (`stage_conversion`), time in stage (`stage_durations`) and
sales velocity (`velocity`), shaped exactly as the warehouse tables of the same names in
`etl.tables`, which BI tools read directly. Definitions follow the project's metric definitions
(design/metrics.md); each function's docstring states exactly which deals each column counts.

Everything is computed as it was known at the end of the run's `as_of` day
(`etl.pipeline_state.as_of_end`): deals created later do not exist, a deal closed later is still
open, and a deal's state at any instant comes from `etl.pipeline_state.pipeline_at_many`. Deal
attributes that define segments (pipeline, owner, team, product, region, lead source, deal type)
are the deal's current ones. Money is in the reporting currency (`amount_reporting`).

Percentiles (median, p90) use numpy's default "linear" definition: for n sorted values x[0..n-1]
the q-quantile sits at position q*(n-1), interpolated linearly between its two neighbours.

The tables are built for millions of deals: deals are addressed by their row number, segments by
integer codes, and every count, sum and percentile is one `numpy.bincount` or one sort over all
deals per segment type. Nothing loops over deals, history rows or periods of data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from etl.bookings import DEFAULT_KEYED_AT_CLOSE_HOURS, booking_anchor, booking_dates, keyed_in_at_close
from etl.periods import period_bounds, period_labels, quarter_labels, quarter_start
from etl.pipeline_state import DEAL_ATTRIBUTES, STATE_COLUMNS, as_of_end, pipeline_at_many
from etl.pipeline_state import blank_column as _blank
from etl.schema import SEGMENT_COLUMNS, TIMESTAMP, segment_values
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog
from etl.tables import TABLES

log = logging.getLogger(__name__)

FUNNEL_MODES = ("any_order", "in_order")
VELOCITY_GRAINS = ("month", "quarter")
THRESHOLD_CONFIGURED = "configured"
THRESHOLD_LEARNED = "learned"

# Status codes; their order is also the order of _STATUSES.
_OPEN, _WON, _LOST = 0, 1, 2
_STATUSES = (STATUS_OPEN, STATUS_WON, STATUS_LOST)
_MICROSECOND = np.timedelta64(1, "us")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _as_of_date(as_of: dt.date | pd.Timestamp) -> dt.date:
    return pd.Timestamp(as_of).date()


def _table_frame(name: str, data: dict[str, np.ndarray], as_of: dt.date) -> pd.DataFrame:
    """`data` as a frame with exactly the columns of warehouse table `name`, in its order, with
    dtypes matching its SQL types: int64 counts, bool flags, float64 money/rates/days (NaN is
    NULL), string text, and as_of as a date."""
    table = TABLES[name].table
    n = len(next(iter(data.values()))) if data else 0
    columns: dict[str, pd.Series] = {}
    for column in table.columns:
        if column.name == "as_of":
            columns["as_of"] = pd.Series([as_of] * n, dtype=object)
            continue
        if column.name not in data:
            raise KeyError(f"table {name}: no values computed for column {column.name!r}")
        values = data[column.name]
        if isinstance(column.type, sa.Boolean):
            columns[column.name] = pd.Series(np.asarray(values, dtype=bool))
        elif isinstance(column.type, (sa.Integer, sa.BigInteger)):
            columns[column.name] = pd.Series(np.asarray(values, dtype="int64"))
        elif isinstance(column.type, (sa.Float, sa.Numeric)):
            columns[column.name] = pd.Series(np.asarray(values, dtype="float64"))
        else:
            columns[column.name] = pd.Series(np.asarray(values, dtype=object), dtype="string")
    return pd.DataFrame(columns)


def _empty_table(name: str, as_of: dt.date) -> pd.DataFrame:
    names = [c.name for c in TABLES[name].table.columns if c.name != "as_of"]
    return _table_frame(name, {c: np.array([]) for c in names}, as_of)


def _concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}


def _arrow_text(values: pd.Series | list) -> pa.Array:
    return pc.cast(pa.array(values, from_pandas=True), pa.large_string())


def _index_in(values: pd.Series, universe: pd.Series | list) -> np.ndarray:
    """Position of each of `values` in `universe` (whose values are unique), -1 where absent.
    An Arrow hash lookup: several times faster than a pandas index on millions of text ids."""
    found = pc.index_in(_arrow_text(values), value_set=_arrow_text(universe))
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype="int64")


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..k-1 of `values` and the k distinct values, in sorted order."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype("int64"), np.asarray(uniques, dtype=object)


def _group(*codes_and_sizes: tuple[np.ndarray, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dense group ids (in sorted key order) for the combinations of several code arrays that
    occur, and each group's codes."""
    key = np.zeros(len(codes_and_sizes[0][0]), dtype="int64")
    dims = []
    for codes, size in codes_and_sizes:
        key = key * max(size, 1) + codes
        dims.append(max(size, 1))
    n_keys = int(np.prod(dims, dtype="int64"))
    if n_keys <= 4 * len(key) + 1_000_000:
        # Small key space: a presence table instead of a sort.
        present = np.bincount(key, minlength=n_keys) > 0
        unique_keys = np.flatnonzero(present)
        group_ids = (np.cumsum(present) - 1)[key]
    else:
        unique_keys, group_ids = np.unique(key, return_inverse=True)
    parts = np.unravel_index(unique_keys, dims)
    return np.asarray(group_ids, dtype="int64").reshape(-1), [np.asarray(p, dtype="int64") for p in parts]


def _stable_order(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """np.argsort(keys, kind="stable") for integer keys in [0, n_keys); radix-sorted when they fit 16 bits."""
    if n_keys <= np.iinfo(np.uint16).max + 1:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _grouped_percentiles(
    groups: np.ndarray,
    values: np.ndarray,
    n_groups: int,
    quantiles: tuple[float, ...],
    value_order: np.ndarray | None = None,
) -> np.ndarray:
    """Per group, the `quantiles` of `values` with numpy's linear interpolation (position q*(n-1)
    of the group's sorted values). Shape (n_groups, len(quantiles)); NaN for empty groups.
    `value_order` (np.argsort(values, kind="stable")) can be passed when the same values are
    grouped several ways."""
    out = np.full((n_groups, len(quantiles)), np.nan)
    if len(values) == 0:
        return out
    if value_order is None:
        value_order = np.argsort(values, kind="stable")
    order = value_order[_stable_order(groups[value_order], n_groups)]
    sorted_values = values[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    n, first = counts[has], starts[has]
    for j, q in enumerate(quantiles):
        position = q * (n - 1)
        low = np.floor(position).astype("int64")
        high = np.ceil(position).astype("int64")
        below, above = sorted_values[first + low], sorted_values[first + high]
        out[has, j] = below + (above - below) * (position - low)
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator; NaN (NULL in the warehouse) where either is NaN or the denominator is 0."""
    numerator = np.asarray(numerator, dtype="float64")
    denominator = np.asarray(denominator, dtype="float64")
    out = np.full(len(denominator), np.nan)
    ok = np.isfinite(denominator) & (denominator != 0) & np.isfinite(numerator)
    out[ok] = numerator[ok] / denominator[ok]
    return out


def _status_codes(stage_status: pd.Series) -> np.ndarray:
    """_OPEN/_WON/_LOST per value; -1 where the status is unknown (stage unknown or not configured)."""
    return _index_in(stage_status, list(_STATUSES))


def _point_in_time(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    history_deal: np.ndarray,
    dates: list[pd.Timestamp],
    rows: np.ndarray | None = None,
    probability: np.ndarray | None = None,
) -> pd.DataFrame:
    """`etl.pipeline_state.pipeline_at_many` over lean copies of `deals` and `history` (the
    history rows selected by the boolean mask `rows`).

    The lean copies keep what the point-in-time rebuild and these tables use (creation time,
    history validity, stage status, stage entry time, amount in reporting currency, probability)
    and leave the other columns blank (empty categoricals, cheap to copy); deal ids are replaced by
    the deal's row number in `deals`
    (`history_deal` gives it per history row) so joins and sorts are on integers. The result's
    `deal_id` is that row number. `probability`, if given, replaces `crm_probability`.
    """
    if rows is None:
        rows = np.ones(len(history), dtype=bool)
    n_deals, n_rows = len(deals), int(rows.sum())
    lean_deals = {"deal_id": np.arange(n_deals)}
    lean_deals.update({column: _blank(n_deals) for column in DEAL_ATTRIBUTES})
    lean_deals["created_at"] = deals["created_at"].to_numpy(dtype=TIMESTAMP)
    status = _status_codes(history["stage_status"])[rows]
    lean_history = {column: _blank(n_rows) for column in STATE_COLUMNS if column != "closed_at"}
    lean_history.update(
        {
            "deal_id": history_deal[rows],
            "changed_at": history["changed_at"].to_numpy(dtype=TIMESTAMP)[rows],
            "valid_to": history["valid_to"].to_numpy(dtype=TIMESTAMP)[rows],
            "stage_status": pd.Categorical.from_codes(status, categories=list(_STATUSES)),
            "stage_entered_at": history["stage_entered_at"].to_numpy(dtype=TIMESTAMP)[rows],
            "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)[rows],
        }
    )
    if probability is not None:
        lean_history["crm_probability"] = probability[rows]
    return pipeline_at_many(pd.DataFrame(lean_deals), pd.DataFrame(lean_history), dates)


@dataclass(frozen=True)
class _DealsAsOf:
    """The deals that existed at the end of as_of (created by then), as they stood then.

    Row i of every array is row i of `frame` (the existing deals' rows of `deals`, in order).
    """

    frame: pd.DataFrame
    status: np.ndarray  # _OPEN / _WON / _LOST
    closed_at: np.ndarray  # datetime64[us]; NaT while open
    booked_at: np.ndarray  # datetime64[us] booking date (etl.bookings) of closed deals; NaT while open
    amount: np.ndarray  # amount_reporting at the end of as_of (0 where unknown)
    created_at: np.ndarray  # datetime64[us]
    existing_row: np.ndarray  # per row of `deals`: its row in `frame`, -1 if it did not exist yet
    history_deal: np.ndarray  # per history row: its row in `deals`

    @property
    def history_existing(self) -> np.ndarray:
        """Per history row: the deal's row in `frame`, -1 if the deal did not exist at as_of."""
        return self.existing_row[self.history_deal]


def _deals_as_of(deals: pd.DataFrame, history: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> _DealsAsOf:
    history_deal = _index_in(history["deal_id"], deals["deal_id"])
    if (history_deal < 0).any():
        row = int(np.flatnonzero(history_deal < 0)[0])
        raise ValueError(
            f"history row {row}, column deal_id: deal {history['deal_id'].iloc[row]!r} is not in deals; "
            "expected the output of etl.pipeline_state.prepare_history for these deals"
        )
    at = _point_in_time(deals, history, history_deal, [as_of_end(as_of)])
    deal_row = at["deal_id"].to_numpy(dtype="int64")
    order = np.argsort(deal_row, kind="stable")
    deal_row = deal_row[order]
    existing_row = np.full(len(deals), -1, dtype="int64")
    existing_row[deal_row] = np.arange(len(deal_row))
    status = np.asarray(_status_codes(at["status"]))[order]
    frame = deals.iloc[deal_row].reset_index(drop=True)
    closed_at = at["closed_at"].to_numpy(dtype=TIMESTAMP)[order]
    return _DealsAsOf(
        frame=frame,
        status=np.where(status < 0, _OPEN, status),
        closed_at=closed_at,
        booked_at=booking_dates(booking_anchor(frame), closed_at, _as_of_date(as_of)),
        amount=np.nan_to_num(at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)[order]),
        created_at=at["created_at"].to_numpy(dtype=TIMESTAMP)[order],
        existing_row=existing_row,
        history_deal=history_deal,
    )


def _first_day(deals_now: "_DealsAsOf") -> pd.Timestamp:
    """The earliest creation or booking date of the deals (`_DealsAsOf`, or any object with the same
    created_at and booked_at arrays): the start of the tables' calendars (a deal keyed in after its
    close date is booked before it was created)."""
    booked = deals_now.booked_at[~np.isnat(deals_now.booked_at)]
    return pd.Timestamp(min(deals_now.created_at.min(), booked.min()) if len(booked) else deals_now.created_at.min())


def _segments(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per segment type: each row's segment code and the segment names (see `etl.schema.segment_values`)."""
    return {segment_type: _codes(segment_values(frame, segment_type)) for segment_type in SEGMENT_COLUMNS}


def _pipeline_codes(frame: pd.DataFrame, stages: StageCatalog, table: str):
    """Pipeline code per row (-1 for pipelines without a configured stage order), the pipelines,
    their number of open stages and a (pipeline, stage order) table of open-stage names."""
    codes, pipelines = _codes(frame["pipeline"])
    known = np.array([p in stages for p in pipelines], dtype=bool)
    if not known.all():
        unknown = [str(p) for p in pipelines[~known]]
        log.warning(
            "%s: %d deal(s) in pipeline(s) %s without a stage order are left out",
            table,
            int((~known[codes]).sum()),
            unknown,
        )
    n_open = np.array([len(stages[p].open_stages) if k else 0 for p, k in zip(pipelines, known)], dtype="int64")
    width = int(n_open.max()) + 1 if len(n_open) else 1
    names = np.full((len(pipelines), width), None, dtype=object)
    for i, (p, k) in enumerate(zip(pipelines, known)):
        if k:
            names[i, 1 : n_open[i] + 1] = stages[p].open_stages
    return np.where(known[codes], codes, -1), pipelines, n_open, names


def _stage_rows(group_pipeline: np.ndarray, n_open: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per (group, open stage of the group's pipeline): group index and stage order 1..n."""
    per_group = n_open[group_pipeline]
    rows = np.repeat(np.arange(len(group_pipeline)), per_group)
    offsets = np.arange(per_group.sum()) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    return rows, offsets + 1


# --------------------------------------------------------------------------------------------
# stage_conversion
# --------------------------------------------------------------------------------------------


def _funnel_levels(
    history: pd.DataFrame, deals_now: _DealsAsOf, end: pd.Timestamp, deal_open: np.ndarray
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

    won, lost = deals_now.status == _WON, deals_now.status == _LOST
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
    next_step, to_won, drop_off = _ratio(advanced, decided), _ratio(won, closed), _ratio(lost_here, reached)
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
    """
    as_of_day = _as_of_date(as_of)
    deals_now = _deals_as_of(deals, history, as_of)
    frame = deals_now.frame
    pipe, pipelines, n_open, names = _pipeline_codes(frame, stages, "stage_conversion")
    counted = pipe >= 0
    if not counted.any():
        return _empty_table("stage_conversion", as_of_day)
    deal_open = np.where(counted, n_open[np.maximum(pipe, 0)], 0)
    levels = _funnel_levels(history, deals_now, as_of_end(as_of), deal_open)
    width = names.shape[1] + 1  # levels 0..max n + 1

    status = deals_now.status[counted]
    levels = {key: value[counted] for key, value in levels.items()}
    frame = frame.loc[counted].reset_index(drop=True)
    pipe = pipe[counted]
    periods = {
        "all": (np.zeros(len(frame), dtype="int64"), np.array(["all"], dtype=object)),
        "quarter": _codes(quarter_labels(frame["created_at"], fiscal_year_start_month)),
    }
    pieces = []
    for segment_type, (segment, segment_names) in _segments(frame).items():
        for grain, (period, period_names) in periods.items():
            group_ids, (g_pipe, g_period, g_segment) = _group(
                (pipe, len(pipelines)), (period, len(period_names)), (segment, len(segment_names))
            )
            n_groups = len(g_pipe)
            rows, stage_order = _stage_rows(g_pipe, n_open)
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
                won = at_or_above[rows, _WON, stage_order]
                closed = won + at_or_above[rows, _LOST, stage_order]
                decided = advanced + at[rows, _WON, stage_order] + at[rows, _LOST, stage_order]
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
    out = _table_frame("stage_conversion", _concat(pieces), as_of_day)
    log.info("stage_conversion: %d rows for %d deals as of %s", len(out), len(frame), as_of_day)
    return out


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
    as_of_day = _as_of_date(as_of)
    end = as_of_end(as_of).to_datetime64()
    thresholds = dict(thresholds or {})
    existing = deals.loc[(deals["created_at"] <= end).to_numpy(dtype=bool)].reset_index(drop=True)
    pipe, pipelines, n_open, names = _pipeline_codes(existing, stages, "stage_durations")
    width = names.shape[1]

    deal = _index_in(events["deal_id"], existing["deal_id"])
    order = events["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    entered = events["entered_at"].to_numpy(dtype=TIMESTAMP)
    keep = (deal >= 0) & (entered <= end)
    keep[keep] &= pipe[deal[keep]] >= 0
    keep[keep] &= ~np.isnan(order[keep]) & (order[keep] >= 1)
    keep[keep] &= order[keep] <= n_open[pipe[deal[keep]]]
    if not keep.any():
        return _empty_table("stage_durations", as_of_day)
    deal, order = deal[keep], order[keep].astype("int64")
    stay_pipe = pipe[deal]
    exited = events["exited_at"].to_numpy(dtype=TIMESTAMP)[keep]
    days = events["days_in_stage"].to_numpy(dtype="float64", na_value=np.nan)[keep]
    completed = ~np.isnat(exited) & (exited <= end) & ~np.isnan(days)
    backward = events["is_backward"].to_numpy(dtype=bool)[keep]
    done_days = days[completed]
    done_order = np.argsort(done_days, kind="stable")

    pieces = []
    for segment_type, (segment, segment_names) in _segments(existing).items():
        group_ids, (g_pipe, g_segment) = _group((stay_pipe, len(pipelines)), (segment[deal], len(segment_names)))
        cells = group_ids * width + order
        n_cells = len(g_pipe) * width
        done_cells = cells[completed]
        count = np.bincount(done_cells, minlength=n_cells)
        total = np.bincount(done_cells, weights=done_days, minlength=n_cells)
        quantiles = _grouped_percentiles(done_cells, done_days, n_cells, (0.5, 0.9), done_order)
        back = np.bincount(cells[backward], minlength=n_cells)

        rows, stage_order = _stage_rows(g_pipe, n_open)
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
                "mean_days": _ratio(total[row_cells], count[row_cells]),
                "p90_days": p90,
                "stall_threshold_days": np.where(has_configured, configured, p90),
                "threshold_source": source,
                "backward_moves": back[row_cells],
            }
        )
    out = _table_frame("stage_durations", _concat(pieces), as_of_day)
    log.info("stage_durations: %d rows from %d completed stays as of %s", len(out), int(completed.sum()), as_of_day)
    return out


# --------------------------------------------------------------------------------------------
# velocity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """The periods of one grain from the first created deal through as_of."""

    labels: np.ndarray
    start: np.ndarray  # datetime64[us], inclusive
    end: np.ndarray  # datetime64[us], exclusive
    snapshot_at: np.ndarray  # the instant the period's open pipeline is taken

    def period_of(self, when: np.ndarray) -> np.ndarray:
        """Index of the period containing each timestamp; -1 outside the calendar or NaT."""
        index = np.searchsorted(self.start, when, side="right") - 1
        inside = ~np.isnat(when) & (index >= 0)
        inside[inside] &= when[inside] < self.end[index[inside]]
        return np.where(inside, index, -1)


def _calendar(first: pd.Timestamp, as_of: dt.date, grain: str, fiscal_year_start_month: int) -> _Calendar:
    """Periods (labels and bounds from `etl.periods`) of `grain` from the one containing `first`
    through the one containing `as_of`. A period's open pipeline is taken at its last instant, or
    at the end of as_of for the period containing as_of."""
    if grain == "month":
        first_start, step = pd.Timestamp(year=first.year, month=first.month, day=1), 1
    else:
        first_start, step = quarter_start(first, fiscal_year_start_month), 3
    last = pd.Timestamp(as_of)
    n_months = (last.year - first_start.year) * 12 + last.month - first_start.month
    starts = pd.Series(pd.date_range(first_start, periods=n_months // step + 1, freq=f"{step}MS"))
    labels = period_labels(starts, grain, fiscal_year_start_month).to_numpy(dtype=object)
    bounds = [period_bounds(label, fiscal_year_start_month) for label in labels]
    start = np.array([b[0] for b in bounds], dtype=TIMESTAMP)
    end = np.array([b[1] for b in bounds], dtype=TIMESTAMP)
    snapshot_at = np.minimum(end - _MICROSECOND, np.datetime64(as_of_end(as_of), "us"))
    return _Calendar(labels, start, end, snapshot_at)


def _open_pipeline_by_month(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    deals_now: _DealsAsOf,
    stages: StageCatalog,
    months: _Calendar,
    model_scores: pd.DataFrame | None,
) -> dict[str, np.ndarray]:
    """The open deals at each month's snapshot instant, from one `pipeline_at_many` call: per open
    (month, deal) row its month index, deal row (in `deals_now.frame`), amount, CRM probability
    (else the stage's configured default; NaN if neither) and model probability (as_of only)."""
    is_open = _status_codes(history["stage_status"]) <= _OPEN  # open or unknown stage
    probability = history["crm_probability"].to_numpy(dtype="float64", na_value=np.nan)
    probability = np.where(np.isnan(probability), _stage_default_probability(history, stages), probability)
    # Only rows in which the deal is open: each covers exactly the snapshots at which it is open.
    snapshots = _point_in_time(
        deals, history, deals_now.history_deal, list(pd.to_datetime(months.snapshot_at)), is_open, probability
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


def _stage_default_probability(history: pd.DataFrame, stages: StageCatalog) -> np.ndarray:
    """The configured default probability of each history row's stage (NaN if not configured)."""
    pipelines = stages.names
    width = max((len(stages[p].open_stages) for p in pipelines), default=0) + 3
    table = np.full((len(pipelines) + 1, width), np.nan)  # last row: pipelines not configured
    for i, name in enumerate(pipelines):
        for position, stage in enumerate(stages[name].open_stages, start=1):
            table[i, position] = stages[name].probability_of(stage)
    pipeline = _index_in(history["pipeline"], pipelines)
    order = history["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    order = np.where(np.isnan(order) | (order < 0) | (order >= width), 0, order).astype("int64")
    return table[np.where(pipeline < 0, len(pipelines), pipeline), order]


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
    where = _index_in(deal_ids, model_scores["deal_id"])
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
    """
    as_of_day = _as_of_date(as_of)
    deals_now = _deals_as_of(deals, history, as_of)
    if len(deals_now.frame) == 0:
        return _empty_table("velocity", as_of_day)
    calendars = {g: _calendar(_first_day(deals_now), as_of_day, g, fiscal_year_start_month) for g in VELOCITY_GRAINS}
    months, quarters = calendars["month"], calendars["quarter"]
    # Quarter ends are month ends, so each quarter's open pipeline is one month's.
    quarter_month = np.searchsorted(months.snapshot_at, quarters.snapshot_at)
    if not np.array_equal(months.snapshot_at[np.minimum(quarter_month, len(months.labels) - 1)], quarters.snapshot_at):
        raise ValueError(
            f"fiscal_year_start_month={fiscal_year_start_month}: quarter ends {quarters.snapshot_at} "
            "do not fall on month ends"
        )
    open_rows = _open_pipeline_by_month(deals, history, deals_now, stages, months, model_scores)

    won = deals_now.status == _WON
    lost = deals_now.status == _LOST
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
    for segment_type, (segment, segment_names) in _segments(deals_now.frame).items():
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
    out = _table_frame("velocity", _concat(pieces), as_of_day)
    log.info("velocity: %d rows for %d deals as of %s", len(out), len(deals_now.frame), as_of_day)
    return out


def _velocity_rows(
    grain: str,
    calendar: _Calendar,
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
    cycle_quantiles = _grouped_percentiles(won_cells, won_cycles, n_cells, (0.5, 0.9))

    open_deals = open_cells["open_deals"]
    no_probability = (open_deals > 0) & (open_cells["with_probability"] == 0)
    weighted_crm = np.where(no_probability, np.nan, open_cells["weighted_pipeline_crm"])
    weighted_model = np.full(n_cells, np.nan)
    if model_given:
        current = slice((n_periods - 1) * n_segments, n_periods * n_segments)
        weighted_model[current] = open_cells["weighted_pipeline_model"][current]

    avg_deal_value = _ratio(won_amount, won_count)
    win_rate = _ratio(won_count, won_count + lost_count)
    cycle_mean = _ratio(cycle_total, cycle_count)
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
        "win_rate_value": _ratio(won_amount, won_amount + lost_amount),
        "cycle_won_count": cycle_count,
        "cycle_days_median": cycle_quantiles[:, 0],
        "cycle_days_mean": cycle_mean,
        "cycle_days_p90": cycle_quantiles[:, 1],
        "velocity_per_day": _ratio(open_deals * avg_deal_value * win_rate, cycle_mean),
    }
