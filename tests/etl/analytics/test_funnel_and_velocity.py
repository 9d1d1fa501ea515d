"""The funnel, stage durations and velocity tables, checked on a tiny hand-built CRM whose every
expected number is worked out by hand below.

Pipeline P: open stages A (CRM default probability 0.2), B (0.5), C (0.8), then Closed Won /
Closed Lost. The run is for as_of 2024-03-15 (everything up to 2024-03-15 23:59:59.999999 counts).
Owners: o1 = d1, d2, d5, d7, d9; o2 = d3, d4, d6, d8. Amounts are in the reporting currency.

d1 (o1, 1000)  01-05 A, 01-10 C (skips B), 01-20 won            -> created and won in January
d2 (o1, 2000)  01-08 A, 01-18 B, 01-25 C, 02-07 back to B, 02-17 lost in B
d3 (o2,  500)  01-10 A, 01-22 B, 01-30 won, 02-09 re-opened in B, 02-21 lost in B
d4 (o2, 3000)  02-01 A (close 03-31), 02-10 close pushed to 04-30, 02-20 B,
               03-01 amount 4000 and close pushed to 05-31 (pushed twice, open)
d5 (o1,  700)  created 03-20, after as_of: ignored everywhere
d6 (o2,  800)  02-15 A, 03-10 B, 03-20 won (after as_of: open in B at as_of); its history carries
               no CRM probability, so the stage defaults (A 0.2, B 0.5) weight it
d7 (o1,  600)  no history; open in B; created 03-05; CRM probability 0.5
d8 (o2, 1500)  no history; created 2023-12-10; won 2024-01-15
d9 (o1,  900)  no history; created 01-12; lost 01-31 15:30 (the last day of January)

Status at as_of: won d1, d8; lost d2, d3, d9; open d4 (B), d6 (B), d7 (B).
"""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from etl.analytics.funnel import stage_conversion
from etl.analytics.velocity import stage_durations, velocity
from etl.pipeline_state import prepare_history, stage_events
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog
from etl.tables import TABLES

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 15)
WON, LOST = "Closed Won", "Closed Lost"
PROB = {"A": 0.2, "B": 0.5, "C": 0.8, WON: 1.0, LOST: 0.0}
CATALOG = StageCatalog([PipelineStages("P", ("A", "B", "C"), WON, LOST, probabilities={"A": 0.2, "B": 0.5, "C": 0.8})])


def _frame(rows: list[dict], columns: dict[str, str], defaults: dict, name: str) -> pd.DataFrame:
    """A canonical frame from the columns a test cares about; every other column gets a default."""
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = defaults.get(col, pd.NA)
    return conform(frame, columns, name)


def _deals() -> pd.DataFrame:
    def deal(deal_id, owner, created, stage, status, amount, closed=None, has_history=True, probability=None):
        return dict(
            deal_id=deal_id, owner=owner, created_at=T(created), stage=stage, status=status, amount=amount,
            amount_reporting=amount, closed_at=T(closed) if closed else pd.NaT, has_history=has_history,
            crm_probability=PROB[stage] if probability is None else probability,
        )

    rows = [
        deal("d1", "o1", "2024-01-05", WON, "won", 1000.0, "2024-01-20"),
        deal("d2", "o1", "2024-01-08", LOST, "lost", 2000.0, "2024-02-17"),
        deal("d3", "o2", "2024-01-10", LOST, "lost", 500.0, "2024-02-21"),
        deal("d4", "o2", "2024-02-01", "B", "open", 4000.0),
        deal("d5", "o1", "2024-03-20", "A", "open", 700.0),
        deal("d6", "o2", "2024-02-15", WON, "won", 800.0, "2024-03-20"),
        deal("d7", "o1", "2024-03-05", "B", "open", 600.0, has_history=False),
        deal("d8", "o2", "2023-12-10", WON, "won", 1500.0, "2024-01-15", has_history=False),
        deal("d9", "o1", "2024-01-12", LOST, "lost", 900.0, "2024-01-31 15:30", has_history=False),
    ]
    defaults = dict(
        source_system="salesforce", source_file="Opportunity.csv", source_row=0, pipeline="P", team="T1",
        currency="USD", expected_close_date=T("2024-06-30"), push_count=0,
    )
    return _frame(rows, DEAL_COLUMNS, defaults, "deals")


