"""Pipeline snapshots, the waterfall, stalled deals and close-date slips, checked on a tiny hand-built
CRM whose every expected number is worked out by hand below, and the waterfall's balance identity
on a generated sample CRM for every period and segment.

Pipeline P: open stages A, B, C (configured default probabilities 0.2, 0.5, 0.8), then Closed Won /
Closed Lost. History rows carry CRM probabilities A 0.25, B 0.6, C 0.9 (so a fallback to the
default shows). The run is for as_of 2024-03-15 (everything up to 2024-03-15 23:59:59.999999).
Owners: o1 = w10, o5, w1, b2, n9; o2 = r3, p4, g6, h8. Amounts are in the reporting currency;
"close" is the expected close date.

w10 (o1,  100) 2023-11-01 A close 2023-12-31; 2023-12-16 won (close 12-16)     -> cycle 45 days
o5  (o1, 1500) 2023-12-10 A close 2023-12-31 (overdue ever after); 01-15 amount 1200; open in A
w1  (o1, 1000) 01-05 A close 01-31; 01-10 C (skips B); 01-20 won (close 01-20)  -> created and won in
               January; cycle 15 days
b2  (o1, 2000) 01-08 A close 02-28; 01-18 B; 01-25 C; 02-07 back to B, amount 2500; 02-17 lost (close 02-17)
r3  (o2,  500) 01-10 A close 03-31; 01-22 B; 01-30 won (close 01-30); 02-09 re-opened in B close 03-20;
               02-21 lost (close 02-21)
p4  (o2, 3000) 02-01 A close 03-31; 02-10 pushed to 04-30; 02-20 B; 03-01 amount 4000, pushed to 05-31
g6  (o2,  800) 01-20 B close 04-15, no CRM probability (default B 0.5); 03-05 close moved earlier to 03-10
h8  (o2,  600) no history; open in B since creation 03-05, close 03-31, CRM probability 0.6
n9  (o1,  700) 02-05 A, no expected close date; open in A
z11 (o2,  900) created 03-20, after as_of: ignored everywhere

Months run from 2023-11 (the first creation) to 2024-03 (cut at as_of); quarters 2023-Q4, 2024-Q1.
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.analytics.velocity import stage_durations as stage_durations_table
from etl.analytics.velocity import velocity
from etl.analytics.health import close_date_slips, pipeline_snapshots, pipeline_waterfall, stalled_deals
from etl.pipeline_state import as_of_end, pipeline_at, prepare_history, stage_events
from sample_crm.generate import generate_sample
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog
from etl.tables import TABLES

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 15)
WON, LOST = "Closed Won", "Closed Lost"
CRM_PROB = {"A": 0.25, "B": 0.6, "C": 0.9, WON: 1.0, LOST: 0.0}
CATALOG = StageCatalog([PipelineStages("P", ("A", "B", "C"), WON, LOST, probabilities={"A": 0.2, "B": 0.5, "C": 0.8})])
OWNER = {"w10": "o1", "o5": "o1", "w1": "o1", "b2": "o1", "n9": "o1", "r3": "o2", "p4": "o2", "g6": "o2", "h8": "o2", "z11": "o2"}


def _frame(rows: list[dict], columns: dict[str, str], defaults: dict, name: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = defaults.get(col, pd.NA)
    return conform(frame, columns, name)


def _deals() -> pd.DataFrame:
    def deal(deal_id, created, stage, status, amount, close, closed=None, has_history=True):
        return dict(
            deal_id=deal_id, owner=OWNER[deal_id], created_at=T(created), stage=stage, status=status, amount=amount,
            amount_reporting=amount, expected_close_date=T(close) if close else pd.NaT,
            closed_at=T(closed) if closed else pd.NaT, has_history=has_history, crm_probability=CRM_PROB[stage],
            deal_name=f"Deal {deal_id}",
        )

    rows = [
        deal("w10", "2023-11-01", WON, "won", 100.0, "2023-12-16", "2023-12-16"),
        deal("o5", "2023-12-10", "A", "open", 1200.0, "2023-12-31"),
        deal("w1", "2024-01-05", WON, "won", 1000.0, "2024-01-20", "2024-01-20"),
        deal("b2", "2024-01-08", LOST, "lost", 2500.0, "2024-02-17", "2024-02-17"),
        deal("r3", "2024-01-10", LOST, "lost", 500.0, "2024-02-21", "2024-02-21"),
        deal("p4", "2024-02-01", "B", "open", 4000.0, "2024-05-31"),
        deal("g6", "2024-01-20", "B", "open", 800.0, "2024-03-10"),
        deal("h8", "2024-03-05", "B", "open", 600.0, "2024-03-31", has_history=False),
        deal("n9", "2024-02-05", "A", "open", 700.0, None),
        deal("z11", "2024-03-20", "A", "open", 900.0, "2024-06-30"),
    ]
    defaults = dict(
        source_system="salesforce", source_file="Opportunity.csv", source_row=0, pipeline="P", team="T1",
        product="X", region="EU", lead_source="Web", deal_type="New", currency="USD", push_count=0,
    )
    return _frame(rows, DEAL_COLUMNS, defaults, "deals")


def _history() -> pd.DataFrame:
    def row(deal_id, changed, stage, amount, close):
        return dict(
            deal_id=deal_id, changed_at=T(changed), stage=stage, amount=amount, amount_reporting=amount,
            expected_close_date=T(close) if close else pd.NaT, crm_probability=CRM_PROB[stage],
        )

    rows = [
        row("w10", "2023-11-01", "A", 100.0, "2023-12-31"), row("w10", "2023-12-16", WON, 100.0, "2023-12-16"),
        row("o5", "2023-12-10", "A", 1500.0, "2023-12-31"), row("o5", "2024-01-15", "A", 1200.0, "2023-12-31"),
        row("w1", "2024-01-05", "A", 1000.0, "2024-01-31"), row("w1", "2024-01-10", "C", 1000.0, "2024-01-31"),
        row("w1", "2024-01-20", WON, 1000.0, "2024-01-20"),
        row("b2", "2024-01-08", "A", 2000.0, "2024-02-28"), row("b2", "2024-01-18", "B", 2000.0, "2024-02-28"),
        row("b2", "2024-01-25", "C", 2000.0, "2024-02-28"), row("b2", "2024-02-07", "B", 2500.0, "2024-02-28"),
        row("b2", "2024-02-17", LOST, 2500.0, "2024-02-17"),
        row("r3", "2024-01-10", "A", 500.0, "2024-03-31"), row("r3", "2024-01-22", "B", 500.0, "2024-03-31"),
        row("r3", "2024-01-30", WON, 500.0, "2024-01-30"), row("r3", "2024-02-09", "B", 500.0, "2024-03-20"),
        row("r3", "2024-02-21", LOST, 500.0, "2024-02-21"),
        row("p4", "2024-02-01", "A", 3000.0, "2024-03-31"), row("p4", "2024-02-10", "A", 3000.0, "2024-04-30"),
        row("p4", "2024-02-20", "B", 3000.0, "2024-04-30"), row("p4", "2024-03-01", "B", 4000.0, "2024-05-31"),
        row("g6", "2024-01-20", "B", 800.0, "2024-04-15"), row("g6", "2024-03-05", "B", 800.0, "2024-03-10"),
        row("n9", "2024-02-05", "A", 700.0, None),
        row("z11", "2024-03-20", "A", 900.0, "2024-06-30"),
    ]
    for i, r in enumerate(rows):
        r["source_row"] = i + 2
        if r["deal_id"] == "g6":
            r["crm_probability"] = None  # no CRM probability: the stage default is used
    return _frame(rows, DEAL_HISTORY_COLUMNS, dict(source_file="OpportunityHistory.csv"), "history")


def _durations() -> pd.DataFrame:
    """Stall thresholds as the stage_durations table holds them: A 30 days, B 40 days (segment 'all');
    the owner row's different threshold must be ignored."""
    return pd.DataFrame(
        {
            "pipeline": ["P", "P", "P"],
            "segment_type": ["all", "all", "owner"],
            "segment": ["all", "all", "o1"],
            "stage": ["A", "B", "A"],
            "stall_threshold_days": [30.0, 40.0, 1.0],
        }
    )


