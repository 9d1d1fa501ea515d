"""The coaching tables (rep_funnel, deal_value_spread, product_mix, revenue_growth, ask_to_decision,
pipeline_coverage), checked on a tiny hand-built CRM whose every expected number is worked out by
hand below.

Pipeline P: open stages Discovery (1), Proposal (2), Negotiation (3), then Closed Won / Closed Lost.
By name, the "ask" stages are Proposal and Negotiation. The run is for as_of 2024-03-15 (Q1 2024;
everything up to 2024-03-15 23:59:59.999999 counts). Owners o1 and o2 are in teams T1 and T2; o3
has no team. Amounts are in the reporting currency.

deal owner product  amount  history
d1   o1    Alpha      1000  2023-10-02 Discovery, 10-20 Proposal, 11-10 won          (won 2023-Q4, ask 21 days)
d2   o1    Beta       3000  2023-11-01 Discovery, 11-15 Negotiation, 2024-01-14 lost (ask 60 days)
d3   o2    Alpha      2000  2023-12-05 Discovery, 2024-01-10 Proposal, 01-20 Negotiation, 02-09 won (ask 30 days)
d4   o2    Beta        500  2024-01-03 Discovery, 01-25 lost                          (never asked)
d5   o1    Alpha  4000->5000 2024-01-08 Discovery (close 03-31), 02-01 Proposal, 03-01 amount 5000: open
d6   o2    Beta   1500->9999 2024-02-10 Discovery (close 05-15), 03-20 amount 9999 (after as_of): open, 1500
d7   o1    Alpha      6000  2024-02-12 Discovery (close 04-30), 03-01 Negotiation (close 03-28),
                            03-20 won (after as_of): open in Negotiation at as_of
d8   o2    Beta        800  no history; created 2023-12-01, won 2024-03-05
d9   o1    Alpha       700  created 2024-03-20, after as_of: ignored everywhere
d10  o3    (none)     1200  2024-02-01 Proposal (entered at creation), 02-20 won       (ask 19 days)
d11  o1    Beta        700  2023-12-10 Discovery, 2024-01-05 Proposal, 02-15 lost      (ask 41 days)

At as_of: won d1 (1000), d3 (2000), d8 (800), d10 (1200); lost d2, d4, d11; open d5 (Proposal,
5000, close 03-31), d6 (Discovery, 1500, close 05-15), d7 (Negotiation, 6000, close 03-28).
"""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from etl.analytics.coaching import (
    ask_stages,
    ask_to_decision,
    deal_value_spread,
    pipeline_coverage,
    product_mix,
    rep_funnel,
    revenue_growth,
)
from etl.analytics.funnel import stage_conversion
from etl.analytics.kernel import deals_as_of, deals_at_as_of
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog
from etl.tables import TABLES

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 15)
WON, LOST = "Closed Won", "Closed Lost"
DISC, PROP, NEG = "Discovery", "Proposal", "Negotiation"
CATALOG = StageCatalog([PipelineStages("P", (DISC, PROP, NEG), WON, LOST)])
TEAMS = {"o1": "T1", "o2": "T2", "o3": None}


def _frame(rows: list[dict], columns: dict[str, str], defaults: dict, name: str) -> pd.DataFrame:
    """A canonical frame from the columns a test cares about; every other column gets a default."""
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = defaults.get(col, pd.NA)
    return conform(frame, columns, name)


def _deals() -> pd.DataFrame:
    def deal(deal_id, owner, product, created, stage, status, amount, closed=None, has_history=True):
        return dict(
            deal_id=deal_id, owner=owner, team=TEAMS[owner], product=product, created_at=T(created), stage=stage,
            status=status, amount=amount, amount_reporting=amount, closed_at=T(closed) if closed else pd.NaT,
            has_history=has_history,
        )

    rows = [
        deal("d1", "o1", "Alpha", "2023-10-02", WON, "won", 1000.0, "2023-11-10"),
        deal("d2", "o1", "Beta", "2023-11-01", LOST, "lost", 3000.0, "2024-01-14"),
        deal("d3", "o2", "Alpha", "2023-12-05", WON, "won", 2000.0, "2024-02-09"),
        deal("d4", "o2", "Beta", "2024-01-03", LOST, "lost", 500.0, "2024-01-25"),
        deal("d5", "o1", "Alpha", "2024-01-08", PROP, "open", 5000.0),
        deal("d6", "o2", "Beta", "2024-02-10", DISC, "open", 9999.0),
        deal("d7", "o1", "Alpha", "2024-02-12", WON, "won", 6000.0, "2024-03-20"),
        deal("d8", "o2", "Beta", "2023-12-01", WON, "won", 800.0, "2024-03-05", has_history=False),
        deal("d9", "o1", "Alpha", "2024-03-20", DISC, "open", 700.0),
        deal("d10", "o3", None, "2024-02-01", WON, "won", 1200.0, "2024-02-20"),
        deal("d11", "o1", "Beta", "2023-12-10", LOST, "lost", 700.0, "2024-02-15"),
    ]
    defaults = dict(
        source_system="salesforce", source_file="Opportunity.csv", source_row=0, pipeline="P", currency="USD",
        expected_close_date=T("2024-06-30"), push_count=0,
    )
    return _frame(rows, DEAL_COLUMNS, defaults, "deals")


