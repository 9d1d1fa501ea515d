"""Deals never open on a prediction date (wins keyed in at the moment of closing, deals decided
within days) still count as training evidence: one row at the instant they were created, with only
what was known at that instant.

Hand-made history (pipeline P: A -> B -> C; prediction dates every Monday 00:00 from 2024-01-01):
  w1 (Ann): created Tue 2024-01-02 09:00 in A, amount 100, close 01-20; lost Fri 01-05 10:00
  o1 (Bob): created Mon 2024-01-01 12:00 in A; open on Monday 01-08; won Tue 01-09 11:00
  k1 (Ann): keyed in at close: created Wed 2024-01-10 14:00 in C, amount 500, close 01-10;
            won 15:30 the same day, the amount corrected to 900 on the closing row
  k2 (Bob): created Wed 2024-01-17 10:00 in A, amount 200, close 01-19; lost Thu 01-18 09:00
  late (Ann): created Tue 2024-03-26 10:00, won the same day: after the last prediction date
  open (Bob): created 2024-01-03 in A, still open at as_of 2024-03-31 (scheduled rows, not won)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.pipeline_state import prepare_history
from sample_crm.generate import generate_sample
from sample_crm.truth import SampleTruth
from models.training_set import KIND_CREATION, build_training_set, snapshot_features
from tests.models.test_training_set import CATALOG, make_deals, make_history

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 31)
# Labels: won within 7 days of the row's instant; prediction dates stop at 03-24 (last Monday 03-18).
HORIZON = 7.0
FEATURE_COLUMNS = ["stage", "stage_order", "days_in_stage", "age_days", "log_amount_reporting", "days_to_expected_close",
                   "stage_moves", "backward_moves", "close_pushes", "crm_probability", "owner_prior_win_rate",
                   "owner_prior_closed"]


def _world(k1_closing_amount: float = 900.0, k2_outcome: str = "Lost"):
    deals = make_deals(
        [
            dict(deal_id="w1", owner="Ann", created_at=T("2024-01-02 09:00"), status="lost", stage="Lost", closed_at=T("2024-01-05 10:00"), amount=100.0),
            dict(deal_id="o1", owner="Bob", created_at=T("2024-01-01 12:00"), status="won", stage="Won", closed_at=T("2024-01-09 11:00"), amount=300.0),
            dict(deal_id="k1", owner="Ann", created_at=T("2024-01-10 14:00"), status="won", stage="Won", closed_at=T("2024-01-10 15:30"), amount=k1_closing_amount),
            dict(deal_id="k2", owner="Bob", created_at=T("2024-01-17 10:00"), status=k2_outcome.lower(), stage=k2_outcome, closed_at=T("2024-01-18 09:00"), amount=200.0),
            dict(deal_id="late", owner="Ann", created_at=T("2024-03-26 10:00"), status="won", stage="Won", closed_at=T("2024-03-26 11:00"), amount=50.0),
            dict(deal_id="open", owner="Bob", created_at=T("2024-01-03 08:00"), status="open", stage="A", closed_at=pd.NaT, amount=70.0),
        ]
    )
    history = make_history(
        [
            ("w1", "2024-01-02 09:00", "A", 100.0, "2024-01-20"),
            ("w1", "2024-01-05 10:00", "Lost", 100.0, "2024-01-20"),
            ("o1", "2024-01-01 12:00", "A", 300.0, "2024-02-01"),
            ("o1", "2024-01-09 11:00", "Won", 300.0, "2024-02-01"),
            ("k1", "2024-01-10 14:00", "C", 500.0, "2024-01-10"),
            ("k1", "2024-01-10 15:30", "Won", k1_closing_amount, "2024-01-10"),
            ("k2", "2024-01-17 10:00", "A", 200.0, "2024-01-19"),
            ("k2", "2024-01-18 09:00", k2_outcome, 200.0, "2024-01-19"),
            ("late", "2024-03-26 10:00", "A", 50.0, "2024-03-26"),
            ("late", "2024-03-26 11:00", "Won", 50.0, "2024-03-26"),
            ("open", "2024-01-03 08:00", "A", 70.0, "2024-06-01"),
        ]
    )
    return deals, prepare_history(deals, history, CATALOG)


def _creation_rows(training) -> pd.DataFrame:
    frame = training.frame
    return frame.loc[frame["snapshot_kind"] == KIND_CREATION].set_index("deal_id").sort_index()


def test_deals_never_open_on_a_prediction_date_get_one_row_at_their_creation():
    deals, history = _world()
    training = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON)
    rows = _creation_rows(training)
    # o1 is open on Monday 01-08 (a scheduled row instead); late is after the last date (03-18);
    # open has scheduled rows.
    assert rows.index.tolist() == ["k1", "k2", "w1"]
    assert training.creation_rows == 3
    assert set(training.frame.loc[training.frame["deal_id"] == "o1", "snapshot_kind"]) == {"scheduled"}
    assert rows["snapshot_at"].tolist() == [T("2024-01-10 14:00"), T("2024-01-17 10:00"), T("2024-01-02 09:00")]
    assert rows["label"].tolist() == [1, 0, 0]
    assert rows["stage"].tolist() == ["C", "A", "A"]
    assert rows["age_days"].tolist() == [0.0, 0.0, 0.0] and rows["days_in_stage"].tolist() == [0.0, 0.0, 0.0]
    # k1's amount as entered (500), not the 900 on its closing row.
    assert rows.loc["k1", "log_amount_reporting"] == pytest.approx(np.log1p(500.0))
    # Close dates: k1 01-10 00:00 is 14 hours before its creation; k2 01-19 is 38 hours after.
    assert rows.loc["k1", "days_to_expected_close"] == pytest.approx(-14 / 24)
    assert rows.loc["k2", "days_to_expected_close"] == pytest.approx(38 / 24)
    # Owner rates from the deals closed before the latest prediction date on or before creation.
    # k1 (Monday 01-08): only w1 (Ann, lost) had closed: Ann 0 of 1, company 0 of 1 -> 0.
    assert rows.loc["k1", "owner_prior_closed"] == 1.0 and rows.loc["k1", "owner_prior_win_rate"] == 0.0
    # k2 (Monday 01-15): w1 lost, o1 won, k1 won -> company 2/3; Bob 1 of 1 -> (1 + 10 x 2/3) / 11.
    assert rows.loc["k2", "owner_prior_closed"] == 1.0
    assert rows.loc["k2", "owner_prior_win_rate"] == pytest.approx((1 + 10 * 2 / 3) / 11)
    # w1 (Monday 01-01): nothing closed yet, no rate.
    assert rows.loc["w1", "owner_prior_closed"] == 0.0 and np.isnan(rows.loc["w1", "owner_prior_win_rate"])
    # The won deal counts as training evidence only through its creation row.
    without = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON, creation_snapshots=False)
    assert (training.won_deals, training.lost_deals) == (without.won_deals + 1, without.lost_deals + 2)
    assert without.creation_rows == 0


def test_creation_rows_match_the_pipeline_as_it_stood_at_that_instant():
    deals, history = _world()
    rows = _creation_rows(build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON))
    for deal_id, row in rows.iterrows():
        previous_monday = row["snapshot_at"].normalize() - pd.Timedelta(days=row["snapshot_at"].weekday())
        then = snapshot_features(deals, history, CATALOG, row["snapshot_at"], closed_before=previous_monday)
        then = then.set_index("deal_id").loc[deal_id]
        for column in FEATURE_COLUMNS:
            a, b = row[column], then[column]
            assert (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b), (deal_id, column, a, b)


def test_nothing_recorded_after_creation_reaches_a_creation_row():
    """Leakage tripwire: change what happens after the creation instants (k1's closing amount, k2's
    outcome): the creation rows' features stay exactly the same, only k2's label follows."""
    deals, history = _world()
    base = _creation_rows(build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON))
    other_deals, other_history = _world(k1_closing_amount=5000.0, k2_outcome="Won")
    changed = _creation_rows(build_training_set(other_deals, other_history, CATALOG, AS_OF, maturity_days=HORIZON))
    assert changed.index.tolist() == base.index.tolist()
    for column in FEATURE_COLUMNS:
        pd.testing.assert_series_equal(changed.loc[["k1", "k2"], column], base.loc[["k1", "k2"], column], check_names=False)
    assert changed.loc["k2", "label"] == 1 and base.loc["k2", "label"] == 0


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    from etl.config import load_project_config
    from etl.ingest.exports import read_exports

    out = tmp_path_factory.mktemp("messy_creation")
    end = dt.date(2026, 11, 15)
    generate_sample(out, n_deals=600, seed=202, end_date=end, profile="messy")
    project = load_project_config()
    export = read_exports(out, project, as_of=end)
    history = prepare_history(export.deals, export.history, export.stages)
    return SampleTruth.load(out), export, history, end, project


def test_wins_keyed_in_at_close_count_as_training_evidence_on_a_messy_org(messy):
    truth, export, history, end, _ = messy
    training = build_training_set(export.deals, history, export.stages, end)
    without = build_training_set(export.deals, history, export.stages, end, creation_snapshots=False)
    rows = _creation_rows(training)
    real = truth.deals.set_index("deal_id")
    keyed_wins = real.index[real["keyed_at_close"] & (real["crm_status"] == "won") & ~real["no_history"]]
    created = export.deals.set_index("deal_id")["created_at"]
    in_window = created.loc[keyed_wins].between(training.frame["snapshot_at"].min(), training.frame.loc[
        training.frame["snapshot_kind"] == "scheduled", "snapshot_at"].max())
    expected = set(in_window.index[in_window.to_numpy()])
    # Every keyed-in win with history created within the prediction dates has its creation row, at
    # its CreatedDate, labelled won; none of them has any scheduled row.
    assert expected and expected <= set(rows.index)
    assert (rows.loc[sorted(expected), "snapshot_at"] == created.loc[sorted(expected)]).all()
    assert (rows.loc[sorted(expected), "label"] == 1).all()
    scheduled = training.frame.loc[training.frame["snapshot_kind"] == "scheduled", "deal_id"]
    assert not expected & set(scheduled)
    assert training.won_deals - without.won_deals >= len(expected)
    # The truth at each creation row is a probability of that moment: for a keyed-in win it is 1
    # (really won already); the row's label agrees, and no feature carries the closing row.
    truth_p = truth.true_win_probability(rows.loc[sorted(expected)].reset_index()[["deal_id", "snapshot_at"]])
    assert (truth_p == 1.0).all()
    assert (rows.loc[sorted(expected), "age_days"] == 0.0).all()