def _history() -> pd.DataFrame:
    def row(deal_id, changed, stage, amount, close="2024-06-30"):
        return dict(
            deal_id=deal_id, changed_at=T(changed), stage=stage, amount=amount, amount_reporting=amount,
            expected_close_date=T(close), crm_probability=PROB[stage],
        )

    rows = [
        row("d1", "2024-01-05", "A", 1000.0), row("d1", "2024-01-10", "C", 1000.0), row("d1", "2024-01-20", WON, 1000.0),
        row("d2", "2024-01-08", "A", 2000.0), row("d2", "2024-01-18", "B", 2000.0), row("d2", "2024-01-25", "C", 2000.0),
        row("d2", "2024-02-07", "B", 2000.0), row("d2", "2024-02-17", LOST, 2000.0),
        row("d3", "2024-01-10", "A", 500.0), row("d3", "2024-01-22", "B", 500.0), row("d3", "2024-01-30", WON, 500.0),
        row("d3", "2024-02-09", "B", 500.0), row("d3", "2024-02-21", LOST, 500.0),
        row("d4", "2024-02-01", "A", 3000.0, "2024-03-31"), row("d4", "2024-02-10", "A", 3000.0, "2024-04-30"),
        row("d4", "2024-02-20", "B", 3000.0, "2024-04-30"), row("d4", "2024-03-01", "B", 4000.0, "2024-05-31"),
        row("d5", "2024-03-20", "A", 700.0),
        row("d6", "2024-02-15", "A", 800.0), row("d6", "2024-03-10", "B", 800.0), row("d6", "2024-03-20", WON, 800.0),
    ]
    for i, r in enumerate(rows):
        r["source_row"] = i + 2
        if r["deal_id"] == "d6":
            r["crm_probability"] = None  # d6's export has no probability: the stage default is used
    return _frame(rows, DEAL_HISTORY_COLUMNS, dict(source_file="OpportunityHistory.csv"), "history")


@pytest.fixture(scope="module")
def crm():
    deals = _deals()
    history = prepare_history(deals, _history(), CATALOG)
    return deals, history


@pytest.fixture(scope="module")
def funnel(crm):
    deals, history = crm
    return stage_conversion(deals, history, CATALOG, AS_OF)


@pytest.fixture(scope="module")
def durations(crm):
    deals, history = crm
    return stage_durations(deals, stage_events(history, AS_OF), CATALOG, AS_OF, thresholds={("P", "B"): 30.0})


@pytest.fixture(scope="module")
def vel(crm):
    deals, history = crm
    scores = pd.DataFrame({"deal_id": ["d1", "d4", "d6", "d7"], "win_probability": [0.9, 0.6, 0.25, 0.5]})
    return velocity(deals, history, CATALOG, AS_OF, model_scores=scores)


def _rows(frame: pd.DataFrame, **where) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for col, value in where.items():
        mask &= (frame[col] == value).to_numpy()
    return frame.loc[mask]


def _one(frame: pd.DataFrame, **where) -> pd.Series:
    rows = _rows(frame, **where)
    assert len(rows) == 1, f"expected one row for {where}, got {len(rows)}"
    return rows.iloc[0]


def _check(row: pd.Series, expected: dict) -> None:
    for col, value in expected.items():
        if value is None:
            assert pd.isna(row[col]), f"{col}: expected NULL, got {row[col]}"
        elif isinstance(value, float):
            assert row[col] == pytest.approx(value), f"{col}: expected {value}, got {row[col]}"
        else:
            assert row[col] == value, f"{col}: expected {value}, got {row[col]}"


