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
    DaysInStageCalibration,
    METHOD_CONSTANT,
    METHOD_MODEL,
    METHOD_STAGE_RATE,
    SPLIT_PURGED,
    SPLIT_WIDENED,
    InsufficientHistoryError,
    StageRateScorer,
    score_band,
    score_bands,
    model_params,
    recency_weights,
    time_split,
    train_scorer,
    _deal_folds,
    _fit_boosting,
)
from models.training_set import TrainingSet, build_training_set, snapshot_features
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


def _cut_frame(n_dates: int, long_deals: int, long_from: int, long_label: int = 1) -> pd.DataFrame:
    """Weekly dates from 2024-01-01; at every date but the last two, ten deals seen only then
    (d<i>_<j>, won for odd j); each `long` deal seen at every date from `long_from` on."""
    days = pd.date_range("2024-01-01", periods=n_dates, freq="7D")
    rows = [(days[i], f"d{i}_{j}", j % 2) for i in range(n_dates - 2) for j in range(10)]
    for k in range(long_deals):
        rows += [(d, f"long{k}", long_label) for d in days[long_from:]]
    return pd.DataFrame(rows, columns=["snapshot_at", "deal_id", "label"])


def test_test_cut_purges_deals_seen_on_both_sides_while_enough_is_left():
    frame = _cut_frame(10, long_deals=1, long_from=6)
    split = time_split(frame, test_share=0.2)
    # 10 dates: the last 2 test. Before the cut: 80 short rows and long's rows at dates 6 and 7
    # (82 rows; 41 won deals with long, 40 lost). The purge drops long's 2 rows: 80 of 82 rows,
    # 40 of 41 won and 40 of 40 lost deals are kept, all at least 90%: the purge stands.
    assert split.rule == SPLIT_PURGED
    assert split.slices[frame["deal_id"] == "long0"].tolist() == ["purged", "purged", "test", "test"]
    assert (split.slices[frame["deal_id"].str.startswith("d")] == "train").all()
    assert "80 of 82 rows before the cut train (40 won / 40 lost deals)" in split.note
    assert time_split(frame.iloc[:1], 0.2) is None


def test_the_embargo_leaves_out_the_days_just_before_the_cut():
    # 20 dates, the last 2 test (cut 2024-05-06). A 14-day embargo drops the rows after 04-22
    # (date 17: ten rows); long's rows at dates 16 and 17 are purged. Kept: 170 of 182 rows,
    # 85 of 91 won and 85 of 90 lost deals, all above 90%.
    frame = _cut_frame(20, long_deals=1, long_from=16)
    split = time_split(frame, 0.1, embargo_days=14)
    assert split.rule == SPLIT_PURGED and split.test_start == pd.Timestamp("2024-05-06")
    date = frame["snapshot_at"]
    short = frame["deal_id"].str.startswith("d")
    assert (split.slices[(date == pd.Timestamp("2024-04-29")) & short] == "embargo").all()
    assert (split.slices[(date == pd.Timestamp("2024-04-22")) & short] == "train").all()
    assert split.slices[frame["deal_id"] == "long0"].tolist() == ["purged", "purged", "test", "test"]
    assert "170 of 182 rows before the cut train (85 won / 85 lost deals)" in split.note


def test_test_cut_widens_the_window_instead_of_starving_the_training_rows():
    # Three long deals seen at every date: the purge would drop 3 x 8 of the 104 rows before the
    # cut, keeping 80 (77%): every row before the cut trains instead, and the note says so.
    frame = _cut_frame(10, long_deals=3, long_from=0, long_label=0)
    split = time_split(frame, test_share=0.2)
    assert split.rule == SPLIT_WIDENED
    assert (split.slices[frame["snapshot_at"] < pd.Timestamp("2024-02-26")] == "train").all()
    assert (split.slices[frame["snapshot_at"] >= pd.Timestamp("2024-02-26")] == "test").all()
    assert "keep only 80 of 104 rows" in split.note and "3 deals have rows on both sides" in split.note


