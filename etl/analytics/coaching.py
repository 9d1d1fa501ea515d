"""People, products and quotas: the coaching view (`rep_funnel`), the spread of won deal values
(`deal_value_spread`), the product mix (`product_mix`), revenue growth (`revenue_growth`), time
from ask to decision (`ask_to_decision`) and pipeline coverage against quota (`pipeline_coverage`),
shaped exactly as the warehouse tables of the same names in `etl.tables`. Definitions follow the
project's metric definitions (design/metrics.md, "People and products" and "Pipeline health");
each function's docstring states exactly which deals each column counts.

The conventions are the kernel's (`etl.analytics.kernel`): everything is as it was known at the
end of the run's `as_of` day (`etl.pipeline_state.as_of_end`), a deal's state then comes from the
one point-in-time rebuild of `kernel.deals_at_as_of` (pass its frame as `at=` to share it between
tables; each table rebuilds it when it is not given), segments from `etl.schema.segment_values`,
periods from `etl.periods`, money is `amount_reporting` as it stood at as_of, and every ratio is
stored beside the counts or sums it is computed from. Percentiles use numpy's "linear" definition
(position q*(n-1) of the sorted values). Standard deviations are sample standard deviations (n - 1
in the denominator).

Nothing loops over deals or history rows: deals are addressed by row number, segments and periods
by integer codes, and every count, sum and percentile is a `numpy.bincount` or one sort per
segment type.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.analytics.kernel import (
    OPEN,
    DealsAsOf,
    as_of_date,
    codes,
    concat_pieces,
    deals_as_of,
    empty_table,
    first_day,
    grouped_percentiles,
    index_in,
    period_calendar,
    safe_ratio,
    segment_codes,
    table_frame,
)
from etl.periods import period_bounds, quarter_end, quarter_label, quarter_labels
from etl.pipeline_state import as_of_end
from etl.quarter_pipeline import overdue, pipeline_dates
from etl.schema import SEGMENT_COLUMNS, TIMESTAMP, UNKNOWN_SEGMENT, segment_values
from etl.stages import StageCatalog

log = logging.getLogger(__name__)

GROWTH_GRAINS = ("month", "quarter")
PERIOD_ALL = "all"
OUTCOMES = ("won", "lost", "all")
DEFAULT_MIN_REACHED = 5
# Word stems of stage names that say the customer has been asked to buy (a proposal, quote or
# negotiation), lower-case and without accents, as `_folded` writes names.
ASK_STAGE_STEMS = (
    # English
    "proposal", "quote", "quotation", "negotiat",
    # Spanish (propuesta, cotizacion, presupuesto, oferta, negociacion) and Portuguese (proposta,
    # cotacao, orcamento, negociacao) share "negocia"
    "propuesta", "cotizacion", "presupuesto", "oferta", "negocia", "proposta", "cotacao", "orcamento",
    # French
    "proposition", "devis", "offre",
    # German
    "angebot", "verhandl",
    # Italian
    "preventivo", "offerta", "quotazione", "trattativ", "negozia",
    # Dutch
    "voorstel", "offerte", "onderhandel",
)
# "Value proposition" stages (Salesforce's default picklist and its translations) pitch value; they
# are not the ask, so they are removed from a name before the stems are looked for.
VALUE_PROPOSITION_PATTERN = re.compile(
    r"value proposition|propuesta de valor|proposition de valeur|propost[ao] d[ie] valor[e]?"
    r"|wert\w*(angebot|versprechen)|nutzenversprechen|waarde\w*(propositie|voorstel)"
)
ASK_CONFIGURED, ASK_BY_NAME = "configured", "name"
_DAY = np.timedelta64(1, "D")



# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _compact(cells: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells that occur (sorted) and each value's dense group id among them."""
    present = np.bincount(cells, minlength=n_cells) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[cells]


@dataclass(frozen=True)
class _Stats:
    count: np.ndarray
    total: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # sample standard deviation; NaN below 2 values
    quantiles: np.ndarray  # (groups, len(quantiles))


def _group_stats(
    groups: np.ndarray, values: np.ndarray, n_groups: int, quantiles: tuple[float, ...], value_order: np.ndarray
) -> _Stats:
    """Count, sum, mean, sample standard deviation and quantiles of `values` per group."""
    count = np.bincount(groups, minlength=n_groups)
    total = np.bincount(groups, weights=values, minlength=n_groups)
    mean = safe_ratio(total, count)
    squares = np.bincount(groups, weights=(values - mean[groups]) ** 2, minlength=n_groups)
    std = np.sqrt(safe_ratio(squares, np.where(count > 1, count - 1, 0)))
    return _Stats(count, total, mean, std, grouped_percentiles(groups, values, n_groups, quantiles, value_order))


# --------------------------------------------------------------------------------------------
# rep_funnel
# --------------------------------------------------------------------------------------------


