"""The sample CRM: deterministic, in the genuine Salesforce Data Export format, realistic, internally
consistent, and its published true win probability is right (checked against independent
Monte Carlo continuations of the same dynamics and against realised outcomes)."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.config import load_project_config
from etl.pipeline_state import as_of_end, pipeline_at, pipeline_at_many, prepare_history
from sample_crm.cli import main
from sample_crm.formatting import format_timestamps
from sample_crm.generate import generate_sample
from sample_crm.parameters import ADVANCE, BACK, LOST, SKIP, STAY, WON
from sample_crm.quotas import _business_day_shares, expected_new_deal_revenue, expected_new_deal_wins
from sample_crm.world import SampleWorld
from etl.stages import PipelineStages, StageCatalog

END = dt.date(2026, 11, 15)  # a Sunday
SEED = 3
N_DEALS = 2000
DEVORG = Path(__file__).resolve().parents[3] / "shared" / "data" / "salesforce_devorg_sample"
SALESFORCE_FILES = ("Opportunity.csv", "OpportunityHistory.csv", "Account.csv", "User.csv")
ALL_FILES = (*SALESFORCE_FILES, "quotas.csv", "truth_win_probability.csv")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2} 00:00:00$")
QUOTED_LINE = re.compile(r'^"[^"]*"(,"[^"]*")*$')


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("sample_crm"), n_deals=N_DEALS, seed=SEED, end_date=END)


@pytest.fixture(scope="module")
def export(sample):
    return {
        name: pd.read_csv(sample.out_dir / name, dtype=str, keep_default_na=False)
        for name in SALESFORCE_FILES + ("truth_win_probability.csv",)
    }


@pytest.fixture(scope="module")
def catalog():
    return load_project_config().stages


@pytest.fixture(scope="module")
def world():
    return SampleWorld.build(seed=SEED, n_deals=N_DEALS, end_date=END)


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return next(csv.reader(f))


def _case_suffix(id15: str) -> str:
    """Salesforce's case-safe suffix, written out from its definition."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in range(3):
        part = id15[chunk * 5 : chunk * 5 + 5]
        suffix += alphabet[sum(1 << i for i, ch in enumerate(part) if "A" <= ch <= "Z")]
    return suffix


def _annotated_history(export, catalog) -> pd.DataFrame:
    """History rows per deal in time order, with pipeline, stage order/status and the previous row."""
    o, h = export["Opportunity.csv"], export["OpportunityHistory.csv"]
    hist = h.assign(row=np.arange(len(h))).merge(
        o[["Id", "Pipeline__c"]].rename(columns={"Id": "OpportunityId", "Pipeline__c": "pipeline"}), on="OpportunityId"
    )
    hist = catalog.annotate(hist, stage_col="StageName")
    hist = hist.sort_values(["OpportunityId", "CreatedDate", "row"], kind="stable").reset_index(drop=True)
    hist["first"] = hist["OpportunityId"].ne(hist["OpportunityId"].shift())
    for col in ("stage_order", "stage_status", "StageName", "Amount", "CloseDate"):
        hist[f"prev_{col}"] = hist[col].shift().where(~hist["first"])
    return hist


