"""As-of training snapshots: no leaky features, no information from after the snapshot, history
rates from deals closed strictly before it, labels that say whether the deal was won within the
horizon (a deal still open at as_of counts as not won within it).

Hand-made history (pipeline P: A -> B -> C; snapshots at 00:00 each Monday):
  d1 (Ann): created Sun 2023-12-31 09:00 in A, amount 100, close 2024-02-01
            2024-01-08 00:00:00.000001 (right after the 01-08 snapshot) -> B, amount 150, close
            pushed to 02-15;  2024-01-16 00:00 back to A;  2024-01-23 won
  d2 (Bob): created 2024-01-02 in A; 2024-01-15 00:00 (exactly the 01-15 snapshot) -> C;
            2024-01-30 lost
  d3 (Ann): created 2024-01-03 in A; won 2024-01-10
  d4 (Bob): created 2024-01-04 in A; still open at as_of
  d5 (Bob): created 2024-01-05 in A; won 2024-04-15, after as_of 2024-03-31
With a 60-day horizon and as_of 2024-03-31 the prediction dates stop at 2024-01-31 (last Monday
01-29); every row's horizon ends by 03-31, so d4 and d5 are rows labelled 0 (not won by then).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.config import ModelConfig
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog
from models.scoring import train_scorer
from models.training_set import (
    FEATURES,
    LEAKY_FEATURES,
    NO_HISTORY_FEATURES,
    LeakageError,
    TrainingSet,
    build_training_set,
    snapshot_features,
)
from tests.models.synthetic import CATALOG as SYNTHETIC_CATALOG
from tests.models.synthetic import make_crm

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 31)


def make_deals(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    defaults = {"pipeline": "P", "source_row": 0, "push_count": 0, "has_history": True, "currency": "USD"}
    for column in DEAL_COLUMNS:
        if column not in frame:
            frame[column] = defaults.get(column, pd.NA)
    frame["source_row"] = range(2, len(frame) + 2)
    frame["amount_reporting"] = frame["amount"]
    return conform(frame, DEAL_COLUMNS, "deals")


def make_history(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["deal_id", "changed_at", "stage", "amount", "expected_close_date"])
    frame["changed_at"] = pd.to_datetime(frame["changed_at"], format="ISO8601")
    frame["expected_close_date"] = pd.to_datetime(frame["expected_close_date"])
    frame["amount_reporting"] = frame["amount"]
    frame["crm_probability"] = frame["stage"].map({"A": 0.1, "B": 0.4, "C": 0.7, "Won": 1.0, "Lost": 0.0})
    frame["forecast_category"] = "Pipeline"
    frame["source_file"] = "OpportunityHistory.csv"
    frame["source_row"] = range(2, len(frame) + 2)
    return conform(frame, DEAL_HISTORY_COLUMNS, "history")


CATALOG = StageCatalog([PipelineStages("P", ("A", "B", "C"), won_stage="Won", lost_stage="Lost", probabilities={"A": 0.1, "B": 0.4, "C": 0.7})])


@pytest.fixture(scope="module")
def small():
    deals = make_deals(
        [
            dict(deal_id="d1", owner="Ann", created_at=T("2023-12-31 09:00"), status="won", stage="Won", closed_at=T("2024-01-23"), amount=150.0),
            dict(deal_id="d2", owner="Bob", created_at=T("2024-01-02"), status="lost", stage="Lost", closed_at=T("2024-01-30"), amount=200.0),
            dict(deal_id="d3", owner="Ann", created_at=T("2024-01-03"), status="won", stage="Won", closed_at=T("2024-01-10"), amount=300.0),
            dict(deal_id="d4", owner="Bob", created_at=T("2024-01-04"), status="open", stage="A", closed_at=pd.NaT, amount=400.0),
            dict(deal_id="d5", owner="Bob", created_at=T("2024-01-05"), status="won", stage="Won", closed_at=T("2024-04-15"), amount=500.0),
        ]
    )
    history = make_history(
        [
            ("d1", "2023-12-31 09:00", "A", 100.0, "2024-02-01"),
            ("d1", "2024-01-08 00:00:00.000001", "B", 150.0, "2024-02-15"),
            ("d1", "2024-01-16 00:00", "A", 150.0, "2024-02-15"),
            ("d1", "2024-01-23 00:00", "Won", 150.0, "2024-02-15"),
            ("d2", "2024-01-02 00:00", "A", 200.0, "2024-02-01"),
            ("d2", "2024-01-15 00:00", "C", 200.0, "2024-02-01"),
            ("d2", "2024-01-30 00:00", "Lost", 200.0, "2024-02-01"),
            ("d3", "2024-01-03 00:00", "A", 300.0, "2024-02-01"),
            ("d3", "2024-01-10 00:00", "Won", 300.0, "2024-02-01"),
            ("d4", "2024-01-04 00:00", "A", 400.0, "2024-05-01"),
            ("d5", "2024-01-05 00:00", "A", 500.0, "2024-05-01"),
            ("d5", "2024-04-15 00:00", "Won", 500.0, "2024-05-01"),
        ]
    )
    return deals, prepare_history(deals, history, CATALOG)


@pytest.mark.parametrize("name", ["final_stage", "is_won", "closed_at", "close_value", "days_to_close", "push_count"])
def test_leaky_feature_is_refused(small, name):
    deals, history = small
    with pytest.raises(LeakageError, match=name):
        build_training_set(deals, history, CATALOG, AS_OF, features=["stage", name])


def test_unknown_feature_is_an_error(small):
    deals, history = small
    with pytest.raises(ValueError, match="made_up"):
        build_training_set(deals, history, CATALOG, AS_OF, features=["made_up"])


def test_no_leaky_name_is_allowed():
    assert not set(LEAKY_FEATURES) & set(FEATURES)
    assert set(NO_HISTORY_FEATURES) <= set(FEATURES)


def test_training_refuses_a_hand_built_leaky_set(small):
    deals, history = small
    honest = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON)
    leaky = TrainingSet(
        frame=honest.frame.assign(is_won=honest.frame["label"]),
        feature_names=[*honest.feature_names, "is_won"],
        has_history=True, as_of=AS_OF, frequency="W-MON", maturity_days=HORIZON, unresolved_deals=2,
        censored_deals=0, sampled=False,
    )
    with pytest.raises(LeakageError, match="is_won"):
        train_scorer(leaky, ModelConfig(min_won=1, min_lost=1), AS_OF)


# Each row: snapshot (Monday 00:00), deal, stage, when that stage
# was entered, stage moves, backward moves, close-date pushes, amount, expected close date, label
# (won within 60 days of the snapshot) -- read off the history above by hand.
HORIZON = 60.0
EXPECTED = [
    ("2024-01-01", "d1", "A", "2023-12-31 09:00", 0, 0, 0, 100.0, "2024-02-01", 1),
    ("2024-01-08", "d1", "A", "2023-12-31 09:00", 0, 0, 0, 100.0, "2024-02-01", 1),
    ("2024-01-08", "d2", "A", "2024-01-02 00:00", 0, 0, 0, 200.0, "2024-02-01", 0),
    ("2024-01-08", "d3", "A", "2024-01-03 00:00", 0, 0, 0, 300.0, "2024-02-01", 1),
    ("2024-01-15", "d1", "B", "2024-01-08 00:00:00.000001", 1, 0, 1, 150.0, "2024-02-15", 1),
    ("2024-01-15", "d2", "C", "2024-01-15 00:00", 1, 0, 0, 200.0, "2024-02-01", 0),
    ("2024-01-22", "d1", "A", "2024-01-16 00:00", 2, 1, 1, 150.0, "2024-02-15", 1),
    ("2024-01-22", "d2", "C", "2024-01-15 00:00", 1, 0, 0, 200.0, "2024-02-01", 0),
    ("2024-01-29", "d2", "C", "2024-01-15 00:00", 1, 0, 0, 200.0, "2024-02-01", 0),
    # still open at as_of: not won within 60 days of any of its dates
    ("2024-01-08", "d4", "A", "2024-01-04 00:00", 0, 0, 0, 400.0, "2024-05-01", 0),
    ("2024-01-15", "d4", "A", "2024-01-04 00:00", 0, 0, 0, 400.0, "2024-05-01", 0),
    ("2024-01-22", "d4", "A", "2024-01-04 00:00", 0, 0, 0, 400.0, "2024-05-01", 0),
    ("2024-01-29", "d4", "A", "2024-01-04 00:00", 0, 0, 0, 400.0, "2024-05-01", 0),
    # won 04-15: more than 60 days after 01-29 (the horizon ends 03-29), and after as_of
    ("2024-01-08", "d5", "A", "2024-01-05 00:00", 0, 0, 0, 500.0, "2024-05-01", 0),
    ("2024-01-15", "d5", "A", "2024-01-05 00:00", 0, 0, 0, 500.0, "2024-05-01", 0),
    ("2024-01-22", "d5", "A", "2024-01-05 00:00", 0, 0, 0, 500.0, "2024-05-01", 0),
    ("2024-01-29", "d5", "A", "2024-01-05 00:00", 0, 0, 0, 500.0, "2024-05-01", 0),
]


def test_snapshots_hold_the_state_before_later_changes(small):
    deals, history = small
    training = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON)
    got = training.frame.set_index(["snapshot_at", "deal_id"]).sort_index()
    expected_keys = [(T(day), deal) for day, deal, *_ in EXPECTED]
    assert list(got.index) == sorted(expected_keys)
    for day, deal, stage, entered, moves, back, pushes, amount, close, label in EXPECTED:
        at = T(day)
        row = got.loc[(at, deal)]
        where = f"{deal} at {day}"
        assert row["stage"] == stage, where
        assert row["days_in_stage"] == pytest.approx((at - T(entered)) / pd.Timedelta(days=1), abs=1e-9), where
        assert row["stage_moves"] == moves, where
        assert row["backward_moves"] == back, where
        assert row["close_pushes"] == pushes, where
        assert row["log_amount_reporting"] == pytest.approx(np.log1p(amount)), where
        assert row["days_to_expected_close"] == pytest.approx((T(close) - at) / pd.Timedelta(days=1), abs=1e-9), where
        assert row["label"] == label, where
    # spot checks in plain numbers: d2 entered C exactly at the 01-15 snapshot, so 0 days there
    # and exactly 7 a week later; d1's first snapshot is 15 hours after its 09:00 creation.
    assert got.loc[(T("2024-01-15"), "d2"), "days_in_stage"] == 0
    assert got.loc[(T("2024-01-22"), "d2"), "days_in_stage"] == 7
    assert got.loc[(T("2024-01-01"), "d1"), "age_days"] == pytest.approx(15 / 24, abs=1e-9)
    assert got.loc[(T("2024-01-08"), "d3"), "days_in_stage"] == 5


def test_the_day_of_the_year_needs_two_years_of_prediction_dates(world, training):
    """`small` spans three months of prediction dates: the day of the year is not a feature there.
    The synthetic world's dates span more than two years: it is, each row's own (4 March 2024 is
    day 31 + 29 + 4 = 64 of a leap year)."""
    deals, history = world
    short = build_training_set(deals, history, SYNTHETIC_CATALOG, dt.date(2022, 12, 31))
    dates = short.frame["snapshot_at"]
    assert dates.max() - dates.min() < pd.Timedelta(days=730)
    assert "day_of_year" not in short.feature_names and "day_of_year" not in short.frame.columns
    full = training  # as of 2024-12-31
    assert full.frame["snapshot_at"].max() - full.frame["snapshot_at"].min() >= pd.Timedelta(days=730)
    assert "day_of_year" in full.feature_names
    at = full.frame.loc[full.frame["snapshot_at"] == T("2024-03-04")]
    assert len(at) > 0 and (at["day_of_year"] == 64).all()
    scored = snapshot_features(deals, history, SYNTHETIC_CATALOG, T("2024-03-04"))
    assert (scored["day_of_year"] == 64).all()


def test_snapshot_features_match_the_training_rows(small):
    """Scoring features at a date are the training features of that date (one code path)."""
    deals, history = small
    training = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON)
    at = T("2024-01-15")
    scored = snapshot_features(deals, history, CATALOG, at)
    trained_rows = training.frame.loc[training.frame["snapshot_at"] == at]
    assert scored["deal_id"].tolist() == ["d1", "d2", "d4", "d5"]
    merged = trained_rows.merge(scored, on=["deal_id", "snapshot_at"], suffixes=("", "_scored"))
    assert len(merged) == 4
    for column in training.feature_names:
        pd.testing.assert_series_equal(merged[column], merged[f"{column}_scored"], check_names=False)


def test_a_change_right_after_the_snapshot_is_not_seen(small):
    deals, history = small
    before = snapshot_features(deals, history, CATALOG, T("2024-01-08"))
    after = snapshot_features(deals, history, CATALOG, T("2024-01-08 00:00:00.000001"))
    d1_before = before.set_index("deal_id").loc["d1"]
    d1_after = after.set_index("deal_id").loc["d1"]
    assert (d1_before["stage"], d1_before["close_pushes"], d1_before["stage_moves"]) == ("A", 0, 0)
    assert d1_before["log_amount_reporting"] == pytest.approx(np.log1p(100.0))
    assert (d1_after["stage"], d1_after["close_pushes"], d1_after["stage_moves"]) == ("B", 1, 1)
    assert d1_after["log_amount_reporting"] == pytest.approx(np.log1p(150.0))


def test_labels_say_won_within_the_horizon_as_known_at_as_of(small):
    deals, history = small
    training = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=HORIZON)
    labels = training.frame.set_index(["deal_id", "snapshot_at"])["label"]
    # d4 (still open at as_of) and d5 (won after as_of) are not censored: not won within 60 days.
    assert labels.loc["d4"].tolist() == [0, 0, 0, 0] and labels.loc["d5"].tolist() == [0, 0, 0, 0]
    assert training.unresolved_deals == 2 and training.censored_deals == 0  # d4 and d5 are open at as_of
    # Deals with a won row: d1, d3; with a not-won row: d2, d4, d5.
    assert (training.won_deals, training.lost_deals) == (2, 3)
    # Outcomes read on 04-30 with the same horizon: dates stop at 03-01 (last Monday 02-26). d5 won
    # 04-15 00:00, within 60 days of 02-19 (horizon ends 04-19) and 02-26, not of 02-12 (04-12).
    later = build_training_set(deals, history, CATALOG, dt.date(2024, 4, 30), maturity_days=HORIZON)
    d5 = later.frame.loc[later.frame["deal_id"] == "d5"].set_index("snapshot_at")["label"]
    assert d5.loc[T("2024-02-12")] == 0
    assert d5.loc[[T("2024-02-19"), T("2024-02-26")]].tolist() == [1, 1]
    assert d5.sum() == 2
    # A 10-day horizon: d1 (won 01-23) counts as won only from its 01-15 row (horizon 01-25);
    # d3 (won 01-10) from 01-08 (01-18).
    short = build_training_set(deals, history, CATALOG, AS_OF, maturity_days=10)
    rows = short.frame.set_index(["deal_id", "snapshot_at"])["label"]
    assert rows.loc["d1"].tolist() == [0, 0, 1, 1]
    assert rows.loc[("d3", T("2024-01-08"))] == 1
    with pytest.raises(ValueError, match="label horizon"):
        build_training_set(deals, history, CATALOG, AS_OF, maturity_days=0)


def test_history_rates_use_only_deals_closed_strictly_before():
    """e1 closes exactly at the scoring instant and must not count; e2 (won) and e3 (lost) do."""
    at = T("2024-06-10 12:00")
    deals = make_deals(
        [
            dict(deal_id="e1", owner="Ann", product="Core", created_at=T("2024-05-01"), status="lost", stage="Lost", closed_at=at, amount=10.0),
            dict(deal_id="e2", owner="Ann", product="Core", created_at=T("2024-05-01"), status="won", stage="Won", closed_at=at - pd.Timedelta(days=1), amount=10.0),
            dict(deal_id="e3", owner="Bob", product="Core", created_at=T("2024-05-01"), status="lost", stage="Lost", closed_at=at - pd.Timedelta(days=2), amount=10.0),
            dict(deal_id="e4", owner="Ann", product="Core", created_at=T("2024-05-02"), status="open", stage="B", closed_at=pd.NaT, amount=10.0),
        ]
    )
    history = make_history(
        [
            ("e1", "2024-05-01", "A", 10.0, "2024-07-01"),
            ("e1", str(at), "Lost", 10.0, "2024-07-01"),
            ("e2", "2024-05-01", "A", 10.0, "2024-07-01"),
            ("e2", str(at - pd.Timedelta(days=1)), "Won", 10.0, "2024-07-01"),
            ("e3", "2024-05-01", "A", 10.0, "2024-07-01"),
            ("e3", str(at - pd.Timedelta(days=2)), "Lost", 10.0, "2024-07-01"),
            ("e4", "2024-05-02", "B", 10.0, "2024-07-01"),
        ]
    )
    prepared = prepare_history(deals, history, CATALOG)
    row = snapshot_features(deals, prepared, CATALOG, at).set_index("deal_id")
    assert row.index.tolist() == ["e4"]
    e4 = row.loc["e4"]
    # Closed before `at`: e2 (Ann, won) and e3 (Bob, lost): company rate 1/2.
    # Ann: 1 closed, 1 won -> (1 + 10 x 0.5) / (1 + 10) = 6/11. Product Core: (1 + 5) / (2 + 10) = 0.5.
    assert e4["owner_prior_closed"] == 1
    assert e4["owner_prior_win_rate"] == pytest.approx(6 / 11)
    assert e4["product_prior_win_rate"] == pytest.approx(0.5)
    assert np.isnan(e4["account_prior_win_rate"])  # no account on the deal
    # Counting outcomes only up to two days before: just e3 (lost) -> company rate 0, Ann has none.
    earlier = snapshot_features(deals, prepared, CATALOG, at, closed_before=at - pd.Timedelta(hours=36)).set_index("deal_id")
    assert earlier.loc["e4", "owner_prior_closed"] == 0
    assert earlier.loc["e4", "owner_prior_win_rate"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="closed_before"):
        snapshot_features(deals, prepared, CATALOG, at, closed_before=at + pd.Timedelta(days=1))


def test_history_must_be_prepared(small):
    deals, _ = small
    raw = make_history([("d1", "2024-01-01", "A", 1.0, "2024-02-01")])
    with pytest.raises(ValueError, match="prepare_history"):
        build_training_set(deals, raw, CATALOG, AS_OF)


def test_maturity_wait_defaults_to_the_sales_cycle(small):
    deals, history = small
    training = build_training_set(deals, history, CATALOG, AS_OF)
    # Cycles of deals closed by 03-31: d1 22.625 days, d2 28, d3 7 -> 90th percentile
    # 22.625 + 0.8 x (28 - 22.625) = 26.925 -> 27 days (less than half the 91-day span).
    assert training.maturity_days == 27
    # A 14-day horizon with outcomes read on 02-10 stops the prediction dates at 01-27: the rows of
    # Monday 01-29 (d2, lost the next day; d4; d5) are not used, the 01-22 rows are.
    waited = build_training_set(deals, history, CATALOG, dt.date(2024, 2, 10), maturity_days=14)
    assert waited.frame["snapshot_at"].max() == T("2024-01-22")
    assert len(waited.frame) == len(EXPECTED) - 3


def test_rows_per_snapshot_are_capped_deterministically(world):
    deals, history = world
    capped = build_training_set(deals, history, SYNTHETIC_CATALOG, dt.date(2023, 6, 30), max_rows_per_snapshot=20)
    again = build_training_set(deals, history, SYNTHETIC_CATALOG, dt.date(2023, 6, 30), max_rows_per_snapshot=20)
    assert capped.sampled
    assert capped.frame.groupby("snapshot_at").size().max() == 20
    pd.testing.assert_frame_equal(capped.frame, again.frame)


def test_capped_rows_are_the_uncapped_rows_of_the_lowest_hash_deals(world):
    """The cap chooses rows before they are rebuilt: what it keeps must be exactly the rows the full
    set has for the 20 deals of lowest id hash at each date, feature for feature."""
    deals, history = world
    as_of = dt.date(2023, 6, 30)
    full = build_training_set(deals, history, SYNTHETIC_CATALOG, as_of, max_rows_per_snapshot=10**9)
    capped = build_training_set(deals, history, SYNTHETIC_CATALOG, as_of, max_rows_per_snapshot=20)
    assert not full.sampled and capped.sampled
    scheduled = full.frame.loc[full.frame["snapshot_kind"] == "scheduled"]
    assert scheduled.groupby("snapshot_at").size().max() > 20
    hashes = pd.util.hash_array(scheduled["deal_id"].astype(str).to_numpy(dtype=object))
    kept = scheduled.assign(_hash=hashes).sort_values(["snapshot_at", "_hash"]).groupby("snapshot_at").head(20)
    expected = pd.concat([kept.drop(columns="_hash"), full.frame.loc[full.frame["snapshot_kind"] == "creation"]])
    expected = expected.sort_values(["snapshot_at", "deal_id"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(capped.frame, expected)
    # The deals still open at as_of are counted the same with or without the cap.
    assert capped.unresolved_deals == full.unresolved_deals > 0


def test_processing_dates_in_chunks_changes_no_row(world, training, monkeypatch):
    """Large CRMs rebuild a few dates at a time; the rows must not depend on where chunks end."""
    import models.training_set as training_set

    deals, history = world
    assert training.frame["snapshot_at"].nunique() > 10
    # Smaller than any date's rows: one date per chunk (a date is never split).
    monkeypatch.setattr(training_set, "ROWS_PER_CHUNK", 1)
    one_date_each = build_training_set(deals, history, SYNTHETIC_CATALOG, training.as_of)
    pd.testing.assert_frame_equal(one_date_each.frame, training.frame)
    assert one_date_each.unresolved_deals == training.unresolved_deals


def test_no_history_source_uses_creation_time_attributes_only():
    deals, history = make_crm(400, seed=3, end="2023-12-31", as_of="2024-03-31", with_history=False)
    prepared = prepare_history(deals, history, SYNTHETIC_CATALOG)
    training = build_training_set(deals, prepared, SYNTHETIC_CATALOG, dt.date(2024, 3, 31))
    assert training.has_history is False
    assert "stage" not in training.feature_names
    assert set(training.feature_names) <= set(NO_HISTORY_FEATURES)
    # The final stage never reaches the frame: at every snapshot before close the stage is unknown.
    assert training.frame["stage"].isna().all()
    explicit = build_training_set(deals, prepared, SYNTHETIC_CATALOG, dt.date(2024, 3, 31), features=["stage", "owner"])
    assert explicit.feature_names == ["owner"]