def test_columns_are_exactly_the_warehouse_tables(funnel, durations, vel):
    for name, frame in (("stage_conversion", funnel), ("stage_durations", durations), ("velocity", vel)):
        assert list(frame.columns) == TABLES[name].columns
        assert set(frame["as_of"]) == {AS_OF}


# ---------------------------------------------------------------------------------------------
# stage_conversion
# Funnel level per deal (n = 3 open stages; a won deal counts at level n+1 = 4):
#   any_order = highest open stage ever entered, 4 if won at as_of:
#     d1 4 (won), d2 3 (entered C), d3 2 (its win was reversed; highest open stage B), d4 2, d6 2,
#     d7 2 (no history: current stage B known), d8 4 (won, no history), d9 1 (lost without history:
#     it reached the first stage, where it went from there is unknown: "unplaced")
#   in_order = unbroken run of stages 1, 2, ... entered (4 if won after entering all three):
#     d1 1 (skipped B), d2 3, d3 2, d4 2, d6 2, d7 0 (only B is known), d8 0, d9 0
#   lost in stage (last open stage before the loss): d2 B (moved back from C), d3 B (re-opened in B).
# reached(S) = level >= S; advanced(S) = level >= S+1; decided = advanced + closed deals at level S.
# ---------------------------------------------------------------------------------------------


def test_any_order_funnel_totals(funnel):
    base = dict(pipeline="P", period_grain="all", period="all", segment_type="all", segment="all", funnel_mode="any_order")
    # A: reached all 8 (d9 too), advanced (level >= 2) = 7, won d1 d8 = 2, closed d1 d2 d3 d8 d9 = 5,
    #    decided = 7 + d9 (at level 1) = 8; to-won 2/5 is known. Whether d9 advanced past A, and where
    #    it was lost, is not recorded: next-step and drop-off rates are NULL, with the reason.
    a = _one(funnel, **base, stage="A")
    _check(a, dict(
        stage_order=1, reached=8, advanced=7, won=2, lost_here=0, decided=8, closed=5, unplaced=1,
        next_step_rate=None, stage_to_won_rate=0.4, drop_off_rate=None,
    ))
    assert a["rate_note"].startswith("1 lost deal(s) without recorded stages count as reaching this first stage")
    # B: reached d1 d2 d3 d4 d6 d7 d8 = 7 (d9 may have); advanced (level >= 3) d1 d2 d8 = 3; lost here
    #    d2 d3 = 2; decided = 3 advanced + d3 (closed at level 2) = 4; closed d1 d2 d3 d8 = 4. d9 may
    #    have reached B: every rate here is unknown.
    b = _one(funnel, **base, stage="B")
    _check(b, dict(
        stage_order=2, reached=7, advanced=3, won=2, lost_here=2, decided=4, closed=4, unplaced=1,
        next_step_rate=None, stage_to_won_rate=None, drop_off_rate=None,
    ))
    assert b["rate_note"].startswith("1 lost deal(s) without recorded stages may have reached this stage")
    # C: reached d1 d2 d8 = 3; advanced (won) d1 d8 = 2; d2 was lost back in B, not here;
    #    decided = 2 + d2 (closed at level 3) = 3; rates unknown for the same reason.
    _check(_one(funnel, **base, stage="C"), dict(
        stage_order=3, reached=3, advanced=2, won=2, lost_here=0, decided=3, closed=3, unplaced=1,
        next_step_rate=None, stage_to_won_rate=None, drop_off_rate=None,
    ))
    # Without d9's segment the rates are all known: owner o2 (d3 d4 d6 d8) at B: 1 advanced of 2 decided.
    o2 = _one(funnel, **{**base, "segment_type": "owner", "segment": "o2"}, stage="B")
    _check(o2, dict(unplaced=0, next_step_rate=0.5, stage_to_won_rate=0.5, drop_off_rate=0.25, rate_note=None))