def _history() -> pd.DataFrame:
    def row(deal_id, changed, stage, amount, close="2024-06-30"):
        return dict(
            deal_id=deal_id, changed_at=T(changed), stage=stage, amount=amount, amount_reporting=amount,
            expected_close_date=T(close),
        )

    rows = [
        row("d1", "2023-10-02", DISC, 1000.0), row("d1", "2023-10-20", PROP, 1000.0), row("d1", "2023-11-10", WON, 1000.0),
        row("d2", "2023-11-01", DISC, 3000.0), row("d2", "2023-11-15", NEG, 3000.0), row("d2", "2024-01-14", LOST, 3000.0),
        row("d3", "2023-12-05", DISC, 2000.0), row("d3", "2024-01-10", PROP, 2000.0), row("d3", "2024-01-20", NEG, 2000.0),
        row("d3", "2024-02-09", WON, 2000.0),
        row("d4", "2024-01-03", DISC, 500.0), row("d4", "2024-01-25", LOST, 500.0),
        row("d5", "2024-01-08", DISC, 4000.0, "2024-03-31"), row("d5", "2024-02-01", PROP, 4000.0, "2024-03-31"),
        row("d5", "2024-03-01", PROP, 5000.0, "2024-03-31"),
        row("d6", "2024-02-10", DISC, 1500.0, "2024-05-15"), row("d6", "2024-03-20", DISC, 9999.0, "2024-05-15"),
        row("d7", "2024-02-12", DISC, 6000.0, "2024-04-30"), row("d7", "2024-03-01", NEG, 6000.0, "2024-03-28"),
        row("d7", "2024-03-20", WON, 6000.0, "2024-03-28"),
        row("d9", "2024-03-20", DISC, 700.0),
        row("d10", "2024-02-01", PROP, 1200.0), row("d10", "2024-02-20", WON, 1200.0),
        row("d11", "2023-12-10", DISC, 700.0), row("d11", "2024-01-05", PROP, 700.0), row("d11", "2024-02-15", LOST, 700.0),
    ]
    for i, r in enumerate(rows):
        r["source_row"] = i + 2
    return _frame(rows, DEAL_HISTORY_COLUMNS, dict(source_file="OpportunityHistory.csv"), "history")


@pytest.fixture(scope="module")
def crm():
    deals = _deals()
    return deals, prepare_history(deals, _history(), CATALOG)


@pytest.fixture(scope="module")
def at(crm):
    return deals_at_as_of(*crm, AS_OF)


def _rows(frame: pd.DataFrame, **where) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for col, value in where.items():
        mask &= (frame[col] == value).fillna(False).to_numpy(dtype=bool)
    return frame.loc[mask]


def _one(frame: pd.DataFrame, **where) -> pd.Series:
    rows = _rows(frame, **where)
    assert len(rows) == 1, f"expected one row for {where}, got {len(rows)}"
    return rows.iloc[0]


def _check(row: pd.Series, **expected) -> None:
    for column, value in expected.items():
        if value is None:
            assert pd.isna(row[column]), f"{column}: expected NULL, got {row[column]}"
        elif isinstance(value, float):
            assert row[column] == pytest.approx(value), f"{column}: expected {value}, got {row[column]}"
        else:
            assert row[column] == value, f"{column}: expected {value!r}, got {row[column]!r}"


def _shaped_like(frame: pd.DataFrame, table: str) -> None:
    assert list(frame.columns) == TABLES[table].columns
    assert (frame["as_of"] == AS_OF).all()
    key = [c.name for c in TABLES[table].table.primary_key.columns]
    assert not frame.duplicated(key).any(), f"{table}: key {key} repeats"


# ------------------------------------------------------------------------------------------------
# deals_at_as_of (the frame the tables share) and its arrays


