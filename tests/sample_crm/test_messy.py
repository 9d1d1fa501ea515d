"""The sample CRM's messy profile: a small, untidy real org's Salesforce export with its ground truth.

Every shape is counted from the written CSV files with rules written here (what a reader of the
export can see), then compared with the truth files and with the share the options ask for. The
calendar facts (the import moment, the purge days) are worked out by hand from the span."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.config import load_project_config
from etl.ingest.currency import load_rates
from etl.ingest.exports import read_exports
from etl.pipeline_state import pipeline_at_many, prepare_history
from sample_crm.cli import main
from sample_crm.generate import generate_sample
from sample_crm.messy import MessyOptions
from sample_crm.truth import SampleTruth

END = dt.date(2026, 11, 15)  # a Sunday; one year back is 2025-11-15
SEED = 21
SPANISH_OPEN = [
    "Prospección", "Calificación", "Análisis de necesidades", "Propuesta de valor", "Propuesta/Presupuesto",
    "Negociación/Revisión",
]  # fmt: skip
WON, LOST = "Cerrada ganada", "Cerrada perdida"
# 2025-11-15 + round(0.25 x 365) = 91 days = Saturday 2026-02-14: the import runs at 09:00 that day.
IMPORT_AT = pd.Timestamp("2026-02-14 09:00:00")
# Go-live in February: purges on the last Friday of May and of August (27 November is after END).
PURGES = [pd.Timestamp("2026-05-29 17:00:00"), pd.Timestamp("2026-08-28 17:00:00")]
SHAPES = [
    "imported", "keyed_at_close", "never_entered", "no_history", "last_minute_stage", "late_keyed", "stale", "purged",
    "lost_future_close", "outlier",
]  # fmt: skip
FILES = (
    "Opportunity.csv", "OpportunityHistory.csv", "Account.csv", "User.csv", "quotas.csv", "truth_win_probability.csv",
    "truth_deals.csv", "truth_real_history.csv", "truth_sample.json", "dealcast_pipelines.toml",
)  # fmt: skip
DAY = pd.Timedelta(days=1)


def _rounded(share: float, eligible: int) -> int:
    return math.floor(share * eligible + 0.5)


def _times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values.replace("", None), format="%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("messy"), seed=SEED, end_date=END, profile="messy")


@pytest.fixture(scope="module")
def export(sample):
    """The export as a reader sees it, plus per-deal facts taken from the CSV files alone."""
    read = {name: pd.read_csv(sample.out_dir / name, dtype=str, keep_default_na=False) for name in FILES if name.endswith(".csv")}
    o, h = read["Opportunity.csv"], read["OpportunityHistory.csv"]
    h = h.assign(at=_times(h["CreatedDate"]), row=np.arange(len(h))).sort_values(["OpportunityId", "at", "row"], kind="stable")
    deals = o.set_index("Id")
    deals["created"] = _times(deals["CreatedDate"])
    deals["close"] = pd.to_datetime(deals["CloseDate"], format="%Y-%m-%d 00:00:00")
    deals["status"] = np.where(deals["IsWon"] == "1", "won", np.where(deals["IsClosed"] == "1", "lost", "open"))
    grouped = h.groupby("OpportunityId", sort=False)
    deals["history_rows"] = grouped.size().reindex(deals.index).fillna(0).astype(int)
    deals["first_at"] = grouped["at"].first().reindex(deals.index)
    deals["first_stage"] = grouped["StageName"].first().reindex(deals.index)
    deals["last_at"] = grouped["at"].last().reindex(deals.index)
    deals["last_prev_close"] = pd.to_datetime(grouped["PrevCloseDate"].last().reindex(deals.index).replace("", None))
    before_last = h[h.duplicated("OpportunityId", keep="last")].groupby("OpportunityId", sort=False)
    deals["before_last_at"] = before_last["at"].last().reindex(deals.index)
    deals["before_last_stage"] = before_last["StageName"].last().reindex(deals.index)
    truth = read["truth_deals.csv"].set_index("deal_id")
    for shape in SHAPES:
        truth[shape] = truth[shape] == "1"
    for column in ("real_created_at", "real_closed_at", "hidden_loss_at", "crm_created_at", "crm_closed_at"):
        truth[column] = _times(truth[column])
    manifest = json.loads((sample.out_dir / "truth_sample.json").read_text(encoding="utf-8"))
    return {"deals": deals, "history": h, "truth": truth.loc[deals.index], "all_deals": truth, "manifest": manifest, **read}


def _eligible_wins_and_losses(export) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(really won, really lost, closed before the import) per deal, from the truth file."""
    t = export["truth"]
    closed_before_import = t["imported"] & (t["real_closed_at"] <= IMPORT_AT)
    return t["real_outcome"] == "won", t["real_outcome"] == "lost", closed_before_import