def _ladder_training(test_a: int, test_b: int, crm: bool) -> TrainingSet:
    """Training on dates 0..7 (two rows each): stage A 8 rows, 2 won; stage B 8 rows, 6 won; all
    5 days old. Test on dates 8 and 9: two A rows labelled `test_a`, two B rows labelled `test_b`.
    The CRM says 0.9 for A and 0.1 for B (backwards), or nothing."""
    days = pd.date_range("2024-01-01", periods=10, freq="7D")
    rows = []
    a_labels, b_labels = [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]
    for i in range(8):
        rows.append((days[i], f"a{i}", a_labels[i], "A"))
        rows.append((days[i], f"b{i}", b_labels[i], "B"))
    for i in (8, 9):
        rows.append((days[i], f"a{i}", test_a, "A"))
        rows.append((days[i], f"b{i}", test_b, "B"))
    frame = pd.DataFrame(rows, columns=["snapshot_at", "deal_id", "label", "stage"])
    frame = frame.assign(
        snapshot_kind="scheduled", pipeline="P", age_days=5.0,
        crm_probability=np.where(frame["stage"] == "A", 0.9, 0.1) if crm else np.nan, stage_probability=np.nan,
    )
    return TrainingSet(frame, ["stage", "age_days"], True, dt.date(2024, 12, 31), "W-MON", 28.0, 0, 0, False)


def test_the_ladder_publishes_the_best_held_out_log_loss():
    result = train_scorer(_ladder_training(test_a=0, test_b=1, crm=True), ModelConfig(), dt.date(2024, 12, 31))
    m = result.metrics
    losses = {c["method"]: c["log_loss"] for c in m["candidates"]}
    # By hand (pseudo-count 20): constant 8/16 = 0.5; stage A (2 + 20 x 0.5)/28 = 12/28, B 16/28;
    # the stage x age cells (one age bucket) A (2 + 20 x 12/28)/28, B (6 + 20 x 16/28)/28.
    # Test: A rows lost, B rows won, so each rate scores -log of its distance from the wrong side.
    a_cell = (2 + 20 * 12 / 28) / 28
    assert losses["constant_rate"] == pytest.approx(np.log(2))
    assert losses["crm_probability"] == pytest.approx(-np.log(0.1))
    assert losses["stage_only_rate"] == pytest.approx(-np.log(16 / 28))
    assert losses["stage_rate"] == pytest.approx(-np.log(1 - a_cell))
    assert losses["logistic"] is None and losses["calibrated_model"] is None
    assert m["scoring_method"] == result.scorer.scoring_method == METHOD_STAGE_RATE
    assert m["log_loss"] == pytest.approx(-np.log(1 - a_cell))
    assert m["constant_log_loss"] == pytest.approx(np.log(2)) and m["beats_baselines"] is True
    assert (m["train_rows"], m["test_rows"], m["train_won_deals"], m["train_lost_deals"]) == (16, 4, 8, 8)
    assert (m["test_won_deals"], m["test_lost_deals"]) == (2, 2)
    assert m["selection_reason"].startswith("stage_rate has the lowest held-out log loss")
    assert "logistic (its inputs" in m["selection_reason"] and "the training rows hold 8 won and 8 lost" in m["selection_reason"]
    assert "gradient boosting not fitted" in m["fallback_reason"]
    np.testing.assert_allclose(result.test_predictions["published"], [1 - (1 - a_cell), (6 + 20 * 16 / 28) / 28] * 2)


def test_a_scorer_worse_than_the_constant_rate_is_never_published():
    # The stages flip in the test period (A won, B lost) and the CRM is silent: every stage-based
    # scorer is worse than the constant 0.5 (log 2), which is published.
    result = train_scorer(_ladder_training(test_a=1, test_b=0, crm=False), ModelConfig(), dt.date(2024, 12, 31))
    m = result.metrics
    assert m["scoring_method"] == METHOD_CONSTANT
    assert m["log_loss"] == pytest.approx(np.log(2))
    np.testing.assert_allclose(result.scorer.predict_proba(result.test_frame), 0.5)
    assert "crm_probability (no CRM probability" in m["selection_reason"]
    assert all(c["log_loss"] is None or c["log_loss"] >= np.log(2) - 1e-12 for c in m["candidates"])


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


def test_a_slice_with_enough_deals_is_still_cross_fitted_below_the_row_bar(training, monkeypatch):
    monkeypatch.setattr("models.scoring.ISOTONIC_MIN_DEALS", 10)
    monkeypatch.setattr("models.scoring.ISOTONIC_MIN_ROWS", 10)
    m = train_scorer(training, TEST_CONFIG, AS_OF).metrics
    assert len(training.frame) < 250_000
    assert m["params"]["calibration_method"] == "sigmoid_cross_fitted"
    assert m["calibration_rows"] == m["train_rows"]


