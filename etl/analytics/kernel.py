"""What every analytics table shares: the deals as they stood at the end of as_of, frames shaped as
the warehouse contract, integer codes and groups, percentiles, ratios and period calendars.

Every name here is public and used by the table modules (`funnel`, `velocity`, `coaching`,
`health`); they import nothing private from each other or from here.

"The deals as they stood at the end of as_of" is built in one place: `deals_at_as_of` runs
`etl.pipeline_state.pipeline_at_many` once (through `point_in_time`) and returns a frame the
Dagster graph stores and hands to every table; `deals_as_of` turns that frame into arrays
addressed by row number, so tables never rebuild it. Everything is as it was known at the end of
the run's `as_of` day (`etl.pipeline_state.as_of_end`).

Percentiles (median, p90) use numpy's default "linear" definition: for n sorted values x[0..n-1]
the q-quantile sits at position q*(n-1), interpolated linearly between its two neighbours.

Built for millions of deals: deals are addressed by their row number, segments by integer codes,
and every count, sum and percentile is one `numpy.bincount` or one sort over all deals per
segment type.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from etl.bookings import booking_anchor, booking_dates
from etl.deal_ids import index_in
from etl.periods import period_bounds, period_labels, quarter_start
from etl.pipeline_state import DEAL_ATTRIBUTES, STATE_COLUMNS, as_of_end, blank_column, pipeline_at_many
from etl.schema import SEGMENT_COLUMNS, TIMESTAMP, segment_values
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog
from etl.tables import TABLES

log = logging.getLogger(__name__)

# Status codes; their order is also the order of STATUSES.
OPEN, WON, LOST = 0, 1, 2
STATUSES = (STATUS_OPEN, STATUS_WON, STATUS_LOST)
MICROSECOND = np.timedelta64(1, "us")
# The columns of the `deals_at_as_of` frame, after deal_id: the deal's state at the end of as_of.
DEALS_AT_AS_OF_COLUMNS = (
    "deal_id", "status", "stage_order", "amount_reporting", "expected_close_date", "closed_at", "booked_at", "as_of",
)


# --------------------------------------------------------------------------------------------
# Frames shaped as the warehouse contract
# --------------------------------------------------------------------------------------------


def as_of_date(as_of: dt.date | pd.Timestamp) -> dt.date:
    return pd.Timestamp(as_of).date()


def table_frame(name: str, data: dict[str, np.ndarray], as_of: dt.date) -> pd.DataFrame:
    """`data` as a frame with exactly the columns of warehouse table `name` (`etl.tables`), in its
    order, with dtypes matching its SQL types: int64 counts (Int64 where the column is nullable),
    bool flags, float64 money, rates and days (NaN is NULL), datetime64 dates and timestamps,
    string text, and as_of as a date."""
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
        kind = column.type
        if isinstance(kind, sa.Boolean):
            columns[column.name] = pd.Series(np.asarray(values, dtype=bool))
        elif isinstance(kind, (sa.DateTime, sa.Date)):
            columns[column.name] = pd.Series(np.asarray(values, dtype=TIMESTAMP))
        elif isinstance(kind, (sa.Integer, sa.BigInteger)) and column.nullable:
            numbers = np.asarray(values, dtype="float64")
            columns[column.name] = pd.Series(pd.array(np.where(np.isnan(numbers), None, numbers), dtype="Int64"))
        elif isinstance(kind, (sa.Integer, sa.BigInteger)):
            columns[column.name] = pd.Series(np.asarray(values, dtype="int64"))
        elif isinstance(kind, (sa.Float, sa.Numeric)):
            columns[column.name] = pd.Series(np.asarray(values, dtype="float64"))
        else:
            columns[column.name] = pd.Series(np.asarray(values, dtype=object), dtype="string")
    return pd.DataFrame(columns)


def empty_table(name: str, as_of: dt.date) -> pd.DataFrame:
    """Warehouse table `name` with no rows (its columns and dtypes, see `table_frame`)."""
    names = [c.name for c in TABLES[name].table.columns if c.name != "as_of"]
    return table_frame(name, {c: np.array([]) for c in names}, as_of)


def concat_pieces(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Column arrays of several pieces of a table (same keys), one after the other."""
    return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}


# --------------------------------------------------------------------------------------------
# Codes, groups, percentiles and ratios
# --------------------------------------------------------------------------------------------


def codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..k-1 of `values` and the k distinct values, in sorted order."""
    found, uniques = pd.factorize(values, sort=True)
    return found.astype("int64"), np.asarray(uniques, dtype=object)


def segment_codes(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per segment type: each row's segment code and the segment names (see `etl.schema.segment_values`)."""
    return {segment_type: codes(segment_values(frame, segment_type)) for segment_type in SEGMENT_COLUMNS}


def status_codes(stage_status: pd.Series) -> np.ndarray:
    """OPEN/WON/LOST per value; -1 where the status is unknown (stage unknown or not configured)."""
    return index_in(stage_status, list(STATUSES))


def combine_codes(*codes_and_sizes: tuple[np.ndarray, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dense group ids (in sorted key order) for the combinations of several code arrays that
    occur, and each group's codes."""
    key = np.zeros(len(codes_and_sizes[0][0]), dtype="int64")
    dims = []
    for values, size in codes_and_sizes:
        key = key * max(size, 1) + values
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


def grouped_percentiles(
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


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator; NaN (NULL in the warehouse) where either is NaN or the denominator is 0."""
    numerator = np.asarray(numerator, dtype="float64")
    denominator = np.asarray(denominator, dtype="float64")
    out = np.full(len(denominator), np.nan)
    ok = np.isfinite(denominator) & (denominator != 0) & np.isfinite(numerator)
    out[ok] = numerator[ok] / denominator[ok]
    return out


def open_stage_layout(frame: pd.DataFrame, stages: StageCatalog, table: str) -> tuple:
    """Pipeline code per row of `frame` (-1 for pipelines without a configured stage order), the
    pipelines, their number of open stages and a (pipeline, stage order) table of open-stage
    names. Deals left out are logged as a warning naming `table`."""
    pipe, pipelines = codes(frame["pipeline"])
    known = np.array([p in stages for p in pipelines], dtype=bool)
    if not known.all():
        unknown = [str(p) for p in pipelines[~known]]
        log.warning(
            "%s: %d deal(s) in pipeline(s) %s without a stage order are left out",
            table,
            int((~known[pipe]).sum()),
            unknown,
        )
    n_open = np.array([len(stages[p].open_stages) if k else 0 for p, k in zip(pipelines, known)], dtype="int64")
    width = int(n_open.max()) + 1 if len(n_open) else 1
    names = np.full((len(pipelines), width), None, dtype=object)
    for i, (p, k) in enumerate(zip(pipelines, known)):
        if k:
            names[i, 1 : n_open[i] + 1] = stages[p].open_stages
    return np.where(known[pipe], pipe, -1), pipelines, n_open, names


def stage_rows(group_pipeline: np.ndarray, n_open: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per (group, open stage of the group's pipeline): group index and stage order 1..n."""
    per_group = n_open[group_pipeline]
    rows = np.repeat(np.arange(len(group_pipeline)), per_group)
    offsets = np.arange(per_group.sum()) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    return rows, offsets + 1


def stage_default_probability(history: pd.DataFrame, stages: StageCatalog) -> np.ndarray:
    """The configured default probability of each history row's stage (NaN if not configured)."""
    pipelines = stages.names
    width = max((len(stages[p].open_stages) for p in pipelines), default=0) + 3
    table = np.full((len(pipelines) + 1, width), np.nan)  # last row: pipelines not configured
    for i, name in enumerate(pipelines):
        for position, stage in enumerate(stages[name].open_stages, start=1):
            table[i, position] = stages[name].probability_of(stage)
    pipeline = index_in(history["pipeline"], pipelines)
    order = history["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    order = np.where(np.isnan(order) | (order < 0) | (order >= width), 0, order).astype("int64")
    return table[np.where(pipeline < 0, len(pipelines), pipeline), order]


# --------------------------------------------------------------------------------------------
# The pipeline at any instant, and the deals as they stood at the end of as_of
# --------------------------------------------------------------------------------------------


def point_in_time(
    created_at: np.ndarray,
    history: pd.DataFrame,
    history_deal: np.ndarray,
    dates: Iterable[dt.date | pd.Timestamp],
    rows: np.ndarray | None = None,
    state: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """`etl.pipeline_state.pipeline_at_many` at `dates` over lean copies of the deals and of the
    history rows selected by the boolean mask `rows` (all rows by default).

    Deals are numbered 0..len(created_at)-1 (`created_at` per deal) and `history_deal` gives the
    number of each history row's deal (-1 only on rows `rows` leaves out), so joins and sorts are
    on integers; the result's `deal_id` is that number. The lean copies carry creation times,
    history validity, stage status and stage entry time, plus the `state` columns (names from
    `STATE_COLUMNS`, one value per history row); every other column is blank (empty
    categoricals, cheap to copy), so a rebuild over millions of deals costs little.
    """
    if rows is None:
        rows = np.ones(len(history), dtype=bool)
    n_deals, n_rows = len(created_at), int(rows.sum())
    lean_deals = {"deal_id": np.arange(n_deals)}
    lean_deals.update({column: blank_column(n_deals) for column in DEAL_ATTRIBUTES})
    lean_deals["created_at"] = created_at
    status = status_codes(history["stage_status"])[rows]
    lean_history = {column: blank_column(n_rows) for column in STATE_COLUMNS if column != "closed_at"}
    lean_history.update({column: values[rows] for column, values in (state or {}).items()})
    lean_history.update(
        {
            "deal_id": history_deal[rows],
            "changed_at": history["changed_at"].to_numpy(dtype=TIMESTAMP)[rows],
            "valid_to": history["valid_to"].to_numpy(dtype=TIMESTAMP)[rows],
            "stage_status": pd.Categorical.from_codes(status, categories=list(STATUSES)),
            "stage_entered_at": history["stage_entered_at"].to_numpy(dtype=TIMESTAMP)[rows],
        }
    )
    return pipeline_at_many(pd.DataFrame(lean_deals), pd.DataFrame(lean_history), dates)


def _deal_rows(deal_ids: pd.Series, deals: pd.DataFrame, source: str, expected: str) -> np.ndarray:
    """Per value of `deal_ids` (column deal_id of `source`): its row in `deals`; a deal not in
    `deals` is an error naming the first such row and what was `expected`."""
    rows = index_in(deal_ids, deals["deal_id"])
    if (rows < 0).any():
        row = int(np.flatnonzero(rows < 0)[0])
        raise ValueError(
            f"{source} row {row}, column deal_id: deal {deal_ids.iloc[row]!r} is not in deals; expected {expected}"
        )
    return rows


def history_deal_rows(deals: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
    """Per history row: its deal's row in `deals`; a history row of a deal not in `deals` is an error."""
    return _deal_rows(
        history["deal_id"], deals, "history", "the output of etl.pipeline_state.prepare_history for these deals"
    )


def _rebuild_at_as_of(
    deals: pd.DataFrame, history: pd.DataFrame, history_deal: np.ndarray, as_of: dt.date | pd.Timestamp
) -> pd.DataFrame:
    """The `deals_at_as_of` frame, given each history row's deal row."""
    state = {
        "stage_order": history["stage_order"].to_numpy(dtype="float64", na_value=np.nan),
        "amount_reporting": history["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "expected_close_date": history["expected_close_date"].to_numpy(dtype=TIMESTAMP),
    }
    created_at = deals["created_at"].to_numpy(dtype=TIMESTAMP)
    at = point_in_time(created_at, history, history_deal, [as_of_end(as_of)], state=state)
    deal_row = at["deal_id"].to_numpy(dtype="int64")
    order = np.argsort(deal_row, kind="stable")
    deal_row = deal_row[order]
    closed_at = at["closed_at"].to_numpy(dtype=TIMESTAMP)[order]
    day = as_of_date(as_of)
    return pd.DataFrame(
        {
            "deal_id": deals["deal_id"].iloc[deal_row].reset_index(drop=True),
            "status": at["status"].iloc[order].reset_index(drop=True),
            "stage_order": at["stage_order"].to_numpy(dtype="float64", na_value=np.nan)[order],
            "amount_reporting": at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)[order],
            "expected_close_date": at["expected_close_date"].to_numpy(dtype=TIMESTAMP)[order],
            "closed_at": closed_at,
            "booked_at": booking_dates(booking_anchor(deals.iloc[deal_row].reset_index(drop=True)), closed_at, day),
            "as_of": pd.Series([day] * len(deal_row), dtype=object),
        }
    )


def deals_at_as_of(deals: pd.DataFrame, history: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Every deal that existed at the end of `as_of` (created by then), as it stood then: one row
    per such deal, in the order of `deals`, from one `etl.pipeline_state.pipeline_at_many` call
    over `history` (the output of `etl.pipeline_state.prepare_history` for `deals`).

    Columns: deal_id; status (open, won or lost; a deal whose stage is unknown is open);
    stage_order, amount_reporting and expected_close_date as they stood then (NaN/NaT where not
    recorded); closed_at (when it was last marked won or lost, NaT while open); booked_at (the
    booking date of a closed deal, `etl.bookings`; NaT while open); as_of.
    Every analytics table reads the deals at as_of from this frame (`deals_as_of`).
    """
    return _rebuild_at_as_of(deals, history, history_deal_rows(deals, history), as_of)


@dataclass(frozen=True)
class DealsAsOf:
    """The deals that existed at the end of as_of, as they stood then, as arrays (`deals_as_of`).

    Row i of every array is row i of `frame` (the existing deals' rows of `deals`, in order).
    """

    as_of: dt.date
    frame: pd.DataFrame
    status: np.ndarray  # OPEN / WON / LOST
    closed_at: np.ndarray  # datetime64[us]; NaT while open
    booked_at: np.ndarray  # datetime64[us] booking date (etl.bookings) of closed deals; NaT while open
    amount: np.ndarray  # amount_reporting at the end of as_of (0 where unknown)
    created_at: np.ndarray  # datetime64[us]
    stage_order: np.ndarray  # int64 stage order at the end of as_of; 0 where unknown
    expected_close: np.ndarray  # datetime64[us] expected close date at the end of as_of; NaT if none
    existing_row: np.ndarray  # per row of `deals`: its row in `frame`, -1 if it did not exist yet
    history_deal: np.ndarray  # per history row: its row in `deals`

    @property
    def history_existing(self) -> np.ndarray:
        """Per history row: the deal's row in `frame`, -1 if the deal did not exist at as_of."""
        return self.existing_row[self.history_deal]

    @property
    def won(self) -> np.ndarray:
        return self.status == WON

    @property
    def lost(self) -> np.ndarray:
        return self.status == LOST


def deals_as_of(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    at: pd.DataFrame | None = None,
) -> DealsAsOf:
    """The `deals_at_as_of` frame `at` of these `deals` and `history` (rebuilt when None) as arrays
    addressed by row number. `at` must be for the same as_of and name only deals of `deals`."""
    day = as_of_date(as_of)
    history_deal = history_deal_rows(deals, history)
    if at is None:
        at = _rebuild_at_as_of(deals, history, history_deal, as_of)
    missing = [c for c in DEALS_AT_AS_OF_COLUMNS if c not in at.columns]
    if missing:
        raise KeyError(f"deals_at_as_of: missing column(s) {missing}; expected the frame of etl.analytics.kernel.deals_at_as_of")
    if len(at):
        stamped = pd.Timestamp(at["as_of"].iloc[0]).date()
        if stamped != day:
            raise ValueError(f"deals_at_as_of: row 0, column as_of: the frame is for {stamped}, expected {day}")
    deal_row = _deal_rows(at["deal_id"], deals, "deals_at_as_of", "the frame built from these deals")
    existing_row = np.full(len(deals), -1, dtype="int64")
    existing_row[deal_row] = np.arange(len(deal_row))
    frame = deals.iloc[deal_row].reset_index(drop=True)
    status = np.asarray(status_codes(at["status"]))
    stage_order = at["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    return DealsAsOf(
        as_of=day,
        frame=frame,
        status=np.where(status < 0, OPEN, status),
        closed_at=at["closed_at"].to_numpy(dtype=TIMESTAMP),
        booked_at=at["booked_at"].to_numpy(dtype=TIMESTAMP),
        amount=np.nan_to_num(at["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan)),
        created_at=frame["created_at"].to_numpy(dtype=TIMESTAMP),
        stage_order=np.where(np.isnan(stage_order), 0, stage_order).astype("int64"),
        expected_close=at["expected_close_date"].to_numpy(dtype=TIMESTAMP),
        existing_row=existing_row,
        history_deal=history_deal,
    )


# --------------------------------------------------------------------------------------------
# Period calendars
# --------------------------------------------------------------------------------------------


def first_day(deals_now: DealsAsOf) -> pd.Timestamp:
    """The earliest creation or booking date of the deals: the start of the tables' calendars (a
    deal keyed in after its close date is booked before it was created)."""
    booked = deals_now.booked_at[~np.isnat(deals_now.booked_at)]
    return pd.Timestamp(min(deals_now.created_at.min(), booked.min()) if len(booked) else deals_now.created_at.min())


@dataclass(frozen=True)
class Calendar:
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


def period_calendar(first: pd.Timestamp, as_of: dt.date, grain: str, fiscal_year_start_month: int) -> Calendar:
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
    snapshot_at = np.minimum(end - MICROSECOND, np.datetime64(as_of_end(as_of), "us"))
    return Calendar(labels, start, end, snapshot_at)