def test_deals_at_as_of_is_the_state_at_the_end_of_as_of(crm, at):
    now = deals_as_of(*crm, AS_OF, at)
    state = pd.DataFrame(
        {
            "deal_id": now.frame["deal_id"].astype(str),
            "status": now.status,
            "amount": now.amount,
            "stage_order": now.stage_order,
            "expected_close": now.expected_close,
        }
    ).set_index("deal_id")
    # d9 was created after as_of; d7 is still open in Negotiation (3); d6's later amount is not yet known.
    assert "d9" not in state.index and len(state) == 10
    assert state.loc["d7", "stage_order"] == 3 and state.loc["d7", "expected_close"] == T("2024-03-28")
    assert state.loc["d5", "amount"] == 5000.0 and state.loc["d5", "stage_order"] == 2
    assert state.loc["d6", "amount"] == 1500.0 and state.loc["d6", "stage_order"] == 1
    assert list(state.loc[["d1", "d3", "d8", "d10"], "status"].unique()) == [1]  # won
    with pytest.raises(ValueError, match="the frame is for 2024-03-15, expected 2024-03-16"):
        deal_value_spread(*crm, dt.date(2024, 3, 16), at=deals_at_as_of(*crm, AS_OF))


# ------------------------------------------------------------------------------------------------
# rep_funnel: on a hand-built stage_conversion frame


def _conversion_row(owner, stage_order, reached, advanced, decided, won, closed, **overrides):
    row = dict(
        as_of=AS_OF, pipeline="P", period_grain="all", period="all", segment_type="owner", segment=owner,
        funnel_mode="any_order", stage=(DISC, PROP, NEG)[stage_order - 1], stage_order=stage_order,
        reached=reached, advanced=advanced, won=won, lost_here=0, decided=decided, closed=closed,
        next_step_rate=advanced / decided if decided else np.nan,
        stage_to_won_rate=won / closed if closed else np.nan, drop_off_rate=np.nan,
    )
    row.update(overrides)
    return row


def _conversion() -> pd.DataFrame:
    # Reps of T1: r1, r2, r3, r5; of T2: r4; r7 has no team; "(unknown)" are deals without owner.
    rows = [
        # S1 Discovery      reached adv decided won closed  -> next_step, stage_to_won
        _conversion_row("r1", 1, 10, 8, 10, 4, 8),  # 0.8, 0.5
        _conversion_row("r2", 1, 6, 3, 6, 3, 6),  # 0.5, 0.5
        _conversion_row("r5", 1, 10, 4, 10, 1, 8),  # 0.4, 0.125
        _conversion_row("r3", 1, 3, 1, 3, 1, 3),  # 1/3, 1/3  (3 < 4 reached: not eligible)
        _conversion_row("r4", 1, 7, 7, 7, 5, 7),  # 1.0, 5/7
        _conversion_row("r7", 1, 5, 5, 5, 5, 5),  # 1.0, 1.0
        _conversion_row("(unknown)", 1, 9, 0, 9, 0, 9),  # 0.0, 0.0 (never eligible)
        # S2 Proposal
        _conversion_row("r1", 2, 8, 4, 8, 4, 8),  # 0.5, 0.5
        _conversion_row("r2", 2, 3, 3, 3, 3, 3),  # 1.0, 1.0 (not eligible)
        _conversion_row("r5", 2, 4, 1, 4, 1, 4),  # 0.25, 0.25
        _conversion_row("r3", 2, 1, 1, 1, 1, 1),  # not eligible
        _conversion_row("r4", 2, 7, 5, 7, 5, 7),  # 5/7, 5/7
        _conversion_row("r7", 2, 5, 5, 5, 5, 5),
        _conversion_row("(unknown)", 2, 0, 0, 0, 0, 0),  # NULL rates
        # S3 Negotiation
        _conversion_row("r1", 3, 4, 4, 4, 4, 4),  # 1.0, 1.0
        _conversion_row("r2", 3, 3, 3, 3, 3, 3),
        _conversion_row("r5", 3, 1, 1, 1, 1, 1),
        _conversion_row("r3", 3, 1, 1, 1, 1, 1),
        _conversion_row("r4", 3, 5, 5, 5, 5, 5),
        _conversion_row("r7", 3, 5, 5, 5, 5, 5),
        _conversion_row("(unknown)", 3, 0, 0, 0, 0, 0),
        # Rows of other grains, modes and segment types are not the reps' funnels.
        _conversion_row("r1", 1, 2, 0, 2, 0, 2, period_grain="quarter", period="2024-Q1"),
        _conversion_row("r1", 1, 2, 0, 2, 0, 2, funnel_mode="in_order"),
        _conversion_row("all", 1, 99, 0, 99, 0, 99, segment_type="all"),
    ]
    return pd.DataFrame(rows)


