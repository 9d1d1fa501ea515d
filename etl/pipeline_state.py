"""The pipeline as it stood at any date, rebuilt from deal history: the one place this is done.

Analytics (point-in-time pipeline, waterfall, stage events), the model's as-of training set and
the forecast backtest all call `pipeline_at` / `pipeline_at_many`, so a deal's state at a date is
computed one way everywhere.

Input is the canonical `deals` and `deal_history` frames (see `etl.schema`). `prepare_history`
sorts and annotates history once: stage order, stage changes, backward moves, close-date pushes,
each as running counts, so a deal's state at t is simply its last history row at or before t.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import pandas as pd

from etl.deal_ids import deal_index, deal_positions, id_ranks, index_in, is_in, run_ends, run_starts
from etl.schema import DEAL_COLUMNS, STAGE_EVENT_COLUMNS, TIMESTAMP, conform
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog

log = logging.getLogger(__name__)

DAY = np.timedelta64(1, "D")

# Deal attributes carried into every point-in-time row (they are not versioned in history).
DEAL_ATTRIBUTES = [
    "pipeline",
    "deal_name",
    "account",
    "owner",
    "team",
    "product",
    "region",
    "account_segment",
    "lead_source",
    "deal_type",
    "currency",
    "source_system",
    "has_history",
    "created_at",
]

STATE_COLUMNS = [
    "stage",
    "stage_order",
    "stage_status",
    "amount",
    "amount_reporting",
    "expected_close_date",
    "crm_probability",
    "forecast_category",
    "stage_entered_at",
    "stage_moves",
    "backward_moves",
    "close_pushes",
    "closed_at",
]


def _timestamp(value: dt.date | dt.datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def as_of_end(as_of: dt.date | pd.Timestamp) -> pd.Timestamp:
    """The instant a run for `as_of` describes: the end of that day (everything dated that day counts)."""
    return _timestamp(as_of).normalize() + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)


def _synthesised_history(deals: pd.DataFrame, has_rows: pd.Series) -> pd.DataFrame:
    """History for deals whose source has none: what is known, nothing invented.

    An open deal gets one row at creation with its current stage (the only stage known); a closed
    deal gets a row at creation with the stage unknown, and its closing row at `closed_at`.

    A deal that closes at or before the instant it was created (same-day closes: a close date
    without a time, or a close stamped with the creation time) was never open: it gets its
    closing row only, at its creation time. So the two rows never share the key (deal_id,
    changed_at, source_row), and the close never sorts before the creation, which would leave
    the deal open at the end of that day.
    """
    bare = deals.loc[~has_rows]
    if bare.empty:
        return bare.iloc[0:0]
    is_open = (bare["status"] == STATUS_OPEN).to_numpy(dtype=bool)
    closes_at_creation = (~is_open) & (bare["closed_at"] <= bare["created_at"]).to_numpy(dtype=bool)
    opened = bare.loc[~closes_at_creation]
    created = pd.DataFrame(
        {
            "deal_id": opened["deal_id"],
            "changed_at": opened["created_at"],
            "stage": opened["stage"].where(opened["status"] == STATUS_OPEN),
            "amount": opened["amount"],
            "amount_reporting": opened["amount_reporting"],
            "expected_close_date": opened["expected_close_date"],
            "crm_probability": opened["crm_probability"].where(opened["status"] == STATUS_OPEN),
            "forecast_category": opened["forecast_category"].where(opened["status"] == STATUS_OPEN),
            "source_file": opened["source_file"],
            "source_row": opened["source_row"],
        }
    )
    closed = bare.loc[~is_open]
    closing = pd.DataFrame(
        {
            "deal_id": closed["deal_id"],
            "changed_at": closed["closed_at"].mask(closes_at_creation[~is_open], closed["created_at"]),
            "stage": closed["stage"],
            "amount": closed["amount"],
            "amount_reporting": closed["amount_reporting"],
            "expected_close_date": closed["expected_close_date"],
            "crm_probability": closed["crm_probability"],
            "forecast_category": closed["forecast_category"],
            "source_file": closed["source_file"],
            "source_row": closed["source_row"],
        }
    )
    return pd.concat([created, closing], ignore_index=True)


def _reconciled_history(
    hist: pd.DataFrame, deals: pd.DataFrame, stages: StageCatalog, position: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """`hist` (sorted by deal and time, annotated with stage status) completed where a deal's history
    ends in another status than the deal's own record, and a mask of the rows added.

    The deal's record (Opportunity row, deal row) is the truth about its present: the history is
    given one more row with the record's stage, amount, close date, probability and forecast
    category, so the deal, its stage events and every point-in-time rebuild agree. The row is dated
    when the record says the deal reached that state (closed_at for a closed deal,
    last_stage_change_at for an open one), but never before the history's last row (one
    microsecond after it at the earliest). It names the deal's own file and row as its source.
    `position`: each row's position in `deals`, when the caller has it.
    A deals frame without the record's columns (status, stage, ...) has no record to compare with:
    its history is kept as it is.
    """
    record_columns = ("status", "stage", "closed_at", "last_stage_change_at", "amount", "amount_reporting",
                      "expected_close_date", "crm_probability", "forecast_category", "source_file", "source_row")
    if not set(record_columns) <= set(deals.columns):
        return hist, np.zeros(len(hist), dtype=bool)
    last = run_ends(hist["deal_id"])
    ends = hist.loc[last]
    position = index_in(ends["deal_id"], deals["deal_id"]) if position is None else position[last]
    record_status = deals["status"].to_numpy(dtype=object)[position]
    history_status = ends["stage_status"].astype(object).where(ends["stage_status"].notna(), STATUS_OPEN).to_numpy()
    differs = (position >= 0) & (record_status != history_status)
    if not differs.any():
        return hist, np.zeros(len(hist), dtype=bool)
    record = deals.iloc[position[differs]].reset_index(drop=True)
    after = ends["changed_at"].to_numpy(dtype=TIMESTAMP)[differs] + np.timedelta64(1, "us")
    claimed = np.where(
        (record["status"] != STATUS_OPEN).to_numpy(dtype=bool),
        record["closed_at"].to_numpy(dtype=TIMESTAMP),
        record["last_stage_change_at"].to_numpy(dtype=TIMESTAMP),
    )
    when = np.where(np.isnat(claimed) | (claimed < after), after, claimed)
    added = pd.DataFrame(
        {
            "deal_id": record["deal_id"],
            "changed_at": pd.Series(when.astype(TIMESTAMP)),
            **{c: record[c] for c in ("stage", "amount", "amount_reporting", "expected_close_date", "crm_probability",
                                       "forecast_category", "source_file", "source_row", "pipeline")},
        }
    )
    added = stages.annotate(added)
    example = record.iloc[0]
    log.warning(
        "%d deal(s) have a stage history that ends in another status than their record; the record is "
        "taken as the truth and the history completed with its state (first: deal %s, history ends %s, "
        "record says %s)",
        int(differs.sum()), example["deal_id"], history_status[differs][0], example["status"],
    )
    out = pd.concat([hist, added[hist.columns]], ignore_index=True)
    flag = np.concatenate([np.zeros(len(hist), dtype=bool), np.ones(len(added), dtype=bool)])
    order = np.lexsort((np.arange(len(out)), out["changed_at"].to_numpy(dtype=TIMESTAMP), pd.factorize(out["deal_id"], sort=True)[0]))
    return out.iloc[order].reset_index(drop=True), flag[order]


def prepare_history(deals: pd.DataFrame, history: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    """History sorted per deal and annotated with running counts; deals without history get the
    rows `_synthesised_history` describes, and a history that ends in another status than the
    deal's record gets the row `_reconciled_history` describes.

    Added columns: pipeline, stage_order, stage_status, is_stage_change, is_backward,
    is_contradictory, stage_entered_at, stage_moves, backward_moves, close_pushes, is_push, valid_to.
    Rows with the same timestamp keep their file order (`source_row`).
    is_contradictory marks the changes the sales process does not foresee: a stage change out of a
    won or lost stage (re-opened, or won turned lost), and the rows added to bring a history in line
    with the deal's record.
    """
    ids = deal_index(deals)
    id_rank = id_ranks(ids) if _looked_up_by_position(history, deals, ids) else None
    position = None
    if id_rank is not None:
        # Each history row's deal, found once: it says which deals have history, and orders the rows.
        position = _positions(ids, history["deal_id"])
        has_rows = np.zeros(len(deals), dtype=bool)
        has_rows[position[position >= 0]] = True
    else:
        has_rows = is_in(deals["deal_id"], history["deal_id"])
    synthesised = _synthesised_history(deals, pd.Series(has_rows, index=deals.index))
    frames = [history, synthesised]
    hist = pd.concat([f for f in frames if not f.empty] or [history], ignore_index=True)
    if position is not None:
        position = np.concatenate([position, _positions(ids, synthesised["deal_id"])])
    hist, position = _with_pipeline_in_deal_order(hist, deals, ids, position, id_rank)
    hist = stages.annotate(hist)
    hist, reconciled = _reconciled_history(hist, deals, stages, position)

    # Rows are grouped by deal (`first_np` starts each deal's rows); running counts and carried
    # values restart at each deal's first row.
    first_np = run_starts(hist["deal_id"])
    stage_known_np = hist["stage"].notna().to_numpy(dtype=bool)
    changed_np = stage_known_np & (first_np | run_starts(hist["stage"]))

    order = hist["stage_order"].astype("float64").to_numpy()
    prev_order = np.concatenate([[np.nan], order[:-1]])
    is_open = (hist["stage_status"] == STATUS_OPEN).fillna(False).to_numpy(dtype=bool)
    prev_open = np.concatenate([[False], is_open[:-1]])
    with np.errstate(invalid="ignore"):
        backward_np = changed_np & ~first_np & is_open & prev_open & (order < prev_order)
    is_closed = hist["stage_status"].isin([STATUS_WON, STATUS_LOST]).to_numpy(dtype=bool)
    prev_closed = np.concatenate([[False], is_closed[:-1]])
    contradictory_np = reconciled | (changed_np & ~first_np & prev_closed)

    close = hist["expected_close_date"].to_numpy(dtype=TIMESTAMP)
    prev_close = np.concatenate([np.array(["NaT"], dtype=TIMESTAMP), close[:-1]])
    later = (close > prev_close) & ~np.isnat(close) & ~np.isnat(prev_close)
    # A push moves the expected close date later while the deal stays open; a deal that closes after
    # its expected date is late, not pushed (its closing row carries the actual close date).
    push_np = ~first_np & prev_open & is_open & later

    hist["is_stage_change"] = pd.Series(changed_np, index=hist.index)
    hist["is_backward"] = pd.Series(backward_np, index=hist.index)
    hist["is_contradictory"] = pd.Series(contradictory_np, index=hist.index)
    hist["is_push"] = pd.Series(push_np, index=hist.index)

    hist["stage_moves"] = _count_within(changed_np & ~first_np, first_np)
    hist["backward_moves"] = _count_within(backward_np, first_np)
    hist["close_pushes"] = _count_within(push_np, first_np)

    changed_at = hist["changed_at"]
    entry = _last_within(changed_np, first_np)  # the row where the deal entered its current stage
    hist["stage_entered_at"] = changed_at.iloc[entry].set_axis(hist.index).where(stage_known_np & changed_np[entry])
    hist["valid_to"] = _next_within(changed_at, first_np)
    return hist


def _looked_up_by_position(history: pd.DataFrame, deals: pd.DataFrame, ids: pd.Index) -> bool:
    """Whether the rows of `history` can be matched to `deals` by their deal's position
    (`_positions`): ids of one type, each once and none missing in `deals`."""
    return (
        "pipeline" not in history.columns
        and history["deal_id"].dtype == deals["deal_id"].dtype
        and ids.is_unique
        and not ids.hasnans
    )


def _with_pipeline_in_deal_order(
    hist: pd.DataFrame,
    deals: pd.DataFrame,
    ids: pd.Index,
    position: np.ndarray | None = None,
    id_rank: np.ndarray | None = None,
):
    """The rows of `hist` whose deal is in `deals`, each with its deal's pipeline (the last column),
    sorted by deal_id, changed_at and source_row (rows equal in all three keep their order; a
    missing time sorts last): as an inner merge and a stable `sort_values` give them.

    With `position` (each row's position in `deals`, -1 where absent; `_looked_up_by_position`
    holds), `id_rank` (`id_ranks` of the deals' ids) and row numbers that are plain integers, the
    rows are ordered by integers (the rank of the deal's id, the time, the row number) rather than
    by millions of text ids factorised again, and the sorted rows' positions are returned with
    them. Otherwise the merge and the sort, and None for the positions."""
    source_row = hist["source_row"].dtype
    plain_rows = pd.api.types.is_integer_dtype(source_row) and not isinstance(source_row, pd.api.extensions.ExtensionDtype)
    if position is None or id_rank is None or not plain_rows:
        joined = _with_deal_attributes(hist, deals[["deal_id", "pipeline"]], how="inner", ids=ids)
        return joined.sort_values(["deal_id", "changed_at", "source_row"], kind="stable").reset_index(drop=True), None
    changed_at = hist["changed_at"].to_numpy(dtype=TIMESTAMP).view(np.int64)
    changed_at = np.where(changed_at == np.iinfo(np.int64).min, np.iinfo(np.int64).max, changed_at)  # NaT last
    rows = np.flatnonzero(position >= 0)
    order = rows[np.lexsort((
        hist["source_row"].to_numpy(dtype=np.int64)[rows], changed_at[rows], id_rank[position[rows]]
    ))]
    out = hist.take(order).reset_index(drop=True)
    out["pipeline"] = deals["pipeline"].take(position[order]).reset_index(drop=True)
    return out, position[order]


def _count_within(flags: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running count of `flags` within each group of consecutive rows (`first` starts a group)."""
    total = np.cumsum(flags, dtype=np.int64)
    before_group = (total - flags)[first]
    return total - np.repeat(before_group, np.diff(np.append(np.flatnonzero(first), len(flags))))


def _last_within(flags: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per row, the position of the latest row at or before it in its group where `flags` holds;
    the group's first row where none does yet."""
    return np.maximum.accumulate(np.where(flags | first, np.arange(len(flags)), 0))


def _next_within(values: pd.Series, first: np.ndarray) -> pd.Series:
    """`values` of the next row of the same group (missing on each group's last row)."""
    last = np.append(first[1:], True)[: len(first)]
    return values.shift(-1).where(~last)


def _history_ends(history: pd.DataFrame) -> pd.DataFrame:
    """The last row of each deal of `history` (`prepare_history` output, grouped by deal), indexed by deal_id."""
    return history.loc[run_ends(history["deal_id"])].set_index("deal_id")


def closed_at_from_history(deals: pd.DataFrame, history: pd.DataFrame) -> pd.Series:
    """Per deal of `deals` (same index): the moment `history` (`prepare_history` output) says it was
    last marked won or lost, for the deals whose history ends closed; the deal's own closed_at for
    the others. Keeps `deals.closed_at` and the rebuilt history in agreement."""
    ends = _history_ends(history)
    closed = ends["stage_status"].isin([STATUS_WON, STATUS_LOST]).to_numpy(dtype=bool)
    marked = pd.Series(ends["stage_entered_at"].to_numpy(dtype=TIMESTAMP)[closed], index=ends.index[closed])
    found = marked.reindex(deals["deal_id"].to_numpy())
    return pd.Series(found.to_numpy(dtype=TIMESTAMP), index=deals.index).fillna(deals["closed_at"])


def completed_from_history(deals: pd.DataFrame, history: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    """`deals` (canonical) of a source whose deal records leave some fields to their stage history
    (Salesforce's Opportunity: `SourceExport.completed_from_history`), completed from `history`
    (their canonical history, as read) before anything is validated or valued:
    - closed_at: for a closed deal with history that ends won or lost, the moment it entered that
      stage (the record's close date otherwise);
    - last_stage_change_at, where the record leaves it blank: the moment the deal entered the
      stage its history ends in;
    - push_count: the close-date pushes of its history (`is_push`)."""
    # Only what orders the rows and decides stage entries and pushes is carried through the rebuild.
    keys = [c for c in ("deal_id", "changed_at", "source_row", "stage", "expected_close_date") if c in history.columns]
    prepared = prepare_history(deals, history[keys], stages)
    ends = _history_ends(prepared).reindex(deals["deal_id"].to_numpy())
    entered = pd.Series(ends["stage_entered_at"].to_numpy(dtype=TIMESTAMP), index=deals.index)
    closed_in_history = ends["stage_status"].isin([STATUS_WON, STATUS_LOST]).to_numpy()
    use_history = deals["has_history"].to_numpy() & closed_in_history & (deals["status"] != STATUS_OPEN).to_numpy()
    pushes = prepared.loc[prepared["is_push"], "deal_id"].value_counts()
    completed = deals.assign(
        closed_at=deals["closed_at"].where(~use_history, entered),
        last_stage_change_at=deals["last_stage_change_at"].fillna(entered),
        push_count=pushes.reindex(deals["deal_id"]).fillna(0).to_numpy(dtype=np.int64),
    )
    return conform(completed, DEAL_COLUMNS, "deals")


def stage_move_counts(history: pd.DataFrame) -> pd.DataFrame:
    """How well each pipeline's stage order fits the moves its deals made: one row per pipeline
    with stage_moves (a deal going from one open stage to another) and backward_moves (those that
    go to an earlier open stage, `is_backward`). `history` is the output of `prepare_history`;
    synthesised rows (creation, close) never make such a move."""
    first = run_starts(history["deal_id"])
    is_open = (history["stage_status"] == STATUS_OPEN).fillna(False).to_numpy(dtype=bool)
    prev_open = np.concatenate([[False], is_open[:-1]]) & ~first
    moved = history["is_stage_change"].to_numpy(dtype=bool) & is_open & prev_open
    counts = pd.DataFrame(
        {
            "pipeline": history["pipeline"].to_numpy(),
            "stage_moves": moved.astype("int64"),
            "backward_moves": (moved & history["is_backward"].to_numpy(dtype=bool)).astype("int64"),
        }
    )
    return counts.groupby("pipeline", sort=True)[["stage_moves", "backward_moves"]].sum().reset_index()


def stage_events(history: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> pd.DataFrame:
    """One row per stay in a stage (deal, stage, entered_at) up to the end of `as_of`.

    `history` is the output of `prepare_history`. The current stay of an open deal runs to the
    end of `as_of`; a stay in a won or lost stage has no duration.
    """
    end = as_of_end(as_of)
    # Only the columns a stay keeps are carried through the filter (a history row has twice as many).
    kept = ["deal_id", "pipeline", "stage", "stage_order", "stage_status", "changed_at", "amount_reporting",
            "expected_close_date", "is_backward", "is_contradictory"]
    is_entry = (history["changed_at"] <= end).to_numpy(dtype=bool) & history["is_stage_change"].to_numpy(dtype=bool)
    entries = history.loc[is_entry, [c for c in kept if c in history.columns]]
    # The rows are grouped by deal: a stay ends where the deal's next one starts.
    entries = entries.assign(exited_at=_next_within(entries["changed_at"], run_starts(entries["deal_id"])))
    closed_stage = entries["stage_status"].isin([STATUS_WON, STATUS_LOST])
    entries["is_current"] = entries["exited_at"].isna()
    stay_end = entries["exited_at"].fillna(end)
    days = (stay_end - entries["changed_at"]) / pd.Timedelta(days=1)
    entries["days_in_stage"] = days.where(~closed_stage)
    entries["exited_at"] = entries["exited_at"].where(~closed_stage | entries["exited_at"].notna())
    events = entries.rename(
        columns={
            "changed_at": "entered_at",
            "amount_reporting": "amount_at_entry",
            "expected_close_date": "expected_close_at_entry",
        }
    )
    return conform(events, STAGE_EVENT_COLUMNS, "stage_events")


def pipeline_at_many(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    dates: Iterable[dt.date | pd.Timestamp],
) -> pd.DataFrame:
    """Every deal that existed at each date in `dates`, as it stood then: one row per
    (snapshot_at, deal_id).

    A date means an instant: events at or before it count. Pass `as_of_end(d)` to mean
    "at the end of day d". `history` is the output of `prepare_history`.

    Columns: snapshot_at, deal_id, the deal attributes in `DEAL_ATTRIBUTES`, the state columns
    in `STATE_COLUMNS` (stage, amount, expected close date, probability and forecast category at
    that time; running counts of stage moves, backward moves and close-date pushes before it),
    status (open/won/lost at that time), days_in_stage and age_days.
    """
    snapshots = np.array(sorted({_timestamp(d) for d in dates}), dtype=TIMESTAMP)
    if len(snapshots) == 0:
        raise ValueError("pipeline_at_many needs at least one date")
    changed_at = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    valid_to = history["valid_to"].to_numpy(dtype=TIMESTAMP)
    # Each history row holds from changed_at (inclusive) to the next row's changed_at (exclusive):
    # the snapshots it covers are a contiguous run of the sorted snapshot dates.
    first = np.searchsorted(snapshots, changed_at, side="left")
    last = np.where(np.isnat(valid_to), len(snapshots), np.searchsorted(snapshots, valid_to, side="left"))
    counts = np.maximum(last - first, 0)
    row_index = np.repeat(np.arange(len(history)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    snapshot_index = np.repeat(first, counts) + offsets
    return states_of_rows(deals, history, row_index, snapshots[snapshot_index])


def states_of_rows(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    row_index: np.ndarray,
    snapshot_at: np.ndarray,
) -> pd.DataFrame:
    """The `pipeline_at_many` rows for given (history row, instant) pairs: history row
    `row_index[i]` (a position in `history`) taken as its deal's state at `snapshot_at[i]`.

    The caller chooses pairs where the row holds at that instant (changed_at <= instant <
    valid_to); `pipeline_at_many` passes every such pair for its dates, a caller that needs only
    some deals at some dates passes those. Pairs before the deal's creation are dropped, as in
    `pipeline_at_many`; same columns and order (snapshot_at, deal_id).
    """
    state_cols = [c for c in STATE_COLUMNS if c != "closed_at"]
    # Select before repeating: every column taken is copied once per snapshot its row holds at.
    state = history[["deal_id", "changed_at", *state_cols]].iloc[row_index].reset_index(drop=True)
    state.insert(0, "snapshot_at", np.asarray(snapshot_at, dtype=TIMESTAMP))

    attributes = deals[["deal_id", *DEAL_ATTRIBUTES]]
    out = _with_deal_attributes(state, attributes, ids=deal_index(deals))
    # A deal exists from its creation; history rows dated before creation do not make it exist earlier.
    out = out.loc[out["created_at"] <= out["snapshot_at"]].reset_index(drop=True)

    status = out["stage_status"].fillna(STATUS_OPEN)
    out["status"] = status.astype("string")
    # Later edits of a closed deal (an amount corrected after the win) do not move its close time.
    out["closed_at"] = out["stage_entered_at"].where(status != STATUS_OPEN)
    out["days_in_stage"] = ((out["snapshot_at"] - out["stage_entered_at"]) / pd.Timedelta(days=1)).where(
        status == STATUS_OPEN
    )
    out["age_days"] = (out["snapshot_at"] - out["created_at"]) / pd.Timedelta(days=1)
    columns = ["snapshot_at", "deal_id", *DEAL_ATTRIBUTES, *STATE_COLUMNS, "status", "days_in_stage", "age_days"]
    if _in_snapshot_and_deal_order(out):
        # History is grouped by deal in deal order and pairs come date by date: nothing to sort.
        return out[columns]
    return out[columns].sort_values(["snapshot_at", "deal_id"], kind="stable").reset_index(drop=True)


def _with_deal_attributes(
    state: pd.DataFrame, attributes: pd.DataFrame, how: str = "left", ids: pd.Index | None = None
) -> pd.DataFrame:
    """`state.merge(attributes, on="deal_id", how=how, validate="many_to_one")` (how: "left" or
    "inner"), found by position when the ids have one type, each is once in `attributes`, no other
    column is in both and (for "left") every row's deal is there: a merge would also factorise
    every id again to check that each is once in `attributes`, a second or more per call at a
    million deals. The merge itself otherwise, with its checks and type rules. `ids`: the index
    of `attributes.deal_id` when the caller has it."""
    shared = set(state.columns) & set(attributes.columns)
    if shared == {"deal_id"} and state["deal_id"].dtype == attributes["deal_id"].dtype:
        ids = pd.Index(attributes["deal_id"]) if ids is None else ids
        if ids.is_unique:
            position = _positions(ids, state["deal_id"])
            matched = position >= 0
            if how == "inner" or matched.all():
                if not matched.all():
                    state, position = state.loc[matched], position[matched]
                found = attributes.drop(columns="deal_id").iloc[position].reset_index(drop=True)
                return pd.concat([state.reset_index(drop=True), found], axis=1)
    return state.merge(attributes, on="deal_id", how=how, validate="many_to_one")


def _positions(ids: pd.Index, values: pd.Series) -> np.ndarray:
    """`ids.get_indexer(values)`, each distinct value looked up once (a deal has several history
    rows: 0.3 s instead of 1.0 s for the 4.5 million history rows of a million deals)."""
    if ids.hasnans:
        return ids.get_indexer(values)
    codes, distinct = pd.factorize(values)  # a missing value is code -1, found nowhere
    return np.append(ids.get_indexer(distinct), -1)[codes]


def _in_snapshot_and_deal_order(rows: pd.DataFrame) -> bool:
    """Whether `rows` are already sorted by snapshot_at, then deal_id (as a sort of both would put them)."""
    if len(rows) < 2:
        return True
    snapshot = rows["snapshot_at"].to_numpy(dtype=TIMESTAMP)
    if np.isnat(snapshot).any() or bool((snapshot[1:] < snapshot[:-1]).any()):
        return False
    ids = rows["deal_id"].array
    try:
        ascending = pd.Series(ids[1:] >= ids[:-1]).fillna(False).to_numpy(dtype=bool)
    except TypeError:  # ids of mixed types: left to the sort
        return False
    return bool((ascending | (snapshot[1:] != snapshot[:-1])).all())


def blank_column(n: int) -> pd.Categorical:
    """A column of n missing values that costs one byte per row."""
    return pd.Categorical.from_codes(np.full(n, -1, dtype=np.int8), categories=pd.Index([], dtype=object))


def lean_rebuild_inputs(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    deal_columns: Iterable[str],
    state_columns: Iterable[str],
    categorical: Iterable[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`deals` and `history` cut down for a `pipeline_at_many` rebuild that reads only a few
    columns: `deal_columns` (with deal_id and created_at) and `state_columns` (with deal_id,
    changed_at, valid_to, stage_status and stage_entered_at) are kept; every other column the
    rebuild carries is blank at one byte per row. Columns named in `categorical` become
    categoricals, so a rebuild repeats a small code per row instead of the text.
    """
    as_category = set(categorical)

    def kept(frame: pd.DataFrame, column: str):
        values = frame[column]
        return pd.Categorical(values) if column in as_category else values.array

    deal_keep = {"deal_id", "created_at", *deal_columns}
    lean_deals = {"deal_id": deals["deal_id"].array}
    for column in DEAL_ATTRIBUTES:
        lean_deals[column] = kept(deals, column) if column in deal_keep else blank_column(len(deals))
    state_keep = {"stage_status", "stage_entered_at", *state_columns}
    lean_history = {
        "deal_id": history["deal_id"].array,
        "changed_at": history["changed_at"].to_numpy(dtype=TIMESTAMP),
        "valid_to": history["valid_to"].to_numpy(dtype=TIMESTAMP),
    }
    for column in STATE_COLUMNS:
        if column != "closed_at":
            lean_history[column] = kept(history, column) if column in state_keep else blank_column(len(history))
    return pd.DataFrame(lean_deals), pd.DataFrame(lean_history)


# The latest `pipeline_at` result inside a `reusing_states` block: (deals, history, instant, rows).
_REUSED: ContextVar[list | None] = ContextVar("dealcast_reused_state", default=None)


@contextmanager
def reusing_states() -> Iterator[None]:
    """Inside this block, `pipeline_at` rebuilds the pipeline once for consecutive calls with the
    same `deals` and `history` objects and the same instant, and hands each caller its own
    (copy-on-write) copy of those rows; a call with other frames or another instant replaces the
    one kept. For work that asks for the same state from several places (the forecast backtest:
    the close timing, the revenue calibration, the scoring features and both forecasts of a
    checkpoint all read the pipeline at the end of the checkpoint's day). The frames must not be
    modified in place inside the block. Blocks nest; the outermost one ends the reuse."""
    if _REUSED.get() is not None:
        yield
        return
    token = _REUSED.set([])
    try:
        yield
    finally:
        _REUSED.reset(token)


def pipeline_at(deals: pd.DataFrame, history: pd.DataFrame, at: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Every deal that existed at instant `at`, as it stood then (see `pipeline_at_many`; inside a
    `reusing_states` block a repeated call is not rebuilt)."""
    kept = _REUSED.get()
    if kept is None:
        return pipeline_at_many(deals, history, [at])
    instant = _timestamp(at)
    if not (kept and kept[0] is deals and kept[1] is history and kept[2] == instant):
        kept[:] = [deals, history, instant, pipeline_at_many(deals, history, [instant])]
    return kept[3].copy(deep=False)


def state_spans(deals: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """When each row of `history` (output of `prepare_history`) is its deal's state in
    `pipeline_at_many`, without rebuilding any snapshot: one row per history row, same index.

    Columns: deal_id; held_from (inclusive: the row's changed_at, or the deal's creation if later;
    NaT when the deal has no creation time or is not in `deals`, i.e. never held); held_until
    (exclusive: the next row's changed_at, NaT while the row still holds); status (open/won/lost
    as `pipeline_at_many` reports it); closed_at (as `pipeline_at_many` reports it, NaT while open).
    `pipeline_at_many` at instant t shows this row exactly when held_from <= t < held_until.
    """
    positions = deal_positions(deals, history["deal_id"])
    created_all = deals["created_at"].to_numpy(dtype=TIMESTAMP)
    created = np.where(positions >= 0, created_all[np.maximum(positions, 0)], np.datetime64("NaT"))
    changed_at = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    held_from = np.where(np.isnat(created) | np.isnat(changed_at), np.datetime64("NaT"), np.maximum(changed_at, created))
    status = history["stage_status"].fillna(STATUS_OPEN)
    return pd.DataFrame(
        {
            "deal_id": history["deal_id"],
            "held_from": pd.Series(held_from.astype(TIMESTAMP), index=history.index),
            "held_until": history["valid_to"],
            "status": status.astype("string"),
            "closed_at": history["stage_entered_at"].where(status != STATUS_OPEN),
        },
        index=history.index,
    )