# ----------------------------------------------------------------------------------------------
# The profile, determinism, the command line
# ----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_another_seed_differs(sample, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "b"), "--profile", "messy", "--seed", str(SEED), "--end-date", END.isoformat()]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and f"{sample.n_deals} deals" in printed[0] and "stale" in printed[0]
    generate_sample(tmp_path / "c", seed=SEED + 1, end_date=END, profile="messy")
    for name in FILES:
        assert (sample.out_dir / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "truth_win_probability.csv", "truth_deals.csv"):
        assert (sample.out_dir / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert not list(tmp_path.glob("*/*.partial")) and not list(sample.out_dir.glob("*.partial"))


def test_a_small_org_over_one_year(sample, export):
    d, everyone = export["deals"], export["all_deals"]
    assert len(everyone) == 720 and everyone.index.is_unique
    # the export holds the deals that reached the CRM: all but those never entered
    assert sample.profile == "messy" and sample.n_deals == len(d) == (~everyone["never_entered"]).sum()
    assert 400 <= len(d) <= 560 and set(d.index) == set(everyone.index[~everyone["never_entered"]])
    real_created = everyone["real_created_at"]
    assert real_created.min() >= pd.Timestamp("2025-11-15") and real_created.max() < pd.Timestamp("2026-11-16")
    assert (sample.won, sample.lost, sample.open) == tuple((d["status"] == s).sum() for s in ("won", "lost", "open"))
    assert min(sample.won, sample.lost, sample.open) > 50
    assert sample.shapes == {shape: int(everyone[shape].sum()) for shape in SHAPES}


def test_with_every_shape_off_the_files_are_the_clean_profile_s(tmp_path):
    generate_sample(tmp_path / "clean", n_deals=800, seed=4, end_date=END, years=2.0)
    generate_sample(tmp_path / "off", n_deals=800, seed=4, end_date=END, years=2.0, messy=MessyOptions.off())
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "Account.csv", "User.csv", "quotas.csv", "truth_win_probability.csv"):
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name
    truth = pd.read_csv(tmp_path / "off" / "truth_deals.csv")
    assert truth[SHAPES].to_numpy().sum() == 0 and len(truth) == 800
    assert (truth["crm_status"] == truth["real_outcome"]).all()


# ----------------------------------------------------------------------------------------------
# Stages as a Spanish-speaking org's export gives them
# ----------------------------------------------------------------------------------------------
def test_spanish_stages_with_their_order_from_the_export(sample, export):
    o = export["Opportunity.csv"]
    assert set(o["StageName"]) == {*SPANISH_OPEN, WON, LOST}
    assert set(export["OpportunityHistory.csv"]["StageName"]) <= {*SPANISH_OPEN, WON, LOST}
    # Salesforce's default picklist positions, with Id. Decision Makers (5) and Perception Analysis (6) inactive
    positions = dict(zip(SPANISH_OPEN + [WON, LOST], ["1", "2", "3", "4", "7", "8", "9", "10"]))
    assert dict(zip(o["StageName"], o["StageSortOrder"])) == positions
    assert set(o["Pipeline__c"]) == {"Ventas"}

    project = load_project_config()
    assert "Ventas" not in project.stages  # not configured: the reader must learn it from the export
    result = read_exports(sample.out_dir, project, as_of=END)
    ventas = result.stages["Ventas"]
    assert list(ventas.open_stages) == SPANISH_OPEN
    assert (ventas.won_stage, ventas.lost_stage) == (WON, LOST)
    for report in result.files:
        assert report.rows_read == report.rows_accepted + report.rows_quarantined, report.path
    assert {report.path.name for report in result.files} == {"Opportunity.csv", "OpportunityHistory.csv", "Account.csv", "User.csv"}
    assert len(result.deals) == len(o) and result.quarantine.empty