@pytest.fixture(scope="module")
def crm():
    deals = _deals()
    return deals, prepare_history(deals, _history(), CATALOG)


@pytest.fixture(scope="module")
def waterfall(crm):
    return pipeline_waterfall(*crm, AS_OF)


@pytest.fixture(scope="module")
def snapshots(crm):
    deals, history = crm
    return pipeline_snapshots(deals, history, CATALOG, AS_OF, _durations())


@pytest.fixture(scope="module")
def stalled(crm):
    deals, history = crm
    return stalled_deals(deals, history, _durations(), AS_OF)


@pytest.fixture(scope="module")
def slips(crm):
    return close_date_slips(*crm, AS_OF)


def _one(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(frame), dtype=bool)
    for col, value in where.items():
        mask &= (frame[col] == value).to_numpy()
    rows = frame.loc[mask]
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


def _movements(**values) -> dict:
    """A waterfall row's money and counts: every bucket 0 unless given (counts as deals_<bucket>)."""
    out = {}
    for bucket in ("start_value", "created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won", "end_value"):
        out[bucket] = float(values.get(bucket, 0.0))
    for bucket in ("start", "created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won", "end"):
        out[f"deals_{bucket}"] = values.get(f"deals_{bucket}", 0)
    return out


def test_columns_are_exactly_the_warehouse_tables(waterfall, snapshots, stalled, slips):
    frames = {"pipeline_waterfall": waterfall, "pipeline_snapshots": snapshots, "stalled_deals": stalled, "close_date_slips": slips}
    for name, frame in frames.items():
        assert list(frame.columns) == TABLES[name].columns
        assert set(frame["as_of"]) == {AS_OF}
        key = [c.name for c in TABLES[name].table.primary_key.columns]
        assert not frame.duplicated(key).any(), f"{name}: duplicate keys"


