"""Per-deal explanations: computed from the scorer itself, in words a sales manager reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.explain import NO_FACTOR_TEXT, explain
from models.scoring import StageRateScorer, time_split
from tests.models.conftest import TEST_CONFIG


def _hand_scorer() -> StageRateScorer:
    """Stage-rate scorer on six rows: stage A (4 rows, 1 won, age 5 days), stage 'B "big"'
    (2 rows, both won, age 40 days). Typical values: stage A (most rows), age 5 (median)."""
    frame = pd.DataFrame(
        {"pipeline": ["P"] * 6, "stage": ["A"] * 4 + ['B "big"'] * 2, "age_days": [5.0] * 4 + [40.0] * 2}
    )
    typical = {"stage": "A", "age_days": 5.0}
    scorer = StageRateScorer(use_stage=True, version="v", feature_names=["stage", "age_days"], typical=typical, typical_stage_days=pd.DataFrame({"pipeline": [], "stage": [], "typical_days_in_stage": []}))
    return scorer.fit(frame, pd.Series([1, 0, 0, 0, 1, 1]))


def test_effects_are_differences_against_the_typical_value():
    scorer = _hand_scorer()
    deal = pd.DataFrame({"deal_id": ["x1"], "pipeline": ["P"], "stage": ['B "big"'], "age_days": [40.0]})
    out = explain(scorer, deal)
    factors = json.loads(out.loc[0, "top_factors"])
    # By hand (pseudo-count 20, see test_scoring): stage A 11/24, stage B 12/22,
    # cell B x 30-59 days (2 + 20 x 12/22)/22. Stage set to A: A has no row of 30-59 days, older
    # than its oldest rows (0-29 days), so the cell takes that bucket's (1 + 20 x 11/24)/24, not
    # stage A's pooled rate. Age set to 5 days: the cell B x 0-29 is empty and younger than B's
    # rows, so stage B's 12/22.
    actual = (2 + 20 * 12 / 22) / 22
    assert [f["feature"] for f in factors] == ["stage", "age_days"]
    assert factors[0]["effect"] == pytest.approx(actual - (1 + 20 * 11 / 24) / 24, abs=1e-4)
    assert factors[1]["effect"] == pytest.approx(actual - 12 / 22, abs=1e-4)
    assert factors[0]["text"] == 'at stage B "big"'
    assert factors[1]["text"] == "open for 40 days (typical 5)"
    assert out.loc[0, "top_factors_text"] == 'at stage B "big" (+16 pts); open for 40 days (typical 5) (+4 pts)'


def test_a_typical_deal_has_no_factor():
    scorer = _hand_scorer()
    deal = pd.DataFrame({"deal_id": ["x2"], "pipeline": ["P"], "stage": ["A"], "age_days": [5.0]})
    out = explain(scorer, deal)
    assert out.loc[0, "top_factors"] == "[]"
    assert out.loc[0, "top_factors_text"] == NO_FACTOR_TEXT


def test_only_deals_away_from_a_typical_value_are_scored_again(monkeypatch):
    scorer = _hand_scorer()
    deals = pd.DataFrame(
        {"deal_id": ["x1", "x2", "x3"], "pipeline": ["P"] * 3, "stage": ['B "big"', "A", "A"], "age_days": [40.0, 5.0, 40.0]}
    )
    scored = []
    predict = StageRateScorer.predict_proba

    def counting(self, frame):
        scored.append(len(frame))
        return predict(self, frame)

    monkeypatch.setattr(StageRateScorer, "predict_proba", counting)
    out = explain(scorer, deals)
    # Once all three as they are, then stage set to A for x1 only and age set to 5 for x1 and x3.
    assert scored == [3, 3]
    assert out.loc[1, "top_factors_text"] == NO_FACTOR_TEXT
    # Each deal explained alone reads the same.
    monkeypatch.undo()
    for i in range(3):
        assert explain(scorer, deals.iloc[[i]]).loc[0, "top_factors"] == out.loc[i, "top_factors"]


def test_long_stay_in_stage_is_the_first_factor_in_words(trained, training):
    """A deal typical in every way except that it has sat in its stage four times the usual."""
    scorer = trained.scorer
    row = {name: scorer.typical[name] for name in scorer.feature_names}
    stage, pipeline = row["stage"], row["pipeline"]
    # The usual stay, recomputed here: median days in that stage over the training slice.
    slices = time_split(training.frame, TEST_CONFIG.test_share, training.maturity_days).slices
    train = training.frame.loc[slices == "train"]
    usual = train.loc[(train["stage"] == stage) & (train["pipeline"] == pipeline), "days_in_stage"].median()
    row["days_in_stage"] = 4 * usual
    deal = pd.DataFrame([row]).assign(deal_id="typical-but-stuck")
    for column in ("pipeline", "stage", "forecast_category", "owner", "team", "product", "region", "account_segment", "lead_source", "deal_type"):
        deal[column] = deal[column].astype("string")
    out = explain(scorer, deal)
    factors = json.loads(out.loc[0, "top_factors"])
    assert len(factors) == 1
    first = factors[0]
    assert first["feature"] == "days_in_stage"
    assert first["effect"] < 0  # in this world, deals about to be lost linger in their stage
    assert first["text"] == f"in {stage} for {round(4 * usual)} days, 4.0x the usual {round(usual)}"
    assert out.loc[0, "top_factors_text"].startswith(first["text"] + " (-")


def test_real_open_deals_get_at_most_top_n_each_way(trained, world):
    from models.training_set import snapshot_features
    from tests.models.conftest import AS_OF
    from tests.models.synthetic import CATALOG

    deals, history = world
    features = snapshot_features(deals, history, CATALOG, AS_OF)
    out = explain(trained.scorer, features, top_n=1)
    assert out["deal_id"].tolist() == features["deal_id"].tolist()
    for text in out["top_factors"]:
        factors = json.loads(text)
        effects = [f["effect"] for f in factors]
        assert sum(e > 0 for e in effects) <= 1 and sum(e < 0 for e in effects) <= 1
        assert effects == sorted(effects, key=abs, reverse=True)
        assert all(abs(e) >= 0.005 for e in effects)


def test_words_for_counts_and_dates():
    from models.explain import _factor_text

    rows = pd.DataFrame(
        {
            "close_pushes": [0.0, 1.0, 2.0, 5.0],
            "days_to_expected_close": [-12.0, 0.0, 30.4, np.nan],
            "owner_prior_win_rate": [0.62, 0.0, 1.0, np.nan],
            "typical_value": [0.0, 0.0, 0.0, 0.0],
        }
    )
    assert _factor_text("close_pushes", rows).tolist() == [
        "close date never pushed", "close date pushed once", "close date pushed twice", "close date pushed 5 times",
    ]
    assert _factor_text("days_to_expected_close", rows).tolist()[:3] == [
        "expected close date passed 12 days ago", "expected to close in 0 days", "expected to close in 30 days",
    ]
    assert _factor_text("owner_prior_win_rate", rows).tolist() == [
        "owner's win rate to date 62%", "owner's win rate to date 0%", "owner's win rate to date 100%", "owner prior win rate unknown",
    ]


def test_the_time_of_year_in_words():
    from models.explain import _factor_text

    # Day 1 is 1 January, day 15 the 15th, day 190 (after a 29-day February) 8 July, day 366 31 December.
    rows = pd.DataFrame({"day_of_year": [1.0, 15.0, 190.0, 366.0, np.nan], "typical_value": [180.0] * 5})
    assert _factor_text("day_of_year", rows).tolist() == [
        "time of year: early January", "time of year: mid-January", "time of year: early July",
        "time of year: late December", "time of year unknown",
    ]


def test_a_very_old_deal_is_not_called_better_for_its_age_without_evidence():
    """Stage A: 40 fresh rows (5 days old, 10 won) and 2 rows 204 days old, both won; stage B: 20
    fresh rows, 10 won. Unconstrained, the thin old cell would sit above the fresh one and a
    204-day-old deal would read "open for 204 days (+10 pts)". Age never raises a stage's rate, so
    the two cells are pooled (weighted by rows) and age is no factor."""
    frame = pd.DataFrame(
        {"pipeline": ["P"] * 62, "stage": ["A"] * 42 + ["B"] * 20, "age_days": [5.0] * 40 + [204.0] * 2 + [5.0] * 20}
    )
    labels = pd.Series([1] * 10 + [0] * 30 + [1, 1] + [1] * 10 + [0] * 10)
    scorer = StageRateScorer(
        use_stage=True, version="v", feature_names=["stage", "age_days"], typical={"stage": "A", "age_days": 5.0},
        typical_stage_days=pd.DataFrame({"pipeline": [], "stage": [], "typical_days_in_stage": []}),
    ).fit(frame, labels)
    # By hand (pseudo-count 20): all 22/62; stage A (12 + 20 x 22/62)/62; cells A x 0-29 days
    # (10 + 20 x A)/60 and A x 180-364 days (2 + 20 x A)/22, the old one higher: pooled to their
    # row-weighted mean.
    stage_a = (12 + 20 * 22 / 62) / 62
    fresh, old = (10 + 20 * stage_a) / 60, (2 + 20 * stage_a) / 22
    assert old > fresh
    pooled = (40 * fresh + 2 * old) / 42
    deals = pd.DataFrame({"deal_id": ["fresh", "old"], "pipeline": ["P", "P"], "stage": ["A", "A"], "age_days": [5.0, 204.0]})
    np.testing.assert_allclose(scorer.predict_proba(deals), [pooled, pooled])
    out = explain(scorer, deals).set_index("deal_id")
    assert "open for 204 days" not in out.loc["old", "top_factors_text"]
    assert out.loc["old", "top_factors_text"] == NO_FACTOR_TEXT


def _logistic_on_ages(old_wins: int) -> "LogisticScorer":
    """200 rows in stage A, 10 days in stage, same amount: 100 aged 5 days (30 won) and 100 aged
    300 days (`old_wins` won)."""
    from models.scoring import LogisticScorer

    frame = pd.DataFrame(
        {"pipeline": "P", "stage": "A", "days_in_stage": 10.0, "age_days": [5.0] * 100 + [300.0] * 100,
         "close_pushes": 0.0, "log_amount_reporting": np.log1p(1000.0)}
    )
    labels = pd.Series([1] * 30 + [0] * 70 + [1] * old_wins + [0] * (100 - old_wins))
    typical = {"stage": "A", "days_in_stage": 10.0, "age_days": 5.0, "close_pushes": 0.0, "log_amount_reporting": np.log1p(1000.0)}
    return LogisticScorer(version="v", typical=typical, typical_stage_days=pd.DataFrame({"pipeline": [], "stage": [], "typical_days_in_stage": []})).fit(frame, labels)


def test_the_logistic_model_never_reads_age_as_a_plus():
    deals = pd.DataFrame(
        {"deal_id": ["fresh", "old"], "pipeline": "P", "stage": "A", "days_in_stage": 10.0, "age_days": [5.0, 300.0],
         "close_pushes": 0.0, "log_amount_reporting": np.log1p(1000.0)}
    )
    # Old deals won more here (70 of 100 against 30 of 100): age is left out, both deals score the
    # same (the pooled rate, 100 of 200, up to the regularisation) and age is no factor.
    rising = _logistic_on_ages(old_wins=70)
    assert rising.uses_age is False
    p = rising.predict_proba(deals)
    assert p[0] == pytest.approx(p[1]) and p[0] == pytest.approx(0.5, abs=0.01)
    assert "open for 300 days" not in explain(rising, deals).set_index("deal_id").loc["old", "top_factors_text"]
    # Old deals won less (10 of 100): the data show it, age stays, and it reads as a minus.
    falling = _logistic_on_ages(old_wins=10)
    assert falling.uses_age is True and falling.age_coefficient() < 0
    p = falling.predict_proba(deals)
    assert p[1] < 0.2 < 0.25 < p[0]
    text = explain(falling, deals).set_index("deal_id").loc["old", "top_factors_text"]
    assert "open for 300 days (typical 5) (-" in text