# ----------------------------------------------------------------------------------------------
# Each shape, counted from the files
# ----------------------------------------------------------------------------------------------
def test_a_bulk_import_on_one_day(export):
    d, t, h = export["deals"], export["truth"], export["history"]
    counts = d["created"].value_counts()
    assert counts.index[0] == IMPORT_AT and counts.iloc[0] >= 50 and counts.iloc[1] == 1
    imported = d["created"] == IMPORT_AT
    assert (imported == t["imported"]).all()
    assert imported.sum() == (t["real_created_at"] < IMPORT_AT).sum() == export["manifest"]["shape_counts"]["imported"]
    # nothing of their earlier life: the first row is at the import, no row before it
    assert (d.loc[imported, "first_at"] == IMPORT_AT).all()
    assert (h.merge(d.loc[imported], left_on="OpportunityId", right_index=True)["at"] >= IMPORT_AT).all()
    # deals closed before the import come in closed, with one row and their real CloseDate before CreatedDate
    _, _, closed_before = _eligible_wins_and_losses(export)
    came_closed = imported & (d["status"] != "open") & (d["history_rows"] == 1)
    assert (came_closed == closed_before).all() and closed_before.sum() > 10
    assert (d.loc[came_closed, "close"] < d.loc[came_closed, "created"].dt.normalize()).all()


def test_wins_keyed_in_at_close_are_never_open_on_a_monday(export):
    d, t = export["deals"], export["truth"]
    closed = d["status"] != "open"
    # created and closed within a day: a creation row, then the closing row (or, with no history
    # at all, the CloseDate) the same day (a deal imported closed has one row only)
    closing = d["last_at"].where(d["history_rows"] > 0, d["close"])
    opened = (d["history_rows"] >= 2) & (d["first_at"] == d["created"])
    keyed = closed & (closing - d["created"] < DAY) & ((d["history_rows"] == 0) | opened)
    keyed &= d["created"].dt.normalize() == closing.dt.normalize()
    assert (keyed == t["keyed_at_close"]).all()
    # the habit (0.7) is drawn among all deals created after the import, whatever their outcome:
    # every won one is keyed in at close, 0.3 of the lost ones too, the rest never reach the CRM
    everyone = export["all_deals"]
    habit = everyone["keyed_at_close"] | everyone["never_entered"]
    assert habit.sum() == _rounded(0.7, (everyone["real_created_at"] >= IMPORT_AT).sum())
    assert not (habit & (everyone["real_created_at"] < IMPORT_AT)).any()
    outcome = everyone["real_outcome"]
    assert (everyone.loc[habit & (outcome == "won"), "keyed_at_close"]).all()
    assert (keyed & (d["status"] == "lost")).sum() == _rounded(0.3, (habit & (outcome == "lost")).sum()) > 10
    assert (outcome[everyone["never_entered"]] != "won").all() and everyone.loc[everyone["never_entered"], "crm_status"].eq("").all()
    # same calendar day, so no Monday 00:00 (nor any midnight) falls while it is open
    assert (d.loc[keyed, "created"].dt.normalize() == closing[keyed].dt.normalize()).all()
    share_of_wins = (keyed & (d["status"] == "won")).sum() / (d["status"] == "won").sum()
    assert share_of_wins > 0.3


def test_same_day_closes_without_history(export):
    d, t = export["deals"], export["truth"]
    bare = d["history_rows"] == 0
    assert (bare == t["no_history"]).all() and bare.sum() > 5
    assert (d.loc[bare, "status"] != "open").all()
    assert (d.loc[bare, "created"].dt.normalize() == d.loc[bare, "close"]).all()
    assert bare.sum() == _rounded(0.3, (t["keyed_at_close"] & ~t["late_keyed"]).sum())


def test_late_keyed_wins_have_earlier_close_dates(export):
    d, t = export["deals"], export["truth"]
    won = d["status"] == "won"
    lag = (d["last_at"].dt.normalize() - d["close"]).dt.days
    late = won & (lag >= 7) & (d["last_at"] > d["created"])  # not a deal imported already won
    assert (late == t["late_keyed"]).all()
    assert lag[late].between(7, 56 + 2).all()  # 7-56 days, a weekend moved to the Monday
    assert (d.loc[late, "CloseDate"].str[:10] == t.loc[late, "real_close_date"]).all()
    # for a win keyed in at close and late, the CloseDate is even before its creation
    assert ((d["close"] < d["created"].dt.normalize()) & late & t["keyed_at_close"]).sum() > 0
    # about 0.3 of the wins after the import (some late keyings would fall after END, so fewer)
    real_won, _, closed_before = _eligible_wins_and_losses(export)
    eligible = (real_won & ~closed_before).sum()
    assert 0.2 * eligible <= late.sum() <= _rounded(0.3, eligible)