def _rep_deals() -> pd.DataFrame:
    """Each rep's deals, for their team: r5 has two T1 deals by as_of (and two T2 deals created
    later, which do not count); r3 has one T1 and one T2 deal (a tie: T1, first alphabetically);
    r7's deals have no team; the owner-less deal is in T2."""
    rows = []
    for owner, team, created in [
        ("r1", "T1", "2024-01-01"), ("r1", "T1", "2024-02-01"), ("r2", "T1", "2024-01-01"),
        ("r5", "T1", "2024-01-01"), ("r5", "T1", "2024-01-02"), ("r5", "T2", "2024-04-01"), ("r5", "T2", "2024-04-02"),
        ("r3", "T2", "2024-01-01"), ("r3", "T1", "2024-01-02"), ("r4", "T2", "2024-01-01"), ("r7", None, "2024-01-01"),
        (None, "T2", "2024-01-01"),
    ]:
        rows.append(dict(deal_id=f"x{len(rows)}", owner=owner, team=team, created_at=T(created), stage=DISC, status="open"))
    defaults = dict(source_system="salesforce", source_row=0, pipeline="P", push_count=0, has_history=True)
    return _frame(rows, DEAL_COLUMNS, defaults, "deals")


@pytest.fixture(scope="module")
def reps():
    return rep_funnel(_conversion(), _rep_deals(), AS_OF, min_reached=4)


def test_rep_funnel_shape_and_teams(reps):
    _shaped_like(reps, "rep_funnel")
    # 7 owners (r1, r2, r3, r4, r5, r7, (unknown)) x 3 stages; the distractor rows add nothing.
    assert len(reps) == 21
    teams = reps.drop_duplicates("owner").set_index("owner")["team"].to_dict()
    assert teams == {"(unknown)": "T2", "r1": "T1", "r2": "T1", "r3": "T1", "r4": "T2", "r5": "T1", "r7": "(unknown)"}
    _check(_one(reps, owner="r1", stage=DISC), reached=10, advanced=8, decided=10, won=4, closed=8,
           next_step_rate=0.8, stage_to_won_rate=0.5, stage_order=1)


def test_rep_funnel_team_medians_count_eligible_named_reps_only(reps):
    # S1, T1 eligible (reached >= 4): r1 0.8, r2 0.5, r5 0.4 -> median 0.5 (r3's 1/3 would make it 0.45).
    # Stage-to-won: 0.5, 0.5, 0.125 -> median 0.5.
    for owner, diff, won_diff in [("r1", 0.3, 0.0), ("r2", 0.0, 0.0), ("r5", -0.1, -0.375)]:
        _check(
            _one(reps, owner=owner, stage=DISC), eligible=True, team_reps=3, team_median_next_step_rate=0.5,
            team_median_stage_to_won_rate=0.5, next_step_rate_vs_team=diff, stage_to_won_rate_vs_team=won_diff,
        )
    # r3 is below the minimum: the team median is shown, its own difference is not.
    _check(_one(reps, owner="r3", stage=DISC), eligible=False, team_reps=3, team_median_next_step_rate=0.5,
           next_step_rate_vs_team=None)
    # T2 at S1: r4 alone (the owner-less deals' 0.0 does not count) -> median 1.0, difference 0.
    _check(_one(reps, owner="r4", stage=DISC), team_reps=1, team_median_next_step_rate=1.0,
           team_median_stage_to_won_rate=5 / 7, next_step_rate_vs_team=0.0)
    _check(_one(reps, owner="(unknown)", stage=DISC), eligible=False, team="T2", team_median_next_step_rate=1.0,
           next_step_rate_vs_team=None)
    # S2, T1 eligible: r1 0.5 and r5 0.25 (r2 reached 3) -> median 0.375; r1 +0.125, r5 -0.125.
    _check(_one(reps, owner="r1", stage=PROP), team_reps=2, team_median_next_step_rate=0.375,
           next_step_rate_vs_team=0.125, team_median_stage_to_won_rate=0.375, stage_to_won_rate_vs_team=0.125)
    _check(_one(reps, owner="r5", stage=PROP), team_reps=2, next_step_rate_vs_team=-0.125)
    # S3, T1: only r1 (reached 4) -> median 1.0. The owner-less S2/S3 rows have NULL rates.
    _check(_one(reps, owner="r1", stage=NEG), team_reps=1, team_median_next_step_rate=1.0, next_step_rate_vs_team=0.0)
    _check(_one(reps, owner="(unknown)", stage=PROP), next_step_rate=None, stage_to_won_rate=None)
    # r7 has no team: its own "(unknown)" team of one.
    _check(_one(reps, owner="r7", stage=DISC), team="(unknown)", team_reps=1, next_step_rate_vs_team=0.0)


def test_rep_funnel_flags_the_weakest_stage(reps):
    # r5: S1 -0.1, S2 -0.125 -> S2 is the weakest. r1 (+0.3, +0.125, 0), r2 (0), r4, r7 (0): none below 0.
    flagged = reps.loc[reps["is_weakest_stage"], ["owner", "stage"]].values.tolist()
    assert flagged == [["r5", PROP]]