def test_calibration_is_cross_fitted_by_deal_when_calibration_deals_are_few(trained):
    # The synthetic CRM's calibration slice holds far fewer than ISOTONIC_MIN_DEALS deals, so the
    # sigmoid is fitted on out-of-fold scores of every training row (grouped by deal).
    m = trained.metrics
    assert m["params"]["calibration_method"] == "sigmoid_cross_fitted"
    assert m["calibration_rows"] == m["train_rows"]
    assert trained.scorer.calibration_method == "sigmoid_cross_fitted"
    # Fewer than 4,000 won training deals: the calibration's line stays straight.
    assert m["train_won_deals"] < 4_000
    assert "calibration_knots" not in m["params"]
    assert m["params"]["calibration_terms"] == [
        "log_odds_of_score", "log1p_days_in_stage", "log1p_days_in_stage_squared", "log1p_days_in_stage_x_stage_order",
    ]


def test_the_calibration_bends_once_the_training_rows_hold_enough_deals_of_each_outcome(training, monkeypatch):
    monkeypatch.setattr("models.scoring.CALIBRATION_KNOTS_MIN_DEALS", 100)
    result = train_scorer(training, TEST_CONFIG, AS_OF)
    m = result.metrics
    assert min(m["train_won_deals"], m["train_lost_deals"]) >= 100
    knots = m["params"]["calibration_knots"]
    # The quartiles of the training rows' out-of-fold scores, as probabilities.
    assert len(knots) == 3 and 0 < knots[0] < knots[1] < knots[2] < 1
    assert result.scorer.scoring_method == METHOD_MODEL
    calibration = result.scorer.estimator
    assert calibration.bends_kept_
    assert m["params"]["calibration_terms"][:4] == [
        "log_odds_of_score", "log_odds_of_score_beyond_q25", "log_odds_of_score_beyond_q50", "log_odds_of_score_beyond_q75",
    ]
    assert (calibration.slopes_ > 0).all()


def test_a_calibration_slice_with_enough_deals_is_calibrated_there_isotonically(training, monkeypatch):
    # With the bar for isotonic calibration below this CRM's calibration slice and more training
    # rows than are cross-fitted, the model is calibrated on that slice's rows alone: fewer
    # calibration rows than training rows, probabilities that never fall as the model's score rises.
    monkeypatch.setattr("models.scoring.ISOTONIC_MIN_DEALS", 10)
    monkeypatch.setattr("models.scoring.ISOTONIC_MIN_ROWS", 10)
    monkeypatch.setattr("models.scoring.CROSS_FIT_MAX_ROWS", 0)
    result = train_scorer(training, TEST_CONFIG, AS_OF)
    m = result.metrics
    assert m["params"]["calibration_method"] == "isotonic"
    assert 0 < m["calibration_rows"] < m["train_rows"]
    frame = result.test_frame
    raw = result.scorer.estimator.estimator.predict_proba(frame[result.scorer.feature_names])[:, 1]
    calibrated = result.scorer.estimator.predict_proba(frame[result.scorer.feature_names])[:, 1]
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(calibrated[order]) >= -1e-12)


def test_deal_folds_never_split_a_deal_and_need_both_outcomes_to_fit():
    # Ten deals, d0..d9, with 1..10 rows each (55 rows); d0-d4 won, d5-d9 lost.
    deal_ids = [f"d{i}" for i in range(10) for _ in range(i + 1)]
    frame = pd.DataFrame({"deal_id": deal_ids})
    labels = pd.Series([1 if int(d[1:]) < 5 else 0 for d in deal_ids])
    folds = _deal_folds(frame, labels)
    assert folds is not None and len(folds) == 5
    held_out = np.concatenate([held for _, held in folds])
    assert sorted(held_out) == list(range(55))  # every row held out exactly once
    for fit, held in folds:
        assert set(frame["deal_id"].iloc[fit]).isdisjoint(frame["deal_id"].iloc[held])
        assert len(fit) + len(held) == 55
    # One lost deal only: the fold holding it out fits on won deals alone, so no cross-fitting.
    one_lost = pd.Series([0 if d == "d9" else 1 for d in deal_ids])
    assert _deal_folds(frame, one_lost) is None
    # Fewer deals than folds: none.
    assert _deal_folds(frame.iloc[:6], labels.iloc[:6]) is None