def test_last_minute_stage_entries(export):
    d, t = export["deals"], export["truth"]
    won = d["status"] == "won"
    catch_up = (d["before_last_stage"] == SPANISH_OPEN[-1]) & (d["last_at"] - d["before_last_at"] < DAY)
    last_minute = won & catch_up & (d["last_at"] - d["created"] >= DAY)
    flagged = t["last_minute_stage"]
    assert (last_minute == (flagged & won)).all() and last_minute.sum() > 10
    # before the catch-up the CRM never left the stage the deal was created in
    h = export["history"].merge(d.loc[last_minute, ["first_stage", "before_last_at"]], left_on="OpportunityId", right_index=True)
    early = h[h["at"] < h["before_last_at"]]
    assert (early["StageName"] == early["first_stage"]).all()
    # drawn before the outcome among the deals in the CRM while undecided: lost and open ones too,
    # showing the stage they were created in on every row but a closing one
    assert (flagged & ~won).sum() > 2 * last_minute.sum() // 3
    h = export["history"].merge(d.loc[flagged & ~won, ["first_stage", "status"]], left_on="OpportunityId", right_index=True)
    shown = h.loc[h["StageName"].isin(SPANISH_OPEN), "StageName"]
    assert (shown == h.loc[shown.index, "first_stage"]).all()
    _, _, closed_before = _eligible_wins_and_losses(export)
    eligible = ~t["keyed_at_close"] & ~closed_before & (d["first_stage"] != SPANISH_OPEN[-1])
    assert flagged.sum() == _rounded(0.5, eligible.sum())


def test_stale_deals_and_the_purges_that_close_them_in_bulk(export):
    d, t, h = export["deals"], export["truth"], export["history"]
    lost = d["status"] == "lost"
    # a purge: many lost deals closed at one timestamp that is not their creation
    closing = h.groupby("OpportunityId")["at"].last()
    lost_closing = closing.reindex(d.index)[lost & (d["last_at"] != d["created"])]
    per_moment = lost_closing.value_counts()
    assert sorted(per_moment[per_moment >= 5].index) == PURGES
    assert per_moment[per_moment < 5].max() == 1
    purged = lost & d["last_at"].isin(PURGES)
    assert (purged == t["purged"]).all() and (t.loc[purged, "stale"]).all()
    assert (d.loc[purged, "Loss_Reason__c"] == "").all()
    assert (d.loc[purged, "close"] <= d.loc[purged, "last_at"].dt.normalize() - pd.Timedelta(days=30)).all()
    assert (t.loc[purged, "hidden_loss_at"] < d.loc[purged, "last_at"]).all()

    stale_open = t["stale"] & ~t["purged"]
    assert (d.loc[stale_open, "status"] == "open").all() and stale_open.sum() > 20
    assert (t.loc[stale_open, "hidden_loss_at"] < pd.Timestamp(END)).all()
    assert (d.loc[stale_open, "last_at"] < t.loc[stale_open, "hidden_loss_at"]).all()
    for purge in PURGES:  # not purged: dead only after the purge, or not yet 30 days overdue then
        dead = stale_open & (t["hidden_loss_at"] < purge)
        assert (d.loc[dead, "close"] > purge.normalize() - pd.Timedelta(days=30)).all()
    # live deals get their close date pushed: every open deal overdue at END is really dead
    overdue = (d["status"] == "open") & (d["close"] < pd.Timestamp(END))
    assert overdue.sum() > 20 and t.loc[overdue, "stale"].all()

    _, real_lost, closed_before = _eligible_wins_and_losses(export)
    assert t["stale"].sum() == _rounded(0.6, (real_lost & ~t["keyed_at_close"] & ~closed_before).sum())


def test_lost_deals_with_future_close_dates(export):
    d, t = export["deals"], export["truth"]
    recorded_loss = (d["status"] == "lost") & ~d["last_at"].isin(PURGES) & (d["history_rows"] > 0)
    future = recorded_loss & (d["close"] >= d["last_at"].dt.normalize() + pd.Timedelta(days=7))
    assert (future == t["lost_future_close"]).all() and future.sum() > 10
    assert (d.loc[future, "close"] == d.loc[future, "last_prev_close"]).all()  # the expected date, left as it was
    _, _, closed_before = _eligible_wins_and_losses(export)
    keyed = t["keyed_at_close"]
    eligible = recorded_loss & ~keyed & ~closed_before & (d["last_prev_close"] >= d["last_at"].dt.normalize() + pd.Timedelta(days=7))
    assert future.sum() == _rounded(0.4, eligible.sum())


def test_one_outlier_far_above_any_win_with_a_close_date_before_its_creation(export):
    d, t = export["deals"], export["truth"]
    amount = d["Amount"].astype(int)
    largest_win = amount[d["status"] == "won"].max()
    far_above = amount >= 5 * largest_win
    assert far_above.sum() == 1 and (far_above == t["outlier"]).all()
    deal = d[far_above].iloc[0]
    assert deal["status"] == "open" and deal["history_rows"] == 1 and deal["Amount"] == str(round(6 * largest_win, -3))
    assert pd.Timedelta(days=10) <= deal["created"].normalize() - deal["close"] <= pd.Timedelta(days=60)
    facts = t[far_above].iloc[0]
    assert facts["stale"] and facts["real_outcome"] == "lost" and int(facts["amount_reporting"]) < largest_win