# ---------------------------------------------------------------------------------------------
# pipeline_waterfall, segment all. The pipeline of period P at t: open deals whose close date at t
# is on or before P's last day.
# ---------------------------------------------------------------------------------------------


def test_waterfall_periods(waterfall):
    months = waterfall[(waterfall.period_grain == "month") & (waterfall.segment_type == "all")]
    assert months["period"].tolist() == ["2023-11", "2023-12", "2024-01", "2024-02", "2024-03"]
    quarters = waterfall[(waterfall.period_grain == "quarter") & (waterfall.segment_type == "all")]
    assert quarters["period"].tolist() == ["2023-Q4", "2024-Q1"]
    march = _one(waterfall, period_grain="month", period="2024-03", segment_type="all")
    assert march["period_start"] == T("2024-03-01") and march["through_date"] == T("2024-03-15")
    january = _one(waterfall, period_grain="month", period="2024-01", segment_type="all")
    assert january["through_date"] == T("2024-01-31")


def test_waterfall_november_and_december(waterfall):
    # November: w10 is created with close 12-31, outside November's pipeline: nothing at all.
    _check(_one(waterfall, period_grain="month", period="2023-11", segment_type="all", segment="all"), _movements())
    # December: start w10 100 (open, close 12-31); o5 created 1500 (close 12-31); w10 won 100.
    # 100 + 1500 - 100 = 1500 (o5).
    _check(
        _one(waterfall, period_grain="month", period="2023-12", segment_type="all", segment="all"),
        _movements(start_value=100, created=1500, won=100, end_value=1500,
                   deals_start=1, deals_created=1, deals_won=1, deals_end=1),
    )