def rep_teams(deals: pd.DataFrame) -> pd.DataFrame:
    """Each rep's team: owner and team (the team of most of the rep's deals, ties to the first
    team in alphabetical order; `(unknown)` for reps whose deals have no team). Owners and teams
    are spelled as `etl.schema.segment_values` spells them."""
    pairs = pd.DataFrame({"owner": segment_values(deals, "owner"), "team": segment_values(deals, "team")})
    counts = pairs.value_counts(sort=False).rename("deals").reset_index()
    counts = counts.sort_values(["owner", "deals", "team"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("owner")[["owner", "team"]].reset_index(drop=True)


def rep_funnel(
    conversion: pd.DataFrame,
    deals: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    min_reached: int = DEFAULT_MIN_REACHED,
) -> pd.DataFrame:
    """Each rep's funnel against the team median: one row per pipeline x owner x open stage.

    `conversion` is the `stage_conversion` table (`etl.analytics.funnel.stage_conversion`) for the same
    as_of; its rows with period_grain "all", funnel_mode "any_order" and segment_type "owner" are
    the reps' funnels (owner "(unknown)" is the deals without an owner). `deals` gives each rep's
    team (`rep_teams`, over the deals created by the end of as_of).
    - reached, advanced, decided, won, closed, next_step_rate, stage_to_won_rate: the rep's row of
      `conversion`;
    - eligible: the rep reached the stage with at least `min_reached` deals and is a named rep (not
      "(unknown)"); only eligible reps count in team medians and get a weakest stage;
    - team_reps: eligible reps of the team in this pipeline and stage;
    - team_median_next_step_rate / team_median_stage_to_won_rate: the median of those reps' rates
      (of the reps whose rate is not NULL; the rep itself included);
    - next_step_rate_vs_team / stage_to_won_rate_vs_team: the rep's rate minus the team median
      (NULL unless the rep is eligible and both are known);
    - is_weakest_stage: true on the one stage per rep and pipeline where next_step_rate_vs_team is
      lowest, when it is below 0 (the earliest such stage on ties): the coaching signal.
    """
    as_of_day = as_of_date(as_of)
    if min_reached < 1:
        raise ValueError(f"rep_funnel: min_reached must be at least 1, got {min_reached}")
    used = ("pipeline", "period_grain", "funnel_mode", "segment_type", "segment", "stage", "stage_order", "reached",
            "advanced", "decided", "won", "closed", "next_step_rate", "stage_to_won_rate")
    missing = [c for c in used if c not in conversion.columns]
    if missing:
        raise KeyError(f"rep_funnel: conversion lacks column(s) {missing}; expected the stage_conversion table")
    reps = conversion.loc[
        (conversion["period_grain"] == PERIOD_ALL)
        & (conversion["funnel_mode"] == "any_order")
        & (conversion["segment_type"] == "owner")
    ]
    if reps.empty:
        return empty_table("rep_funnel", as_of_day)
    existing = deals.loc[(deals["created_at"] <= as_of_end(as_of).to_datetime64()).to_numpy(dtype=bool)]
    teams = rep_teams(existing)
    frame = pd.DataFrame(
        {
            "pipeline": reps["pipeline"].astype(str).to_numpy(),
            "owner": reps["segment"].astype(str).to_numpy(),
            "stage": reps["stage"].astype(str).to_numpy(),
            "stage_order": reps["stage_order"].to_numpy(dtype="int64"),
            **{c: reps[c].to_numpy(dtype="int64") for c in ("reached", "advanced", "decided", "won", "closed")},
            **{c: reps[c].to_numpy(dtype="float64", na_value=np.nan) for c in ("next_step_rate", "stage_to_won_rate")},
        }
    )
    frame = frame.merge(teams.astype({"owner": str, "team": str}), on="owner", how="left", validate="many_to_one")
    frame["team"] = frame["team"].fillna(UNKNOWN_SEGMENT)
    frame["eligible"] = (frame["reached"] >= min_reached) & (frame["owner"] != UNKNOWN_SEGMENT)

    keys = ["pipeline", "team", "stage_order"]
    peers = frame.loc[frame["eligible"]].groupby(keys, sort=False)
    team = pd.DataFrame(
        {
            "team_reps": peers.size(),
            "team_median_next_step_rate": peers["next_step_rate"].median(),
            "team_median_stage_to_won_rate": peers["stage_to_won_rate"].median(),
        }
    ).reset_index()
    frame = frame.merge(team, on=keys, how="left", validate="many_to_one")
    frame["team_reps"] = frame["team_reps"].fillna(0).astype("int64")
    eligible = frame["eligible"].to_numpy(dtype=bool)
    for rate in ("next_step_rate", "stage_to_won_rate"):
        diff = frame[rate].to_numpy(dtype="float64") - frame[f"team_median_{rate}"].to_numpy(dtype="float64")
        frame[f"{rate}_vs_team"] = np.where(eligible, diff, np.nan)

    # The weakest stage: per (pipeline, owner) the lowest negative next-step difference.
    gap = frame["next_step_rate_vs_team"]
    candidates = frame.loc[gap.notna() & (gap < 0), ["pipeline", "owner", "stage_order", "next_step_rate_vs_team"]]
    weakest = candidates.sort_values(
        ["pipeline", "owner", "next_step_rate_vs_team", "stage_order"], kind="stable"
    ).drop_duplicates(["pipeline", "owner"])
    frame["is_weakest_stage"] = False
    frame.loc[weakest.index, "is_weakest_stage"] = True
    frame = frame.sort_values(["pipeline", "owner", "stage_order"], kind="stable").reset_index(drop=True)
    out = table_frame("rep_funnel", {c: frame[c].to_numpy() for c in frame.columns}, as_of_day)
    log.info(
        "rep_funnel: %d rows for %d reps as of %s; %d weakest stages flagged",
        len(out), frame["owner"].nunique(), as_of_day, int(frame["is_weakest_stage"].sum()),
    )
    return out


# --------------------------------------------------------------------------------------------
# deal_value_spread
# --------------------------------------------------------------------------------------------


def _close_quarters(at: DealsAsOf, mask: np.ndarray, fiscal_year_start_month: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and labels of the fiscal quarter of the booking date of the deals in `mask`."""
    closed = pd.Series(at.booked_at[mask])
    return codes(quarter_labels(closed, fiscal_year_start_month))


def deal_value_spread(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """How consistent won deal values are: one row per period x segment with at least one won deal.

    Periods: period_grain "all" (period "all": every deal won by the end of as_of) and
    period_grain "quarter" (the fiscal quarter of the booking date, `etl.bookings`). Segments: every
    segment type of `etl.schema.SEGMENT_COLUMNS`. Values are amount_reporting at the end of as_of of the deals
    won then (a deal re-opened after a win is not won).
    - won_count, won_amount: the won deals and the sum of their amounts;
    - mean_value = won_amount / won_count (the average deal value); median_value, p10_value,
      p90_value, min_value, max_value: percentiles of the amounts;
    - std_value: sample standard deviation (NULL for a single deal);
    - cv = std_value / mean_value (coefficient of variation; NULL when either is NULL or mean 0).
    """
    as_of_day = as_of_date(as_of)
    at = deals_as_of(deals, history, as_of, at)
    won = at.won
    if not won.any():
        return empty_table("deal_value_spread", as_of_day)
    values = at.amount[won]
    frame = at.frame.loc[won].reset_index(drop=True)
    quarter, quarter_names = _close_quarters(at, won, fiscal_year_start_month)
    periods = {
        PERIOD_ALL: (np.zeros(len(values), dtype="int64"), np.array([PERIOD_ALL], dtype=object)),
        "quarter": (quarter, quarter_names),
    }
    value_order = np.argsort(values, kind="stable")
    quantiles = (0.0, 0.1, 0.5, 0.9, 1.0)
    pieces = []
    for segment_type, (segment, segment_names) in segment_codes(frame).items():
        n_segments = len(segment_names)
        for grain, (period, period_names) in periods.items():
            cells, groups = _compact(period * n_segments + segment, len(period_names) * n_segments)
            stats = _group_stats(groups, values, len(cells), quantiles, value_order)
            n = len(cells)
            pieces.append(
                {
                    "period_grain": np.full(n, grain, dtype=object),
                    "period": period_names[cells // n_segments],
                    "segment_type": np.full(n, segment_type, dtype=object),
                    "segment": segment_names[cells % n_segments],
                    "won_count": stats.count,
                    "won_amount": stats.total,
                    "mean_value": stats.mean,
                    "median_value": stats.quantiles[:, 2],
                    "std_value": stats.std,
                    "p10_value": stats.quantiles[:, 1],
                    "p90_value": stats.quantiles[:, 3],
                    "min_value": stats.quantiles[:, 0],
                    "max_value": stats.quantiles[:, 4],
                    "cv": safe_ratio(stats.std, stats.mean),
                }
            )
    out = table_frame("deal_value_spread", concat_pieces(pieces), as_of_day)
    log.info("deal_value_spread: %d rows from %d won deals as of %s", len(out), len(values), as_of_day)
    return out


# --------------------------------------------------------------------------------------------
# product_mix and revenue_growth
# --------------------------------------------------------------------------------------------


def _calendars(at: DealsAsOf, fiscal_year_start_month: int):
    """Month and quarter calendars from the first creation or booking date through as_of."""
    first = first_day(at)
    return {g: period_calendar(first, at.as_of, g, fiscal_year_start_month) for g in GROWTH_GRAINS}


def product_mix(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Product mix: one row per period grain ("month", "quarter") x period x product.

    Periods run from the one in which the first deal (existing at the end of as_of) was created or
    booked through the one containing as_of; every product (`(unknown)` for deals without one) gets a
    row in every period. Amounts are amount_reporting at the end of as_of.
    - created_count, created_amount: deals created in the period (created_at) and their amount;
    - won_count, won_amount: deals won by the end of as_of whose booking date (`etl.bookings`)
      falls in the period;
    - period_won_amount: won_amount of all products in the period;
    - won_share = won_amount / period_won_amount (NULL when nothing was won in the period).
    """
    as_of_day = as_of_date(as_of)
    at = deals_as_of(deals, history, as_of, at)
    if len(at.frame) == 0:
        return empty_table("product_mix", as_of_day)
    product, product_names = codes(segment_values(at.frame, "product"))
    n_products = len(product_names)
    won = at.won
    pieces = []
    for grain, calendar in _calendars(at, fiscal_year_start_month).items():
        n_periods = len(calendar.labels)
        n_cells = n_periods * n_products
        created_period = calendar.period_of(at.created_at)
        closed_period = np.where(won, calendar.period_of(at.booked_at), -1)

        def tally(period: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            keep = mask & (period >= 0)
            cells = period[keep] * n_products + product[keep]
            return np.bincount(cells, weights=None if weights is None else weights[keep], minlength=n_cells)

        everyone = np.ones(len(product), dtype=bool)
        won_amount = tally(closed_period, won, at.amount)
        period_won = won_amount.reshape(n_periods, n_products).sum(axis=1)
        period_won_amount = np.repeat(period_won, n_products)
        pieces.append(
            {
                "period_grain": np.full(n_cells, grain, dtype=object),
                "period": calendar.labels[np.repeat(np.arange(n_periods), n_products)],
                "product": product_names[np.tile(np.arange(n_products), n_periods)],
                "created_count": tally(created_period, everyone),
                "created_amount": tally(created_period, everyone, at.amount),
                "won_count": tally(closed_period, won),
                "won_amount": won_amount,
                "period_won_amount": period_won_amount,
                "won_share": safe_ratio(won_amount, period_won_amount),
            }
        )
    out = table_frame("product_mix", concat_pieces(pieces), as_of_day)
    log.info("product_mix: %d rows for %d products as of %s", len(out), n_products, as_of_day)
    return out


def revenue_growth(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Revenue growth period over period: one row per period grain ("month", "quarter") x period x segment.

    Periods run as in `product_mix`; every segment value (every segment type) gets a row in every
    period. Won deals count in the period of their booking date (`etl.bookings`), at
    amount_reporting at the end of as_of.
    - complete: false for the period containing as_of when as_of is not its last day (its
      won_amount, and its growth, cover only part of it);
    - won_count, won_amount: deals won in the period;
    - previous_period, previous_won_amount: the period before and its won_amount (NULL for the
      first period of the table);
    - growth = (won_amount - previous_won_amount) / previous_won_amount; NULL when the previous
      period is absent or won nothing.
    """
    as_of_day = as_of_date(as_of)
    at = deals_as_of(deals, history, as_of, at)
    if len(at.frame) == 0:
        return empty_table("revenue_growth", as_of_day)
    won = at.won
    end = np.datetime64(as_of_end(as_of), "us")
    calendars = _calendars(at, fiscal_year_start_month)
    closed_periods = {g: np.where(won, c.period_of(at.booked_at), -1) for g, c in calendars.items()}
    pieces = []
    for segment_type, (segment, segment_names) in segment_codes(at.frame).items():
        n_segments = len(segment_names)
        for grain, calendar in calendars.items():
            n_periods = len(calendar.labels)
            n_cells = n_periods * n_segments
            closed_period = closed_periods[grain]
            keep = closed_period >= 0
            cells = closed_period[keep] * n_segments + segment[keep]
            won_count = np.bincount(cells, minlength=n_cells)
            won_amount = np.bincount(cells, weights=at.amount[keep], minlength=n_cells)
            # The previous period's cell of the same segment is n_segments cells earlier.
            previous = np.full(n_cells, np.nan)
            previous[n_segments:] = won_amount[:-n_segments] if n_segments else previous[n_segments:]
            period_index = np.repeat(np.arange(n_periods), n_segments)
            previous_label = np.where(period_index > 0, calendar.labels[np.maximum(period_index - 1, 0)], None)
            complete = calendar.end <= end + np.timedelta64(1, "us")
            pieces.append(
                {
                    "period_grain": np.full(n_cells, grain, dtype=object),
                    "period": calendar.labels[period_index],
                    "segment_type": np.full(n_cells, segment_type, dtype=object),
                    "segment": segment_names[np.tile(np.arange(n_segments), n_periods)],
                    "complete": complete[period_index],
                    "won_count": won_count,
                    "won_amount": won_amount,
                    "previous_period": previous_label,
                    "previous_won_amount": previous,
                    "growth": safe_ratio(won_amount - previous, previous),
                }
            )
    out = table_frame("revenue_growth", concat_pieces(pieces), as_of_day)
    log.info("revenue_growth: %d rows as of %s", len(out), as_of_day)
    return out


# --------------------------------------------------------------------------------------------
# ask_to_decision
# --------------------------------------------------------------------------------------------


def _folded(name: str) -> str:
    """`name` lower-cased, without accents, with runs of spaces, dashes and slashes made one space."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[\s\-_/]+", " ", plain).strip()


def is_ask_stage_name(name: str) -> bool:
    """True when a stage name says the customer has been asked to buy: a proposal, quote or
    negotiation stage, in English, Spanish, French, German, Portuguese, Italian or Dutch (accents
    and case ignored; "value proposition" stages pitch value and are not asks)."""
    folded = VALUE_PROPOSITION_PATTERN.sub(" ", _folded(name))
    return any(stem in folded for stem in ASK_STAGE_STEMS)


def ask_stages(stages: StageCatalog, configured: Collection[str] | None = None) -> dict[str, tuple[str, ...]]:
    """The "ask" stages of each pipeline: the open stages in `configured` (stage names), else the
    open stages whose name says proposal, quote or negotiation (`is_ask_stage_name`), else none:
    a pipeline without an ask stage is not measured, and `ask_to_decision` says so."""
    return {name: names for name, (names, _) in _ask_stages_with_source(stages, configured).items()}


def _ask_stages_with_source(
    stages: StageCatalog, configured: Collection[str] | None
) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """Per pipeline: its ask stages and how they were found ("configured", "name"; None: none)."""
    chosen = {}
    wanted = set(configured or ())
    for pipeline in stages:
        names = tuple(s for s in pipeline.open_stages if s in wanted)
        if names:
            chosen[pipeline.name] = (names, ASK_CONFIGURED)
            continue
        names = tuple(s for s in pipeline.open_stages if is_ask_stage_name(s))
        chosen[pipeline.name] = (names, ASK_BY_NAME if names else None)
    return chosen


def ask_stage_notes(stages: StageCatalog, configured: Collection[str] | None = None) -> dict[str, str]:
    """Per pipeline, in words: its ask stages and how they were found, or that it has none."""
    return _ask_notes(stages, _ask_stages_with_source(stages, configured))


def _ask_notes(stages: StageCatalog, chosen: dict[str, tuple[tuple[str, ...], str | None]]) -> dict[str, str]:
    notes = {}
    for pipeline in stages:
        names, source = chosen[pipeline.name]
        if source == ASK_CONFIGURED:
            notes[pipeline.name] = "ask stages " + ", ".join(names) + " ([analytics] ask_stages)"
        elif source == ASK_BY_NAME:
            notes[pipeline.name] = "ask stages " + ", ".join(names) + " (found by name)"
        else:
            notes[pipeline.name] = (
                "no ask stage: none of " + ", ".join(pipeline.open_stages) + " is named like a proposal, quote or "
                "negotiation (en, es, fr, de, pt, it, nl); name them in [analytics] ask_stages to measure this pipeline"
            )
    return notes


def ask_to_decision(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    configured_ask_stages: Collection[str] | None = None,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Time from ask to decision: one row per period x segment x outcome with at least one deal.

    The ask stages of each pipeline are `ask_stages(stages, configured_ask_stages)`. A deal counts
    when it is won or lost at the end of as_of and its history (`etl.pipeline_state.prepare_history`
    output) shows it entering an ask stage by then; its days are from the first time it entered
    any ask stage to the moment it was marked closed (closed_at; for a re-opened deal its latest
    close). Deals without stage history never show an ask entry and are not counted.
    Periods: period_grain "all" (period "all") and "quarter" (fiscal quarter of the booking date,
    `etl.bookings`).
    Segments: every segment type. Outcomes: won, lost and all (both).
    - deals: the deals counted; median_days, mean_days, p90_days: of their days;
    - note: on segment_type "pipeline" rows, the pipeline's ask stages and how they were found
      ([analytics] ask_stages, or by name); on segment_type "all" rows, the pipelines left out.
    A pipeline with deals but no ask stage (none configured, none named like one) is not guessed
    at: it gets one row (period "all", segment_type "pipeline", outcome "all") with deals 0, NULL
    days and a note saying so.
    """
    as_of_day = as_of_date(as_of)
    at = deals_as_of(deals, history, as_of, at)
    with_source = _ask_stages_with_source(stages, configured_ask_stages)
    chosen = {name: names for name, (names, _) in with_source.items()}
    notes = _ask_notes(stages, with_source)
    log.info("ask_to_decision: ask stages per pipeline %s", chosen)
    pipelines = list(chosen)
    width = max((len(p.open_stages) for p in stages), default=0) + 3
    is_ask = np.zeros((len(pipelines) + 1, width), dtype=bool)  # last row: pipelines not configured
    for i, name in enumerate(pipelines):
        for stage in chosen[name]:
            is_ask[i, stages[name].order_of(stage)] = True

    end = np.datetime64(as_of_end(as_of), "us")
    changed_at = history["changed_at"].to_numpy(dtype=TIMESTAMP)
    deal = at.history_existing
    pipe = index_in(history["pipeline"], pipelines)
    order = history["stage_order"].to_numpy(dtype="float64", na_value=np.nan)
    order = np.where(np.isnan(order) | (order < 0) | (order >= width), 0, order).astype("int64")
    entry = history["is_stage_change"].to_numpy(dtype=bool) & (changed_at <= end) & (deal >= 0)
    entry &= is_ask[np.where(pipe < 0, len(pipelines), pipe), order]
    deal, entered = deal[entry], changed_at[entry]
    # First ask entry per deal: sort by (deal, time) and keep each deal's first row.
    by_time = np.lexsort((entered, deal))
    deal, entered = deal[by_time], entered[by_time]
    first = np.ones(len(deal), dtype=bool)
    first[1:] = deal[1:] != deal[:-1]
    first_ask = np.full(len(at.frame), np.datetime64("NaT"), dtype=TIMESTAMP)
    first_ask[deal[first]] = entered[first]

    closed = (at.won | at.lost) & ~np.isnat(first_ask) & ~np.isnat(at.closed_at)
    present = set(at.frame["pipeline"].dropna().astype(str))
    unmeasured = [name for name in chosen if name in present and not chosen[name]]
    if unmeasured:
        log.warning("ask_to_decision: %s", "; ".join(f"{name}: {notes[name]}" for name in unmeasured))
    pieces = [_unmeasured_rows(unmeasured, notes)] if unmeasured else []
    if not closed.any():
        return _ask_table(pieces, notes, unmeasured, as_of_day)
    days = (at.closed_at[closed] - first_ask[closed]) / _DAY
    won = at.won[closed]
    frame = at.frame.loc[closed].reset_index(drop=True)
    quarter, quarter_names = _close_quarters(at, closed, fiscal_year_start_month)
    periods = {
        PERIOD_ALL: (np.zeros(len(days), dtype="int64"), np.array([PERIOD_ALL], dtype=object)),
        "quarter": (quarter, quarter_names),
    }
    outcome_masks = {"won": won, "lost": ~won, "all": np.ones(len(days), dtype=bool)}
    for segment_type, (segment, segment_names) in segment_codes(frame).items():
        n_segments = len(segment_names)
        for grain, (period, period_names) in periods.items():
            for outcome in OUTCOMES:
                mask = outcome_masks[outcome]
                if not mask.any():
                    continue
                values = days[mask]
                cells, groups = _compact((period * n_segments + segment)[mask], len(period_names) * n_segments)
                stats = _group_stats(groups, values, len(cells), (0.5, 0.9), np.argsort(values, kind="stable"))
                n = len(cells)
                pieces.append(
                    {
                        "period_grain": np.full(n, grain, dtype=object),
                        "period": period_names[cells // n_segments],
                        "segment_type": np.full(n, segment_type, dtype=object),
                        "segment": segment_names[cells % n_segments],
                        "outcome": np.full(n, outcome, dtype=object),
                        "deals": stats.count,
                        "median_days": stats.quantiles[:, 0],
                        "mean_days": stats.mean,
                        "p90_days": stats.quantiles[:, 1],
                    }
                )
    out = _ask_table(pieces, notes, unmeasured, as_of_day)
    log.info("ask_to_decision: %d rows from %d closed deals with an ask as of %s", len(out), len(days), as_of_day)
    return out


def _unmeasured_rows(pipelines: list[str], notes: dict[str, str]) -> dict[str, np.ndarray]:
    """One row per pipeline without an ask stage: deals 0, days NULL (the note is added later)."""
    n = len(pipelines)
    return {
        "period_grain": np.full(n, PERIOD_ALL, dtype=object),
        "period": np.full(n, PERIOD_ALL, dtype=object),
        "segment_type": np.full(n, "pipeline", dtype=object),
        "segment": np.asarray(pipelines, dtype=object),
        "outcome": np.full(n, "all", dtype=object),
        "deals": np.zeros(n, dtype="int64"),
        "median_days": np.full(n, np.nan),
        "mean_days": np.full(n, np.nan),
        "p90_days": np.full(n, np.nan),
    }


def _ask_table(
    pieces: list[dict[str, np.ndarray]], notes: dict[str, str], unmeasured: list[str], as_of_day: dt.date
) -> pd.DataFrame:
    """The ask_to_decision rows with their notes: each pipeline row says its ask stages, each "all"
    row which pipelines have none."""
    if not pieces:
        return empty_table("ask_to_decision", as_of_day)
    data = concat_pieces(pieces)
    pipeline_rows = data["segment_type"] == "pipeline"
    note = np.full(len(pipeline_rows), None, dtype=object)
    note[pipeline_rows] = [notes.get(str(name)) for name in data["segment"][pipeline_rows]]
    if unmeasured:
        note[data["segment_type"] == "all"] = "leaves out pipeline(s) without an ask stage: " + ", ".join(unmeasured)
    data["note"] = note
    return table_frame("ask_to_decision", data, as_of_day)


# --------------------------------------------------------------------------------------------
# pipeline_coverage
# --------------------------------------------------------------------------------------------


def _stage_rates(conversion: pd.DataFrame, pipelines: list[str], width: int) -> np.ndarray:
    """stage_to_won_rate per (pipeline, stage order) from the company-wide any-order funnel over
    all periods; NaN where the funnel has no rate (last row: pipelines not in `pipelines`)."""
    rows = conversion.loc[
        (conversion["period_grain"] == PERIOD_ALL)
        & (conversion["funnel_mode"] == "any_order")
        & (conversion["segment_type"] == "all")
        & (conversion["segment"] == "all")
    ]
    table = np.full((len(pipelines) + 1, width), np.nan)
    pipe = index_in(rows["pipeline"], pipelines)
    order = rows["stage_order"].to_numpy(dtype="int64")
    keep = (pipe >= 0) & (order >= 0) & (order < width)
    table[pipe[keep], order[keep]] = rows["stage_to_won_rate"].to_numpy(dtype="float64", na_value=np.nan)[keep]
    return table


def pipeline_coverage(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    conversion: pd.DataFrame,
    quotas: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    *,
    at: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Coverage and pipeline needed against quota: one row per quarter x segment.

    Quarters: the one containing as_of, the next one, and every quarter of `quotas` up to the next
    one. Segments: all/all and every (segment_type, segment) that `quotas` (`etl.quotas.load_quotas`
    output: quarter, segment_type, segment, amount) names, in every quarter. `conversion` is the
    `stage_conversion` table of the same as_of.
    - quota: the quotas amount of the quarter and segment (NULL when not set);
    - closed_won: amount of the deals won (at the end of as_of) with a booking date (`etl.bookings`)
      in the quarter, up to the end of as_of (0 for a quarter that starts after as_of);
    - remaining = quota - closed_won (NULL without a quota);
    - open_deals, open_pipeline: count and amount of the quarter's open pipeline
      (`etl.quarter_pipeline`, the definition the forecast and the waterfall share): the deals open
      at the end of as_of whose expected close date (as it stood then) falls in the quarter; for
      the current quarter also the overdue deals (expected close date already past, even in an
      earlier quarter); for a past quarter none (its deals still open are the current quarter's
      overdue deals);
    - overdue_deals, overdue_pipeline: count and amount of the overdue deals in open_pipeline
      (expected close date before the as_of day; non-zero only in the current quarter);
    - coverage = open_pipeline / remaining; NULL when remaining is NULL or not positive;
    - rated_pipeline: the part of open_pipeline in stages that have a historical stage-to-won rate
      (stage_to_won_rate of the deal's pipeline and current stage in `conversion`, period "all",
      funnel_mode any_order, segment all);
    - stage_mix_win_rate: sum of amount x that rate / rated_pipeline (the amount-weighted
      historical win rate of this open pipeline's stage mix); NULL when rated_pipeline is 0;
    - pipeline_needed = remaining / stage_mix_win_rate (0 when remaining is not positive: the quota
      is met); NULL when remaining or stage_mix_win_rate is NULL or the rate is 0;
    - pipeline_gap = pipeline_needed - open_pipeline (positive: more pipeline is needed).
    """
    as_of_day = as_of_date(as_of)
    at = deals_as_of(deals, history, as_of, at)
    quota_frame = quotas.loc[:, ["quarter", "segment_type", "segment", "amount"]].astype(
        {"quarter": str, "segment_type": str, "segment": str, "amount": "float64"}
    )
    bad = ~quota_frame["segment_type"].isin(list(SEGMENT_COLUMNS)).to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"pipeline_coverage: quotas row {row}, column segment_type: expected one of {list(SEGMENT_COLUMNS)}, "
            f"got {quota_frame['segment_type'].iloc[row]!r}"
        )
    end_ts = as_of_end(as_of)
    current = quarter_label(end_ts, fiscal_year_start_month)
    following = quarter_label(quarter_end(end_ts, fiscal_year_start_month), fiscal_year_start_month)
    following_start = period_bounds(following, fiscal_year_start_month)[0]
    quota_quarters = [
        q for q in quota_frame["quarter"].unique() if period_bounds(q, fiscal_year_start_month)[0] <= following_start
    ]
    quarters = sorted({current, following, *quota_quarters}, key=lambda q: period_bounds(q, fiscal_year_start_month)[0])
    bounds = [period_bounds(q, fiscal_year_start_month) for q in quarters]
    q_start = np.array([b[0] for b in bounds], dtype=TIMESTAMP)
    q_end = np.array([b[1] for b in bounds], dtype=TIMESTAMP)

    named = quota_frame[["segment_type", "segment"]].drop_duplicates()
    targets = pd.concat([pd.DataFrame({"segment_type": ["all"], "segment": ["all"]}), named], ignore_index=True)
    targets = targets.drop_duplicates().reset_index(drop=True)

    def quarter_of(when: np.ndarray) -> np.ndarray:
        index = np.searchsorted(q_start, when, side="right") - 1
        inside = ~np.isnat(when) & (index >= 0)
        inside[inside] &= when[inside] < q_end[index[inside]]
        return np.where(inside, index, -1)

    end = np.datetime64(end_ts, "us")
    won_quarter = np.where(at.won & (at.closed_at <= end), quarter_of(at.booked_at), -1)
    is_open = at.status == OPEN
    open_quarter = np.where(is_open, quarter_of(pipeline_dates(at.expected_close, as_of_day, fiscal_year_start_month)), -1)
    is_overdue = is_open & overdue(at.expected_close, as_of_day)

    stage_catalog_pipelines, pipe_codes = _pipeline_codes(at.frame)
    width = int(max(at.stage_order.max(initial=0), conversion["stage_order"].max() if len(conversion) else 0)) + 1
    rates = _stage_rates(conversion, stage_catalog_pipelines, width)
    rate = rates[pipe_codes, np.clip(at.stage_order, 0, width - 1)]
    rated = is_open & ~np.isnan(rate)
    weighted = np.where(rated, at.amount * np.nan_to_num(rate), 0.0)

    n_quarters = len(quarters)
    pieces = []
    for segment_type, group in targets.groupby("segment_type", sort=False):
        segment_names = group["segment"].to_numpy(dtype=object)
        position = index_in(segment_values(at.frame, segment_type), list(segment_names))
        n_segments = len(segment_names)
        n_cells = n_quarters * n_segments

        def tally(quarter: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            keep = mask & (quarter >= 0) & (position >= 0)
            cells = quarter[keep] * n_segments + position[keep]
            return np.bincount(cells, weights=None if weights is None else weights[keep], minlength=n_cells)

        everyone = np.ones(len(position), dtype=bool)
        pieces.append(
            {
                "quarter": np.asarray(quarters, dtype=object)[np.repeat(np.arange(n_quarters), n_segments)],
                "segment_type": np.full(n_cells, segment_type, dtype=object),
                "segment": segment_names[np.tile(np.arange(n_segments), n_quarters)],
                "closed_won": tally(won_quarter, everyone, at.amount),
                "open_deals": tally(open_quarter, everyone),
                "open_pipeline": tally(open_quarter, everyone, at.amount),
                "overdue_deals": tally(open_quarter, is_overdue),
                "overdue_pipeline": tally(open_quarter, is_overdue, at.amount),
                "rated_pipeline": tally(open_quarter, rated, at.amount),
                "weighted": tally(open_quarter, rated, weighted),
            }
        )
    data = concat_pieces(pieces)
    keys = pd.DataFrame({"quarter": data["quarter"], "segment_type": data["segment_type"], "segment": data["segment"]})
    quota = keys.merge(quota_frame, on=["quarter", "segment_type", "segment"], how="left", validate="one_to_one")
    quota_amount = quota["amount"].to_numpy(dtype="float64", na_value=np.nan)
    remaining = quota_amount - data["closed_won"]
    positive = remaining > 0
    stage_mix = safe_ratio(data.pop("weighted"), data["rated_pipeline"])
    needed = np.where(positive, safe_ratio(remaining, stage_mix), np.where(np.isnan(remaining), np.nan, 0.0))
    data.update(
        {
            "quota": quota_amount,
            "remaining": remaining,
            "coverage": np.where(positive, safe_ratio(data["open_pipeline"], remaining), np.nan),
            "stage_mix_win_rate": stage_mix,
            "pipeline_needed": needed,
            "pipeline_gap": needed - data["open_pipeline"],
        }
    )
    out = table_frame("pipeline_coverage", data, as_of_day)
    log.info("pipeline_coverage: %d rows (%d quarters) as of %s", len(out), n_quarters, as_of_day)
    return out


def _pipeline_codes(frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The pipelines (sorted) and each row's pipeline code."""
    pipe, names = codes(frame["pipeline"].astype("string").fillna(UNKNOWN_SEGMENT))
    return [str(n) for n in names], pipe
