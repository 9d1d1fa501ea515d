"""As-of training snapshots for the deal-scoring model, and the same features for scoring open deals.

A sales manager's question is "will this open deal be won?", asked on a given day with what was
known that day. The training set asks that question in the past: at each prediction date t (every
week by default) it takes every deal that was open at t, rebuilt as it stood at t by
`etl.pipeline_state.pipeline_at_many` (stage, days in stage, amount, expected close date, stage
moves, close-date pushes, forecast category, CRM probability), adds what the company knew about
owners, products and accounts from deals closed strictly before t, and labels the row 1 when the
deal was won within the label horizon H (`maturity_days`) of t, else 0 (lost by then, won later or
still open). Prediction dates stop H before `as_of`, so every label is known at `as_of`: a deal still
open then, a stale one nobody closes, is a row not won within H rather than being left out.

A deal never open on a prediction date (a win keyed in at the moment of closing, a deal decided within
days) gets one row at the instant it was created instead, with only what was known then
(`snapshot_kind` `creation`), so such wins still count as evidence.

Rules that keep the model honest (see docs of `build_training_set`):
- no feature known only at close (`LEAKY_FEATURES`); asking for one raises `LeakageError`;
- label horizon: prediction dates stop `maturity_days` before `as_of` (by default the 90th
  percentile of the sales cycle, at most half the history), and a row counts as won only when the
  win came within that many days of its date, as known at `as_of`. Labelling with the eventual
  outcome and leaving out the deals still open would train on resolved deals only, which on an
  untidy CRM are mostly the wins;
- sources without stage history (a generic CSV with only the current stage) train on the deal's
  creation-time attributes and the closed-before-t history rates only (`NO_HISTORY_FEATURES`);
  the stage, which for a closed deal is its final stage, is never a feature there.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl import deal_ids
from etl.periods import period_bounds, quarter_labels
from etl.pipeline_state import (
    DEAL_ATTRIBUTES,
    as_of_end,
    lean_rebuild_inputs,
    pipeline_at,
    pipeline_at_many,
    state_spans,
    states_of_rows,
)
from etl.schema import TIMESTAMP
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog

logger = logging.getLogger(__name__)

CATEGORICAL_FEATURES: list[str] = [
    "pipeline",
    "stage",
    "forecast_category",
    "owner",
    "team",
    "product",
    "region",
    "account_segment",
    "lead_source",
    "deal_type",
]
NUMERIC_FEATURES: list[str] = [
    "stage_order",
    "days_in_stage",
    "age_days",
    "log_amount_reporting",
    "days_to_expected_close",
    "stage_moves",
    "backward_moves",
    "close_pushes",
    "crm_probability",
    "week_of_quarter",
    "day_of_year",
    "owner_prior_win_rate",
    "owner_prior_closed",
    "product_prior_win_rate",
    "account_prior_win_rate",
    "account_prior_closed",
]
# The prediction date's day of the year (1-366): how the season moves the chance of a win within the
# label horizon (a summer slowdown, a year-end push). Used only when the prediction dates span at
# least `SEASON_MIN_DAYS`, so that every day of the year is seen in two years.
SEASON_FEATURE = "day_of_year"
SEASON_MIN_DAYS = 730
# Every feature the model may use: each one is known at the prediction date.
FEATURES: list[str] = CATEGORICAL_FEATURES + NUMERIC_FEATURES

# Features for a source without stage history: the deal's creation-time attributes plus what was
# known about its owner, product and account from deals closed before the prediction date.
NO_HISTORY_FEATURES: list[str] = [
    "pipeline",
    "owner",
    "team",
    "product",
    "region",
    "account_segment",
    "lead_source",
    "deal_type",
    "owner_prior_win_rate",
    "owner_prior_closed",
    "product_prior_win_rate",
    "account_prior_win_rate",
    "account_prior_closed",
]

# Known only once a deal has closed: using any of them scores the outcome with itself.
LEAKY_FEATURES: list[str] = [
    "final_stage",
    "final_amount",
    "close_value",
    "closed_at",
    "close_date",
    "is_closed",
    "is_won",
    "won",
    "status",
    "label",
    "outcome",
    "lost_reason",
    "days_to_close",
    "cycle_days",
    "total_stage_moves",
    "whole_life_stage_moves",
    "stage_count",
    "push_count",
    "last_stage_change_at",
    "final_probability",
]

# Columns the baselines read (CRM probability and the stage x age win rate), kept beside the
# features in every training and scoring frame.
CONTEXT_COLUMNS: list[str] = ["pipeline", "stage", "age_days", "crm_probability", "stage_probability"]

# Pseudo-count that shrinks an owner's, product's or account's win rate towards the company's
# win rate: an owner with 2 closed deals is mostly the company rate, one with 100 mostly their own.
PRIOR_PSEUDO_COUNT = 10.0
# The share of deals whose sales cycle the label-maturity wait covers by default.
MATURITY_QUANTILE = 0.9
# The maturity wait never takes more than this share of the history span.
MATURITY_MAX_SHARE_OF_SPAN = 0.5
# Default cap on training rows per prediction date (deterministic sample by deal id).
MAX_ROWS_PER_SNAPSHOT = 5_000
# How many (deal, date) rows one call of the point-in-time rebuild may produce before the dates
# are processed in chunks (1M deals: 500,000 peaks 1.5 GB lower than 2,000,000, in the same time).
ROWS_PER_CHUNK = 500_000

# The deal attributes and history columns the features are computed from.
_DEAL_FEATURE_COLUMNS = [c for c in CATEGORICAL_FEATURES if c in DEAL_ATTRIBUTES]
_STATE_FEATURE_COLUMNS = [
    "stage", "stage_order", "amount_reporting", "expected_close_date", "crm_probability",
    "forecast_category", "stage_moves", "backward_moves", "close_pushes",
]
_REQUIRED_HISTORY_COLUMNS = ("valid_to", "stage_entered_at", "stage_moves", "close_pushes", "stage_status")


# `snapshot_kind` of a row: taken at a scheduled prediction date, or at the deal's creation.
KIND_SCHEDULED = "scheduled"
KIND_CREATION = "creation"


class LeakageError(ValueError):
    """A requested feature is known only once the deal has closed."""


@dataclass(frozen=True)
class TrainingSet:
    """As-of snapshots of deals with their known outcomes.

    `frame`: one row per (snapshot_at, deal_id) with `label` (1 won within `maturity_days` of
    `snapshot_at`, else 0), `snapshot_kind`
    (`scheduled` or `creation`), the features in `feature_names` and the baseline columns in
    `CONTEXT_COLUMNS`.
    """

    frame: pd.DataFrame
    feature_names: list[str]
    has_history: bool
    as_of: dt.date
    frequency: str
    maturity_days: float
    unresolved_deals: int
    censored_deals: int
    sampled: bool

    @property
    def won_deals(self) -> int:
        return int(self.frame.loc[self.frame["label"] == 1, "deal_id"].nunique())

    @property
    def lost_deals(self) -> int:
        return int(self.frame.loc[self.frame["label"] == 0, "deal_id"].nunique())

    @property
    def creation_rows(self) -> int:
        """Rows taken at a deal's creation (deals never open on a prediction date)."""
        if "snapshot_kind" not in self.frame.columns:
            return 0
        return int((self.frame["snapshot_kind"] == KIND_CREATION).sum())

    @property
    def data_window(self) -> str:
        """Prediction dates covered and the date outcomes were read at, e.g.
        `snapshots 2023-01-02..2024-06-24, outcomes to 2024-12-31`."""
        if self.frame.empty:
            return f"no snapshots, outcomes to {self.as_of:%Y-%m-%d}"
        first = self.frame["snapshot_at"].min()
        last = self.frame["snapshot_at"].max()
        return f"snapshots {first:%Y-%m-%d}..{last:%Y-%m-%d}, outcomes to {self.as_of:%Y-%m-%d}"