def test_waterfall_january(waterfall):
    # Start: o5 1500 (overdue since 12-31: still in). w1 created 01-05 with close 01-31: created 1000;
    # its skip A -> C changes nothing; won 01-20: won 1000 (created and won inside the month).
    # b2 (close 02-28), r3 (close 03-31) and g6 (close 04-15) are created outside January's pipeline.
    # r3 won 01-30 with close 01-30: it passes through the pipeline on its way out: pulled in 500, won 500.
    # o5's amount 1500 -> 1200: decreased 300.
    # 1500 + 1000 + 500 - 300 - (1000 + 500) = 1200 (o5).
    _check(
        _one(waterfall, period_grain="month", period="2024-01", segment_type="all", segment="all"),
        _movements(start_value=1500, created=1000, pulled_in=500, decreased=300, won=1500, end_value=1200,
                   deals_start=1, deals_created=1, deals_pulled_in=1, deals_decreased=1, deals_won=2, deals_end=1),
    )


def test_waterfall_february(waterfall):
    # Start (state at the end of January): o5 1200, b2 2000 (in C, close 02-28) = 3200, 2 deals;
    # r3 is won then (out). b2 moves back to B with amount 2500: increased 500; b2 lost 02-17: lost 2500.
    # r3 re-opened 02-09 with close 03-20 (after February): still out; lost 02-21 with close 02-21:
    # pulled in 500 and lost 500. p4 is created with close 03-31 (out); n9 has no close date (never in).
    # 3200 + 500 + 500 - (2500 + 500) = 1200 (o5).
    _check(
        _one(waterfall, period_grain="month", period="2024-02", segment_type="all", segment="all"),
        _movements(start_value=3200, pulled_in=500, increased=500, lost=3000, end_value=1200,
                   deals_start=2, deals_pulled_in=1, deals_increased=1, deals_lost=2, deals_end=1),
    )


def test_waterfall_march_cut_at_as_of(waterfall):
    # Start: o5 1200 (p4 close 04-30 and g6 close 04-15 are out). p4's push to 05-31 happens outside.
    # g6's close moved 04-15 -> 03-10 on 03-05: pulled in 800. h8 (no history) created 03-05 with
    # close 03-31: created 600. z11 is created after as_of. End at as_of: o5 1200 + g6 800 + h8 600.
    _check(
        _one(waterfall, period_grain="month", period="2024-03", segment_type="all", segment="all"),
        _movements(start_value=1200, created=600, pulled_in=800, end_value=2600,
                   deals_start=1, deals_created=1, deals_pulled_in=1, deals_end=3),
    )


def test_waterfall_quarters(waterfall):
    # 2023-Q4: w10 created (close 12-31) 100 and won 100; o5 created 1500.
    _check(
        _one(waterfall, period_grain="quarter", period="2023-Q4", segment_type="all", segment="all"),
        _movements(created=1600, won=100, end_value=1500, deals_created=2, deals_won=1, deals_end=1),
    )
    # 2024-Q1 (close dates up to 03-31), start o5 1500:
    # created: w1 1000, b2 2000 (close 02-28), r3 500 (close 03-31), p4 3000 (close 03-31), h8 600 = 7100;
    # pulled in: r3 re-opened 02-09 (close 03-20) 500, g6 800 = 1300 (the re-opened deal is pulled in);
    # increased: b2 500; decreased: o5 300; pushed out: p4 02-10 (close 03-31 -> 04-30) at 3000 (pushed
    # twice, but the second push is outside the quarter's pipeline); lost: b2 2500 + r3 500;
    # won: w1 1000 + r3 500 (its first win, 01-30). End: o5 1200 + g6 800 + h8 600 = 2600.
    # 1500 + 7100 + 1300 + 500 - 300 - 3000 - 3000 - 1500 = 2600.
    _check(
        _one(waterfall, period_grain="quarter", period="2024-Q1", segment_type="all", segment="all"),
        _movements(start_value=1500, created=7100, pulled_in=1300, increased=500, decreased=300, pushed_out=3000,
                   lost=3000, won=1500, end_value=2600,
                   deals_start=1, deals_created=5, deals_pulled_in=2, deals_increased=1, deals_decreased=1,
                   deals_pushed_out=1, deals_lost=2, deals_won=2, deals_end=3),
    )