def test_in_order_funnel_differs_where_stages_were_skipped(funnel):
    base = dict(pipeline="P", period_grain="all", period="all", segment_type="all", segment="all", funnel_mode="in_order")
    # A: reached d1 d2 d3 d4 d6 = 5; advanced (in-order level >= 2) d2 d3 d4 d6 = 4 (d1 skipped B);
    #    won d1 = 1; closed d1 d2 d3 = 3; decided = 4 + d1 = 5; next 4/5, to-won 1/3.
    _check(_one(funnel, **base, stage="A"), dict(
        reached=5, advanced=4, won=1, lost_here=0, decided=5, closed=3,
        next_step_rate=0.8, stage_to_won_rate=1 / 3, drop_off_rate=0.0,
    ))
    # B: reached d2 d3 d4 d6 = 4; advanced d2 = 1; lost here d2 d3 = 2; closed d2 d3 = 2;
    #    decided = 1 + d3 = 2; next 1/2, to-won 0/2, drop-off 2/4.
    _check(_one(funnel, **base, stage="B"), dict(
        reached=4, advanced=1, won=0, lost_here=2, decided=2, closed=2,
        next_step_rate=0.5, stage_to_won_rate=0.0, drop_off_rate=0.5,
    ))
    # C: reached d2 = 1, lost (back in B) so not advanced and not lost here: decided 1, closed 1.
    _check(_one(funnel, **base, stage="C"), dict(
        reached=1, advanced=0, won=0, lost_here=0, decided=1, closed=1,
        next_step_rate=0.0, stage_to_won_rate=0.0, drop_off_rate=0.0,
    ))


def test_funnel_by_creation_quarter_and_null_rates(funnel):
    # 2023-Q4 holds only d8 (won, no history): any_order reached/advanced/won every stage;
    # in_order it reached nothing, so every rate is NULL (denominators 0).
    q4 = dict(pipeline="P", period_grain="quarter", period="2023-Q4", segment_type="all", segment="all")
    for stage in "ABC":
        _check(_one(funnel, **q4, funnel_mode="any_order", stage=stage), dict(
            reached=1, advanced=1, won=1, lost_here=0, decided=1, closed=1,
            next_step_rate=1.0, stage_to_won_rate=1.0, drop_off_rate=0.0,
        ))
        _check(_one(funnel, **q4, funnel_mode="in_order", stage=stage), dict(
            reached=0, advanced=0, won=0, decided=0, closed=0,
            next_step_rate=None, stage_to_won_rate=None, drop_off_rate=None,
        ))
    # 2024-Q1: the other seven existing deals (d5 was created after as_of); at A any_order:
    # reached d1 d2 d3 d4 d6 d7 d9 = 7, won d1 = 1, closed d1 d2 d3 d9 = 4 -> to-won 1/4.
    _check(_one(funnel, pipeline="P", period_grain="quarter", period="2024-Q1", segment_type="all",
                segment="all", funnel_mode="any_order", stage="A"),
           dict(reached=7, won=1, closed=4, stage_to_won_rate=1 / 4))
    assert set(_rows(funnel, period_grain="quarter")["period"]) == {"2023-Q4", "2024-Q1"}


def test_funnel_owner_segments_add_up(funnel):
    # any_order B by owner: o1 = d1 d2 d7 (d9 counts at A only): reached 3, advanced d1 d2 = 2,
    # lost here d2 = 1; o2 = d3 d4 d6 d8: reached 4, advanced d8 = 1, lost here d3 = 1.
    base = dict(pipeline="P", period_grain="all", period="all", segment_type="owner", funnel_mode="any_order", stage="B")
    _check(_one(funnel, **base, segment="o1"), dict(reached=3, advanced=2, won=1, lost_here=1, decided=2, closed=2))
    _check(_one(funnel, **base, segment="o2"), dict(reached=4, advanced=1, won=1, lost_here=1, decided=2, closed=2))
    keys = ["pipeline", "period_grain", "period", "funnel_mode", "stage"]
    counts = ["reached", "advanced", "won", "lost_here", "decided", "closed", "unplaced"]
    total = _rows(funnel, segment_type="all").set_index(keys)[counts].sort_index()
    for segment_type in ("owner", "team", "pipeline"):
        summed = _rows(funnel, segment_type=segment_type).groupby(keys)[counts].sum().sort_index()
        pd.testing.assert_frame_equal(summed, total, check_dtype=False)


