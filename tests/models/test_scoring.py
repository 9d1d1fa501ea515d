"""The deal scorer: time split, baselines, eligibility fallbacks, and a model that finds a known
signal with honest, calibrated probabilities."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.config import ModelConfig
from etl.pipeline_state import prepare_history
from models.evaluation import reliability_table
from models.scoring import (
    METHOD_MODEL,
    METHOD_STAGE_RATE,
    InsufficientHistoryError,
    StageRateScorer,
    score_band,
    score_bands,
    time_split,
    train_scorer,
)
from models.training_set import build_training_set, snapshot_features
from tests.models.conftest import AS_OF, TEST_CONFIG
from tests.models.synthetic import CATALOG as SYNTHETIC_CATALOG
from tests.models.synthetic import make_crm, true_win_probability
from tests.models.test_training_set import CATALOG, make_deals, make_history

T = pd.Timestamp


def test_score_bands():
    cases = {0.0: "very low", 0.099: "very low", 0.1: "low", 0.299: "low", 0.3: "medium", 0.599: "medium",
             0.6: "high", 0.849: "high", 0.85: "very high", 1.0: "very high"}
    for p, band in cases.items():
        assert score_band(p) == band, p
    assert list(score_bands(list(cases))) == list(cases.values())


def test_stage_rate_cells_shrink_towards_their_parents():
    frame = pd.DataFrame(
        {
            "pipeline": ["P"] * 6,
            "stage": ["A", "A", "A", "A", "B", "B"],
            "age_days": [5.0, 5.0, 5.0, 5.0, 40.0, 40.0],
        }
    )
    labels = pd.Series([1, 0, 0, 0, 1, 1])
    scorer = StageRateScorer(use_stage=True, version="v", feature_names=["stage", "age_days"], typical={}, typical_stage_days=pd.DataFrame())
    scorer.fit(frame, labels)
    # By hand, pseudo-count 20: all 3/6 = 0.5; pipeline P (3 + 20 x 0.5)/26 = 0.5;
    # stage A (1 + 10)/24; cell A x 0-29 days (1 + 20 x 11/24)/24; stage B (2 + 10)/22;
    # cell B x 30-59 days (2 + 20 x 12/22)/22.
    stage_a, stage_b = 11 / 24, 12 / 22
    queries = pd.DataFrame(
        {
            "pipeline": ["P", "P", "P", "Other"],
            "stage": ["A", "B", "B", "A"],
            "age_days": [10.0, 45.0, 3.0, 10.0],
        }
    )
    expected = [(1 + 20 * stage_a) / 24, (2 + 20 * stage_b) / 22, stage_b, 0.5]
    np.testing.assert_allclose(scorer.predict_proba(queries), expected)


def test_time_split_purges_deals_that_straddle_a_boundary():
    days = pd.date_range("2024-01-01", periods=10, freq="7D")
    rows = [(d, "long") for d in days]  # a deal open throughout
    rows += [(days[0], "early"), (days[1], "early")]
    rows += [(days[9], "late")]
    frame = pd.DataFrame(rows, columns=["snapshot_at", "deal_id"])
    slices = time_split(frame, test_share=0.2, calibration_share=0.2)
    # 10 dates: train = first 6, calibration = next 2, test = last 2.
    long_slices = slices[frame["deal_id"] == "long"].tolist()
    assert long_slices == ["purged"] * 8 + ["test", "test"]
    assert slices[frame["deal_id"] == "early"].tolist() == ["train", "train"]
    assert slices[frame["deal_id"] == "late"].tolist() == ["test"]
    # A 14-day wait before each later slice: calibration starts 02-12, so train rows after 01-29
    # are left out (02-05). Test starts 02-26; the calibration slice spans only 14 days, so its
    # wait is capped at 7 days and rows after 02-19 would go: there are none.
    short = pd.DataFrame({"snapshot_at": days, "deal_id": [f"d{i}" for i in range(10)]})
    waited = time_split(short, 0.2, 0.2, embargo_days=14)
    assert waited.tolist() == ["train"] * 5 + ["embargo"] + ["calibration"] * 2 + ["test"] * 2
    assert time_split(short.iloc[:2], 0.2, 0.2) is None


def test_model_finds_the_signal_and_is_calibrated(trained, training):
    m = trained.metrics
    assert m["eligible"] is True
    assert m["scoring_method"] == METHOD_MODEL
    assert m["beats_baselines"] is True
    assert m["log_loss"] < m["crm_baseline_log_loss"]
    assert m["log_loss"] < m["stage_rate_baseline_log_loss"]
    # The honest ceiling: the true probabilities of the synthetic world on the same test rows.
    test = trained.test_predictions.merge(training.frame, on=["deal_id", "snapshot_at", "label"])
    truth = np.clip(true_win_probability(test), 1e-6, 1 - 1e-6)
    y = test["label"].to_numpy(dtype=float)
    true_loss = -np.mean(y * np.log(truth) + (1 - y) * np.log(1 - truth))
    assert m["log_loss"] < true_loss * 1.2
    # Reliability, recomputed here: each bin's mean prediction agrees with its observed win rate
    # within three binomial standard errors, counting each deal once (its rows are correlated).
    p = test["model"].to_numpy()
    bins = np.minimum((p * 10).astype(int), 9)
    table = trained.reliability.set_index("bin")
    for b in np.unique(bins):
        in_bin = bins == b
        mean_p, observed = p[in_bin].mean(), y[in_bin].mean()
        assert table.loc[b + 1, "count"] == in_bin.sum()
        assert table.loc[b + 1, "mean_predicted"] == pytest.approx(mean_p)
        assert table.loc[b + 1, "observed_rate"] == pytest.approx(observed)
        deals_in_bin = test.loc[in_bin, "deal_id"].nunique()
        tolerance = 3 * np.sqrt(max(mean_p * (1 - mean_p), 0.01) / deals_in_bin)
        assert abs(mean_p - observed) <= tolerance, (b, mean_p, observed, deals_in_bin)


def test_no_deal_is_both_trained_and_tested(trained, training):
    slices = time_split(training.frame, TEST_CONFIG.test_share, TEST_CONFIG.calibration_share, training.maturity_days)
    used = training.frame.assign(slice=slices)
    used = used.loc[used["slice"].isin(["train", "calibration", "test"])]
    assert used.groupby("deal_id")["slice"].nunique().max() == 1
    tested = set(trained.test_predictions["deal_id"])
    assert tested == set(used.loc[used["slice"] == "test", "deal_id"])
    # slices follow time: every train date is before every calibration date, before every test date
    ends = used.groupby("slice")["snapshot_at"].agg(["min", "max"])
    assert ends.loc["train", "max"] < ends.loc["calibration", "min"]
    assert ends.loc["calibration", "max"] < ends.loc["test", "min"]
    assert trained.metrics["test_rows"] == len(trained.test_predictions)


def test_scoring_open_deals(trained, world):
    deals, history = world
    features = snapshot_features(deals, history, SYNTHETIC_CATALOG, AS_OF)
    p = trained.scorer.predict_proba(features)
    assert len(p) == len(features) == int((deals["status"] == "open").sum())
    assert ((p >= 0.001) & (p <= 0.999)).all()
    # Deals further along win more often in this world: mean score rises with the stage.
    by_stage = pd.Series(p).groupby(features["stage"].to_numpy()).mean()
    assert by_stage["Qualification"] < by_stage["Negotiation/Review"]


def test_a_model_without_signal_gives_way_to_the_better_baseline(world):
    deals, history = world
    noise = build_training_set(deals, history, SYNTHETIC_CATALOG, AS_OF, features=["region", "deal_type"])
    result = train_scorer(noise, TEST_CONFIG, AS_OF)
    m = result.metrics
    assert m["eligible"] is True
    assert m["beats_baselines"] is False
    assert result.scorer.scoring_method == METHOD_STAGE_RATE == m["scoring_method"]
    assert "does not beat" in m["fallback_reason"] and "stage rate" in m["fallback_reason"]
    assert m["stage_rate_baseline_log_loss"] < m["crm_baseline_log_loss"]


def _ten_and_ten() -> tuple[pd.DataFrame, pd.DataFrame]:
    """20 deals, one created each week from 2024-01-01; each moves A -> B after 7 days and closes
    after 14; even-numbered deals win, odd ones lose."""
    deals_rows, history_rows = [], []
    for i in range(20):
        created = T("2024-01-01") + pd.Timedelta(days=7 * i)
        outcome = "Won" if i % 2 == 0 else "Lost"
        closed = created + pd.Timedelta(days=14)
        deals_rows.append(dict(deal_id=f"s{i:02d}", owner="Ann", created_at=created, status=outcome.lower(), stage=outcome, closed_at=closed, amount=100.0))
        history_rows += [
            (f"s{i:02d}", str(created), "A", 100.0, "2024-12-31"),
            (f"s{i:02d}", str(created + pd.Timedelta(days=7)), "B", 100.0, "2024-12-31"),
            (f"s{i:02d}", str(closed), outcome, 100.0, "2024-12-31"),
        ]
    deals = make_deals(deals_rows)
    return deals, prepare_history(deals, make_history(history_rows), CATALOG)


def test_thin_history_falls_back_to_stage_rates():
    deals, history = _ten_and_ten()
    training = build_training_set(deals, history, CATALOG, dt.date(2024, 7, 1), maturity_days=0)
    assert (training.won_deals, training.lost_deals) == (10, 10)
    result = train_scorer(training, ModelConfig(min_won=200, min_lost=200), dt.date(2024, 7, 1))
    m = result.metrics
    assert m["eligible"] is False
    assert result.scorer.scoring_method == METHOD_STAGE_RATE == m["scoring_method"]
    assert "10 won and 10 lost" in m["fallback_reason"]
    assert "at least 200 won and 200 lost" in m["fallback_reason"]
    assert m["beats_baselines"] is None and m["calibration_rows"] == 0
    p = result.scorer.predict_proba(training.frame)
    assert ((p > 0.001) & (p < 0.999)).all()


def test_no_lost_deals_is_a_clear_error():
    deals, history = _ten_and_ten()
    won_only = deals["status"] == "won"
    kept_deals = deals.loc[won_only].reset_index(drop=True)
    kept_history = history.loc[history["deal_id"].isin(kept_deals["deal_id"])]
    training = build_training_set(kept_deals, kept_history, CATALOG, dt.date(2024, 7, 1), maturity_days=0)
    with pytest.raises(InsufficientHistoryError, match="no lost deals"):
        train_scorer(training, ModelConfig(min_won=1, min_lost=1), dt.date(2024, 7, 1))


def test_unknown_model_parameter_is_named(training):
    with pytest.raises(ValueError, match="max_trees"):
        train_scorer(training, ModelConfig(params={"max_trees": 3}), AS_OF)


def test_no_history_source_trains_on_creation_attributes():
    deals, history = make_crm(900, seed=5, with_history=False)
    prepared = prepare_history(deals, history, SYNTHETIC_CATALOG)
    training = build_training_set(deals, prepared, SYNTHETIC_CATALOG, AS_OF)
    result = train_scorer(training, ModelConfig(min_won=50, min_lost=50, params={"max_iter": 60}), AS_OF)
    m = result.metrics
    assert m["has_history"] is False
    assert "stage" not in m["features"] and "stage" not in result.scorer.feature_names
    # Without stage history there is no CRM probability at past snapshots: that baseline is absent.
    assert m["crm_baseline_log_loss"] is None
    assert m["stage_rate_baseline_log_loss"] is not None
    open_deals = snapshot_features(deals, prepared, SYNTHETIC_CATALOG, AS_OF)
    p = result.scorer.predict_proba(open_deals)
    assert len(p) == len(open_deals) and ((p > 0) & (p < 1)).all()


def test_reliability_table_matches_the_test_predictions(trained):
    predictions = trained.test_predictions
    expected = reliability_table(predictions["label"], predictions["model"])
    pd.testing.assert_frame_equal(trained.reliability, expected)
    assert len(trained.metrics["reliability"]) == 10


def test_a_feature_without_any_value_is_left_out_not_fatal(training):
    """A source with no accounts has no account win rate anywhere: histogram binning cannot bin a
    column with no values, so the model leaves the feature out and records it in its parameters."""
    import dataclasses

    blank = training.frame.assign(account_prior_win_rate=np.nan, account_prior_closed=np.nan)
    result = train_scorer(dataclasses.replace(training, frame=blank), TEST_CONFIG, AS_OF)
    assert result.scorer.scoring_method in (METHOD_MODEL, "crm_probability", METHOD_STAGE_RATE)
    assert set(result.metrics["params"]["features_without_values"]) == {"account_prior_win_rate", "account_prior_closed"}
    assert 0.0 < result.metrics["log_loss"] < 0.693


def test_keeping_the_best_rounds_equals_refitting_with_them(training):
    """fit_model keeps the first `best` trees of the long fit instead of refitting: the result must
    predict exactly what a fresh fit with `best` rounds predicts."""
    from models.scoring import build_model_pipeline, fit_model, model_params

    slices = time_split(training.frame, 0.2, 0.2, training.maturity_days)
    frame, labels = training.frame, training.frame["label"]
    train, cal = (slices == "train").to_numpy(), (slices == "calibration").to_numpy()
    params = model_params({"max_iter": 150, "learning_rate": 0.3})  # overfits early: best < 150
    pipeline, best = fit_model(training.feature_names, params, frame[train], labels[train], frame[cal], labels[cal])
    assert 1 <= best < 150
    assert pipeline.named_steps["classifier"].n_iter_ == best
    fresh = build_model_pipeline(training.feature_names, {**params, "max_iter": best})
    fresh.fit(frame.loc[train, training.feature_names], labels[train])
    rows = frame[training.feature_names]
    np.testing.assert_array_equal(pipeline.predict_proba(rows), fresh.predict_proba(rows))