# ----------------------------------------------------------------------------------------------
# The truth agrees with the files
# ----------------------------------------------------------------------------------------------
def test_truth_files_agree_with_the_export(export):
    d, t = export["deals"], export["truth"]
    assert (t["crm_status"] == d["status"]).all()
    assert (t["crm_created_at"] == d["created"]).all()
    assert (t["crm_close_date"] == d["CloseDate"].str[:10]).all()
    assert (t["amount"] == d["Amount"]).all() and (t.loc[~t["outlier"], "amount"] == t.loc[~t["outlier"], "amount_reporting"]).all()
    with_history = d["history_rows"] > 0
    closed = d["status"] != "open"
    assert (t.loc[closed & with_history, "crm_closed_at"] == d.loc[closed & with_history, "last_at"]).all()
    assert t.loc[~closed, "crm_closed_at"].isna().all()
    # every won deal's CloseDate is the real day of its win
    won = d["status"] == "won"
    assert (t.loc[won, "real_outcome"] == "won").all() and (t.loc[won, "real_close_date"] == d.loc[won, "CloseDate"].str[:10]).all()
    assert ((t["real_outcome"] == "lost") == ((d["status"] == "lost") | t["stale"])).all()

    # tidy deals (no shape) show their real life exactly
    real = export["truth_real_history.csv"]
    tidy = t.index[~t[SHAPES].any(axis=1)]
    shown = export["OpportunityHistory.csv"].loc[lambda f: f["OpportunityId"].isin(tidy)]
    lived = real[real["deal_id"].isin(tidy)]
    assert len(tidy) > 50 and len(shown) == len(lived)
    left = shown[["OpportunityId", "CreatedDate", "StageName", "Amount"]].to_numpy()
    right = lived[["deal_id", "changed_at", "stage", "amount_reporting"]].to_numpy()
    assert (left == right).all()
    assert (shown["CloseDate"].str[:10].to_numpy() == lived["close_date"].to_numpy()).all()


def test_truth_of_each_written_history_row(export):
    h, tw, t = export["OpportunityHistory.csv"], export["truth_win_probability.csv"], export["truth"]
    assert len(h) == len(tw)
    assert (tw["deal_id"] == h["OpportunityId"]).all() and (tw["changed_at"] == h["CreatedDate"]).all()
    p = tw["true_win_probability"].astype(float)
    assert (p[tw["stage"] == WON] == 1).all() and (p[tw["stage"] == LOST] == 0).all()
    open_rows = tw["stage"].isin(SPANISH_OPEN)
    deal = t.loc[tw["deal_id"]].reset_index(drop=True)
    # keyed in at close: the deal is already decided when it first appears
    keyed = deal["keyed_at_close"].to_numpy()
    assert (p[keyed] == (deal.loc[keyed, "real_outcome"] == "won").astype(float).to_numpy()).all()
    # the last-minute catch-up row comes after the win
    catch_up = open_rows & deal["last_minute_stage"].to_numpy() & (tw["stage"] == SPANISH_OPEN[-1])
    assert catch_up.sum() > 0 and (p[catch_up] == 1).all()
    # rows of a stale deal before its hidden loss are uncertain, and it is decided from it on
    stale_rows = deal["stale"].to_numpy() & open_rows.to_numpy()
    assert p[stale_rows].between(0, 1, inclusive="neither").all()
    # everything else that is open in the CRM is really undecided
    tidy_open = open_rows.to_numpy() & ~deal[SHAPES].any(axis=1).to_numpy()
    assert p[tidy_open].between(0, 1, inclusive="neither").all()