# ---------------------------------------------------------------------------------------------
# stage_durations: completed stays up to as_of (days between entering and leaving)
#   A: d1 5 (01-05..01-10), d2 10 (01-08..01-18), d3 12 (01-10..01-22), d4 19 (02-01..02-20: its
#      close-date push on 02-10 is not a new stay), d6 24 (02-15..03-10)
#   B: d2 7 (01-18..01-25), d2 10 (02-07..02-17, entered by the backward move from C),
#      d3 8 (01-22..01-30), d3 12 (re-opened 02-09..02-21); d4, d6 (wins after as_of), d7 are current
#   C: d1 10 (01-10..01-20), d2 13 (01-25..02-07)
# Percentiles: numpy linear interpolation, q at position q*(n-1) of the sorted values.
# ---------------------------------------------------------------------------------------------


def test_durations_totals(durations):
    base = dict(pipeline="P", segment_type="all", segment="all")
    # A sorted [5, 10, 12, 19, 24]: median 12; mean 70/5 = 14; p90 at 3.6 -> 19 + 0.6*(24-19) = 22.
    _check(_one(durations, **base, stage="A"), dict(
        stage_order=1, deals=5, median_days=12.0, mean_days=14.0, p90_days=22.0,
        stall_threshold_days=22.0, threshold_source="learned", backward_moves=0,
    ))
    # B sorted [7, 8, 10, 12]: median at 1.5 -> 9; mean 37/4 = 9.25; p90 at 2.7 -> 10 + 0.7*2 = 11.4;
    # threshold configured at 30 days; one stay entered by a backward move.
    _check(_one(durations, **base, stage="B"), dict(
        stage_order=2, deals=4, median_days=9.0, mean_days=9.25, p90_days=11.4,
        stall_threshold_days=30.0, threshold_source="configured", backward_moves=1,
    ))
    # C [10, 13]: median 11.5; mean 11.5; p90 at 0.9 -> 10 + 0.9*3 = 12.7.
    _check(_one(durations, **base, stage="C"), dict(
        deals=2, median_days=11.5, mean_days=11.5, p90_days=12.7, stall_threshold_days=12.7, threshold_source="learned",
    ))
    # The same numbers from numpy's own percentile, as a cross-check of the definition.
    assert np.percentile([5, 10, 12, 19, 24], 90) == pytest.approx(22.0)
    assert np.percentile([7, 8, 10, 12], [50, 90]) == pytest.approx([9.0, 11.4])


def test_durations_by_owner(durations):
    base = dict(pipeline="P", segment_type="owner")
    # o1 (d1, d2): A [5, 10] -> median 7.5, p90 5 + 0.9*5 = 9.5; B [7, 10] with the backward stay.
    _check(_one(durations, **base, segment="o1", stage="A"), dict(deals=2, median_days=7.5, p90_days=9.5))
    _check(_one(durations, **base, segment="o1", stage="B"), dict(deals=2, mean_days=8.5, backward_moves=1))
    # o2 (d3, d4, d6): A [12, 19, 24] -> median 19, p90 at 1.8 -> 19 + 0.8*5 = 23; no stay in C at all:
    # the row is there with 0 deals and NULL days and threshold.
    _check(_one(durations, **base, segment="o2", stage="A"), dict(deals=3, median_days=19.0, p90_days=23.0))
    _check(_one(durations, **base, segment="o2", stage="C"), dict(
        deals=0, median_days=None, mean_days=None, p90_days=None, stall_threshold_days=None,
        threshold_source=None, backward_moves=0,
    ))
    owners = _rows(durations, segment_type="owner").groupby("stage")[["deals", "backward_moves"]].sum()
    totals = _rows(durations, segment_type="all").set_index("stage")[["deals", "backward_moves"]]
    pd.testing.assert_frame_equal(owners.sort_index(), totals.sort_index(), check_dtype=False)