def test_recency_weights_halve_per_half_life():
    at = pd.Series([pd.Timestamp(t) for t in ("2025-12-29", "2024-12-29", "2023-12-30", "2025-06-29 12:00")])
    # 0, 365, 730 and 182.5 days before the latest date: 1, 1/2, 1/4 and 1/sqrt(2).
    assert recency_weights(at, 365.0) == pytest.approx([1.0, 0.5, 0.25, 2 ** -0.5])
    assert recency_weights(at, None) is None
    with pytest.raises(ValueError, match="half-life"):
        recency_weights(at, 0.0)


def _two_period_rows() -> tuple[pd.DataFrame, pd.Series]:
    """500 deals (one row each) in each of two groups x = 0 / 1 at each of two dates 730 days apart.
    The old date wins 10% (x = 0) and 50% (x = 1); the recent one 30% and 70%."""
    rows, labels = [], []
    for date, rates in (("2023-01-02", (0.1, 0.5)), ("2025-01-01", (0.3, 0.7))):
        for x, rate in enumerate(rates):
            won = int(round(rate * 500))
            for i in range(500):
                rows.append({"deal_id": f"{date}-{x}-{i}", "snapshot_at": pd.Timestamp(date), "x": float(x)})
                labels.append(1 if i < won else 0)
    frame = pd.DataFrame(rows)
    frame["label"] = labels
    return frame, frame["label"]


@pytest.mark.parametrize(
    "half_life, expected",
    [
        # Every row alike: the pooled rates, (10% + 30%) / 2 and (50% + 70%) / 2.
        (None, (0.20, 0.60)),
        # The old rows weigh 0.5 ** (730 / 365) = 1/4: (0.25 * 10% + 30%) / 1.25 = 26% and
        # (0.25 * 50% + 70%) / 1.25 = 66%.
        (365.0, (0.26, 0.66)),
    ],
)
def test_the_cross_fitted_calibration_follows_the_recent_outcomes(monkeypatch, half_life, expected):
    import models.scoring as scoring

    monkeypatch.setattr(scoring, "CALIBRATION_HALF_LIFE_DAYS", half_life)
    frame, labels = _two_period_rows()
    common = {"version": "test", "typical": {}, "typical_stage_days": pd.DataFrame()}
    scorer, why, calibration_rows = _fit_boosting(
        frame, labels, ["x"], model_params({"max_iter": 30}), ModelConfig(), 0.0, common, {}
    )
    assert why is None and scorer.calibration_method == "sigmoid_cross_fitted"
    assert calibration_rows == 2000
    p = scorer.predict_proba(pd.DataFrame({"x": [0.0, 1.0]}))
    # The sigmoid's two parameters meet the two groups' weighted rates (Platt's targets and the
    # folds' scores move them by well under a point).
    assert p == pytest.approx(expected, abs=0.01)


def _stay_rows(with_days: bool = True) -> tuple[pd.DataFrame, pd.Series, list]:
    """1,000 deals (one row each) 5 days in their stage, 60% won, and 1,000 deals 100 days in
    their stage, 20% won; all in stage order 1. The model below never looks at the days."""
    rows, labels = [], []
    for days, won in ((5.0, 600), (100.0, 200)):
        for i in range(1000):
            rows.append({"x": 0.0, "stage_order": 1.0, "days_in_stage": days})
            labels.append(1 if i < won else 0)
    frame = pd.DataFrame(rows)
    if not with_days:
        frame = frame.drop(columns=["days_in_stage"])
    y = pd.Series(labels)
    folds = _deal_folds(pd.DataFrame({"deal_id": np.arange(len(frame))}), y)
    return frame, y, folds


def test_the_cross_fitted_calibration_learns_what_the_model_misses_about_days_in_stage():
    from sklearn.dummy import DummyClassifier

    # The model scores every deal with its fitting rows' win rate, 40%, whatever its days in
    # stage. The calibration sees the days beside that score: 60% at 5 days, 20% at 100.
    frame, y, folds = _stay_rows()
    calibrated = DaysInStageCalibration(DummyClassifier(strategy="prior"), folds).fit(frame, y)
    p = calibrated.predict_proba(frame.iloc[[0, 1000]])[:, 1]
    assert p == pytest.approx([0.60, 0.20], abs=0.01)
    # Without days in stage it is Platt scaling of the score alone: 40% for every deal.
    frame, y, folds = _stay_rows(with_days=False)
    calibrated = DaysInStageCalibration(DummyClassifier(strategy="prior"), folds).fit(frame, y)
    assert calibrated.predict_proba(frame.iloc[[0, 1000]])[:, 1] == pytest.approx([0.40, 0.40], abs=0.01)


