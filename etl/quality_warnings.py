"""Data-quality warnings a sales manager needs: non-blocking, each with counts and examples.

Blocking checks (`etl.validation.canonical`) stop a run whose data cannot be trusted at all. These warnings
describe data that is usable but recorded in a way that bends some numbers; nothing is quarantined
and nothing stops. Each is computed at the end of the run's as_of, for the whole CRM (pipeline
"all") and for every pipeline, and fires above a threshold from `[warnings]` in dealcast.toml:

- `wins_keyed_in_at_close`: wins created less than `keyed_at_close_hours` before they were marked
  won, or that entered their last open stage less than `keyed_at_close_minutes` before. Fires
  above `keyed_at_close_share` of the wins. (Velocity's cycle days and the aged threshold leave
  out the first kind: `etl.bookings.keyed_in_at_close`.)
- `overdue_open_deals`: open deals whose expected close date is before as_of. Fires above
  `overdue_share` of the open deals.
- `close_date_before_creation`: open deals expected to close before the day they were created.
  Fires on any.
- `outlier_amounts`: open or lost deals whose amount is above `outlier_factor` (3) times the
  largest deal ever won (in the reporting currency). Fires on any.
- `contradictory_history`: deals whose stage history contradicts the sales process or their record
  (`deal_history.is_contradictory`: moved out of a won or lost stage, or completed to agree with the
  record). Fires on any.
- `pipeline_mostly_stalled`: open deals flagged stalled or aged in `stalled_deals`. A pipeline row
  fires above `mostly_stalled_share` of its open deals; the "all" row fires when a pipeline does.
- `future_close_date`: closed deals whose CRM close date is after as_of; they are booked on the day
  they were marked closed (`etl.bookings`). Fires on any.

The result is shaped as the warehouse table `data_quality_warnings` (`etl.tables`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.bookings import keyed_in_at_close
from etl.config import WarningsConfig
from etl.analytics.kernel import index_in
from etl.pipeline_state import as_of_end, pipeline_at
from etl.schema import TIMESTAMP, UNKNOWN_SEGMENT
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON
from etl.tables import TABLES

log = logging.getLogger(__name__)

KEYED_AT_CLOSE = "wins_keyed_in_at_close"
OVERDUE = "overdue_open_deals"
CLOSE_BEFORE_CREATION = "close_date_before_creation"
OUTLIER_AMOUNTS = "outlier_amounts"
CONTRADICTORY = "contradictory_history"
MOSTLY_STALLED = "pipeline_mostly_stalled"
FUTURE_CLOSE = "future_close_date"
# In the order they are reported; what each one means for the numbers, in a sentence.
WARNINGS: dict[str, str] = {
    KEYED_AT_CLOSE: "Wins keyed into the CRM at the moment of closing: their cycle length and stage times were not recorded.",
    OVERDUE: "Open deals whose expected close date has passed: the pipeline by close date is stale.",
    CLOSE_BEFORE_CREATION: "Open deals expected to close before they were created: their close date is a typo or a placeholder.",
    OUTLIER_AMOUNTS: "Open or lost deals far larger than any deal ever won: pipeline value and value win rates are distorted.",
    CONTRADICTORY: "Stage history that contradicts the sales process or the deal's record (e.g. Closed Won -> Prospecting).",
    MOSTLY_STALLED: "A pipeline whose open deals are mostly stalled or aged: it holds deals nobody works any more.",
    FUTURE_CLOSE: "Closed deals with a CRM close date after the run's as_of: booked on the day they were marked closed.",
}
ALL_PIPELINES = "all"
SEVERITY = "warning"
MAX_EXAMPLES = 5
_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class _Check:
    """One warning over every existing deal: who is counted (population), who is affected, and why
    (detail per deal, read only for the examples)."""

    name: str
    population: np.ndarray
    affected: np.ndarray
    detail: Callable[[np.ndarray], list[str]]
    threshold: float | None  # a share; None: fires on any affected deal
    describe: Callable[[int, int, float], str]


def data_quality_warnings(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stalled: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    config: WarningsConfig | None = None,
) -> pd.DataFrame:
    """The `data_quality_warnings` rows of a run: one per warning and pipeline ("all" and each
    pipeline with a deal at the end of as_of).

    `deals` are the canonical deals (with crm_close_date), `history` the output of
    `etl.pipeline_state.prepare_history` and `stalled` the `stalled_deals` table of the same as_of.
    """
    config = config or WarningsConfig()
    as_of_day = pd.Timestamp(as_of).date()
    state = pipeline_at(deals, history, as_of_end(as_of)).reset_index(drop=True)
    facts = _facts(state, deals, history, stalled, as_of_day, config)
    checks = _checks(facts, config)
    pipelines = state["pipeline"].astype("string").fillna(UNKNOWN_SEGMENT).to_numpy(dtype=object)
    rows = []
    for check in checks:
        rows.append(_row(check, facts, np.ones(len(state), dtype=bool), ALL_PIPELINES))
        for pipeline in sorted(set(pipelines)):
            rows.append(_row(check, facts, pipelines == pipeline, pipeline))
    frame = pd.DataFrame(rows, columns=[c for c in TABLES["data_quality_warnings"].columns if c != "as_of"])
    stalled_rows = (frame["check_name"] == MOSTLY_STALLED) & (frame["pipeline"] != ALL_PIPELINES)
    any_stalled = frame.loc[stalled_rows & frame["fired"], "pipeline"].tolist()
    overall = (frame["check_name"] == MOSTLY_STALLED) & (frame["pipeline"] == ALL_PIPELINES)
    frame.loc[overall, "fired"] = bool(any_stalled)
    if any_stalled:
        frame.loc[overall, "message"] = frame.loc[overall, "message"] + " Mostly stalled: " + ", ".join(any_stalled) + "."
    frame.insert(0, "as_of", as_of_day)
    fired = frame.loc[frame["fired"] & (frame["pipeline"] == ALL_PIPELINES)]
    for row in fired.itertuples():
        log.warning("data-quality warning %s: %s", row.check_name, row.message)
    return frame.astype(
        {"check_name": "string", "pipeline": "string", "severity": "string", "message": "string", "examples": "string",
         "population": "int64", "affected": "int64", "fired": "bool", "share": "float64", "affected_amount": "float64",
         "threshold": "float64"}
    )


def _facts(
    state: pd.DataFrame, deals: pd.DataFrame, history: pd.DataFrame, stalled: pd.DataFrame, as_of: dt.date,
    config: WarningsConfig,
) -> dict[str, np.ndarray]:
    """Per existing deal (rows of `state`), the columns the checks read."""
    status = state["status"].astype(str).to_numpy()
    day = np.datetime64(as_of, "D").astype(TIMESTAMP)
    created = state["created_at"].to_numpy(dtype=TIMESTAMP)
    closed_at = state["closed_at"].to_numpy(dtype=TIMESTAMP)
    crm_close = np.full(len(state), np.datetime64("NaT"), dtype=TIMESTAMP)
    if "crm_close_date" in deals:
        crm_close = deals["crm_close_date"].to_numpy(dtype=TIMESTAMP)[index_in(state["deal_id"], deals["deal_id"])]
    return {
        "deal_id": state["deal_id"].astype(str).to_numpy(dtype=object),
        "deal_name": state["deal_name"].astype("string").to_numpy(dtype=object, na_value=None),
        "owner": state["owner"].astype("string").to_numpy(dtype=object, na_value=None),
        "pipeline": state["pipeline"].astype("string").to_numpy(dtype=object, na_value=None),
        "stage": state["stage"].astype("string").to_numpy(dtype=object, na_value=None),
        "amount": state["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
        "open": status == STATUS_OPEN,
        "won": status == STATUS_WON,
        "lost": status == STATUS_LOST,
        "created": created,
        "closed_at": closed_at,
        "expected": state["expected_close_date"].to_numpy(dtype=TIMESTAMP),
        "crm_close": crm_close,
        "day": np.array([day]),
        "last_open_entry": _last_open_entry(state, history),
        "contradiction": _contradictions(state, history),
        "stalled": _stalled(state, stalled),
        "has_history": state["has_history"].to_numpy(dtype=bool),
    }


def _last_open_entry(state: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
    """Per deal of `state`: when it entered the last open stage it was in before its close
    (NaT if open, or its history records no open stage)."""
    deal = index_in(history["deal_id"], state["deal_id"])
    entry = (
        history["is_stage_change"].to_numpy(dtype=bool)
        & (history["stage_status"] == STATUS_OPEN).fillna(False).to_numpy(dtype=bool)
        & (deal >= 0)
    )
    closed_at = state["closed_at"].to_numpy(dtype=TIMESTAMP)
    deal = deal[entry]
    entered = history["changed_at"].to_numpy(dtype=TIMESTAMP)[entry]
    close = closed_at[deal]
    keep = ~np.isnat(close) & (entered < close)
    deal, entered = deal[keep], entered[keep]
    out = np.full(len(state), np.datetime64("NaT"), dtype=TIMESTAMP)
    order = np.lexsort((entered, deal))
    deal, entered = deal[order], entered[order]
    last = np.ones(len(deal), dtype=bool)
    last[:-1] = deal[1:] != deal[:-1]
    out[deal[last]] = entered[last]
    return out


def _contradictions(state: pd.DataFrame, history: pd.DataFrame) -> np.ndarray:
    """Per deal of `state`: its first contradictory history change in words, else None."""
    out = np.full(len(state), None, dtype=object)
    if "is_contradictory" not in history or not history["is_contradictory"].any():
        return out
    flagged = np.flatnonzero(history["is_contradictory"].to_numpy(dtype=bool))
    deal_ids = history["deal_id"].to_numpy(dtype=object)
    first = flagged[~pd.Series(deal_ids[flagged]).duplicated().to_numpy()]
    same_deal = (first > 0) & (deal_ids[np.maximum(first - 1, 0)] == deal_ids[first])
    stage = history["stage"].astype("string").fillna("a stage not recorded").to_numpy(dtype=object)
    status = history["stage_status"].astype("string").fillna(STATUS_OPEN).to_numpy(dtype=object)
    when = pd.Series(history["changed_at"].to_numpy(dtype=TIMESTAMP)[first]).dt.strftime("%Y-%m-%d %H:%M").to_numpy(dtype=object)
    position = index_in(pd.Series(deal_ids[first]), state["deal_id"])
    for row, prior, at, where in zip(first, same_deal, when, position):
        if where < 0:
            continue
        before = stage[row - 1] if prior else "a stage not recorded"
        if prior and status[row - 1] in (STATUS_WON, STATUS_LOST):
            out[where] = f"{before} -> {stage[row]} on {at}"
        else:
            out[where] = f"history ends in {before} but the deal's record says {stage[row]}: taken as the truth from {at}"
    return out


def _stalled(state: pd.DataFrame, stalled: pd.DataFrame) -> np.ndarray:
    """Per deal of `state`: the reason it is stalled or aged in `stalled_deals`, else None."""
    out = np.full(len(state), None, dtype=object)
    if stalled is None or stalled.empty:
        return out
    position = index_in(stalled["deal_id"], state["deal_id"])
    found = position >= 0
    out[position[found]] = stalled["reason"].astype(str).to_numpy(dtype=object)[found]
    return out


def _date(values: np.ndarray) -> list[str]:
    return pd.Series(values).dt.strftime("%Y-%m-%d").fillna("?").tolist()


def _checks(f: dict[str, np.ndarray], config: WarningsConfig) -> list[_Check]:
    day = f["day"][0]
    same_day = f["won"] & keyed_in_at_close(f["created"], f["closed_at"], config.keyed_at_close_hours)
    minutes = (f["closed_at"] - f["last_open_entry"]) / np.timedelta64(1, "m")
    with np.errstate(invalid="ignore"):
        last_minute = f["won"] & (config.keyed_at_close_minutes > 0) & (minutes < config.keyed_at_close_minutes)
    keyed = same_day | last_minute

    def keyed_detail(rows: np.ndarray) -> list[str]:
        created, closed = pd.Series(f["created"][rows]), pd.Series(f["closed_at"][rows])
        gap_minutes = ((closed - created) / pd.Timedelta(minutes=1)).round().astype("Int64")
        stage_minutes = pd.Series(minutes[rows]).round().astype("Int64")
        return [
            f"created {c:%Y-%m-%d %H:%M}, marked won {m} minute(s) later" if s
            else f"entered its last open stage {g} minute(s) before it was marked won"
            for c, m, s, g in zip(created, gap_minutes, same_day[rows], stage_minutes)
        ]

    overdue = f["open"] & ~np.isnat(f["expected"]) & (f["expected"] < day)
    before_creation = f["open"] & ~np.isnat(f["expected"]) & (f["expected"] < f["created"].astype("datetime64[D]").astype(TIMESTAMP))
    won_amounts = f["amount"][f["won"] & ~np.isnan(f["amount"])]
    largest_win = float(won_amounts.max()) if len(won_amounts) else np.nan
    with np.errstate(invalid="ignore"):
        outlier = (f["open"] | f["lost"]) & (f["amount"] > config.outlier_factor * largest_win)
    future = (f["won"] | f["lost"]) & ~np.isnat(f["crm_close"]) & (f["crm_close"] > day)
    contradictory = np.array([text is not None for text in f["contradiction"]], dtype=bool)
    stalled = np.array([reason is not None for reason in f["stalled"]], dtype=bool) & f["open"]

    def share_text(what: str, base: str) -> Callable[[int, int, float], str]:
        return lambda affected, population, share: (
            f"{affected:,} of {population:,} {base} ({share:.1%}) {what}." if population else f"No {base}."
        )

    return [
        _Check(
            KEYED_AT_CLOSE, f["won"], keyed, keyed_detail, config.keyed_at_close_share,
            lambda a, p, s: (
                f"{a:,} of {p:,} wins ({s:.1%}) were keyed in at close: created less than "
                f"{config.keyed_at_close_hours:g} hours before they were marked won, or in their last open stage less "
                f"than {config.keyed_at_close_minutes:g} minutes; their cycle and stage times are not real (velocity's "
                "cycle days and the aged threshold leave out the wins created at close)." if p else "No wins."
            ),
        ),
        _Check(
            OVERDUE, f["open"], overdue,
            lambda rows: [f"expected to close {d}, {int(n):,} day(s) before as_of" for d, n in
                          zip(_date(f["expected"][rows]), (day - f["expected"][rows]) / _DAY)],
            config.overdue_share, share_text("have an expected close date before as_of", "open deals"),
        ),
        _Check(
            CLOSE_BEFORE_CREATION, f["open"], before_creation,
            lambda rows: [f"expected to close {e}, before it was created on {c}" for e, c in
                          zip(_date(f["expected"][rows]), _date(f["created"][rows]))],
            None, share_text("are expected to close before the day they were created", "open deals"),
        ),
        _Check(
            OUTLIER_AMOUNTS, f["open"] | f["lost"], outlier,
            lambda rows: [f"amount {a:,.0f} is {a / largest_win:,.0f}x the largest win ({largest_win:,.0f})" for a in f["amount"][rows]],
            None,
            lambda a, p, s: (
                f"{a:,} of {p:,} open or lost deals are more than {config.outlier_factor:g}x the largest deal ever won "
                f"({largest_win:,.0f})." if not np.isnan(largest_win) else "No won deal to compare amounts with."
            ),
        ),
        _Check(
            CONTRADICTORY, f["has_history"] | contradictory, contradictory, lambda rows: list(f["contradiction"][rows]), None,
            share_text("have a stage history that contradicts the sales process or their record", "deals with history"),
        ),
        _Check(
            MOSTLY_STALLED, f["open"], stalled, lambda rows: list(f["stalled"][rows]), config.mostly_stalled_share,
            share_text("are stalled in their stage or older than most won deals took", "open deals"),
        ),
        _Check(
            FUTURE_CLOSE, f["won"] | f["lost"], future,
            lambda rows: [f"marked closed {m} with a close date of {c}: booked on {m}" for m, c in
                          zip(_date(f["closed_at"][rows]), _date(f["crm_close"][rows]))],
            None, share_text("have a CRM close date after as_of and are booked on the day they were marked closed", "closed deals"),
        ),
    ]


def _row(check: _Check, f: dict[str, np.ndarray], scope: np.ndarray, pipeline: str) -> dict:
    """The row of `check` over the deals in `scope`."""
    population = int((check.population & scope).sum())
    hit = check.affected & check.population & scope
    affected = int(hit.sum())
    share = affected / population if population else np.nan
    fired = affected > 0 if check.threshold is None else bool(population and share > check.threshold)
    rows = np.flatnonzero(hit)
    amount = np.nan_to_num(f["amount"][rows])
    top = rows[np.lexsort((f["deal_id"][rows], -amount))][:MAX_EXAMPLES]
    details = check.detail(top) if len(top) else []
    examples = [
        {
            "deal_id": f["deal_id"][r], "deal_name": f["deal_name"][r], "owner": f["owner"][r], "pipeline": f["pipeline"][r],
            "stage": f["stage"][r], "amount_reporting": None if np.isnan(f["amount"][r]) else round(float(f["amount"][r]), 2),
            "detail": text,
        }
        for r, text in zip(top, details)
    ]
    return {
        "check_name": check.name,
        "pipeline": pipeline,
        "fired": fired,
        "severity": SEVERITY,
        "population": population,
        "affected": affected,
        "share": share,
        "affected_amount": float(amount.sum()),
        "threshold": check.threshold,
        "message": check.describe(affected, population, share),
        "examples": json.dumps(examples, ensure_ascii=False),
    }