def test_waterfall_by_owner(waterfall):
    # 2024-Q1, owner o2 (r3, p4, g6, h8): created r3 500 + p4 3000 + h8 600; pulled in r3 500 + g6 800;
    # pushed out p4 3000; lost r3 500; won r3 500; end g6 800 + h8 600.
    _check(
        _one(waterfall, period_grain="quarter", period="2024-Q1", segment_type="owner", segment="o2"),
        _movements(created=4100, pulled_in=1300, pushed_out=3000, lost=500, won=500, end_value=1400,
                   deals_created=3, deals_pulled_in=2, deals_pushed_out=1, deals_lost=1, deals_won=1, deals_end=2),
    )
    # Every segment value has a row in every period: November for o2 is all zeros.
    _check(_one(waterfall, period_grain="month", period="2023-11", segment_type="owner", segment="o2"), _movements())


# ---------------------------------------------------------------------------------------------
# pipeline_snapshots (segment all unless stated). Stall thresholds A 30, B 40 days; aged threshold:
# p90 of the won cycles [15 (w1), 45 (w10)] = 15 + 0.9 x 30 = 42 days (r3's win was reversed).
# ---------------------------------------------------------------------------------------------


def test_snapshot_dates(snapshots):
    dates = sorted(snapshots["snapshot_date"].unique())
    assert dates == [T("2023-11-30"), T("2023-12-31"), T("2024-01-31"), T("2024-02-29"), T("2024-03-15")]


def test_snapshots_at_month_ends(snapshots):
    base = dict(segment_type="all", segment="all", pipeline="P")
    # 2023-11-30: w10 open in A, 100 x 0.25.
    _check(_one(snapshots, snapshot_date=T("2023-11-30"), stage="A", **base),
           dict(stage_order=1, open_deals=1, pipeline_value=100.0, weighted_pipeline_crm=25.0, stalled_deals=0, aged_deals=0))
    # 2024-01-31: A o5 1200 (in A since 12-10: 52.99 days > 30: stalled; age 52.99 > 42: aged);
    # B g6 800 x default 0.5 (since 01-20: 11.99 days); C b2 2000 x 0.9 (since 01-25: 6.99 days).
    # w1 and r3 are won at that time.
    _check(_one(snapshots, snapshot_date=T("2024-01-31"), stage="A", **base),
           dict(open_deals=1, pipeline_value=1200.0, weighted_pipeline_crm=300.0, stalled_deals=1, aged_deals=1))
    _check(_one(snapshots, snapshot_date=T("2024-01-31"), stage="B", **base),
           dict(stage_order=2, open_deals=1, pipeline_value=800.0, weighted_pipeline_crm=400.0, stalled_deals=0, aged_deals=0))
    _check(_one(snapshots, snapshot_date=T("2024-01-31"), stage="C", **base),
           dict(stage_order=3, open_deals=1, pipeline_value=2000.0, weighted_pipeline_crm=1800.0, stalled_deals=0, aged_deals=0))
    # 2024-02-29 (end of day): A o5 1200 + n9 700 (n9: 24.99 days in A, age 24.99): stalled 1 (o5), aged 1 (o5);
    # B p4 3000 x 0.6 (9.99 days) + g6 800 x 0.5 (40.99 days > 40: stalled; age 40.99 < 42: not aged).
    _check(_one(snapshots, snapshot_date=T("2024-02-29"), stage="A", **base),
           dict(open_deals=2, pipeline_value=1900.0, weighted_pipeline_crm=475.0, stalled_deals=1, aged_deals=1))
    _check(_one(snapshots, snapshot_date=T("2024-02-29"), stage="B", **base),
           dict(open_deals=2, pipeline_value=3800.0, weighted_pipeline_crm=2200.0, stalled_deals=1, aged_deals=0))
    assert len(snapshots[(snapshots.snapshot_date == T("2024-02-29")) & (snapshots.segment_type == "all")]) == 2  # no C row