# ---------------------------------------------------------------------------------------------
# velocity (closed deals by close date as of as_of; open pipeline at each period's last instant)
#   2023-12: created d8. Open at 12-31: d8 (1500, stage and probability unknown).
#   2024-01: created d1 d2 d3 d9. Won d8 (01-15, 1500, 36-day cycle from 2023-12-10) and
#            d1 (01-20, 1000, 15 days); lost d9 (01-31 15:30, 900). Open at the end of 01-31: d2 in C
#            (2000 x 0.8); d9 (lost that day) and d3 (won 01-30) are not open then.
#   2024-02: created d4 d6. Lost d2 (02-17, 2000), d3 (02-21, 500; its January win was reversed).
#            Open at 02-29: d4 in B at 3000 (x 0.5 = 1500), d6 in A at 800 (x 0.2 = 160).
#   2024-03 (contains as_of): created d7 (d5 is after as_of). Nothing closed by 03-15 (d6 wins 03-20).
#            Open at the end of 03-15: d4 B 4000 (2000), d6 B 800 (400), d7 B 600 (300).
#            Model: 4000 x 0.6 + 800 x 0.25 + 600 x 0.5 = 2900 (d1's score is not an open deal).
# ---------------------------------------------------------------------------------------------


def test_velocity_months(vel):
    base = dict(period_grain="month", segment_type="all", segment="all")
    assert list(_rows(vel, **base)["period"]) == ["2023-12", "2024-01", "2024-02", "2024-03"]
    _check(_one(vel, **base, period="2023-12"), dict(
        created_count=1, open_deals=1, pipeline_value=1500.0, weighted_pipeline_crm=None, weighted_pipeline_model=None,
        won_count=0, lost_count=0, won_amount=0.0, lost_amount=0.0, avg_deal_value=None, win_rate=None,
        win_rate_value=None, cycle_days_median=None, velocity_per_day=None,
    ))
    # avg 2500/2 = 1250; win rate 2/3; by value 2500/3400; cycles [15, 36]: median = mean = 25.5,
    # p90 = 15 + 0.9*21 = 33.9; velocity = 1 open x 1250 x 2/3 / 25.5 = 32.679...
    _check(_one(vel, **base, period="2024-01"), dict(
        created_count=4, open_deals=1, pipeline_value=2000.0, weighted_pipeline_crm=1600.0, weighted_pipeline_model=None,
        won_count=2, lost_count=1, won_amount=2500.0, lost_amount=900.0, avg_deal_value=1250.0,
        win_rate=2 / 3, win_rate_value=2500 / 3400, cycle_days_median=25.5, cycle_days_mean=25.5,
        cycle_days_p90=33.9, velocity_per_day=1250 * (2 / 3) / 25.5,
    ))
    # No wins: average deal value, cycle and velocity are NULL; win rates 0/2 and 0/2500.
    _check(_one(vel, **base, period="2024-02"), dict(
        created_count=2, open_deals=2, pipeline_value=3800.0, weighted_pipeline_crm=1660.0, weighted_pipeline_model=None,
        won_count=0, lost_count=2, won_amount=0.0, lost_amount=2500.0, avg_deal_value=None,
        win_rate=0.0, win_rate_value=0.0, cycle_days_mean=None, velocity_per_day=None,
    ))
    _check(_one(vel, **base, period="2024-03"), dict(
        created_count=1, open_deals=3, pipeline_value=5400.0, weighted_pipeline_crm=2700.0,
        weighted_pipeline_model=2900.0, won_count=0, lost_count=0, win_rate=None, velocity_per_day=None,
    ))


