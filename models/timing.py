"""Close timing: how soon a deal that will be won actually closes.

The scoring model says whether an open deal will be won; finance also needs to know *when*, to put
the win in the right quarter. `CloseTiming` learns, from the deals already won by `as_of`, the
probability that a winning deal closes within `h` days of a given moment, by where the deal stood
at that moment: its pipeline and stage, how long it had been in that stage, and how old it was.

How it is learned:
- The pipeline is rebuilt as it stood at past prediction dates (weekly by default) with
  `etl.pipeline_state.pipeline_at_many`, keeping the open rows of deals won by `as_of`. Each row
  gives the days the deal still took to close (`R`, to its booking date, `etl.bookings`, the date
  the forecast's actuals count it on; rows on or after that date are dropped) and the days that
  could be observed between that date and `as_of` (`W`).
- Only deals won by `as_of` are known to be winners, so a row is only seen when `R <= W`: recent
  rows over-represent quick wins, because their slow siblings have not closed yet. Each row is
  therefore used only at horizons it could have been observed at (`s <= W`), through the
  product-limit estimator for right-truncated data (Lynden-Bell 1971):
  P(R <= h) = prod over s > h of (1 - d(s) / n(s)), with d(s) the rows closing on day s and
  n(s) the rows with R <= s <= W. It is unbiased where the naive share of quick wins is not.
- Cells with fewer than `min_deals` distinct deals fall back to coarser pools, in order:
  pipeline x stage x days in stage; pipeline x stage; stage position in the sales process (first
  to last quarter of its stages, pooled across pipelines) x days in stage; pipeline x deal age;
  deal age; everything. Where no pool has enough deals (a new CRM without won deals), the CRM's
  own expected close date is used: a deal closes before a date if its expected close date (or
  today, when that is already past) is before it.

Used by the deal scores (probability of winning this quarter) and the quarterly forecast, and
refitted with a past `as_of` by the forecast backtest.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.bookings import state_booking_dates
from etl.periods import period_bounds, quarter_label
from etl.pipeline_state import as_of_end, lean_rebuild_inputs, pipeline_at, pipeline_at_many, prepare_history
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog
from models.scoring import PROBABILITY_CEILING

logger = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)

# Left edges, in days, of the buckets for days in the current stage and for deal age.
STAGE_DAYS_EDGES = (0, 7, 14, 30, 60, 90, 180, 365)
AGE_DAYS_EDGES = (0, 30, 60, 90, 180, 365, 730)
# Stage position: which quarter of its pipeline's open stages a stage is in (1 = first, 4 = last).
STAGE_POSITION_GROUPS = 4

# The pools, finest first: (name, key columns).
LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pipeline_stage_days", ("pipeline", "stage", "stage_days_bucket")),
    ("pipeline_stage", ("pipeline", "stage")),
    ("position_days", ("stage_position", "stage_days_bucket")),
    ("pipeline_age", ("pipeline", "age_bucket")),
    ("age", ("age_bucket",)),
    ("all", ()),
)
FALLBACK_LEVEL = "expected_close_date"

_PREPARED_COLUMNS = ("valid_to", "stage_status", "stage_order", "stage_entered_at")
_OPEN_DEAL_COLUMNS = ("snapshot_at", "pipeline", "stage", "stage_order", "days_in_stage", "age_days", "expected_close_date")


def prepared_history(deals: pd.DataFrame, history: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    """`history` as `prepare_history` returns it: passed through when it already is, prepared otherwise."""
    if all(c in history.columns for c in _PREPARED_COLUMNS):
        return history
    return prepare_history(deals, history, stages)


def _bucket(days: pd.Series, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket number of each value (0 = first edge), -1 where the value is unknown or negative."""
    values = pd.to_numeric(days, errors="coerce").astype("float64").to_numpy()
    index = np.searchsorted(np.asarray(edges, dtype="float64"), values, side="right") - 1
    return np.where(np.isnan(values), -1, index).astype("int64")