def test_point_in_time_truth_is_the_real_state_not_the_crm_s(sample, export):
    """Rebuild the pipeline at Mondays from the export with the real reader. For deals without a
    shape, the truth equals the state-based truth of the clean profile (SampleWorld); a stale
    deal is 0 from its hidden loss on and a late-keyed win 1 from the win on, while the CRM
    shows both open."""
    project = load_project_config()
    result = read_exports(sample.out_dir, project, as_of=END)
    history = prepare_history(result.deals, result.history, result.stages)
    mondays = pd.date_range("2026-02-16", "2026-11-09", freq="W-MON")
    frame = pipeline_at_many(result.deals, history, mondays)
    truth = SampleTruth.load(sample.out_dir)
    frame["truth"] = truth.true_win_probability(frame).to_numpy()
    t = export["truth"].loc[frame["deal_id"]].reset_index(drop=True)
    is_open = (frame["status"] == "open").to_numpy()

    tidy = is_open & ~t[SHAPES].any(axis=1).to_numpy()
    assert tidy.sum() > 500
    state_based = truth.world.true_win_probability(frame.loc[tidy])
    assert np.abs(state_based.to_numpy() - frame.loc[tidy, "truth"].to_numpy()).max() < 1e-12

    snapshot = frame["snapshot_at"].to_numpy()
    dead = is_open & t["stale"].to_numpy() & (t["hidden_loss_at"].to_numpy() <= snapshot)
    alive = is_open & t["stale"].to_numpy() & (t["hidden_loss_at"].to_numpy() > snapshot)
    assert dead.sum() > 100 and (frame.loc[dead, "truth"] == 0).all()
    assert frame.loc[alive, "truth"].between(0, 1, inclusive="neither").all()
    won_unkeyed = is_open & t["late_keyed"].to_numpy() & (t["real_closed_at"].to_numpy() <= snapshot)
    assert won_unkeyed.sum() > 5 and (frame.loc[won_unkeyed, "truth"] == 1).all()
    closed = ~is_open & ~t["no_history"].to_numpy()
    assert closed.sum() > 1000
    assert (frame.loc[closed, "truth"].to_numpy() == (frame.loc[closed, "status"] == "won").to_numpy(dtype=float)).all()

    with pytest.raises(ValueError, match=r"row 1, column 'deal_id': 'nobody'"):
        truth.true_win_probability(pd.DataFrame({"deal_id": [frame["deal_id"].iloc[0], "nobody"], "snapshot_at": mondays[-1]}))