def test_velocity_quarters(vel):
    base = dict(period_grain="quarter", segment_type="all", segment="all")
    assert list(_rows(vel, **base)["period"]) == ["2023-Q4", "2024-Q1"]
    _check(_one(vel, **base, period="2023-Q4"), dict(created_count=1, open_deals=1, pipeline_value=1500.0))
    # Q1 (contains as_of): won d8 d1 (2500), lost d9 d2 d3 (900 + 2000 + 500 = 3400); win rate 2/5;
    # by value 2500/5900; velocity = 3 open x 1250 x 0.4 / 25.5 = 58.82...
    _check(_one(vel, **base, period="2024-Q1"), dict(
        created_count=7, open_deals=3, pipeline_value=5400.0, weighted_pipeline_crm=2700.0, weighted_pipeline_model=2900.0,
        won_count=2, lost_count=3, won_amount=2500.0, lost_amount=3400.0, avg_deal_value=1250.0, win_rate=0.4,
        win_rate_value=2500 / 5900, cycle_days_median=25.5, cycle_days_p90=33.9, velocity_per_day=3 * 1250 * 0.4 / 25.5,
    ))


def test_velocity_owner_segments_add_up(vel):
    # January by owner: o1 created d1 d2 d9, won d1, lost d9, open d2 at 01-31; o2 created d3, won d8.
    base = dict(period_grain="month", period="2024-01", segment_type="owner")
    _check(_one(vel, **base, segment="o1"), dict(
        created_count=3, won_count=1, won_amount=1000.0, lost_count=1, lost_amount=900.0, open_deals=1,
        pipeline_value=2000.0, win_rate=0.5, cycle_days_mean=15.0,
    ))
    _check(_one(vel, **base, segment="o2"), dict(
        created_count=1, won_count=1, won_amount=1500.0, lost_count=0, open_deals=0, pipeline_value=0.0,
        weighted_pipeline_crm=0.0, win_rate=1.0, cycle_days_mean=36.0, velocity_per_day=0.0,
    ))
    additive = ["created_count", "open_deals", "pipeline_value", "won_count", "lost_count", "won_amount", "lost_amount"]
    keys = ["period_grain", "period"]
    total = _rows(vel, segment_type="all").set_index(keys)[additive].sort_index()
    for segment_type in ("owner", "team", "pipeline", "region"):
        summed = _rows(vel, segment_type=segment_type).groupby(keys)[additive].sum().sort_index()
        pd.testing.assert_frame_equal(summed, total, check_dtype=False)
    # Weighted pipelines add up too wherever the total is known (February: o2 holds d4 and d6).
    feb = _rows(vel, period_grain="month", period="2024-02", segment_type="owner").set_index("segment")
    assert feb.loc["o1", "weighted_pipeline_crm"] + feb.loc["o2", "weighted_pipeline_crm"] == pytest.approx(1660.0)
    march = _rows(vel, period_grain="month", period="2024-03", segment_type="owner").set_index("segment")
    # o1 holds d7 (600 x 0.5 = 300), o2 holds d4 and d6 (2400 + 200 = 2600).
    assert march.loc["o1", "weighted_pipeline_model"] == pytest.approx(300.0)
    assert march.loc["o2", "weighted_pipeline_model"] == pytest.approx(2600.0)