def test_rep_funnel_default_minimum_and_errors():
    default = rep_funnel(_conversion(), _rep_deals(), AS_OF)
    # With the default minimum of 5 reached deals r5 is still eligible at S1 (10) but not at S2 (4):
    # S2 T1 median = r1's 0.5 alone, so nothing of r5 is below its team at S2, and at S1 it is -0.1.
    _check(_one(default, owner="r5", stage=PROP), eligible=False, team_reps=1, team_median_next_step_rate=0.5)
    assert default.loc[default["is_weakest_stage"], ["owner", "stage"]].values.tolist() == [["r5", DISC]]
    with pytest.raises(KeyError, match="conversion lacks column"):
        rep_funnel(_conversion().drop(columns=["decided"]), _rep_deals(), AS_OF)
    with pytest.raises(ValueError, match="min_reached must be at least 1"):
        rep_funnel(_conversion(), _rep_deals(), AS_OF, min_reached=0)


def test_rep_funnel_reads_the_stage_conversion_table(crm):
    deals, history = crm
    frame = rep_funnel(stage_conversion(deals, history, CATALOG, AS_OF), deals, AS_OF, min_reached=1)
    _shaped_like(frame, "rep_funnel")
    # o1's deals at as_of: d1, d2, d5, d7, d11 all reached Discovery and all went further
    # (d1 won, d2 Negotiation, d5 Proposal, d7 Negotiation, d11 Proposal): reached 5, advanced 5.
    _check(_one(frame, owner="o1", stage=DISC), team="T1", reached=5, advanced=5, decided=5, next_step_rate=1.0)


# ------------------------------------------------------------------------------------------------
# deal_value_spread


@pytest.fixture(scope="module")
def spread(crm, at):
    return deal_value_spread(*crm, AS_OF, at=at)


def test_deal_value_spread_company(spread):
    _shaped_like(spread, "deal_value_spread")
    # Won at as_of: 1000 (d1), 2000 (d3), 800 (d8), 1200 (d10); sorted 800, 1000, 1200, 2000.
    # mean 5000 / 4 = 1250; median at position 1.5 = 1100; p10 at 0.3: 800 + 0.3 x 200 = 860;
    # p90 at 2.7: 1200 + 0.7 x 800 = 1760; squared deviations 450², 250², 50², 750² = 830,000 -> / 3.
    std = math.sqrt(830_000 / 3)
    _check(
        _one(spread, period_grain="all", segment_type="all"), period="all", segment="all", won_count=4,
        won_amount=5000.0, mean_value=1250.0, median_value=1100.0, p10_value=860.0, p90_value=1760.0,
        min_value=800.0, max_value=2000.0, std_value=std, cv=std / 1250,
    )
    # 2024-Q1: 2000, 800, 1200 -> mean 4000 / 3; sorted 800, 1200, 2000: median 1200,
    # p10 at 0.2: 880, p90 at 1.8: 1200 + 0.8 x 800 = 1840; deviations 2000/3, -1600/3, -400/3.
    mean = 4000 / 3
    std_q1 = math.sqrt(((2000 / 3) ** 2 + (1600 / 3) ** 2 + (400 / 3) ** 2) / 2)
    _check(
        _one(spread, period="2024-Q1", segment_type="all"), won_count=3, won_amount=4000.0, mean_value=mean,
        median_value=1200.0, p10_value=880.0, p90_value=1840.0, std_value=std_q1, cv=std_q1 / mean,
    )
    # 2023-Q4: d1 alone; a single deal has no standard deviation.
    _check(_one(spread, period="2023-Q4", segment_type="all"), won_count=1, mean_value=1000.0, median_value=1000.0,
           p10_value=1000.0, std_value=None, cv=None)


def test_deal_value_spread_segments(spread):
    # o2 won 2000 and 800: mean 1400, p10 800 + 0.1 x 1200 = 920, p90 1880, std sqrt(600² + 600²).
    _check(_one(spread, period="all", segment_type="owner", segment="o2"), won_count=2, mean_value=1400.0,
           median_value=1400.0, p10_value=920.0, p90_value=1880.0, std_value=math.sqrt(720_000))
    # d10 has no team and no product.
    _check(_one(spread, period="all", segment_type="team", segment="(unknown)"), won_count=1, won_amount=1200.0)
    _check(_one(spread, period="all", segment_type="product", segment="(unknown)"), won_count=1, won_amount=1200.0)
    # Rows only where something was won: o1 2023-Q4, o2 2024-Q1, o3 2024-Q1 (and the three "all" rows).
    owners = _rows(spread, segment_type="owner")
    assert sorted(zip(owners["period"], owners["segment"])) == [
        ("2023-Q4", "o1"), ("2024-Q1", "o2"), ("2024-Q1", "o3"), ("all", "o1"), ("all", "o2"), ("all", "o3"),
    ]