def source_has_history(deals: pd.DataFrame) -> bool:
    """Whether the source recorded stage history (any deal with `has_history` true)."""
    if deals.empty:
        return False
    return bool(deals["has_history"].fillna(False).astype(bool).any())


def resolve_features(features: Sequence[str] | None, has_history: bool) -> list[str]:
    """The feature list to use: `features` (default: all allowed) checked against the rules.

    A leaky name raises `LeakageError`; an unknown name raises `ValueError`. Without stage
    history only `NO_HISTORY_FEATURES` are kept (the others are dropped with a warning).
    """
    requested = list(FEATURES if features is None else features)
    leaky = [name for name in requested if name in LEAKY_FEATURES]
    if leaky:
        raise LeakageError(
            f"feature(s) {leaky} are known only once a deal has closed and would leak the outcome; "
            f"allowed features: {FEATURES}"
        )
    unknown = [name for name in requested if name not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; allowed features: {FEATURES}")
    if has_history:
        return list(dict.fromkeys(requested))
    kept = [name for name in dict.fromkeys(requested) if name in NO_HISTORY_FEATURES]
    dropped = [name for name in requested if name not in NO_HISTORY_FEATURES]
    if features is not None and dropped:
        logger.warning(
            "the source has no stage history: using creation-time attributes only, dropping %s",
            dropped,
        )
    elif dropped:
        logger.info("the source has no stage history: using creation-time attributes only")
    return kept


def _check_prepared(history: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED_HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(
            f"history is missing column(s) {missing}: pass the output of "
            "etl.pipeline_state.prepare_history(deals, history, stages)"
        )


def _instant(at: dt.date | dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A plain date means the end of that day (as a nightly run for that date sees it); a
    timestamp is taken as the exact instant."""
    if isinstance(at, dt.datetime):
        ts = pd.Timestamp(at)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return as_of_end(at)


def _bool(series: pd.Series) -> np.ndarray:
    return series.fillna(False).to_numpy(dtype=bool)


def _week_of_quarter(snapshot_at: pd.Series, fiscal_year_start_month: int) -> pd.Series:
    """1 for the first 7 days of the (fiscal) quarter, 2 for the next 7, ..."""
    labels = quarter_labels(snapshot_at, fiscal_year_start_month)
    starts = {
        label: period_bounds(label, fiscal_year_start_month)[0] for label in labels.dropna().unique()
    }
    quarter_begins = pd.to_datetime(labels.map(starts))
    days = (snapshot_at - quarter_begins) / pd.Timedelta(days=1)
    return np.floor(days / 7.0) + 1.0


def _prior_rates(
    open_rows: pd.DataFrame,
    closed_rows: pd.DataFrame,
    key: str,
    pooled: pd.Series,
) -> tuple[pd.Series, pd.Series]:
    """Smoothed win rate and closed-deal count of each open row's `key` (owner, product, account)
    over the deals closed before its snapshot; NaN where the key is blank."""
    counts = (
        closed_rows.dropna(subset=[key])
        .groupby(["snapshot_at", key], observed=True)["won"]
        .agg(prior_closed="size", prior_won="sum")
        .reset_index()
    )
    joined = open_rows[["snapshot_at", key]].merge(counts, on=["snapshot_at", key], how="left")
    closed = joined["prior_closed"].fillna(0.0).to_numpy(dtype=float)
    won = joined["prior_won"].fillna(0.0).to_numpy(dtype=float)
    company = open_rows["snapshot_at"].map(pooled).to_numpy(dtype=float)
    rate = (won + PRIOR_PSEUDO_COUNT * company) / (closed + PRIOR_PSEUDO_COUNT)
    blank = open_rows[key].isna().to_numpy()
    rate = np.where(blank, np.nan, rate)
    closed = np.where(blank, np.nan, closed)
    return pd.Series(rate, index=open_rows.index), pd.Series(closed, index=open_rows.index)


def features_from_states(
    states: pd.DataFrame,
    stages: StageCatalog,
    closed_before: pd.Timestamp | None = None,
    fiscal_year_start_month: int = 1,
) -> pd.DataFrame:
    """Features of the deals open in `states` (output of `pipeline_at_many`), one row per
    (snapshot_at, deal_id).

    History-based rates use the deals closed strictly before each row's snapshot (or before
    `closed_before` when given, which must not be after the snapshot).
    """
    status = states["status"].astype("string")
    is_open = _bool(status == STATUS_OPEN)
    is_closed = _bool(status.isin([STATUS_WON, STATUS_LOST]))
    cutoff = states["snapshot_at"] if closed_before is None else pd.Series(closed_before, index=states.index)
    closed_mask = is_closed & _bool(states["closed_at"] < cutoff)
    closed_rows = states.loc[closed_mask, ["snapshot_at", "owner", "product", "account"]].copy()
    closed_rows["won"] = _bool(status[closed_mask] == STATUS_WON).astype(float)
    pooled_counts = closed_rows.groupby("snapshot_at")["won"].agg(["size", "sum"])
    pooled = pooled_counts["sum"] / pooled_counts["size"]

    open_rows = states.loc[is_open].reset_index(drop=True)
    out = _state_features(open_rows, fiscal_year_start_month)
    for key, prefix in (("owner", "owner"), ("product", "product"), ("account", "account")):
        rate, closed = _prior_rates(open_rows, closed_rows, key, pooled)
        out[f"{prefix}_prior_win_rate"] = rate
        if f"{prefix}_prior_closed" in NUMERIC_FEATURES:
            out[f"{prefix}_prior_closed"] = closed
    return _with_stage_probability(out, stages)


def _state_features(open_rows: pd.DataFrame, fiscal_year_start_month: int) -> pd.DataFrame:
    """The features read from the open deals' own point-in-time state (all but the prior rates)."""
    out = pd.DataFrame({"deal_id": open_rows["deal_id"], "snapshot_at": open_rows["snapshot_at"]})
    for column in CATEGORICAL_FEATURES:
        out[column] = open_rows[column].astype("string")
    out["stage_order"] = open_rows["stage_order"].astype("float64")
    out["days_in_stage"] = open_rows["days_in_stage"].astype("float64")
    out["age_days"] = open_rows["age_days"].astype("float64")
    amount = open_rows["amount_reporting"].astype("float64")
    out["log_amount_reporting"] = np.log1p(amount.clip(lower=0.0))
    out["days_to_expected_close"] = (
        (open_rows["expected_close_date"] - open_rows["snapshot_at"]) / pd.Timedelta(days=1)
    ).astype("float64")
    for column in ("stage_moves", "backward_moves", "close_pushes"):
        out[column] = open_rows[column].astype("float64")
    out["crm_probability"] = open_rows["crm_probability"].astype("float64")
    out["week_of_quarter"] = _week_of_quarter(open_rows["snapshot_at"], fiscal_year_start_month)
    out["day_of_year"] = pd.to_datetime(open_rows["snapshot_at"]).dt.day_of_year.astype("float64")
    return out


def _with_stage_probability(out: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    probabilities = stages.lookup_frame()[["pipeline", "stage", "stage_probability"]]
    probabilities = probabilities.astype({"pipeline": "string", "stage": "string"})
    out = out.merge(probabilities, on=["pipeline", "stage"], how="left", validate="many_to_one")
    return out


def snapshot_features(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    at: dt.date | dt.datetime | pd.Timestamp,
    closed_before: dt.date | dt.datetime | pd.Timestamp | None = None,
    fiscal_year_start_month: int = 1,
) -> pd.DataFrame:
    """The model's features for every deal open at `at`, computed exactly as in the training set.

    `at` as a plain date means the end of that day (what the nightly run for that date sees); a
    timestamp is the exact instant. `closed_before` (default `at`) bounds the deals whose outcomes
    feed the owner/product/account win rates; it may not be later than `at`.
    Columns: deal_id, snapshot_at, every name in `FEATURES`, and `stage_probability`.
    """
    _check_prepared(history)
    instant = _instant(at)
    cutoff = None if closed_before is None else _instant(closed_before)
    if cutoff is not None and cutoff > instant:
        raise ValueError(
            f"closed_before {cutoff} is after the scoring instant {instant}: outcomes after the "
            "scoring date would leak into the history-based features"
        )
    states = pipeline_at(deals, history, instant)
    features = features_from_states(states, stages, cutoff, fiscal_year_start_month)
    return features.sort_values("deal_id", kind="stable").reset_index(drop=True)


def _default_maturity_days(outcomes: pd.DataFrame, first_date: pd.Timestamp, as_of: pd.Timestamp) -> float:
    """The 90th percentile of closed deals' cycle length (creation to close), at most half of the
    history span, rounded up to whole days, at least one; 0 when nothing has closed."""
    if outcomes.empty:
        return 0.0
    cycle = (outcomes["closed_at"] - outcomes["created_at"]) / pd.Timedelta(days=1)
    quantile = float(np.nanquantile(cycle.clip(lower=0.0).to_numpy(dtype=float), MATURITY_QUANTILE))
    span = max((as_of - first_date) / pd.Timedelta(days=1), 0.0)
    return float(max(np.ceil(min(quantile, MATURITY_MAX_SHARE_OF_SPAN * span)), 1.0))


def _horizon_labels(rows: pd.DataFrame, won_at: pd.Series, horizon: pd.Timedelta) -> np.ndarray:
    """1 where the row's deal was won within `horizon` of the row's snapshot (by when it won, as
    known at as_of, which the horizon never passes), else 0: lost by then, lost later, won later
    or still open."""
    deadline = rows["snapshot_at"].to_numpy(dtype=TIMESTAMP) + horizon.to_timedelta64()
    won = rows["deal_id"].map(won_at).to_numpy(dtype=TIMESTAMP)
    return (~np.isnat(won) & (won <= deadline)).astype("int64")


def _date_chunks(rows_per_date: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive ranges [start, stop) of snapshot positions holding at most `ROWS_PER_CHUNK`
    open rows together (a single date may hold more)."""
    start = 0
    total = 0
    for position, rows in enumerate(rows_per_date.tolist()):
        if position > start and total + rows > ROWS_PER_CHUNK:
            yield start, position
            start, total = position, 0
        total += rows
    if start < len(rows_per_date):
        yield start, len(rows_per_date)


def _span_positions(values: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """Position of the first snapshot at or after each value; past the end for NaT."""
    return np.where(np.isnat(values), len(snapshots), np.searchsorted(snapshots, values, side="left"))


class _PriorCounts:
    """Deals closed strictly before each snapshot date, counted overall and per owner, product and
    account: the counts `features_from_states` takes from a rebuild at that date, read from when
    each closed state holds (`etl.pipeline_state.state_spans`) instead of rebuilding every deal.

    A closed state counts at the snapshots in [max(first snapshot it holds at, first snapshot after
    its closed_at), first snapshot it no longer holds at).
    """

    def __init__(
        self,
        deals: pd.DataFrame,
        deal_index: pd.Index,
        spans: pd.DataFrame,
        first: np.ndarray,
        stop: np.ndarray,
        snapshots: np.ndarray,
    ) -> None:
        self.stride = len(snapshots) + 1
        status = spans["status"].astype("string")
        closed_at = spans["closed_at"].to_numpy(dtype=TIMESTAMP)
        # Equality, not Series.isin: isin on arrow-backed strings walks the values in Python.
        closed = (_bool(status == STATUS_WON) | _bool(status == STATUS_LOST)) & ~np.isnat(closed_at)
        after_close = np.searchsorted(snapshots, closed_at[closed], side="right")
        start = np.maximum(first[closed], after_close)
        end = stop[closed]
        held = start < end
        start, end = start[held], end[held]
        won = _bool(status[closed] == STATUS_WON)[held].astype("int64")
        deal_positions = deal_index.get_indexer(spans["deal_id"].to_numpy()[closed][held])

        # Company-wide: +1 where a closed state starts counting, -1 where it stops.
        size = len(snapshots) + 1
        closed_counts = np.cumsum(np.bincount(start, minlength=size) - np.bincount(end, minlength=size))
        won_counts = np.cumsum(
            np.bincount(start, weights=won, minlength=size) - np.bincount(end, weights=won, minlength=size)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = won_counts.astype(float) / closed_counts.astype(float)
        self.pooled = np.where(closed_counts > 0, pooled, np.nan)[: len(snapshots)]

        # Per key: the same +1/-1 events sorted by (key code, snapshot position); the running sum
        # at the last event at or before (code, position) is that key's count there (every key's
        # events sum to 0, so earlier keys add nothing).
        self.codes: dict[str, np.ndarray] = {}
        self.events: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for key in ("owner", "product", "account"):
            codes = pd.factorize(deals[key])[0]
            self.codes[key] = codes
            code = codes[deal_positions]
            keyed = code >= 0
            base = code[keyed].astype("int64") * self.stride
            event_keys = np.concatenate([base + start[keyed], base + end[keyed]])
            ones = np.ones(int(keyed.sum()), dtype="int64")
            closed_delta = np.concatenate([ones, -ones])
            won_delta = np.concatenate([won[keyed], -won[keyed]])
            order = np.argsort(event_keys, kind="stable")
            self.events[key] = (
                event_keys[order],
                np.concatenate([[0], np.cumsum(closed_delta[order])]),
                np.concatenate([[0], np.cumsum(won_delta[order])]),
            )

    def rates(
        self, key: str, deal_positions: np.ndarray, snapshot_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed win rate and closed-deal count (as in `_prior_rates`) for rows of the deals at
        `deal_positions` (rows of `deals`) at the snapshots at `snapshot_positions`."""
        code = self.codes[key][deal_positions]
        event_keys, closed_sums, won_sums = self.events[key]
        at = np.searchsorted(event_keys, code.astype("int64") * self.stride + snapshot_positions, side="right")
        closed = closed_sums[at].astype(float)
        won = won_sums[at].astype(float)
        company = self.pooled[snapshot_positions]
        rate = (won + PRIOR_PSEUDO_COUNT * company) / (closed + PRIOR_PSEUDO_COUNT)
        blank = code < 0
        return np.where(blank, np.nan, rate), np.where(blank, np.nan, closed)


def _creation_span_rows(
    deals: pd.DataFrame,
    spans: pd.DataFrame,
    open_rows_at: np.ndarray,
    labelled_ids: pd.Index,
    first: pd.Timestamp,
    last: pd.Timestamp,
) -> np.ndarray:
    """Positions (rows of `spans`, i.e. of the history) of the open state each deal is in at the
    instant it was created, for the deals that get a creation snapshot: created between `first`
    and `last` (the first and last prediction dates), with recorded stage history, labelled (closed
    by as_of), and never open on a prediction date (`open_rows_at`: the history rows open at one)."""
    positions = deal_ids.deal_positions(deals, spans["deal_id"])
    known = positions >= 0
    safe = np.maximum(positions, 0)
    created = np.where(known, deals["created_at"].to_numpy(dtype=TIMESTAMP)[safe], np.datetime64("NaT"))
    recorded = _bool(deals["has_history"])[safe] & known
    held_from = spans["held_from"].to_numpy(dtype=TIMESTAMP)
    held_until = spans["held_until"].to_numpy(dtype=TIMESTAMP)
    holds = (held_from == created) & (np.isnat(held_until) | (held_until > held_from))
    is_open = _bool(spans["status"].astype("string") == STATUS_OPEN)
    in_window = ~np.isnat(created) & (created >= np.datetime64(first)) & (created <= np.datetime64(last))
    seen = np.zeros(len(deals), dtype=bool)
    seen[positions[open_rows_at][positions[open_rows_at] >= 0]] = True
    labelled = labelled_ids.get_indexer(deals["deal_id"]) >= 0
    chosen = np.flatnonzero(holds & is_open & in_window & recorded & ~seen[safe] & labelled[safe])
    # One state per deal (several rows dated at the creation instant: the last one holds).
    deal_of = spans["deal_id"].to_numpy()[chosen]
    _, last_of_deal = np.unique(deal_of[::-1], return_index=True)
    return np.sort(chosen[len(chosen) - 1 - last_of_deal])


def _creation_states(lean_deals: pd.DataFrame, lean_history: pd.DataFrame) -> pd.DataFrame:
    """`pipeline_at_many`-shaped open rows for deals at their creation instant, from the history
    rows that hold then (`lean_history`, one per deal): snapshot_at = created_at, age 0."""
    state = lean_history.reset_index(drop=True)
    out = state.merge(lean_deals, on="deal_id", how="left", validate="one_to_one")
    out["snapshot_at"] = out["created_at"]
    out["status"] = pd.Series(STATUS_OPEN, index=out.index, dtype="string")
    out["days_in_stage"] = ((out["snapshot_at"] - out["stage_entered_at"]) / pd.Timedelta(days=1)).clip(lower=0.0)
    out["age_days"] = 0.0
    return out


def _held_pairs(rows: np.ndarray, first: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, snapshot position) pair where row `rows[i]` holds: snapshots first[i] <= s < stop[i]."""
    counts = np.maximum(stop - first, 0)
    pair_row = np.repeat(rows, counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair_row, np.repeat(first, counts) + offsets


def _sample_pairs(
    pair_row: np.ndarray, pair_snapshot: np.ndarray, deal_hash: np.ndarray, n_snapshots: int, cap: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """At most `cap` (row, snapshot) pairs per snapshot, chosen by the hash of each pair's deal id
    (`deal_hash`, the lowest kept), so the same deals are kept at every date and a re-run keeps exactly
    the same rows. Chosen before any state or feature is rebuilt: a pair left out costs nothing.
    Returns the kept pairs sorted by snapshot, and whether any snapshot was capped."""
    sizes = np.bincount(pair_snapshot, minlength=n_snapshots)
    if not bool((sizes > cap).any()):
        order = np.argsort(pair_snapshot, kind="stable")
        return pair_row[order], pair_snapshot[order], False
    # Sorted by snapshot, then deal hash; equal hashes (distinct ids almost never share one) keep
    # the history's row order, which is deal id order.
    order = np.lexsort((pair_row, deal_hash, pair_snapshot))
    snapshot_sorted = pair_snapshot[order]
    group_start = np.searchsorted(snapshot_sorted, snapshot_sorted, side="left")
    keep = order[np.arange(len(order)) - group_start < cap]
    return pair_row[keep], pair_snapshot[keep], True


def build_training_set(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    frequency: str = "W-MON",
    features: Sequence[str] | None = None,
    *,
    maturity_days: float | None = None,
    max_rows_per_snapshot: int = MAX_ROWS_PER_SNAPSHOT,
    fiscal_year_start_month: int = 1,
    creation_snapshots: bool = True,
) -> TrainingSet:
    """As-of snapshots of every deal open at each prediction date, labelled with its outcome.

    - Prediction dates: every `frequency` date from the first deal's creation up to
      `as_of - maturity_days`; each snapshot is the start (00:00) of that date, i.e. the pipeline
      as the previous night's run saw it.
    - `maturity_days` (default: the 90th percentile of the sales cycle of deals closed by `as_of`,
      at most half the history span, at least one day) is the label horizon.
    - Rows: deals open at the snapshot, as they stood then (`pipeline_at_many`); a deal still open
      at `as_of` without recorded stage history is left out (`censored_deals`), since its past
      states would be its present record.
    - Label: 1 when the deal was won within `maturity_days` (the label horizon) of the snapshot, as
      known at the end of `as_of`; else 0 (lost, won later, or still open: `unresolved_deals`
      counts the deals still open at `as_of`). `maturity_days` must be positive.
    - History rates (owner, product, account) count only deals closed strictly before the snapshot.
    - At most `max_rows_per_snapshot` rows per date (deterministic sample by deal id hash).
    - Creation snapshots (`creation_snapshots`, on by default): a deal with recorded stage history
      that was never open on a prediction date (a win keyed in at the moment of closing, a deal won
      or lost within days) gets one row at the instant it was created, as it stood then: its
      creation stage, amount and close date, age 0, no moves yet, and owner/product/account rates
      from the deals closed before the latest prediction date on or before its creation. Nothing
      recorded after that instant enters its features. Such rows have `snapshot_kind` `creation`;
      the others `scheduled`. Without them an org whose reps key wins in at close would have
      almost no won deals to learn from.
    """
    _check_prepared(history)
    has_history = source_has_history(deals)
    names = resolve_features(features, has_history)
    as_of_date = as_of.date() if isinstance(as_of, dt.datetime) else as_of
    as_of_instant = as_of_end(as_of_date)
    columns = ["deal_id", "snapshot_at", "label", "snapshot_kind", *names, *[c for c in CONTEXT_COLUMNS if c not in names]]

    # The outcomes need only each deal's status and close time at as_of.
    final = pipeline_at_many(*lean_rebuild_inputs(deals, history, [], []), [as_of_instant])
    final_status = final["status"].astype("string")
    closed = final.loc[_bool(final_status != STATUS_OPEN), ["deal_id", "status", "closed_at", "created_at"]]
    won = closed.loc[_bool(closed["status"] == STATUS_WON)]
    # When each deal won, as known at as_of (NaT: lost or still open then).
    won_at = pd.Series(won["closed_at"].to_numpy(dtype=TIMESTAMP), index=pd.Index(won["deal_id"]))

    created = deals["created_at"].dropna()
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    if created.empty or created.min() > as_of_instant:
        return TrainingSet(empty, names, has_history, as_of_date, frequency, 0.0, 0, 0, False)
    first_date = created.min().normalize()
    if maturity_days is None:
        maturity_days = _default_maturity_days(closed, first_date, as_of_instant)
    if maturity_days <= 0 and not closed.empty:
        raise ValueError(
            f"maturity_days (the label horizon) must be positive, got {maturity_days}: a row is labelled "
            "won when the deal was won within that many days of its prediction date"
        )
    horizon = pd.Timedelta(days=float(maturity_days))
    last_date = pd.Timestamp(as_of_date) - horizon
    dates = pd.date_range(first_date, last_date, freq=frequency) if last_date >= first_date else []
    instants = list(dates)
    if SEASON_FEATURE in names and (not instants or instants[-1] - instants[0] < pd.Timedelta(days=SEASON_MIN_DAYS)):
        # With less than two years of prediction dates a day of the year is seen once at most: the
        # model could not tell a season from what happened that one year.
        names = [name for name in names if name != SEASON_FEATURE]
        columns = [column for column in columns if column != SEASON_FEATURE]
        logger.info("training snapshots span less than %d days: %s left out", SEASON_MIN_DAYS, SEASON_FEATURE)
    logger.info(
        "training snapshots: %d %s dates from %s to %s (maturity wait %.0f days), outcomes at %s",
        len(instants), frequency, first_date.date(), last_date.date(), maturity_days, as_of_date,
    )

    parts: list[pd.DataFrame] = []
    unresolved = censored = 0
    sampled = False
    if instants:
        # Only the history rows holding an open state at some prediction date are rebuilt, and
        # only at the dates where they become a training row; the prior rates come from when each
        # closed state holds (`_PriorCounts`).
        snapshots = np.array(instants, dtype=TIMESTAMP)
        spans = state_spans(deals, history)
        first = _span_positions(spans["held_from"].to_numpy(dtype=TIMESTAMP), snapshots)
        stop = _span_positions(spans["held_until"].to_numpy(dtype=TIMESTAMP), snapshots)
        deal_index = deal_ids.deal_index(deals)
        priors = _PriorCounts(deals, deal_index, spans, first, stop, snapshots)
        open_rows_at = np.flatnonzero(_bool(spans["status"].astype("string") == STATUS_OPEN) & (first < stop))
        creation_rows_at = (
            _creation_span_rows(deals, spans, open_rows_at, pd.Index(closed["deal_id"]), instants[0], instants[-1])
            if creation_snapshots
            else np.zeros(0, dtype=np.int64)
        )
        del spans
        open_first, open_stop = first[open_rows_at], stop[open_rows_at]
        # Only the columns the features read, text as categoricals: the rebuild repeats every row
        # once per date it holds at.
        lean_deals, lean_history = lean_rebuild_inputs(
            deals, history, _DEAL_FEATURE_COLUMNS, _STATE_FEATURE_COLUMNS, categorical=[*CATEGORICAL_FEATURES]
        )
        open_history = lean_history.iloc[open_rows_at]
        creation_history = lean_history.iloc[creation_rows_at]
        del lean_history
        open_deals = deal_index.get_indexer(open_history["deal_id"])
        # Which (open row, date) pairs become training rows is decided from positions alone: every
        # deal open at a prediction date has a known label (the horizon ends by as_of), a deal still
        # open at as_of included, and the per-date cap samples by a hash of the deal id. Only the
        # kept pairs are rebuilt and featurised.
        # A deal still open at as_of without recorded stage history shows its present record at
        # every past date, which was not known then: it stays out (censored).
        open_at_as_of = final.loc[_bool(final_status == STATUS_OPEN), "deal_id"]
        still_open = pd.Index(open_at_as_of).get_indexer(deals["deal_id"]) >= 0
        recorded = _bool(deals["has_history"])
        row_kept = ~still_open[open_deals] | recorded[open_deals]
        unresolved = int(np.unique(open_deals[still_open[open_deals] & recorded[open_deals]]).size)
        censored = int(np.unique(open_deals[~row_kept]).size)
        pair_row, pair_snapshot = _held_pairs(np.flatnonzero(row_kept), open_first[row_kept], open_stop[row_kept])
        deal_hash = pd.util.hash_array(deals["deal_id"].astype(str).to_numpy(dtype=object))
        pair_row, pair_snapshot, sampled = _sample_pairs(
            pair_row, pair_snapshot, deal_hash[open_deals[pair_row]], len(snapshots), max_rows_per_snapshot
        )
        bounds = np.searchsorted(pair_snapshot, np.arange(len(snapshots) + 1), side="left")
        for start, end in _date_chunks(np.diff(bounds)):
            rows_at = pair_row[bounds[start]:bounds[end]]
            chunk_deals = lean_deals.iloc[np.unique(open_deals[rows_at])]
            states = states_of_rows(chunk_deals, open_history, rows_at, snapshots[pair_snapshot[bounds[start]:bounds[end]]])
            rows = _state_features(states, fiscal_year_start_month)
            deal_positions = deal_index.get_indexer(states["deal_id"])
            snapshot_positions = np.searchsorted(snapshots, states["snapshot_at"].to_numpy(dtype=TIMESTAMP))
            for key in ("owner", "product", "account"):
                rate, closed_count = priors.rates(key, deal_positions, snapshot_positions)
                rows[f"{key}_prior_win_rate"] = rate
                if f"{key}_prior_closed" in NUMERIC_FEATURES:
                    rows[f"{key}_prior_closed"] = closed_count
            rows = _with_stage_probability(rows, stages)
            rows["snapshot_kind"] = KIND_SCHEDULED
            rows["label"] = _horizon_labels(rows, won_at, horizon)
            parts.append(rows[columns])
        if len(creation_history):
            states = _creation_states(lean_deals, creation_history)
            rows = _state_features(states, fiscal_year_start_month)
            deal_positions = deal_index.get_indexer(states["deal_id"])
            latest_date = np.searchsorted(snapshots, states["snapshot_at"].to_numpy(dtype=TIMESTAMP), side="right") - 1
            for key in ("owner", "product", "account"):
                rate, closed_count = priors.rates(key, deal_positions, latest_date)
                rows[f"{key}_prior_win_rate"] = rate
                if f"{key}_prior_closed" in NUMERIC_FEATURES:
                    rows[f"{key}_prior_closed"] = closed_count
            rows = _with_stage_probability(rows, stages)
            rows["snapshot_kind"] = KIND_CREATION
            rows["label"] = _horizon_labels(rows, won_at, horizon)
            parts.append(rows[columns])
            logger.info("creation snapshots: %d deals never open on a prediction date", len(rows))
    frame = pd.concat(parts, ignore_index=True) if parts else empty
    frame = frame.sort_values(["snapshot_at", "deal_id"], kind="stable").reset_index(drop=True)
    if sampled:
        logger.info("training rows capped at %d per prediction date (deal-id hash sample)", max_rows_per_snapshot)
    return TrainingSet(
        frame=frame,
        feature_names=names,
        has_history=has_history,
        as_of=as_of_date,
        frequency=frequency,
        maturity_days=float(maturity_days),
        unresolved_deals=unresolved,
        censored_deals=censored,
        sampled=sampled,
    )