def _stage_position(frame: pd.DataFrame, stages: StageCatalog) -> np.ndarray:
    """1..STAGE_POSITION_GROUPS: how far through its pipeline's open stages the row's stage is;
    -1 for stages the catalogue does not know as open."""
    n_open = frame["pipeline"].map({p.name: len(p.open_stages) for p in stages}).astype("float64").to_numpy()
    order = pd.to_numeric(frame["stage_order"], errors="coerce").astype("float64").to_numpy()
    with np.errstate(invalid="ignore"):
        position = np.ceil(STAGE_POSITION_GROUPS * order / n_open)
        valid = (order >= 1) & (order <= n_open)
    return np.where(valid, position, -1).astype("int64")


def _cell_features(frame: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    """The pooling keys of each row: pipeline, stage, stage position, days-in-stage and age buckets
    (NA or -1 where unknown; rows with an unknown key simply do not join that pool)."""
    return pd.DataFrame(
        {
            "pipeline": frame["pipeline"].astype("string").reset_index(drop=True),
            "stage": frame["stage"].astype("string").reset_index(drop=True),
            "stage_position": _stage_position(frame, stages),
            "stage_days_bucket": _bucket(frame["days_in_stage"], STAGE_DAYS_EDGES),
            "age_bucket": _bucket(frame["age_days"], AGE_DAYS_EDGES),
        }
    )


def _known(features: pd.DataFrame, keys: tuple[str, ...]) -> np.ndarray:
    mask = np.ones(len(features), dtype=bool)
    for key in keys:
        column = features[key]
        if pd.api.types.is_numeric_dtype(column):
            mask &= column.to_numpy() >= 0
        else:
            mask &= column.notna().to_numpy()
    return mask


def closed_by_table(cell: np.ndarray, remaining: np.ndarray, observable: np.ndarray, n_cells: int, max_days: int) -> np.ndarray:
    """P(R <= h) for h = 0..max_days in each cell, from right-truncated rows (Lynden-Bell).

    `remaining` (R, whole days, >= 1) is how long each row's deal still took to close and
    `observable` (W >= R) how many days after the row's date were observable. Values beyond
    `max_days` are pooled at `max_days`, so the last column is 1 wherever a cell has rows.
    Returns an (n_cells, max_days + 1) array, non-decreasing along each row.
    """
    width = max_days + 1
    r = np.minimum(remaining, max_days)
    w = np.minimum(observable, max_days)
    closing = np.bincount(cell * width + r, minlength=n_cells * width).reshape(n_cells, width).astype("float64")
    leaving = np.bincount(cell * width + w, minlength=n_cells * width).reshape(n_cells, width).astype("float64")
    closed_so_far = np.cumsum(closing, axis=1)  # rows with R <= s
    left_before = np.cumsum(leaving, axis=1) - leaving  # rows with W < s (those all have R < s)
    at_risk = closed_so_far - left_before  # rows with R <= s <= W
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - closing / at_risk, 1.0)
    # prod over s >= h, then shift by one day: P(R <= h) = prod over s > h.
    from_here = np.cumprod(factor[:, ::-1], axis=1)[:, ::-1]
    table = np.ones((n_cells, width), dtype="float64")
    table[:, :-1] = from_here[:, 1:]
    return table


@dataclass(frozen=True)
class TimingLevel:
    """One pool of the timing model: its cells (key values, distinct deals, snapshot rows) and
    P(close within h days | wins) for each cell and h = 0..max_horizon_days."""

    name: str
    keys: tuple[str, ...]
    cells: pd.DataFrame
    closed_by: np.ndarray