def test_snapshot_at_as_of(snapshots):
    base = dict(snapshot_date=T("2024-03-15"), pipeline="P")
    # B: p4 4000 x 0.6 + g6 800 x 0.5 + h8 600 x 0.6 = 2400 + 400 + 360 = 3160.
    # Stalled: g6 (55.99 days > 40). Aged (> 42): p4 (43.99), g6 (55.99); h8 is 10.99 days old.
    _check(_one(snapshots, stage="B", segment_type="all", segment="all", **base),
           dict(open_deals=3, pipeline_value=5400.0, weighted_pipeline_crm=3160.0, stalled_deals=1, aged_deals=2))
    # A: o5 1200 x 0.25 + n9 700 x 0.25; stalled o5 (96.99 days) and n9 (39.99 > 30); aged o5 only.
    _check(_one(snapshots, stage="A", segment_type="all", segment="all", **base),
           dict(open_deals=2, pipeline_value=1900.0, weighted_pipeline_crm=475.0, stalled_deals=2, aged_deals=1))
    # Owner o1 in A: o5 and n9 (the owner row's 1-day threshold in stage_durations is not used).
    _check(_one(snapshots, stage="A", segment_type="owner", segment="o1", **base), dict(open_deals=2, stalled_deals=2))
    _check(_one(snapshots, stage="B", segment_type="owner", segment="o2", **base), dict(open_deals=3, pipeline_value=5400.0))


# ---------------------------------------------------------------------------------------------
# stalled_deals and close_date_slips
# ---------------------------------------------------------------------------------------------


def test_stalled_and_aged_deals(stalled):
    # Open at as_of: o5, p4, g6, h8, n9. h8 (11 days in B, 11 days old) is neither stalled nor aged.
    assert sorted(stalled["deal_id"]) == ["g6", "n9", "o5", "p4"]
    end = as_of_end(AS_OF)
    # o5: in A since 2023-12-10: 96 days + the whole of as_of = 96.99 days > 30; 97/30 = 3.2x; age the same > 42.
    _check(_one(stalled, deal_id="o5"), dict(
        owner="o1", stage="A", stage_entered_at=T("2023-12-10"), days_in_stage=(end - T("2023-12-10")) / pd.Timedelta(days=1),
        threshold_days=30.0, is_stalled=True, age_days=(end - T("2023-12-10")) / pd.Timedelta(days=1),
        aged_threshold_days=42.0, is_aged=True, amount_reporting=1200.0, push_count=0, days_slipped=0.0,
        last_pushed_at=None, expected_close_date=T("2023-12-31"),
        reason="In A for 96 days, 3.2x the usual 30 days; open 96 days, longer than 90% of won deals (42 days)",
    ))
    # p4: 24.99 days in B (not > 40); created 02-01: 43.99 days > 42: aged. Pushed 02-10 (03-31 -> 04-30,
    # 30 days) and 03-01 (04-30 -> 05-31, 31 days): twice, 61 days, last 03-01.
    _check(_one(stalled, deal_id="p4"), dict(
        stage="B", threshold_days=40.0, is_stalled=False, is_aged=True, amount_reporting=4000.0,
        expected_close_date=T("2024-05-31"), push_count=2, days_slipped=61.0, last_pushed_at=T("2024-03-01"),
        reason="Close date pushed twice, 61 days in all; open 43 days, longer than 90% of won deals (42 days)",
    ))
    # g6: in B since 01-20: 55.99 days; 55.99/40 = 1.4x; its close date moved earlier (not a push).
    _check(_one(stalled, deal_id="g6"), dict(
        is_stalled=True, is_aged=True, push_count=0,
        reason="In B for 55 days, 1.4x the usual 40 days; open 55 days, longer than 90% of won deals (42 days)",
    ))
    # n9: in A since 02-05: 39.99 days > 30 (1.3x); 39.99 days old < 42; no expected close date.
    _check(_one(stalled, deal_id="n9"), dict(
        is_stalled=True, is_aged=False, expected_close_date=None, reason="In A for 39 days, 1.3x the usual 30 days",
    ))