class _LogOddsColumn:
    """A stand-in model whose score is sigmoid(x), whatever it is fitted on."""

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self

    def fit(self, frame, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, frame):
        p = 1.0 / (1.0 + np.exp(-frame["x"].to_numpy(dtype=float)))
        return np.column_stack([1.0 - p, p])


def _bent_rows(log_odds) -> tuple[pd.DataFrame, pd.Series, list]:
    """2,000 rows at each score log odds x = -2, -1.5, ..., 2, of which exactly
    round(2000 sigmoid(log_odds(x))) are won."""
    xs = np.arange(-2.0, 2.01, 0.5)
    frame = pd.DataFrame({"x": np.repeat(xs, 2000)})
    won = [round(2000 / (1.0 + np.exp(-log_odds(x)))) for x in xs]
    y = pd.Series(np.concatenate([np.arange(2000) < w for w in won]).astype(int))
    return frame, y, _deal_folds(pd.DataFrame({"deal_id": np.arange(len(frame))}), y)


def _true_bent(x: float) -> float:
    # Worked by hand: -0.5 at x = 0; slope 1.6 below -1, 1.0 on [-1, 0], 0.6 on [0, 1], 1.4 above 1.
    if x < -1:
        return -1.5 + 1.6 * (x + 1)
    if x < 0:
        return -0.5 + 1.0 * x
    if x < 1:
        return -0.5 + 0.6 * x
    return 0.1 + 1.4 * (x - 1)


def test_the_calibration_bends_at_the_score_quartiles():
    frame, y, folds = _bent_rows(_true_bent)
    calibrated = DaysInStageCalibration(_LogOddsColumn(), folds).fit(frame, y)
    # Nine equal groups: the quartiles of the scores' log odds are the groups at -1, 0 and 1.
    assert calibrated.knots_ == pytest.approx((-1.0, 0.0, 1.0))
    assert calibrated.bends_kept_
    assert calibrated.terms == ["log_odds_of_score", "log_odds_of_score_beyond_q25", "log_odds_of_score_beyond_q50", "log_odds_of_score_beyond_q75"]
    assert calibrated.slopes_ == pytest.approx([1.6, 1.0, 0.6, 1.4], abs=0.02)
    queries = pd.DataFrame({"x": [-2.0, -1.0, 0.0, 1.0, 2.0]})
    truth = [1.0 / (1.0 + np.exp(-_true_bent(x))) for x in queries["x"]]
    # sigmoid(-3.1) = 0.0431, sigmoid(-1.5) = 0.1824, sigmoid(-0.5) = 0.3775, sigmoid(0.1) = 0.5250, sigmoid(1.5) = 0.8176
    assert truth == pytest.approx([0.0431, 0.1824, 0.3775, 0.5250, 0.8176], abs=1e-4)
    assert calibrated.predict_proba(queries)[:, 1] == pytest.approx(truth, abs=0.003)
    # A straight line cannot follow it: it misses the ends by more than two points.
    straight = DaysInStageCalibration(_LogOddsColumn(), folds, bends=False).fit(frame, y)
    assert straight.terms == ["log_odds_of_score"]
    assert np.abs(straight.predict_proba(queries)[:, 1] - truth).max() > 0.02


def test_a_score_with_few_distinct_values_is_not_bent():
    # A model that gives most rows one of two scores (a CRM whose deals look alike): its quartiles
    # coincide, so there is nothing to bend at and the line stays straight.
    frame = pd.DataFrame({"x": np.repeat([-1.0, 0.5], [3000, 1000])})
    y = pd.Series(np.concatenate([np.arange(3000) < 800, np.arange(1000) < 600]).astype(int))
    folds = _deal_folds(pd.DataFrame({"deal_id": np.arange(len(frame))}), y)
    calibrated = DaysInStageCalibration(_LogOddsColumn(), folds).fit(frame, y)
    assert calibrated.knots_ == () and calibrated.terms == ["log_odds_of_score"]
    # Two scores, two observed rates: 800/3000 and 600/1000.
    assert calibrated.predict_proba(frame.iloc[[0, 3999]])[:, 1] == pytest.approx([800 / 3000, 0.6], abs=1e-3)


