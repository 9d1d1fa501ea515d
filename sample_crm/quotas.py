"""Quotas: the won revenue the simulation's parameters expect per quarter (for the company, each team
and each pipeline), and the quotas set as a stretch of it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from etl.periods import period_bounds, quarter_label, quarter_labels
from sample_crm.files import QUOTA_COLUMNS
from sample_crm.parameters import (
    ADVANCE,
    BACK,
    DAY_SECONDS,
    EPOCH_MONDAY_DAY,
    QUOTA_STRETCH,
    SKIP,
    STAY,
    WEEKS_IN_STAGE_CAP,
    WON,
    week_of_date,
)
from sample_crm.world import SampleWorld


def quotas(world: SampleWorld, stretch: float = QUOTA_STRETCH) -> pd.DataFrame:
    """Quota per quarter for the whole company, each team and each pipeline: `stretch` times
    the won revenue expected from the simulation's parameters, rounded to the thousand."""
    rows = [
        (label, kind, segment, round(stretch * value / 1000.0) * 1000)
        for label, kind, segment, value in _expected_revenue_rows(world)
    ]
    frame = pd.DataFrame(rows, columns=list(QUOTA_COLUMNS))
    return frame.astype({"amount": "int64"})


def _expected_revenue_rows(world: SampleWorld) -> list[tuple[str, str, str, float]]:
    """(quarter, segment_type, segment, expected won revenue) for every quarter of the span and
    the two after it. Expected won revenue comes from propagating the expected number of deals
    in every state week by week (created deals in, won and lost deals out) with the step
    probabilities."""
    fiscal = world.fiscal_year_start_month

    def following(label: str) -> str:
        return quarter_label(period_bounds(label, fiscal)[1], fiscal)

    labels = [quarter_label(world.start_date, fiscal)]
    while labels[-1] != quarter_label(world.end_date, fiscal):
        labels.append(following(labels[-1]))
    labels += [following(labels[-1]), following(following(labels[-1]))]
    last_day = (period_bounds(labels[-1], fiscal)[1] - pd.Timedelta(days=1)).date()
    weeks = np.arange(world.first_week, week_of_date(last_day) + 1)

    created = world.creation_weights(weeks)
    won = _won_by_week(world, weeks, created)
    revenue = won * world.mean_amount()[None, :]
    thursdays = pd.Series(pd.to_datetime(weeks * 7 + EPOCH_MONDAY_DAY + 3, unit="D"))
    week_quarter = quarter_labels(thursdays, fiscal).to_numpy(dtype=object)

    team_share = world.team_class_share()
    class_share = team_share.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        team_given_class = np.where(class_share > 0, team_share / class_share, 0.0)
    pipeline_of_class = world.class_parts(np.arange(world.n_classes))[0]
    rows = []
    for label in labels:
        in_quarter = week_quarter == label
        by_class = revenue[in_quarter].sum(axis=0)
        groups = [("all", "all", by_class.sum())]
        groups += [("team", name, float(by_class @ team_given_class[t])) for t, name in enumerate(world.teams["team"])]
        groups += [
            ("pipeline", name, float(by_class[pipeline_of_class == p].sum())) for p, name in enumerate(world.pipelines)
        ]
        rows += [(label, kind, segment, value) for kind, segment, value in groups]
    return rows


def _won_by_week(world: SampleWorld, weeks: np.ndarray, created: np.ndarray) -> np.ndarray:
    """Expected deals won in each of `weeks` (consecutive), per effect class, of the deals created
    in those weeks (`created`: each week's relative number of creations, as
    `SampleWorld.creation_weights` gives them, scaled so the simulated span holds `n_deals`):
    the expected number of deals in every state propagated week by week (created deals in, won
    and lost deals out) with the step probabilities. Shape (weeks, classes)."""
    in_span = world.creation_weights(np.arange(world.first_week, world.last_week + 1)).sum()
    class_share = world.team_class_share().sum(axis=0)
    inflow = world.n_deals * (np.asarray(created, dtype="float64") / in_span)[:, None] * class_share[None, :]
    won = np.zeros((len(weeks), world.n_classes))
    mass = np.zeros((world.n_classes, world.max_open_stages, WEEKS_IN_STAGE_CAP + 1))
    for i, week in enumerate(weeks):
        p = world.transition_probabilities(int(week))
        won[i] = (mass * p[WON]).sum(axis=(1, 2))
        moved = np.zeros_like(mass)
        entering = (mass * p[ADVANCE]).sum(axis=2)
        moved[:, 1:, 0] += entering[:, :-1]
        entering = (mass * p[SKIP]).sum(axis=2)
        moved[:, 2:, 0] += entering[:, :-2]
        entering = (mass * p[BACK]).sum(axis=2)
        moved[:, :-1, 0] += entering[:, 1:]
        staying = mass * p[STAY]
        moved[:, :, 1:] += staying[:, :, :-1]
        moved[:, :, WEEKS_IN_STAGE_CAP] += staying[:, :, WEEKS_IN_STAGE_CAP]
        moved[:, 0, 0] += inflow[i]
        mass = moved
    return won


def _business_day_shares(world: SampleWorld, weeks: np.ndarray, first_day: dt.date, last_day: dt.date) -> np.ndarray:
    """Share of each week's changes (`SampleWorld.change_share_before`: spread over the week's
    business days) that happen on the days `first_day` to `last_day`."""
    def midnight_us(day: dt.date) -> int:
        return (day - dt.date(1970, 1, 1)).days * DAY_SECONDS * 1_000_000

    weeks = np.asarray(weeks, dtype=np.int64)
    instants = np.ones(len(weeks), dtype=np.int64)
    before_first = world.change_share_before(weeks, instants * midnight_us(first_day))
    if last_day >= dt.date.max:
        return 1.0 - before_first
    return world.change_share_before(weeks, instants * midnight_us(last_day + dt.timedelta(days=1))) - before_first


def expected_new_deal_wins(world: SampleWorld, start: dt.date, end: dt.date) -> np.ndarray:
    """The number of deals the simulation's parameters expect to be created on or after `start`
    and won before `end` (exclusive), per effect class: the deals not yet created that a forecast
    made at the start of the window [`start`, `end`) should expect to win inside it. Creations
    and wins spread evenly over a week's business days, so a week that straddles `start` or `end`
    counts with the share of its business days inside."""
    last_day = end - dt.timedelta(days=1)
    weeks = np.arange(week_of_date(start), week_of_date(last_day) + 1)
    created = world.creation_weights(weeks) * _business_day_shares(world, weeks, start, dt.date.max)
    won = _won_by_week(world, weeks, created) * _business_day_shares(world, weeks, start, last_day)[:, None]
    return won.sum(axis=0)


def expected_new_deal_revenue(world: SampleWorld, start: dt.date, end: dt.date) -> float:
    """The won revenue (whole company) of `expected_new_deal_wins`: each class's expected wins
    times its expected amount."""
    return float(expected_new_deal_wins(world, start, end) @ world.mean_amount())


def expected_won_revenue(world: SampleWorld) -> pd.DataFrame:
    """The won revenue the simulation's parameters expect per quarter (booked in the week of
    the win), for the whole company, each team and each pipeline, over the quota quarters:
    columns quarter, segment_type, segment, amount (unrounded)."""
    frame = pd.DataFrame(_expected_revenue_rows(world), columns=list(QUOTA_COLUMNS))
    return frame.astype({"amount": "float64"})