def test_quarter_actuals_follow_from_the_export_and_match_the_truth(sample, export):
    d = export["deals"]
    won = d[d["status"] == "won"]
    quarter = won["close"].dt.year.astype(str) + "-Q" + ((won["close"].dt.month - 1) // 3 + 1).astype(str)
    from_export = won["Amount"].astype(int).groupby(quarter).sum()
    bookings = SampleTruth.load(sample.out_dir).quarter_bookings()
    company = bookings[bookings["segment_type"] == "all"].set_index("quarter")
    assert (company["won_amount"].reindex(from_export.index) == from_export).all()
    assert company["won_amount"].sum() == from_export.sum()
    by_pipeline = bookings[bookings["segment_type"] == "pipeline"].groupby("quarter")["won_amount"].sum()
    by_team = bookings[bookings["segment_type"] == "team"].groupby("quarter")["won_amount"].sum()
    assert (by_pipeline == company["won_amount"]).all() and (by_team == company["won_amount"]).all()
    # the quotas are 1.1 x the expected revenue, rounded to the thousand
    quotas = pd.read_csv(sample.out_dir / "quotas.csv", dtype={"quarter": str})
    merged = quotas.merge(bookings, on=["quarter", "segment_type", "segment"])
    assert len(merged) == len(quotas)
    assert ((1.1 * merged["expected_won_amount"] / 1000).round() * 1000 == merged["amount"]).all()
    full = ["2026-Q1", "2026-Q2", "2026-Q3"]
    assert 0.5 <= company.loc[full, "won_amount"].sum() / company.loc[full, "expected_won_amount"].sum() <= 1.6


# ----------------------------------------------------------------------------------------------
# Knobs, options, encodings and currencies
# ----------------------------------------------------------------------------------------------
def test_each_knob_moves_only_its_own_shape(sample, tmp_path):
    base = pd.read_csv(sample.out_dir / "truth_deals.csv")
    generate_sample(tmp_path, seed=SEED, end_date=END, messy=dataclasses.replace(MessyOptions(), stale_share=0.0))
    changed = pd.read_csv(tmp_path / "truth_deals.csv")
    assert changed["stale"].sum() == changed["purged"].sum() == 0 and base["stale"].sum() > 0
    for shape in ("imported", "keyed_at_close", "never_entered", "no_history", "last_minute_stage", "late_keyed"):
        assert (changed[shape] == base[shape]).all(), shape
    assert base["lost_future_close"].sum() < changed["lost_future_close"].sum()  # more recorded losses to draw from


def test_options_are_checked_and_parsed_from_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="stale_share: expected a share between 0 and 1, got 1.5"):
        MessyOptions(stale_share=1.5)
    with pytest.raises(ValueError, match="currencies: \\['XYZ'\\] not simulated"):
        MessyOptions(currencies=("XYZ",))
    parsed = MessyOptions().with_assignments(
        ["stale_share=0.2", "import_at=none", "late_keyed_days=3,10", "currencies=usd, mxn", "spanish_stages=false", "purge_every_months=2"]
    )
    assert (parsed.stale_share, parsed.import_at, parsed.late_keyed_days) == (0.2, None, (3, 10))
    assert (parsed.currencies, parsed.spanish_stages, parsed.purge_every_months) == (("USD", "MXN"), False, 2)
    with pytest.raises(ValueError, match="'stale=0.2': expected NAME=VALUE with NAME one of"):
        MessyOptions().with_assignments(["stale=0.2"])
    with pytest.raises(ValueError, match="profile 'clean'"):
        generate_sample(tmp_path, n_deals=10, profile="clean", messy=MessyOptions())
    for argv, message in (
        (["--profile", "messy", "--option", "stale_share=two"], "stale_share=two"),
        (["--option", "stale_share=0.2"], "needs --profile messy"),
    ):
        assert main(["--out", str(tmp_path / "x"), *argv]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("dealcast-sample: error: ") and message in error
    assert not (tmp_path / "x").exists()


def test_windows_1252_and_several_currencies_with_a_rates_file(tmp_path):
    options = dataclasses.replace(MessyOptions(), encoding="cp1252", currencies=("USD", "MXN", "COP", "CLP"))
    generate_sample(tmp_path, n_deals=400, seed=5, end_date=END, messy=options)
    raw = (tmp_path / "Opportunity.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert "Prospección".encode("cp1252") in raw or "Calificación".encode("cp1252") in raw
    o = pd.read_csv(tmp_path / "Opportunity.csv", dtype=str, keep_default_na=False, encoding="cp1252")
    t = pd.read_csv(tmp_path / "truth_deals.csv", dtype=str, keep_default_na=False).set_index("deal_id").loc[o["Id"]]
    assert len(o) == (t["crm_status"] != "").sum() > 250
    assert set(o["CurrencyIsoCode"]) == {"USD", "MXN", "COP", "CLP"}
    assert (o["CurrencyIsoCode"].to_numpy() == t["currency"].to_numpy()).all()

    rates = load_rates(tmp_path / "exchange_rates.csv", "USD")
    assert set(rates.currencies) == {"MXN", "COP", "CLP"}
    table = rates.table
    # each amount is the USD amount at the rate of the deal's creation day (the latest rate on or before it)
    for deal_id, row in t[t["outlier"] == "0"].iterrows():
        created = pd.Timestamp(row["crm_created_at"]).normalize()
        if row["currency"] == "USD":
            assert row["amount"] == row["amount_reporting"]
            continue
        rate = table[(table["currency"] == row["currency"]) & (table["date"] <= created)]["rate"].iloc[-1]
        assert int(row["amount"]) == max(round(int(row["amount_reporting"]) / rate), 1), deal_id

    project = dataclasses.replace(load_project_config(), rates_file=str(tmp_path / "exchange_rates.csv"))
    result = read_exports(tmp_path, project, as_of=END)
    assert len(result.deals) == len(o) and result.quarantine.empty
    assert "Prospección" in set(result.deals["stage"]) | set(result.history["stage"])
    valued = result.deals.set_index("deal_id")["amount_reporting"].astype(float)
    valued = valued[(t["outlier"] == "0").reindex(valued.index).to_numpy()]
    ratio = valued / t["amount_reporting"].astype(float).reindex(valued.index)
    assert ratio.between(0.7, 1.4).all() and abs(ratio.median() - 1) < 0.05


def test_truth_of_a_clean_sample_says_where_it_is(tmp_path):
    generate_sample(tmp_path, n_deals=50, seed=1, end_date=END, years=0.5)
    with pytest.raises(FileNotFoundError, match="truth_sample.json.*profile='messy'"):
        SampleTruth.load(tmp_path)


def test_dealcast_sample_writes_the_messy_profile(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--profile", "messy", "--deals", "300", "--end-date", END.isoformat()]
    assert main([*argv, "--option", "import_at=none"]) == 0
    printed = capsys.readouterr().out
    truth = pd.read_csv(tmp_path / "truth_deals.csv", keep_default_na=False)
    exported = (truth["crm_status"] != "").sum()
    assert f"wrote {exported} deals" in printed and "messy shapes: imported 0, keyed_at_close" in printed
    assert len(truth) == 300 and truth["imported"].sum() == 0 and truth["stale"].sum() > 0


def test_truth_is_calibrated_on_the_deals_the_crm_shows_open(tmp_path):
    """Each deal at the first Monday the CRM shows it open (one observation per deal, so they are
    independent; the first such Monday, because a Monday chosen by how long the deal stays open
    would depend on its future): the mean true probability must match the real outcomes of those
    deals within four standard errors (plus the share still undecided at the end). Which deals the
    CRM shows open must therefore not depend on how they will end."""
    end = dt.date(2026, 11, 15)
    generate_sample(tmp_path, n_deals=1500, seed=8, end_date=end, years=1.5, profile="messy")
    project = load_project_config()
    result = read_exports(tmp_path, project, as_of=end)
    mondays = pd.date_range("2025-06-02", "2026-05-18", freq="W-MON")  # decided by the end, mostly
    frame = pipeline_at_many(result.deals, prepare_history(result.deals, result.history, result.stages), mondays)
    truth = SampleTruth.load(tmp_path)
    facts = truth.deals.set_index("deal_id")
    frame = frame[(frame["status"] == "open").to_numpy() & ~facts.loc[frame["deal_id"], "no_history"].to_numpy()]
    one = frame.sort_values("snapshot_at", kind="stable").drop_duplicates("deal_id")
    p = truth.true_win_probability(one).to_numpy()
    outcome = facts.loc[one["deal_id"], "real_outcome"].to_numpy()
    n = len(one)
    won, undecided = (outcome == "won").mean(), (outcome == "open").mean()
    se = math.sqrt(p.mean() * (1 - p.mean()) / n)
    assert n > 300 and undecided < 0.05
    assert won - 4 * se <= p.mean() <= won + undecided + 4 * se, (p.mean(), won, undecided, se)


def test_loss_reasons_in_a_custom_field_the_config_does_not_name(tmp_path):
    generate_sample(tmp_path, n_deals=300, seed=2, end_date=END, messy=MessyOptions(loss_reason_field="LossReason__c"))
    o = pd.read_csv(tmp_path / "Opportunity.csv", dtype=str, keep_default_na=False)
    assert "LossReason__c" in o.columns and "Loss_Reason__c" not in o.columns
    truth = pd.read_csv(tmp_path / "truth_deals.csv", keep_default_na=False).set_index("deal_id").loc[o["Id"]]
    recorded_loss = (o["IsClosed"] == "1").to_numpy() & (o["IsWon"] == "0").to_numpy() & (truth["purged"] == 0).to_numpy()
    assert recorded_loss.sum() > 20 and (o.loc[recorded_loss, "LossReason__c"] != "").all()
    assert (o.loc[~recorded_loss, "LossReason__c"] == "").all()
    with pytest.raises(ValueError, match="loss_reason_field: 'Amount' is not a custom field name"):
        MessyOptions(loss_reason_field="Amount")


def test_truth_files_that_do_not_fit_the_sample_are_named(tmp_path):
    generate_sample(tmp_path, n_deals=100, seed=1, end_date=END, profile="messy")
    path = tmp_path / "truth_real_history.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("Prospección", "Prospecting")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"truth_real_history\.csv: row 4, column 'stage': 'Prospecting' is not in this sample"):
        SampleTruth.load(tmp_path)


def test_a_stage_no_deal_is_in_at_the_export_date_and_the_configuration_that_orders_it(tmp_path):
    """A small org: on the export date no deal is in one of the stages its history passes
    through, so Opportunity.csv gives that stage no StageSortOrder. The pipelines file beside the
    export configures the order; with it every row is accepted."""
    generate_sample(tmp_path, n_deals=300, seed=4, end_date=END, profile="messy")
    o = pd.read_csv(tmp_path / "Opportunity.csv", dtype=str, keep_default_na=False)
    h = pd.read_csv(tmp_path / "OpportunityHistory.csv", dtype=str, keep_default_na=False)
    only_in_history = set(h["StageName"]) - set(o["StageName"])
    assert only_in_history and only_in_history <= set(SPANISH_OPEN)

    config = tmp_path / "config" / "dealcast.toml"
    config.parent.mkdir()
    shipped = (Path(__file__).resolve().parents[2] / "dealcast.toml").read_text(encoding="utf-8")
    config.write_text((tmp_path / "dealcast_pipelines.toml").read_text(encoding="utf-8") + "\n" + shipped, encoding="utf-8")
    project = load_project_config(config)
    assert list(project.stages["Ventas"].open_stages) == SPANISH_OPEN
    assert project.stages["Ventas"].probability_of("Propuesta/Presupuesto") == 0.75
    result = read_exports(tmp_path, project, as_of=END)
    assert result.quarantine.empty and len(result.deals) == len(o) and len(result.history) == len(h)