def test_close_date_slips(slips):
    # Only p4 was pushed (g6's move was earlier; b2/r3/w1 closing rows carry the actual date: late, not pushed).
    assert slips["deal_id"].tolist() == ["p4", "p4"]
    _check(slips.iloc[0], dict(
        changed_at=T("2024-02-10"), stage="A", from_close_date=T("2024-03-31"), to_close_date=T("2024-04-30"),
        days_slipped=30.0, amount_reporting=3000.0, push_number=1, quarter="2024-Q1", from_quarter="2024-Q1",
        to_quarter="2024-Q2", owner="o2", pipeline="P",
    ))
    _check(slips.iloc[1], dict(
        changed_at=T("2024-03-01"), stage="B", from_close_date=T("2024-04-30"), to_close_date=T("2024-05-31"),
        days_slipped=31.0, amount_reporting=4000.0, push_number=2, quarter="2024-Q1", from_quarter="2024-Q2",
        to_quarter="2024-Q2",
    ))


def test_slips_before_as_of_only(crm):
    # As of 2024-02-20 only the first push had happened.
    frame = close_date_slips(*crm, dt.date(2024, 2, 20))
    assert frame["changed_at"].tolist() == [T("2024-02-10")]


def test_unsorted_history_is_refused(crm):
    deals, history = crm
    shuffled = history.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="prepare_history"):
        pipeline_waterfall(deals, shuffled, AS_OF)


# ---------------------------------------------------------------------------------------------
# A generated sample CRM: the identity for every period and segment, to the cent, and agreement
# with independent computations.
# ---------------------------------------------------------------------------------------------

SAMPLE_AS_OF = dt.date(2026, 5, 20)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    generate_sample(folder, n_deals=2500, seed=11, end_date=SAMPLE_AS_OF)
    export = read_exports(folder, load_project_config(), as_of=SAMPLE_AS_OF)
    history = prepare_history(export.deals, export.history, export.stages)
    return export.deals, history, export.stages


@pytest.fixture(scope="module")
def sample_waterfall(sample):
    deals, history, _ = sample
    return pipeline_waterfall(deals, history, SAMPLE_AS_OF)


def test_sample_waterfall_balances_to_the_cent(sample_waterfall):
    frame = sample_waterfall
    assert set(frame["segment_type"]) == {"all", "pipeline", "owner", "team", "product", "region", "lead_source", "deal_type"}
    cents = {c: np.rint(frame[c].to_numpy() * 100).astype("int64") for c in
             ("start_value", "created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won", "end_value")}
    gap = (cents["start_value"] + cents["created"] + cents["pulled_in"] + cents["increased"] - cents["decreased"]
           - cents["pushed_out"] - cents["lost"] - cents["won"] - cents["end_value"])
    assert (gap == 0).all()
    deals_gap = (frame["deals_start"] + frame["deals_created"] + frame["deals_pulled_in"] - frame["deals_pushed_out"]
                 - frame["deals_lost"] - frame["deals_won"] - frame["deals_end"])
    assert (deals_gap == 0).all()
    # Something actually moved: every bucket is used somewhere.
    overall = frame[frame.segment_type == "all"]
    for bucket in ("created", "pulled_in", "increased", "decreased", "pushed_out", "lost", "won"):
        assert overall[bucket].sum() > 0, bucket
    # Segments of one type add up to the total.
    for segment_type in ("owner", "pipeline", "region"):
        part = frame[frame.segment_type == segment_type].groupby(["period_grain", "period"])["won"].sum()
        total = overall.set_index(["period_grain", "period"])["won"]
        assert np.allclose(part.reindex(total.index).to_numpy(), total.to_numpy())


