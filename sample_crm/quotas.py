"""Quotas: the won revenue the simulation's parameters expect per quarter (for the company, each team
and each pipeline), and the quotas set as a stretch of it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl.periods import period_bounds, quarter_label, quarter_labels
from sample_crm.files import QUOTA_COLUMNS
from sample_crm.parameters import (
    ADVANCE,
    BACK,
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
    in_span = world.creation_weights(np.arange(world.first_week, world.last_week + 1)).sum()
    team_share = world.team_class_share()
    class_share = team_share.sum(axis=0)
    inflow = world.n_deals * (created / in_span)[:, None] * class_share[None, :]
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
    revenue = won * world.mean_amount()[None, :]
    thursdays = pd.Series(pd.to_datetime(weeks * 7 + EPOCH_MONDAY_DAY + 3, unit="D"))
    week_quarter = quarter_labels(thursdays, fiscal).to_numpy(dtype=object)

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


def expected_won_revenue(world: SampleWorld) -> pd.DataFrame:
    """The won revenue the simulation's parameters expect per quarter (booked in the week of
    the win), for the whole company, each team and each pipeline, over the quota quarters:
    columns quarter, segment_type, segment, amount (unrounded)."""
    frame = pd.DataFrame(_expected_revenue_rows(world), columns=list(QUOTA_COLUMNS))
    return frame.astype({"amount": "float64"})