def test_velocity_without_model_scores_and_bad_scores(crm):
    deals, history = crm
    plain = velocity(deals, history, CATALOG, AS_OF)
    assert plain["weighted_pipeline_model"].isna().all()
    duplicated = pd.DataFrame({"deal_id": ["d4", "d4"], "win_probability": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"model_scores: row 1, column deal_id: deal 'd4'"):
        velocity(deals, history, CATALOG, AS_OF, model_scores=duplicated)


def test_an_earlier_as_of_sees_only_what_was_known(crm):
    # As of 2024-01-31: d4, d5, d6, d7 do not exist yet; d2 and d3 are still open/won as then:
    # d3 was won on 01-30 (its re-opening comes later), d2 is open in C.
    deals, history = crm
    early = stage_conversion(deals, history, CATALOG, dt.date(2024, 1, 31))
    # any_order A: d1 d2 d3 d8 and d9 (lost without recorded stages, at the first stage) reached it;
    # won d1 d3 d8 = 3; closed d1 d3 d8 d9 = 4.
    _check(_one(early, pipeline="P", period_grain="all", period="all", segment_type="all", segment="all",
                funnel_mode="any_order", stage="A"), dict(reached=5, won=3, closed=4, stage_to_won_rate=0.75))
    months = velocity(deals, history, CATALOG, dt.date(2024, 1, 31))
    jan = _one(months, period_grain="month", period="2024-01", segment_type="all", segment="all")
    # January as known then: won d8 d1 d3 (1500 + 1000 + 500), lost d9; open at 01-31: d2.
    _check(jan, dict(won_count=3, won_amount=3000.0, lost_count=1, open_deals=1, pipeline_value=2000.0))
    assert math.isnan(jan["weighted_pipeline_model"])


def test_a_deal_lost_in_a_stage_it_reached_out_of_order():
    # One deal created straight into B (A skipped) and lost there on 02-01.
    # any_order: it reached A and B and was lost in B -> A: reached 1, advanced 1; B: reached 1,
    # lost here 1, drop-off 1/1. in_order: it never entered A, so it reached no stage and its loss
    # in B counts nowhere.
    deals = _frame(
        [dict(deal_id="x1", owner="o1", created_at=T("2024-01-10"), stage=LOST, status="lost", amount=100.0,
              amount_reporting=100.0, closed_at=T("2024-02-01"), has_history=True)],
        DEAL_COLUMNS, dict(source_system="csv", source_row=0, pipeline="P", push_count=0), "deals",
    )
    raw = _frame(
        [dict(deal_id="x1", changed_at=T("2024-01-10"), stage="B", source_row=2),
         dict(deal_id="x1", changed_at=T("2024-02-01"), stage=LOST, source_row=3)],
        DEAL_HISTORY_COLUMNS, {}, "history",
    )
    funnel = stage_conversion(deals, prepare_history(deals, raw, CATALOG), CATALOG, AS_OF)
    base = dict(period_grain="all", segment_type="all", funnel_mode="any_order")
    _check(_one(funnel, **base, stage="A"), dict(reached=1, advanced=1, lost_here=0, next_step_rate=1.0))
    _check(_one(funnel, **base, stage="B"), dict(reached=1, advanced=0, lost_here=1, closed=1, drop_off_rate=1.0))
    in_order = _rows(funnel, period_grain="all", segment_type="all", funnel_mode="in_order")
    assert in_order[["reached", "lost_here", "closed"]].to_numpy().sum() == 0


def test_fiscal_quarters_take_their_open_pipeline_from_their_last_month(crm):
    # Fiscal year from February: Nov 2023-Jan 2024 is FY2024-Q4, Feb-Apr 2024 is FY2025-Q1 (holds as_of).
    deals, history = crm
    table = velocity(deals, history, CATALOG, AS_OF, fiscal_year_start_month=2)
    base = dict(period_grain="quarter", segment_type="all", segment="all")
    assert list(_rows(table, **base)["period"]) == ["2024-Q4", "2025-Q1"]
    # 2024-Q4: created d8 d1 d2 d3 d9 = 5; won d8 d1 (2500), lost d9; open at the end of January: d2 (2000).
    _check(_one(table, **base, period="2024-Q4"), dict(
        created_count=5, won_count=2, won_amount=2500.0, lost_count=1, open_deals=1, pipeline_value=2000.0,
    ))
    # 2025-Q1: created d4 d6 d7 = 3; lost d2 d3 (2500); open at the end of as_of: d4 d6 d7 (5400).
    _check(_one(table, **base, period="2025-Q1"), dict(
        created_count=3, won_count=0, lost_count=2, lost_amount=2500.0, open_deals=3, pipeline_value=5400.0,
    ))


def test_before_the_first_deal_every_table_is_empty(crm):
    deals, history = crm
    before = dt.date(2023, 11, 30)
    tables = {
        "stage_conversion": stage_conversion(deals, history, CATALOG, before),
        "stage_durations": stage_durations(deals, stage_events(history, before), CATALOG, before),
        "velocity": velocity(deals, history, CATALOG, before),
    }
    for name, frame in tables.items():
        assert frame.empty and list(frame.columns) == TABLES[name].columns