# ------------------------------------------------------------------------------------------------
# product_mix


def test_product_mix(crm, at):
    mix = product_mix(*crm, AS_OF, at=at)
    _shaped_like(mix, "product_mix")
    # Months 2023-10 .. 2024-03 (6) and quarters 2023-Q4, 2024-Q1 (2), x products (unknown), Alpha, Beta.
    assert len(mix) == (6 + 2) * 3
    # 2023-Q4 created: Alpha d1 1000 + d3 2000; Beta d2 3000 + d8 800 + d11 700. Won: d1 (Alpha) only.
    _check(_one(mix, period="2023-Q4", product="Alpha"), created_count=2, created_amount=3000.0, won_count=1,
           won_amount=1000.0, period_won_amount=1000.0, won_share=1.0)
    _check(_one(mix, period="2023-Q4", product="Beta"), created_count=3, created_amount=4500.0, won_count=0,
           won_amount=0.0, won_share=0.0)
    # 2024-Q1 created: Alpha d5 5000 + d7 6000 (amounts at as_of); Beta d4 500 + d6 1500 (not 9999);
    # (unknown) d10 1200. Won 4000: Alpha d3 2000 (0.5), Beta d8 800 (0.2), (unknown) d10 1200 (0.3).
    for product, created, created_amount, won, share in [
        ("Alpha", 2, 11000.0, 2000.0, 0.5), ("Beta", 2, 2000.0, 800.0, 0.2), ("(unknown)", 1, 1200.0, 1200.0, 0.3),
    ]:
        _check(_one(mix, period="2024-Q1", product=product), created_count=created, created_amount=created_amount,
               won_amount=won, won_count=1, period_won_amount=4000.0, won_share=share)
    # February 2024: won d3 (Alpha 2000) and d10 ((unknown) 1200) -> Alpha 2000 / 3200 = 0.625.
    _check(_one(mix, period="2024-02", product="Alpha"), created_count=1, created_amount=6000.0, won_share=0.625)
    # October 2023: nothing won, so no share; January 2024 likewise.
    _check(_one(mix, period="2023-10", product="Alpha"), created_count=1, period_won_amount=0.0, won_share=None)
    _check(_one(mix, period="2024-01", product="Beta"), created_count=1, created_amount=500.0, won_share=None)


# ------------------------------------------------------------------------------------------------
# revenue_growth


def test_revenue_growth(crm, at):
    growth = revenue_growth(*crm, AS_OF, at=at)
    _shaped_like(growth, "revenue_growth")
    # 14 segments: all, pipeline P, owners o1 o2 o3, teams T1 T2 (unknown), products (unknown) Alpha
    # Beta, and (unknown) region, lead source and deal type; x (6 months + 2 quarters).
    assert len(growth) == 14 * 8
    _check(_one(growth, period="2023-Q4", segment_type="all"), complete=True, won_count=1, won_amount=1000.0,
           previous_period=None, previous_won_amount=None, growth=None)
    # 2024-Q1: 4000 against 1000 -> +300%; as_of 03-15 is not the quarter's last day.
    _check(_one(growth, period="2024-Q1", segment_type="all"), complete=False, won_count=3, won_amount=4000.0,
           previous_period="2023-Q4", previous_won_amount=1000.0, growth=3.0)
    # Months: 2023-11 1000, 2023-12 0 (-100%), 2024-01 0 (previous 0: NULL), 2024-02 3200 (NULL),
    # 2024-03 800 ((800 - 3200) / 3200 = -0.75).
    expected = {"2023-10": (0.0, None), "2023-11": (1000.0, None), "2023-12": (0.0, -1.0), "2024-01": (0.0, None),
                "2024-02": (3200.0, None), "2024-03": (800.0, -0.75)}
    for month, (amount, rate) in expected.items():
        _check(_one(growth, period=month, segment_type="all"), won_amount=amount, growth=rate)
    _check(_one(growth, period="2024-03", segment_type="all"), complete=False, previous_period="2024-02")
    # o1 won 1000 in Q4 and nothing in Q1: -100%; o2 won nothing in Q4: no growth for Q1's 2800.
    _check(_one(growth, period="2024-Q1", segment_type="owner", segment="o1"), won_amount=0.0, growth=-1.0)
    _check(_one(growth, period="2024-Q1", segment_type="owner", segment="o2"), won_amount=2800.0,
           previous_won_amount=0.0, growth=None)


# ------------------------------------------------------------------------------------------------
# ask_to_decision