def test_sample_waterfall_start_and_end_match_the_point_in_time_pipeline(sample, sample_waterfall):
    deals, history, _ = sample
    # The pipeline of 2026-Q1 at its start and end, from the full (not lean) point-in-time rebuild.
    q_end = T("2026-04-01")
    for instant, column, counted in ((T("2026-01-01") - pd.Timedelta(microseconds=1), "start_value", "deals_start"),
                                     (T("2026-04-01") - pd.Timedelta(microseconds=1), "end_value", "deals_end")):
        at = pipeline_at(deals, history, instant)
        member = (at["status"] == "open") & (at["expected_close_date"] < q_end)
        row = _one(sample_waterfall, period_grain="quarter", period="2026-Q1", segment_type="all", segment="all")
        assert row[counted] == int(member.sum())
        assert row[column] == pytest.approx(at.loc[member, "amount_reporting"].round(2).sum(), abs=0.005)


def test_sample_waterfall_won_matches_wins_by_close_date(sample, sample_waterfall):
    # In the sample every closing row carries the actual close date, and no deal is re-opened, so the
    # pipeline's won equals velocity's won (deals won in the period by their close time).
    deals, history, stages = sample
    speed = velocity(deals, history, stages, SAMPLE_AS_OF)
    for grain in ("month", "quarter"):
        ours = sample_waterfall[(sample_waterfall.period_grain == grain) & (sample_waterfall.segment_type == "all")]
        theirs = speed[(speed.period_grain == grain) & (speed.segment_type == "all")]
        merged = ours.merge(theirs, on="period")
        assert (merged["deals_won"] == merged["won_count"]).all()
        assert np.allclose(merged["won"], merged["won_amount"])


def test_sample_snapshots_match_velocity_open_pipeline(sample):
    deals, history, stages = sample
    durations = stage_durations_table(deals, stage_events(history, SAMPLE_AS_OF), stages, SAMPLE_AS_OF)
    snaps = pipeline_snapshots(deals, history, stages, SAMPLE_AS_OF, durations)
    speed = velocity(deals, history, stages, SAMPLE_AS_OF)
    months = speed[(speed.period_grain == "month") & (speed.segment_type == "owner")]
    totals = snaps[snaps.segment_type == "owner"].assign(period=lambda f: f["snapshot_date"].dt.strftime("%Y-%m"))
    totals = totals.groupby(["period", "segment"], as_index=False)[["open_deals", "pipeline_value"]].sum()
    merged = months.merge(totals, on=["period", "segment"], how="left", suffixes=("", "_snap")).fillna({"open_deals_snap": 0, "pipeline_value_snap": 0})
    assert (merged["open_deals"] == merged["open_deals_snap"]).all()
    assert np.allclose(merged["pipeline_value"], merged["pipeline_value_snap"])


def test_sample_stalled_and_slips_agree(sample):
    deals, history, stages = sample
    durations = stage_durations_table(deals, stage_events(history, SAMPLE_AS_OF), stages, SAMPLE_AS_OF)
    stalled = stalled_deals(deals, history, durations, SAMPLE_AS_OF)
    slips = close_date_slips(deals, history, SAMPLE_AS_OF)
    assert len(stalled) > 0 and stalled["reason"].str.len().gt(0).all()
    assert (stalled["is_stalled"] | stalled["is_aged"]).all()
    per_deal = slips.groupby("deal_id").agg(pushes=("deal_id", "size"), days=("days_slipped", "sum"))
    merged = stalled.set_index("deal_id").join(per_deal).fillna({"pushes": 0, "days": 0.0})
    assert (merged["push_count"] == merged["pushes"]).all()
    assert np.allclose(merged["days_slipped"], merged["days"])
    # Every slip moves the date later by exactly the days between from and to.
    assert ((slips["to_close_date"] - slips["from_close_date"]).dt.days == slips["days_slipped"]).all()
    assert (slips["days_slipped"] > 0).all()