# ----------------------------------------------------------------------------------------------
# Determinism and the command line
# ----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, capsys):
    generate_sample(tmp_path / "a", n_deals=1000, seed=11, end_date=END)
    assert main(["--out", str(tmp_path / "b"), "--deals", "1000", "--seed", "11", "--end-date", "2026-11-15"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "1,000 deals" in printed[0] and "2026-11-15" in printed[0]
    generate_sample(tmp_path / "c", n_deals=1000, seed=12, end_date=END)
    for name in ALL_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "truth_win_probability.csv"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert not list(tmp_path.glob("*/*.partial"))


# ----------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------
def test_headers_are_the_devorg_export_standard_columns_plus_the_documented_extras(sample):
    fields = load_project_config().salesforce
    extras = {
        "Opportunity.csv": [
            "CurrencyIsoCode", fields.pipeline_field, fields.product_field, fields.region_field,
            fields.segment_field, fields.lost_reason_field,
        ],
        "OpportunityHistory.csv": ["PrevAmount", "PrevCloseDate"],
        "Account.csv": [],
    }  # fmt: skip
    for name, extra in extras.items():
        standard = [c for c in _header(DEVORG / name) if not c.endswith("__c")]
        assert _header(sample.out_dir / name) == standard + extra, name
    assert _header(sample.out_dir / "User.csv") == [
        "Id", "Name", "FirstName", "LastName", "Department", "Division", "Title", "IsActive", "UserRoleId",
    ]  # fmt: skip


def test_every_value_is_quoted_and_values_parse_like_the_devorg_export(sample, export):
    for name in SALESFORCE_FILES:
        text = (sample.out_dir / name).read_text(encoding="utf-8")
        lines = text.split("\n")
        assert lines[-1] == "" and "\r" not in text, name
        unquoted = [i for i, line in enumerate(lines[:-1]) if not QUOTED_LINE.match(line)]
        assert unquoted == [], f"{name}: lines {unquoted[:5]} have unquoted values"

    devorg = pd.read_csv(DEVORG / "Opportunity.csv", dtype=str, keep_default_na=False)
    assert devorg["CloseDate"].str.match(DATE).all() and devorg["CreatedDate"].str.match(TIMESTAMP).all()

    o, h = export["Opportunity.csv"], export["OpportunityHistory.csv"]
    for col in ("CreatedDate", "LastModifiedDate", "SystemModstamp", "LastStageChangeDate"):
        assert o[col].str.match(TIMESTAMP).all(), col
    assert o["CloseDate"].str.match(DATE).all()
    for col in ("CreatedDate", "CreatedDateForInsert", "SystemModstamp"):
        assert h[col].str.match(TIMESTAMP).all(), col
    assert h["CloseDate"].str.match(DATE).all()
    for col in ("IsDeleted", "IsPrivate", "IsClosed", "IsWon", "HasOpportunityLineItem"):
        assert set(o[col]) <= {"0", "1"}, col
    assert (o["IsDeleted"] == "0").all() and (o["CurrencyIsoCode"] == "USD").all()
    assert (o["Amount"].astype(float) > 0).all() and o["Probability"].astype(int).between(0, 100).all()
    assert set(o["Segment__c"]) == {"SMB", "Mid-Market", "Enterprise"}
    # blanks: PrevAmount and PrevCloseDate exactly on each deal's first row, loss reasons exactly on lost deals
    first = ~h["OpportunityId"].duplicated()
    assert ((h["PrevAmount"] == "") == first).all() and ((h["PrevCloseDate"] == "") == first).all()
    assert h.loc[~first, "PrevCloseDate"].str.match(DATE).all()
    lost = o["StageName"] == "Closed Lost"
    assert ((o["Loss_Reason__c"] != "") == lost).all()
    assert pd.to_datetime(h["CreatedDate"], format="%Y-%m-%d %H:%M:%S").notna().all()


def test_ids_are_18_characters_with_the_salesforce_case_suffix(export):
    devorg = pd.read_csv(DEVORG / "Opportunity.csv", dtype=str, keep_default_na=False)
    assert all(_case_suffix(i[:15]) == i[15:] for i in devorg["Id"])  # the helper is right on real ids
    prefixes = {"Opportunity.csv": "006", "OpportunityHistory.csv": "008", "Account.csv": "001", "User.csv": "005"}
    for name, prefix in prefixes.items():
        ids = export[name]["Id"]
        assert ids.str.match(rf"^{prefix}[0-9A-Za-z]{{15}}$").all(), name
        assert ids.is_unique, name
        assert all(_case_suffix(i[:15]) == i[15:] for i in ids), name


def test_timestamps_are_formatted_like_the_standard_library_does():
    moments = [
        dt.datetime(1999, 12, 31, 23, 59, 59),
        dt.datetime(2000, 2, 29, 0, 0, 0),
        dt.datetime(2024, 2, 29, 6, 5, 4),
        dt.datetime(2026, 11, 15, 19, 59, 59),
    ]
    seconds = np.array([int(m.replace(tzinfo=dt.timezone.utc).timestamp()) for m in moments])
    formatted = format_timestamps(seconds, blank=np.array([False, False, True, False])).to_pylist()
    assert formatted == ["1999-12-31 23:59:59", "2000-02-29 00:00:00", "", "2026-11-15 19:59:59"]


# ----------------------------------------------------------------------------------------------
# Domain realism
# ----------------------------------------------------------------------------------------------
def test_the_sales_process_has_every_kind_of_movement(export, catalog):
    hist = _annotated_history(export, catalog)
    later = ~hist["first"]
    both_open = later & (hist["stage_status"] == "open") & (hist["prev_stage_status"] == "open")
    step = hist["stage_order"] - hist["prev_stage_order"]
    moves = {
        "advance one stage": (both_open & (step == 1)).sum(),
        "skip a stage": (both_open & (step == 2)).sum(),
        "move backward": (both_open & (step < 0)).sum(),
        "won": (later & (hist["stage_status"] == "won")).sum(),
        "won before the last open stage": (
            later & (hist["stage_status"] == "won") & (hist["prev_stage_order"] < hist["stage_order"] - 1)
        ).sum(),
        "lost": (later & (hist["stage_status"] == "lost")).sum(),
        "amount change": (later & (hist["Amount"] != hist["prev_Amount"])).sum(),
        "close date pushed": (later & (hist["stage_status"] == "open") & (hist["CloseDate"] > hist["prev_CloseDate"])).sum(),
        "close date pulled in": (later & (hist["stage_status"] == "open") & (hist["CloseDate"] < hist["prev_CloseDate"])).sum(),
    }
    assert all(count >= 5 for count in moves.values()), moves
    # amount revisions happen on entering the proposal stage more than anywhere else
    revised = later & (hist["Amount"] != hist["prev_Amount"]) & (hist["StageName"] != hist["prev_StageName"])
    assert hist.loc[revised, "StageName"].value_counts().index[0] == "Proposal/Price Quote"


def test_outcomes_span_and_organisation_look_like_a_real_sales_org(sample, export):
    o, u = export["Opportunity.csv"], export["User.csv"]
    won, lost = o["IsWon"] == "1", (o["IsClosed"] == "1") & (o["IsWon"] == "0")
    is_open = o["IsClosed"] == "0"
    assert (sample.won, sample.lost, sample.open) == (won.sum(), lost.sum(), is_open.sum())
    assert min(sample.won, sample.lost, sample.open) > 0 and sample.n_deals == len(o) == N_DEALS

    created = pd.to_datetime(o["CreatedDate"])
    assert created.max() - created.min() >= pd.Timedelta(days=3 * 365)
    assert created.max() <= pd.Timestamp(END) + pd.Timedelta(days=1)
    assert o["Pipeline__c"].nunique() >= 3 and o["Product__c"].nunique() >= 3 and o["Region__c"].nunique() >= 3
    teams = o["OwnerId"].map(dict(zip(u["Id"], u["Department"])))
    assert teams.notna().all() and teams.nunique() >= 3 and o["OwnerId"].nunique() >= 10

    closed = o[~is_open]
    win_rate = (closed["IsWon"] == "1").mean()
    assert 0.30 <= win_rate <= 0.45
    by_pipeline = closed.groupby("Pipeline__c")["IsWon"].apply(lambda s: (s == "1").mean())
    assert by_pipeline["Expansion"] > by_pipeline["New Business"] + 0.1
    cycle = (pd.to_datetime(closed["CloseDate"]) - pd.to_datetime(closed["CreatedDate"]).dt.normalize()).dt.days
    won_cycle = cycle[closed["IsWon"] == "1"]
    assert 40 <= won_cycle.median() <= 150  # a few months
    assert 1.4 <= won_cycle.quantile(0.9) / won_cycle.median() <= 3.0


def test_closing_follows_the_calendar(world):
    """More wins in the last weeks of a quarter, fewer in summer and late December, same state."""
    deal_class = world.deal_class(["New Business"], [world.users["Name"].iloc[0]], ["Core Platform"], ["Mid-Market"])
    last_stage = 5  # Negotiation/Review is the sixth open stage of New Business

    def won(day: dt.date) -> float:
        week = (day - dt.date(1970, 1, 5)).days // 7
        return float(world.transition_probabilities(week)[WON, deal_class[0], last_stage, 0])

    quarter_end, mid_quarter = won(dt.date(2026, 3, 25)), won(dt.date(2026, 2, 11))
    summer, late_december = won(dt.date(2026, 8, 12)), won(dt.date(2026, 12, 30))
    assert quarter_end > 1.5 * mid_quarter
    assert summer < mid_quarter and late_december < mid_quarter


# ----------------------------------------------------------------------------------------------
# Consistency
# ----------------------------------------------------------------------------------------------
def test_export_is_internally_consistent(sample, export, catalog):
    o, h, t = export["Opportunity.csv"], export["OpportunityHistory.csv"], export["truth_win_probability.csv"]
    stage_info = catalog.annotate(o[["Pipeline__c", "StageName"]], "Pipeline__c", "StageName")
    assert stage_info["stage_status"].notna().all()
    assert ((o["IsClosed"] == "1") == (stage_info["stage_status"] != "open")).all()
    assert ((o["IsWon"] == "1") == (stage_info["stage_status"] == "won")).all()
    assert (o["Probability"].astype(int) == (100 * stage_info["stage_probability"]).round().astype(int)).all()
    assert (o["ExpectedRevenue"].astype(int) == o["Amount"].astype(int) * o["Probability"].astype(int) // 100).all()
    category = dict(zip(zip(o["Pipeline__c"], o["StageName"]), o["ForecastCategoryName"]))
    assert category[("New Business", "Negotiation/Review")] == "Commit"
    assert category[("New Business", "Proposal/Price Quote")] == "Best Case"
    assert category[("New Business", "Prospecting")] == "Pipeline"
    assert category[("Expansion", "Closed Won")] == "Closed"

    # the file is in Id order, which is time order; each deal's rows are then in time order too
    assert h["Id"].is_monotonic_increasing and h["CreatedDate"].is_monotonic_increasing
    first = h.groupby("OpportunityId", sort=False).first()
    last = h.groupby("OpportunityId", sort=False).last()
    deals = o.set_index("Id")
    assert len(first) == len(o)
    assert (first["CreatedDate"] == deals.loc[first.index, "CreatedDate"]).all()
    assert (first["PrevAmount"] == "").all()
    # the deal's final state is its last history row; closed deals close on the closing row's date
    current = deals.loc[last.index]
    for col in ("StageName", "Amount", "CloseDate"):
        assert (last[col] == current[col]).all(), col
    closed = current["IsClosed"] == "1"
    assert (current.loc[closed, "CloseDate"].str[:10] == last.loc[closed, "CreatedDate"].str[:10]).all()
    assert (current.loc[closed, "LastModifiedDate"] == last.loc[closed, "CreatedDate"]).all()
    # every later row carries the previous row's amount and close date
    prev = h.groupby("OpportunityId")[["Amount", "CloseDate"]].shift()
    later = prev["Amount"].notna()
    assert (h.loc[later, "PrevAmount"] == prev.loc[later, "Amount"]).all()
    assert (h.loc[later, "PrevCloseDate"] == prev.loc[later, "CloseDate"]).all()

    # the truth file has one row per history row, in the same order
    assert sample.n_history_rows == len(h) == len(t)
    assert (t["deal_id"] == h["OpportunityId"]).all() and (t["changed_at"] == h["CreatedDate"]).all()
    assert (t["stage"] == h["StageName"]).all()
    truth = t["true_win_probability"].astype(float)
    assert (truth[t["stage"] == "Closed Won"] == 1.0).all() and (truth[t["stage"] == "Closed Lost"] == 0.0).all()
    open_rows = ~t["stage"].isin(["Closed Won", "Closed Lost"])
    assert truth[open_rows].between(0.0, 1.0, inclusive="neither").all()


# ----------------------------------------------------------------------------------------------
# The truth is right
# ----------------------------------------------------------------------------------------------
def test_true_probability_matches_simulated_continuations(world):
    """From fixed states, run many independent continuations of the weekly process and compare
    the share that ends won with the exact probability, within four standard errors (plus the
    share still open when the continuations stop)."""
    users = world.users.sort_values("skill_level")
    weak, strong = users["Name"].iloc[0], users["Name"].iloc[-1]
    states = [  # pipeline, stage, position among its open stages, weeks in stage, owner, product, segment
        ("New Business", "Prospecting", 0, 0, weak, "Core Platform", "SMB"),
        ("New Business", "Qualification", 1, 3, strong, "Enterprise Suite", "Enterprise"),
        ("New Business", "Negotiation/Review", 5, 1, strong, "Support Plan", "Mid-Market"),
        ("Expansion", "Negotiation/Review", 2, 12, weak, "Analytics Add-on", "Enterprise"),
        ("Channel", "Prospecting", 0, 0, weak, "Support Plan", "SMB"),
        ("Channel", "Qualification", 1, 26, strong, "Core Platform", "SMB"),
    ]
    boundary = (dt.date(2026, 3, 2) - dt.date(1970, 1, 5)).days // 7  # Monday 2 March 2026, 00:00 UTC
    monday = pd.Timestamp("2026-03-02")
    frame = pd.DataFrame(
        {
            "snapshot_at": monday,
            "pipeline": [s[0] for s in states],
            "stage": [s[1] for s in states],
            # entered on a Wednesday, (weeks in stage + 1) weeks before the snapshot's week
            "stage_entered_at": [monday - pd.Timedelta(weeks=s[3] + 1) + pd.Timedelta(days=2, hours=10) for s in states],
            "owner": [s[4] for s in states],
            "product": [s[5] for s in states],
            "account_segment": [s[6] for s in states],
            "status": "open",
        }
    )
    truth = world.true_win_probability(frame).to_numpy()
    assert truth.max() - truth.min() > 0.4  # the states differ enough for the check to have power

    n = 20_000  # four standard errors stay below 0.013: an error in one transition of the induction shows
    rng = np.random.default_rng(20261115)
    deal_class = np.repeat(world.deal_class(frame["pipeline"], frame["owner"], frame["product"], frame["account_segment"]), n)
    stage = np.repeat(np.array([s[2] for s in states], dtype=np.int16), n)
    weeks_in_stage = np.repeat(np.array([s[3] for s in states], dtype=np.int16), n)
    won = np.zeros(len(stage), dtype=bool)
    still_open = np.ones(len(stage), dtype=bool)
    week = boundary
    while still_open.any() and week < boundary + 1500:
        idx = np.flatnonzero(still_open)
        outcome, stage[idx], weeks_in_stage[idx] = world.step(
            deal_class[idx], stage[idx], weeks_in_stage[idx], week, rng.random(idx.size)
        )
        won[idx[outcome == WON]] = True
        still_open[idx[(outcome == WON) | (outcome == LOST)]] = False
        week += 1
    for i, p in enumerate(truth):
        paths = slice(i * n, (i + 1) * n)
        observed = won[paths].mean()
        bound = 4 * math.sqrt(p * (1 - p) / n) + still_open[paths].mean()
        assert abs(observed - p) <= bound, (states[i], observed, p, bound)


def test_weeks_in_stage_are_counted_from_timestamps_as_documented(world):
    deal_class = world.deal_class(["Channel"], [world.users["Name"].iloc[1]], ["Analytics Add-on"], ["Mid-Market"])
    stage = np.array([2])  # Proposal/Price Quote, third open stage of Channel
    b = (dt.date(2026, 11, 9) - dt.date(1970, 1, 5)).days // 7  # the week starting Monday 9 November 2026

    def truth_at(snapshot: pd.Timestamp, entered: pd.Timestamp) -> float:
        frame = pd.DataFrame(
            {
                "snapshot_at": [snapshot], "pipeline": ["Channel"], "stage": ["Proposal/Price Quote"],
                "stage_entered_at": [entered], "owner": [world.users["Name"].iloc[1]],
                "product": ["Analytics Add-on"], "account_segment": ["Mid-Market"], "status": ["open"],
            }
        )  # fmt: skip
        return float(world.true_win_probability(frame).iloc[0])

    def exact(weeks: int, boundary: int) -> float:
        return float(world.win_probability(deal_class, stage, np.array([weeks]), np.array([boundary]))[0])

    entered = pd.Timestamp("2026-10-21 10:00")  # Wednesday of the week starting 19 October = b - 3
    at_boundary = exact(2, b)  # two full weeks in stage at Monday 9 November
    assert truth_at(pd.Timestamp("2026-11-09 00:00"), entered) == at_boundary
    assert truth_at(pd.Timestamp(as_of_end(dt.date(2026, 11, 8))), entered) == at_boundary  # end of Sunday
    assert truth_at(pd.Timestamp("2026-11-06 20:00"), entered) == at_boundary  # Friday after the change window
    assert truth_at(pd.Timestamp("2026-11-04 12:00"), entered) == exact(1, b - 1)  # inside the window: start of week
    assert truth_at(pd.Timestamp("2026-11-04 12:00"), pd.Timestamp("2026-11-03 10:00")) == exact(0, b)
    assert truth_at(pd.Timestamp("2026-11-09 00:00"), pd.Timestamp("2025-01-08 10:00")) == exact(26, b) == exact(60, b)
    assert exact(2, b) != exact(1, b) != exact(2, b - 1)
    won_row = pd.DataFrame({"snapshot_at": [pd.Timestamp("2026-11-09")], "pipeline": ["Channel"], "stage": ["Closed Won"],
                            "stage_entered_at": [entered], "owner": ["nobody"], "product": ["x"], "account_segment": ["x"],
                            "status": ["won"]})  # fmt: skip
    assert world.true_win_probability(won_row).tolist() == [1.0]


def test_truth_at_creation_matches_the_realised_win_rate(export):
    o, t = export["Opportunity.csv"], export["truth_win_probability.csv"]
    at_creation = t.groupby("deal_id", sort=False)["true_win_probability"].first().astype(float)
    early = o[pd.to_datetime(o["CreatedDate"]) < pd.Timestamp(END) - pd.Timedelta(days=540)]
    n = len(early)
    mean_truth = at_creation.loc[early["Id"]].mean()
    won = (early["IsWon"] == "1").sum()
    still_open = (early["IsClosed"] == "0").sum()
    se = math.sqrt(mean_truth * (1 - mean_truth) / n)
    assert n > 800 and still_open < 0.01 * n
    assert won / n - 4 * se <= mean_truth <= (won + still_open) / n + 4 * se


def test_truth_within_a_horizon_counts_the_weeks_and_the_part_of_a_week_inside_it(world):
    """A deal at Monday 00:00 of week b. Each week's change happens on one of its five weekdays
    (equally likely) between 06:00 and 20:00 (uniformly). Within 7 days all of week b's changes
    count and none of week b+1's, so the chance is week b's win probability; within 4 days (to
    Friday 00:00) a win of week b counts if it came Monday to Thursday, 4 of 5 days; within 3.5
    days (to Thursday 12:00) Monday to Wednesday and 6 of Thursday's 14 hours; within 14 days, a
    win in week b or, after one step in week b, in week b+1; within 10 days (to Thursday 00:00 of
    week b+1) such a win of week b+1 counts 3 times in 5; a horizon long enough is the eventual win
    probability."""
    frame = pd.DataFrame(
        {
            "snapshot_at": [pd.Timestamp("2026-11-09 00:00")], "pipeline": ["Channel"], "stage": ["Proposal/Price Quote"],
            "stage_entered_at": [pd.Timestamp("2026-10-21 10:00")], "owner": [world.users["Name"].iloc[1]],
            "product": ["Analytics Add-on"], "account_segment": ["Mid-Market"], "status": ["open"],
        }
    )  # fmt: skip
    deal_class = world.deal_class(["Channel"], [world.users["Name"].iloc[1]], ["Analytics Add-on"], ["Mid-Market"])[0]
    b = (dt.date(2026, 11, 9) - dt.date(1970, 1, 5)).days // 7
    stage, weeks = 2, 2  # Proposal/Price Quote, two full weeks in stage at the boundary
    this_week, next_week = world.transition_probabilities(b), world.transition_probabilities(b + 1)
    n_open = len(world.stages["Channel"].open_stages)

    def win_next_week(to_stage: int, in_stage: int) -> float:
        return float(next_week[WON][deal_class, to_stage, in_stage]) if 0 <= to_stage < n_open else 0.0

    within = lambda days: float(world.true_win_within_probability(frame, days).iloc[0])  # noqa: E731
    won_this_week = float(this_week[WON][deal_class, stage, weeks])
    assert within(7.0) == pytest.approx(won_this_week, abs=1e-12)
    assert within(4.0) == pytest.approx(won_this_week * 4 / 5, abs=1e-12)
    assert within(3.5) == pytest.approx(won_this_week * (3 + 6 / 14) / 5, abs=1e-12)
    assert within(0.25) == 0.0  # Monday 06:00: no change has happened yet
    # Within 14 days: won this week, or one step this week (advance, skip, back: 0 weeks in the new
    # stage; stay: one more week) and won from there next week. One step per week.
    step = {outcome: float(this_week[outcome][deal_class, stage, weeks]) for outcome in (ADVANCE, SKIP, BACK, STAY, WON)}
    two_weeks = (
        step[WON]
        + step[ADVANCE] * win_next_week(stage + 1, 0)
        + step[SKIP] * win_next_week(stage + 2, 0)
        + step[BACK] * win_next_week(stage - 1, 0)
        + step[STAY] * win_next_week(stage, weeks + 1)
    )
    assert within(14.0) == pytest.approx(two_weeks, abs=1e-12)
    assert within(10.0) == pytest.approx(step[WON] + (two_weeks - step[WON]) * 3 / 5, abs=1e-12)
    assert within(5000.0) == pytest.approx(float(world.true_win_probability(frame).iloc[0]), abs=1e-9)
    assert 0.0 < within(4.0) < within(7.0) < within(10.0) < within(14.0) < within(90.0) < within(5000.0)


@pytest.fixture(scope="module")
def rebuilt(export, catalog):
    """The export's deals and prepared history, as etl.pipeline_state rebuilds them."""
    o, h, u = (export[n] for n in ("Opportunity.csv", "OpportunityHistory.csv", "User.csv"))
    names = dict(zip(u["Id"], u["Name"]))
    deals = pd.DataFrame(
        {
            "deal_id": o["Id"], "pipeline": o["Pipeline__c"], "deal_name": o["Name"], "account": o["AccountId"],
            "owner": o["OwnerId"].map(names), "team": o["OwnerId"].map(dict(zip(u["Id"], u["Department"]))),
            "product": o["Product__c"], "region": o["Region__c"], "account_segment": o["Segment__c"],
            "lead_source": o["LeadSource"], "deal_type": o["Type"], "currency": o["CurrencyIsoCode"],
            "source_system": "salesforce", "has_history": True, "created_at": pd.to_datetime(o["CreatedDate"]),
        }
    )  # fmt: skip
    history = pd.DataFrame(
        {
            "deal_id": h["OpportunityId"], "changed_at": pd.to_datetime(h["CreatedDate"]), "stage": h["StageName"],
            "amount": h["Amount"].astype(float), "amount_reporting": h["Amount"].astype(float),
            "expected_close_date": pd.to_datetime(h["CloseDate"]), "crm_probability": h["Probability"].astype(float) / 100,
            "forecast_category": h["ForecastCategory"], "source_file": "OpportunityHistory.csv",
            "source_row": np.arange(2, len(h) + 2),
        }
    )  # fmt: skip
    return deals, prepare_history(deals, history, catalog)


def test_point_in_time_truth_agrees_with_the_truth_file(export, rebuilt, world):
    """Rebuild the pipeline at Mondays with etl.pipeline_state; for deals whose last change was in
    the week before the Monday, the two computations describe the same state and must agree."""
    deals, history = rebuilt
    t = export["truth_win_probability.csv"]
    mondays = pd.date_range("2024-01-01", "2026-11-09", freq="5W-MON")
    frame = pipeline_at_many(deals, history, mondays)
    frame["truth"] = world.true_win_probability(frame).to_numpy()
    assert (frame.loc[frame["status"] == "won", "truth"] == 1).all()
    assert (frame.loc[frame["status"] == "lost", "truth"] == 0).all()

    # The same resolution on both sides (pandas 2 parses text as ns, the pipeline works in us).
    rows = t.assign(row_at=pd.to_datetime(t["changed_at"]).astype(frame["snapshot_at"].dtype), file_truth=t["true_win_probability"].astype(float))
    merged = pd.merge_asof(
        frame.sort_values("snapshot_at"), rows[["deal_id", "row_at", "file_truth"]].sort_values("row_at"),
        left_on="snapshot_at", right_on="row_at", by="deal_id",
    )  # fmt: skip
    recent = (merged["status"] == "open") & (merged["snapshot_at"] - merged["row_at"] < pd.Timedelta(days=7))
    assert recent.sum() > 500
    assert np.abs(merged.loc[recent, "truth"] - merged.loc[recent, "file_truth"]).max() < 1e-9


def test_truth_within_part_of_a_week_matches_the_simulated_wins(rebuilt, world):
    """At every Monday 00:00, the open deals' chance of being won within 4 days (by Friday 00:00:
    Monday to Thursday, 4 of the week's 5 days of changes) and within 2.5 days (by Wednesday
    12:00) against the share of them that the simulation won by then, within 4 standard errors
    (a deal is won at most once, so its rows at different Mondays are never won together). A
    truth that left out the week holding the horizon's end would give 0 for both."""
    deals, history = rebuilt
    mondays = pd.date_range("2023-01-02", "2026-11-02", freq="W-MON")
    frame = pipeline_at_many(deals, history, mondays)
    frame = frame.loc[frame["status"] == "open"].reset_index(drop=True)
    final = pipeline_at(deals, history, as_of_end(END))
    won_at = frame["deal_id"].map(final.loc[final["status"] == "won"].set_index("deal_id")["closed_at"])
    assert len(frame) > 15_000
    for days in (4.0, 2.5):
        truth = world.true_win_within_probability(frame, days).to_numpy()
        won = ((won_at >= frame["snapshot_at"]) & (won_at < frame["snapshot_at"] + pd.Timedelta(days=days))).to_numpy()
        se = math.sqrt(float(np.sum(truth * (1 - truth)))) / len(frame)
        assert won.mean() > 10 * se
        assert abs(won.mean() - truth.mean()) <= 4 * se, (days, won.mean(), truth.mean(), se)


def test_true_win_probability_names_row_and_column_of_unknown_values(world):
    frame = pd.DataFrame(
        {
            "snapshot_at": [pd.Timestamp("2026-11-09")] * 2, "pipeline": ["New Business"] * 2,
            "stage": ["Prospecting"] * 2, "stage_entered_at": [pd.Timestamp("2026-11-02 10:00")] * 2,
            "owner": [world.users["Name"].iloc[0], "Somebody Else"], "product": ["Core Platform"] * 2,
            "account_segment": ["SMB"] * 2, "status": ["open"] * 2,
        }
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"row 1, column 'owner': 'Somebody Else'"):
        world.true_win_probability(frame)
    with pytest.raises(ValueError, match=r"row 0, column 'status'"):
        world.true_win_probability(frame.assign(status=["pending", "open"]))


# ----------------------------------------------------------------------------------------------
# Quotas
# ----------------------------------------------------------------------------------------------
def test_quotas_cover_the_span_and_stretch_over_the_expected_revenue(sample, export):
    q = pd.read_csv(sample.out_dir / "quotas.csv", dtype={"quarter": str, "segment": str})
    o, u = export["Opportunity.csv"], export["User.csv"]
    # 3.5 years before 15 Nov 2026 is 17 May 2023 (2023-Q2); the span ends in 2026-Q4, plus two quarters
    expected = [f"{y}-Q{n}" for y in range(2023, 2028) for n in range(1, 5)]
    expected = expected[expected.index("2023-Q2") : expected.index("2027-Q2") + 1]
    assert sorted(q["quarter"].unique()) == expected
    assert set(q["segment_type"]) == {"all", "team", "pipeline"}
    assert set(q.loc[q["segment_type"] == "team", "segment"]) == set(u["Department"])
    assert set(q.loc[q["segment_type"] == "pipeline", "segment"]) == {"New Business", "Expansion", "Channel"}
    assert (q["amount"] >= 0).all() and (q["amount"] % 1000 == 0).all()
    totals = q[q["segment_type"] == "all"].set_index("quarter")["amount"]
    n_teams = u["Department"].nunique()
    for kind, slack in (("team", 500 * n_teams), ("pipeline", 500 * 3)):
        parts = q[q["segment_type"] == kind].groupby("quarter")["amount"].sum()
        assert (parts - totals).abs().max() <= slack, kind
    assert totals["2026-Q2"] > 1.3 * totals["2024-Q2"]  # the organisation grows about 25% a year

    # complete quarters after the ramp-up: quota about 1.1 x the won revenue (noisy at this size)
    won = o[o["IsWon"] == "1"]
    close = pd.to_datetime(won["CloseDate"])
    quarter = close.dt.year.astype(str) + "-Q" + ((close.dt.month - 1) // 3 + 1).astype(str)
    mature = expected[expected.index("2023-Q4") : expected.index("2026-Q3") + 1]
    won_revenue = won["Amount"].astype(float).groupby(quarter).sum().reindex(mature).sum()
    assert 0.9 <= totals[mature].sum() / won_revenue <= 1.4


def test_business_day_shares_count_the_weekdays_inside_the_window(world):
    # 2025-01-01 is a Wednesday: its week runs Monday 30 December to Friday 3 January.
    week = np.array([(dt.date(2024, 12, 30) - dt.date(1970, 1, 5)).days // 7])
    assert _business_day_shares(world, week, dt.date(2025, 1, 1), dt.date.max).tolist() == [3 / 5]
    assert _business_day_shares(world, week, dt.date(2024, 1, 1), dt.date(2024, 12, 31)).tolist() == [2 / 5]
    # a window starting on a Saturday holds none of that week's weekdays, all of the next one's
    assert _business_day_shares(world, week + np.array([0, 1]), dt.date(2025, 1, 4), dt.date.max).tolist() == [0.0, 1.0]


def test_expected_new_deal_wins_match_the_simulated_ones(export, world):
    """The deals the parameters expect to be created inside a window and won inside it, against
    the simulation's draws, for windows of a year and of a quarter (the 2,000-deal sample). The
    counts are compared: a sum of amounts is dominated by a few large deals at this size. The
    drawn counts are Poisson-like, so the bound is three standard errors, sqrt(expected)."""
    o = export["Opportunity.csv"]
    won = o[o["IsWon"] == "1"]
    created = pd.to_datetime(won["CreatedDate"])
    close = pd.to_datetime(won["CloseDate"])
    years = [(dt.date(y, 1, 1), dt.date(y + 1, 1, 1)) for y in (2024, 2025)] + [(dt.date(2026, 1, 1), dt.date(2026, 10, 1))]
    quarters = [(dt.date(y, m, 1), dt.date(y + (m == 10), 1 if m == 10 else m + 3, 1)) for y in (2024, 2025) for m in (1, 4, 7, 10)]
    for windows in (years, quarters):
        drawn = sum(int(((created >= pd.Timestamp(a)) & (close < pd.Timestamp(b))).sum()) for a, b in windows)
        expected = sum(float(expected_new_deal_wins(world, a, b).sum()) for a, b in windows)
        assert expected > 100
        assert abs(drawn - expected) <= 3 * math.sqrt(expected), (windows, drawn, expected)
    # revenue is the expected wins of each class times its expected amount
    a, b = quarters[0]
    wins = expected_new_deal_wins(world, a, b)
    assert expected_new_deal_revenue(world, a, b) == pytest.approx(float((wins * world.mean_amount()).sum()))


# ----------------------------------------------------------------------------------------------
# Another stage catalogue
# ----------------------------------------------------------------------------------------------
def test_a_custom_stage_catalogue_is_simulated_with_its_own_stages(tmp_path):
    renewals = PipelineStages(
        name="Renewals",
        open_stages=("Review", "Signature"),
        won_stage="Renewed",
        lost_stage="Churned",
        probabilities={"Review": 0.5, "Signature": 0.8},
    )
    summary = generate_sample(tmp_path, n_deals=1000, seed=5, end_date=END, years=2.0, stages=StageCatalog([renewals]))
    o = pd.read_csv(tmp_path / "Opportunity.csv", dtype=str, keep_default_na=False)
    t = pd.read_csv(tmp_path / "truth_win_probability.csv")
    assert set(o["Pipeline__c"]) == {"Renewals"}
    assert set(o["StageName"]) <= {"Review", "Signature", "Renewed", "Churned"}
    assert dict(zip(o["StageName"], o["StageSortOrder"])).get("Churned") == "4"
    assert summary.won > 0 and summary.lost > 0
    assert (t.loc[t["stage"] == "Renewed", "true_win_probability"] == 1).all()