def test_a_calibration_saved_before_it_could_bend_still_scores():
    # An earlier night's artifact, written by a version without the bends, has no knots: loaded
    # again, it scores as the straight line it was fitted as.
    import pickle

    frame, y, folds = _bent_rows(_true_bent)
    straight = DaysInStageCalibration(_LogOddsColumn(), folds, bends=False).fit(frame, y)
    expected = straight.predict_proba(frame.iloc[[0, 9000, 17999]])[:, 1]
    for name in ("bends", "knots_"):
        del straight.__dict__[name]
    loaded = pickle.loads(pickle.dumps(straight))
    assert loaded.knots_ == () and loaded.terms == ["log_odds_of_score"]
    assert loaded.predict_proba(frame.iloc[[0, 9000, 17999]])[:, 1] == pytest.approx(expected)


def test_a_calibration_that_would_fall_somewhere_stays_straight():
    # Above x = 1 the win chance falls as the score rises: a bend would give that piece a negative
    # slope, so the line is refitted straight and still rises everywhere.
    frame, y, folds = _bent_rows(lambda x: x if x <= 1 else 1.0 - 2.0 * (x - 1))
    calibrated = DaysInStageCalibration(_LogOddsColumn(), folds).fit(frame, y)
    assert not calibrated.bends_kept_
    assert calibrated.knots_ == ()
    assert calibrated.terms == ["log_odds_of_score"]
    p = calibrated.predict_proba(pd.DataFrame({"x": np.arange(-2.0, 2.01, 0.5)}))[:, 1]
    assert (np.diff(p) > 0).all()


def test_training_rows_come_before_the_test_rows(trained, training):
    split = time_split(training.frame, TEST_CONFIG.test_share, training.maturity_days)
    used = training.frame.assign(slice=split.slices)
    train, test = used.loc[used["slice"] == "train"], used.loc[used["slice"] == "test"]
    assert train["snapshot_at"].max() < test["snapshot_at"].min() == split.test_start
    assert set(trained.test_predictions["deal_id"]) == set(test["deal_id"])
    assert trained.metrics["test_rows"] == len(trained.test_predictions) == len(test)
    assert trained.metrics["train_rows"] == len(train)
    assert trained.metrics["split_rule"] == split.rule
    both = set(train["deal_id"]) & set(test["deal_id"])
    if split.rule == SPLIT_PURGED:
        assert not both
    else:
        # Widened: every labelled row before the cut trains; the note counts the shared deals.
        assert len(train) == int((training.frame["snapshot_at"] < split.test_start).sum())
        assert f"{len(both)} deals have rows on both sides" in trained.metrics["split_note"]


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
    losses = {c["method"]: c["log_loss"] for c in m["candidates"]}
    assert m["eligible"] is True and losses["calibrated_model"] is not None
    assert result.scorer.scoring_method == m["scoring_method"] != METHOD_MODEL
    assert m["log_loss"] == min(v for v in losses.values() if v is not None) < losses["calibrated_model"]
    assert "does not beat" in m["fallback_reason"]
    assert "not among the training set's features" in m["selection_reason"]


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


def test_thin_history_competes_without_the_fitted_models():
    deals, history = _ten_and_ten()
    training = build_training_set(deals, history, CATALOG, dt.date(2024, 7, 1), maturity_days=14)
    assert (training.won_deals, training.lost_deals) == (10, 10)
    result = train_scorer(training, ModelConfig(min_won=200, min_lost=200), dt.date(2024, 7, 1))
    m = result.metrics
    assert m["eligible"] is False and m["calibration_rows"] == 0
    assert m["scoring_method"] in ("constant_rate", "crm_probability", "stage_only_rate", "stage_rate")
    assert "it needs 200 won and 200 lost" in m["fallback_reason"]
    assert "it needs 50 won and 50 lost" in m["selection_reason"]
    assert m["log_loss"] <= m["constant_log_loss"]
    p = result.scorer.predict_proba(training.frame)
    assert ((p > 0.001) & (p < 0.999)).all()