class CloseTiming:
    """P(a deal that will win closes before a date), learned from deals won by `as_of`.

    Fit with `CloseTiming.fit(...)`; use `probability_closed_by(open_deals, until)` with the rows
    `pipeline_at` returns for the open deals at `as_of`.
    """

    def __init__(
        self,
        levels: tuple[TimingLevel, ...],
        stages: StageCatalog,
        as_of: pd.Timestamp,
        min_deals: int,
        max_horizon_days: int,
        won_deals: int,
        snapshot_rows: int,
    ) -> None:
        self.levels = levels
        self.stages = stages
        self.as_of = as_of
        self.min_deals = min_deals
        self.max_horizon_days = max_horizon_days
        self.won_deals = won_deals
        self.snapshot_rows = snapshot_rows

    def __repr__(self) -> str:
        return (
            f"CloseTiming(as_of={self.as_of.date()}, won_deals={self.won_deals}, "
            f"snapshot_rows={self.snapshot_rows}, min_deals={self.min_deals})"
        )

    @classmethod
    def fit(
        cls,
        deals: pd.DataFrame,
        history: pd.DataFrame,
        stages: StageCatalog,
        as_of: dt.date | pd.Timestamp,
        frequency: str = "W-MON",
        *,
        min_deals: int = 20,
        max_horizon_days: int = 730,
    ) -> "CloseTiming":
        """Learn close timing from the history known at the end of `as_of`.

        `history` is the canonical deal history or `prepare_history`'s output. Prediction dates
        run at `frequency` (a pandas frequency) from the first history row to the day before
        `as_of`; each is the end of its day, like a nightly run's as_of.
        """
        if min_deals < 1:
            raise ValueError(f"CloseTiming.fit: min_deals must be at least 1, got {min_deals}")
        if max_horizon_days < 1:
            raise ValueError(f"CloseTiming.fit: max_horizon_days must be at least 1, got {max_horizon_days}")
        end = as_of_end(as_of)
        history = prepared_history(deals, history, stages)

        def empty(won_deals: int = 0) -> "CloseTiming":
            return cls((), stages, end, min_deals, max_horizon_days, won_deals, 0)

        state = pipeline_at(deals, history, end)
        won = state.loc[state["status"] == STATUS_WON, ["deal_id", "closed_at"]]
        # A win closes on its booking date (etl.bookings), as the forecast's actuals count it: a win
        # keyed in on 8 July with a CRM close date of 27 June closed on 27 June.
        won = won.assign(closed_at=state_booking_dates(won, deals, end))
        if won.empty:
            logger.info("close timing at %s: no deal won yet, the CRM's expected close dates will be used", end.date())
            return empty()

        # Only the open rows of the winners: a deal's open spells then end at its close. (A hash
        # lookup, not Series.isin, which turns every id looked for into an Arrow scalar in Python.)
        winners = pd.Index(won["deal_id"].unique())
        open_rows = history.loc[
            (winners.get_indexer(history["deal_id"]) >= 0) & ~history["stage_status"].isin([STATUS_WON, STATUS_LOST])
        ]
        first_day = open_rows["changed_at"].min().normalize() if not open_rows.empty else end.normalize()
        dates = pd.date_range(first_day, end.normalize() - DAY, freq=frequency)
        if len(dates) == 0:
            logger.info("close timing at %s: no prediction date before as_of at frequency %s", end.date(), frequency)
            return empty(len(won))
        # Only the columns the pools read: the rebuild repeats each row once per date it holds at.
        lean_deals, lean_rows = lean_rebuild_inputs(
            deals.loc[winners.get_indexer(deals["deal_id"]) >= 0], open_rows,
            deal_columns=["pipeline"], state_columns=["stage", "stage_order"], categorical=["pipeline", "stage"],
        )
        snapshots = pipeline_at_many(lean_deals, lean_rows, [as_of_end(d) for d in dates])
        del lean_deals, lean_rows
        snapshots = snapshots.loc[snapshots["status"] == STATUS_OPEN].drop(columns="closed_at")
        snapshots = snapshots.merge(won, on="deal_id", how="inner", validate="many_to_one")
        snapshots = snapshots.loc[snapshots["closed_at"] > snapshots["snapshot_at"]].reset_index(drop=True)
        if snapshots.empty:
            return empty(len(won))

        remaining = np.ceil((snapshots["closed_at"] - snapshots["snapshot_at"]) / DAY).to_numpy().astype("int64")
        observable = np.floor((end - snapshots["snapshot_at"]) / DAY).to_numpy().astype("int64")
        remaining = np.maximum(remaining, 1)
        observable = np.maximum(observable, remaining)
        features = _cell_features(snapshots, stages)
        deal_codes = pd.factorize(snapshots["deal_id"])[0]
        stride = int(deal_codes.max()) + 1

        levels = []
        for name, keys in LEVELS:
            known = _known(features, keys)
            if not known.any():
                continue
            part = features.loc[known, list(keys)]
            if keys:
                grouped = part.groupby(list(keys), sort=True, observed=True)
                cell = grouped.ngroup().to_numpy()
                cells = grouped.size().rename("rows").reset_index()
            else:
                cell = np.zeros(int(known.sum()), dtype="int64")
                cells = pd.DataFrame({"rows": [int(known.sum())]})
            n_cells = len(cells)
            # Distinct (cell, deal) pairs, each as one integer.
            pairs = np.unique(cell.astype("int64") * stride + deal_codes[known])
            cells["deals"] = np.bincount(pairs // stride, minlength=n_cells)
            cells["cell"] = np.arange(n_cells)
            table = closed_by_table(cell, remaining[known], observable[known], n_cells, max_horizon_days)
            levels.append(TimingLevel(name, keys, cells, table))
        logger.info(
            "close timing at %s: %d won deals, %d snapshot rows, %d prediction dates",
            end.date(), len(won), len(snapshots), len(dates),
        )
        return cls(tuple(levels), stages, end, min_deals, max_horizon_days, len(won), len(snapshots))

    def _check_open_deals(self, open_deals: pd.DataFrame) -> None:
        missing = [c for c in _OPEN_DEAL_COLUMNS if c not in open_deals.columns]
        if missing:
            raise ValueError(
                f"CloseTiming.probability_closed_by: open_deals lacks column(s) {missing}; "
                "expected the rows etl.pipeline_state.pipeline_at returns"
            )

    def levels_used(self, open_deals: pd.DataFrame) -> np.ndarray:
        """Name of the pool each open deal's timing comes from (`expected_close_date` when none has
        enough won deals)."""
        cells = self._cells(open_deals)
        names = np.array([level.name for level in self.levels] + [FALLBACK_LEVEL], dtype=object)
        return names[np.where(cells[0] >= 0, cells[0], len(self.levels))]

    def _cells(self, open_deals: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(level index, cell index) of each open deal: the finest pool with at least `min_deals`
        deals; (-1, -1) where there is none."""
        self._check_open_deals(open_deals)
        features = _cell_features(open_deals.reset_index(drop=True), self.stages)
        level_of = np.full(len(features), -1, dtype="int64")
        cell_of = np.full(len(features), -1, dtype="int64")
        for index, level in enumerate(self.levels):
            todo = level_of < 0
            if not todo.any():
                break
            eligible = level.cells.loc[level.cells["deals"] >= self.min_deals]
            if eligible.empty:
                continue
            if level.keys:
                keys = list(level.keys)
                lookup = features[keys].merge(eligible[[*keys, "cell"]], on=keys, how="left", validate="many_to_one")
                found = lookup["cell"].notna().to_numpy() & _known(features, level.keys)
                cell = lookup["cell"].fillna(-1).to_numpy().astype("int64")
            else:
                found = np.ones(len(features), dtype=bool)
                cell = np.full(len(features), int(eligible["cell"].iloc[0]), dtype="int64")
            take = todo & found
            level_of[take] = index
            cell_of[take] = cell[take]
        return level_of, cell_of

    def probability_closed_by(self, open_deals: pd.DataFrame, until: dt.date | pd.Timestamp) -> np.ndarray:
        """P(the deal, if it wins, closes before the instant `until`) for each row of `open_deals`
        (rows `pipeline_at` returns for open deals; `snapshot_at` is the moment they describe).

        0 where `until` is not after `snapshot_at`. Non-decreasing in `until` for each deal.
        """
        return self.probability_closed_by_many(open_deals, [until])[:, 0]

    def probability_closed_by_many(
        self, open_deals: pd.DataFrame, untils: list[dt.date | pd.Timestamp]
    ) -> np.ndarray:
        """`probability_closed_by` for several instants at once: an (open deals, instants) array."""
        level_of, cell_of = self._cells(open_deals)
        snapshot_at = pd.to_datetime(open_deals["snapshot_at"]).reset_index(drop=True)
        expected = pd.to_datetime(open_deals["expected_close_date"]).reset_index(drop=True)
        # Without enough won deals in any pool: an overdue expected close date means "now" (the
        # deal can only close from here on); no expected close date means no close foreseen.
        expected = expected.where(expected.isna() | (expected > snapshot_at), snapshot_at)
        fallback = level_of < 0
        result = np.zeros((len(open_deals), len(untils)), dtype="float64")
        for column, until in enumerate(untils):
            until_ts = pd.Timestamp(until)
            horizon_days = np.floor((until_ts - snapshot_at) / DAY).to_numpy()
            horizon = np.clip(horizon_days, 0, self.max_horizon_days).astype("int64")
            probability = np.zeros(len(open_deals), dtype="float64")
            for index, level in enumerate(self.levels):
                rows = level_of == index
                if rows.any():
                    probability[rows] = level.closed_by[cell_of[rows], horizon[rows]]
            if fallback.any():
                closes = (expected < until_ts).fillna(False).to_numpy(dtype=bool)
                probability[fallback] = closes[fallback].astype("float64")
            result[:, column] = np.where(until_ts > snapshot_at.to_numpy(), probability, 0.0)
        return result


# A deal's chance of winning within the label horizon is turned into its chance of winning at all
# by dividing by its chance of closing within the horizon if it wins, read no lower than this (a
# deal the timing gives little chance to close within the horizon has little chance to win within
# it either: the quotient of two small numbers is noise).
MIN_WITHIN_HORIZON = 0.25


def horizon_factor(open_deals: pd.DataFrame, timing: CloseTiming, horizon_days: float | None) -> np.ndarray:
    """How many times its chance of winning within `horizon_days` a deal's chance of winning at all
    is: 1 / P(closes within the horizon | wins), from `timing`, read no lower than
    `MIN_WITHIN_HORIZON`; 1 where the timing gives no chance at all (no information) and
    everywhere without a horizon.

    The deal scorer is trained on the label "won within H of the prediction date" (the label
    horizon, `models.training_set`), so P(win within H) = P(win) x P(closes within H | wins), and
    the chance of winning inside a quarter is P(win within H) x factor x P(closes inside the
    quarter | wins).
    """
    if horizon_days is None or len(open_deals) == 0:
        return np.ones(len(open_deals), dtype="float64")
    snapshot = pd.to_datetime(open_deals["snapshot_at"])
    if snapshot.nunique() > 1:
        raise ValueError("horizon_factor: the open deals must all describe the same moment (one snapshot_at)")
    until = snapshot.iloc[0] + pd.Timedelta(days=float(horizon_days))
    within = timing.probability_closed_by(open_deals, until)
    return np.where(within > 0, 1.0 / np.maximum(within, MIN_WITHIN_HORIZON), 1.0)


def win_at_all_probability(
    open_deals: pd.DataFrame, win_probability: np.ndarray | pd.Series, timing: CloseTiming, horizon_days: float | None
) -> np.ndarray:
    """Each open deal's chance of winning at all from its score, a chance of winning within
    `horizon_days`: score x `horizon_factor`, kept below `PROBABILITY_CEILING` (a score already
    above it stays as it is)."""
    win = np.asarray(win_probability, dtype="float64")
    return np.minimum(win * horizon_factor(open_deals, timing, horizon_days), np.maximum(win, PROBABILITY_CEILING))


def win_in_quarter_probability(
    open_deals: pd.DataFrame,
    win_probability: np.ndarray | pd.Series,
    timing: CloseTiming,
    quarter: str,
    fiscal_year_start_month: int = 1,
) -> np.ndarray:
    """P(the deal wins and closes inside `quarter`) = P(win) x [P(close by quarter end) - P(close by quarter start)].

    For the quarter containing the as_of date the second term is 0 (no deal can close before the
    moment it is seen open).
    """
    start, end = period_bounds(quarter, fiscal_year_start_month)
    p_win = np.asarray(win_probability, dtype="float64")
    if p_win.shape != (len(open_deals),):
        raise ValueError(
            f"win_in_quarter_probability: {len(open_deals)} open deals but {p_win.shape} win probabilities"
        )
    closed_by = timing.probability_closed_by_many(open_deals, [start, end])
    share = closed_by[:, 1] - closed_by[:, 0]
    return p_win * np.clip(share, 0.0, 1.0)


def win_this_quarter_probability(
    open_deals: pd.DataFrame,
    win_probability: np.ndarray | pd.Series,
    timing: CloseTiming,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
) -> np.ndarray:
    """P(the deal wins before the end of the quarter containing `as_of`) = P(win) x P(close by quarter end | win)."""
    return win_in_quarter_probability(
        open_deals, win_probability, timing, quarter_label(as_of, fiscal_year_start_month), fiscal_year_start_month
    )