def test_ask_stages_configured_or_by_name_never_guessed():
    catalog = StageCatalog(
        [
            PipelineStages("P", (DISC, PROP, NEG)),
            PipelineStages("Q", ("Intro", "Demo", "Trial")),
            PipelineStages("R", ("Only",)),
            PipelineStages("S", ("Call", "Price quote", "Contract")),
        ]
    )
    # Q and R have no stage named like an ask: none is guessed (ask_to_decision says so).
    assert ask_stages(catalog) == {"P": (PROP, NEG), "Q": (), "R": (), "S": ("Price quote",)}
    assert ask_stages(catalog, ["Demo", NEG]) == {"P": (NEG,), "Q": ("Demo",), "R": (), "S": ("Price quote",)}


def test_ask_to_decision(crm, at):
    asks = ask_to_decision(*crm, CATALOG, AS_OF, at=at)
    _shaped_like(asks, "ask_to_decision")
    # First ask entry -> close: d1 10-20 -> 11-10 = 21 days (won, 2023-Q4); d2 11-15 -> 01-14 = 60 (lost);
    # d3 01-10 -> 02-09 = 30 (won); d10 02-01 -> 02-20 = 19 (won); d11 01-05 -> 02-15 = 41 (lost).
    # d4 never asked, d7 is open at as_of, d8 has no history.
    # all: 19, 21, 30, 41, 60 -> median 30, mean 171 / 5, p90 at 3.6: 41 + 0.6 x 19 = 52.4.
    _check(_one(asks, period="all", segment_type="all", outcome="all"), deals=5, median_days=30.0,
           mean_days=34.2, p90_days=52.4)
    # won: 19, 21, 30 -> median 21, mean 70 / 3, p90 at 1.8: 21 + 0.8 x 9 = 28.2.
    _check(_one(asks, period="all", segment_type="all", outcome="won"), deals=3, median_days=21.0,
           mean_days=70 / 3, p90_days=28.2)
    # lost: 41, 60 -> median 50.5, p90 at 0.9: 41 + 0.9 x 19 = 58.1.
    _check(_one(asks, period="all", segment_type="all", outcome="lost"), deals=2, median_days=50.5,
           mean_days=50.5, p90_days=58.1)
    # 2024-Q1 (by close date): 19, 30, 41, 60 -> median 35.5, mean 37.5, p90 at 2.7: 41 + 0.7 x 19 = 54.3.
    _check(_one(asks, period="2024-Q1", segment_type="all", outcome="all"), deals=4, median_days=35.5,
           mean_days=37.5, p90_days=54.3)
    _check(_one(asks, period="2023-Q4", segment_type="all", outcome="won"), deals=1, median_days=21.0)
    assert _rows(asks, period="2023-Q4", segment_type="all", outcome="lost").empty
    # o1's asked deals: d1 (21, won), d2 (60, lost), d11 (41, lost).
    _check(_one(asks, period="all", segment_type="owner", segment="o1", outcome="all"), deals=3,
           median_days=41.0, mean_days=122 / 3)


def test_ask_to_decision_with_configured_stage(crm, at):
    # Only Negotiation: d2 (11-15 -> 01-14, 60 days) and d3 (01-20 -> 02-09, 20 days) asked.
    asks = ask_to_decision(*crm, CATALOG, AS_OF, configured_ask_stages=[NEG], at=at)
    _check(_one(asks, period="all", segment_type="all", outcome="all"), deals=2, median_days=40.0, mean_days=40.0)


# ------------------------------------------------------------------------------------------------
# pipeline_coverage


QUOTAS = pd.DataFrame(
    [
        ("2024-Q1", "all", "all", 10000.0),
        ("2024-Q1", "team", "T1", 4000.0),
        ("2024-Q2", "all", "all", 8000.0),
        ("2024-Q2", "owner", "o2", 2000.0),
        ("2023-Q4", "all", "all", 3000.0),
        ("2023-Q4", "team", "T1", 500.0),
        ("2024-Q3", "all", "all", 9000.0),  # after the next quarter: not shown
    ],
    columns=["quarter", "segment_type", "segment", "amount"],
)


@pytest.fixture(scope="module")
def coverage(crm, at):
    deals, history = crm
    conversion = stage_conversion(deals, history, CATALOG, AS_OF)
    return pipeline_coverage(deals, history, conversion, QUOTAS, AS_OF, at=at), conversion