def test_no_lost_deals_is_a_clear_error():
    deals, history = _ten_and_ten()
    won_only = deals["status"] == "won"
    kept_deals = deals.loc[won_only].reset_index(drop=True)
    kept_history = history.loc[history["deal_id"].isin(kept_deals["deal_id"])]
    training = build_training_set(kept_deals, kept_history, CATALOG, dt.date(2024, 7, 1), maturity_days=14)
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
    expected = reliability_table(predictions["label"], predictions["published"])
    pd.testing.assert_frame_equal(trained.reliability, expected)
    assert len(trained.metrics["reliability"]) == 10


def test_a_feature_without_any_value_is_left_out_not_fatal(training):
    """A source with no accounts has no account win rate anywhere: histogram binning cannot bin a
    column with no values, so the model leaves the feature out and records it in its parameters."""
    import dataclasses

    blank = training.frame.assign(account_prior_win_rate=np.nan, account_prior_closed=np.nan)
    result = train_scorer(dataclasses.replace(training, frame=blank), TEST_CONFIG, AS_OF)
    assert result.metrics["eligible"] is True
    assert set(result.metrics["params"]["features_without_values"]) == {"account_prior_win_rate", "account_prior_closed"}
    assert 0.0 < result.metrics["log_loss"] < 0.693


def test_keeping_the_best_rounds_equals_refitting_with_them(training):
    """fit_model keeps the first `best` trees of the long fit instead of refitting: the result must
    predict exactly what a fresh fit with `best` rounds predicts."""
    from models.scoring import build_model_pipeline, fit_model, model_params

    frame, labels = training.frame, training.frame["label"]
    dates = np.sort(frame["snapshot_at"].unique())
    train = (frame["snapshot_at"] < dates[int(len(dates) * 0.6)]).to_numpy()
    cal = ~train & (frame["snapshot_at"] < dates[int(len(dates) * 0.8)]).to_numpy()
    params = model_params({"max_iter": 150, "learning_rate": 0.3})  # overfits early: best < 150
    pipeline, best = fit_model(training.feature_names, params, frame[train], labels[train], frame[cal], labels[cal])
    assert 1 <= best < 150
    assert pipeline.named_steps["classifier"].n_iter_ == best
    fresh = build_model_pipeline(training.feature_names, {**params, "max_iter": best})
    fresh.fit(frame.loc[train, training.feature_names], labels[train])
    rows = frame[training.feature_names]
    np.testing.assert_array_equal(pipeline.predict_proba(rows), fresh.predict_proba(rows))


def test_the_model_input_ranks_text_in_the_order_the_encoder_sorts_it():
    from sklearn.preprocessing import OrdinalEncoder

    from models.scoring import UNSEEN_TEXT, ModelInput

    fitted_on = pd.DataFrame(
        {"owner": pd.Series(["b", "a", None, "c", "a", "B"], dtype="string"), "age_days": [1, 2, 3, 4, 5, 6]}
    )
    step = ModelInput().fit(fitted_on)
    later = pd.DataFrame({"owner": pd.Series(["c", "zz", None, "a", "B"], dtype="string"), "age_days": [1.5, 2, 3, 4, 5]})
    out = step.transform(later)
    # Python's string order puts "B" before "a": B=0, a=1, b=2, c=3; "zz" was never seen; None stays blank.
    assert out["owner"].tolist()[:2] == [3.0, UNSEEN_TEXT]
    assert np.isnan(out["owner"].iloc[2])
    assert out["owner"].tolist()[3:] == [1.0, 0.0]
    assert out["age_days"].tolist() == [1.5, 2.0, 3.0, 4.0, 5.0]
    assert list(step.get_feature_names_out()) == ["owner", "age_days"]

    # The encoder after it gives what it gives on the text: same categories in the same order, the
    # rarest ("B", "b", "c" once each) grouped as infrequent, unseen and blank values NaN.
    def encoder():
        return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan, max_categories=3)

    text = fitted_on[["owner"]].astype(object).where(fitted_on[["owner"]].notna(), np.nan)
    on_text = encoder().fit(text).transform(later[["owner"]].astype(object).where(later[["owner"]].notna(), np.nan))
    on_ranks = encoder().fit(step.transform(fitted_on)[["owner"]]).transform(out[["owner"]])
    np.testing.assert_array_equal(on_text, on_ranks)
    assert np.isnan(on_ranks[1, 0]) and np.isnan(on_ranks[2, 0])