def test_historical_stage_rates_behind_coverage(coverage):
    _, conversion = coverage
    # Any-order, every deal at as_of: won d1, d3, d8 (no history: reached every stage), d10 (entered at
    # Proposal); lost d4 (in Discovery), d11 (in Proposal), d2 (in Negotiation).
    # Discovery: closed 7, won 4 -> 4/7. Proposal: d1 d2 d3 d8 d10 d11 -> 4/6. Negotiation: d1 d2 d3 d8 d10 -> 4/5.
    rows = _rows(conversion, period_grain="all", funnel_mode="any_order", segment_type="all")
    rates = dict(zip(rows["stage"], rows["stage_to_won_rate"]))
    assert rates == pytest.approx({DISC: 4 / 7, PROP: 4 / 6, NEG: 4 / 5})


def test_pipeline_coverage(coverage):
    frame, _ = coverage
    _shaped_like(frame, "pipeline_coverage")
    # Quarters 2023-Q4, 2024-Q1 (current), 2024-Q2 (next) x segments all, team T1, owner o2.
    assert sorted(set(frame["quarter"])) == ["2023-Q4", "2024-Q1", "2024-Q2"] and len(frame) == 9
    # 2024-Q1: won d3 2000 + d8 800 + d10 1200 = 4000; remaining 6000. Open closing in Q1: d5 5000
    # (Proposal, 2/3) and d7 6000 (Negotiation, 0.8; its close moved to 03-28) = 11000.
    # Weighted 5000 x 2/3 + 6000 x 0.8 = 8133.33; mix rate 8133.33 / 11000.
    mix = (5000 * 2 / 3 + 6000 * 0.8) / 11000
    _check(_one(frame, quarter="2024-Q1", segment_type="all"), quota=10000.0, closed_won=4000.0, remaining=6000.0,
           open_deals=2, open_pipeline=11000.0, coverage=11000 / 6000, rated_pipeline=11000.0,
           stage_mix_win_rate=mix, pipeline_needed=6000 / mix, pipeline_gap=6000 / mix - 11000)
    # T1 (o1's deals) won nothing in Q1; its open pipeline is the same two deals.
    _check(_one(frame, quarter="2024-Q1", segment="T1"), quota=4000.0, closed_won=0.0, remaining=4000.0,
           coverage=2.75, stage_mix_win_rate=mix, pipeline_needed=4000 / mix)
    # o2 has a quota for Q2 only: in Q1 its row shows what it won (2800) and nothing else.
    _check(_one(frame, quarter="2024-Q1", segment="o2"), quota=None, closed_won=2800.0, remaining=None,
           open_deals=0, open_pipeline=0.0, coverage=None, rated_pipeline=0.0, stage_mix_win_rate=None,
           pipeline_needed=None, pipeline_gap=None)
    # 2024-Q2: d6 (o2, Discovery 4/7, 1500 at as_of) closes 05-15. Needed 8000 / (4/7) = 14000.
    _check(_one(frame, quarter="2024-Q2", segment_type="all"), quota=8000.0, closed_won=0.0, remaining=8000.0,
           open_deals=1, open_pipeline=1500.0, coverage=0.1875, stage_mix_win_rate=4 / 7, pipeline_needed=14000.0,
           pipeline_gap=12500.0)
    _check(_one(frame, quarter="2024-Q2", segment="o2"), quota=2000.0, remaining=2000.0, coverage=0.75,
           pipeline_needed=3500.0, pipeline_gap=2000.0)
    # 2023-Q4: d1 won 1000. The company has 2000 left and no open deal closing then (coverage 0, no mix).
    _check(_one(frame, quarter="2023-Q4", segment_type="all"), quota=3000.0, closed_won=1000.0, remaining=2000.0,
           open_pipeline=0.0, coverage=0.0, stage_mix_win_rate=None, pipeline_needed=None)
    # T1 beat its 500 quota: nothing remains, so no coverage and no pipeline needed.
    _check(_one(frame, quarter="2023-Q4", segment="T1"), quota=500.0, closed_won=1000.0, remaining=-500.0,
           coverage=None, pipeline_needed=0.0, pipeline_gap=0.0)


def test_pipeline_coverage_without_quotas_and_bad_quotas(crm, coverage):
    deals, history = crm
    _, conversion = coverage
    empty = QUOTAS.iloc[0:0]
    frame = pipeline_coverage(deals, history, conversion, empty, AS_OF)
    # The company total for the current and next quarter, with no quota.
    assert frame[["quarter", "segment_type", "segment"]].values.tolist() == [
        ["2024-Q1", "all", "all"], ["2024-Q2", "all", "all"],
    ]
    _check(frame.iloc[0], quota=None, closed_won=4000.0, open_pipeline=11000.0, coverage=None, pipeline_needed=None)
    bad = QUOTAS.assign(segment_type=["all", "territory", "all", "owner", "all", "team", "all"])
    with pytest.raises(ValueError, match="quotas row 1, column segment_type"):
        pipeline_coverage(deals, history, conversion, bad, AS_OF)
