"""Deals that sit in their stage longer than any training row: scored as they stood at the training
rows' limit, with their odds multiplied by limit / days in stage (`StageDaysPrior`), never like a
fresh deal, and never explained as better for their long stay."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history
from models.explain import explain
from models.scoring import StageDaysPrior, StageRateScorer, train_scorer
from models.training_set import build_training_set, snapshot_features
from sample_crm.generate import generate_sample

NO_STAGE_DAYS = pd.DataFrame({"pipeline": [], "stage": [], "typical_days_in_stage": []})


def _hand_scorer() -> StageRateScorer:
    """Stage x age rates on eight rows of pipeline P, stage A: four 10 days old (2 won), four 40
    days old (1 won); the training rows were at most 30 days in their stage."""
    train = pd.DataFrame(
        {
            "pipeline": ["P"] * 8,
            "stage": ["A"] * 8,
            "age_days": [10.0] * 4 + [40.0] * 4,
            "days_in_stage": [5.0, 10.0, 20.0, 30.0, 10.0, 20.0, 25.0, 30.0],
        }
    )
    scorer = StageRateScorer(
        use_stage=True, version="v", feature_names=["stage", "age_days"],
        typical={"stage": "A", "age_days": 25.0, "days_in_stage": 25.0}, typical_stage_days=NO_STAGE_DAYS,
    ).fit(train, pd.Series([1, 1, 0, 0, 1, 0, 0, 0]))
    scorer.stage_days_prior = StageDaysPrior.fit(train)
    return scorer


def test_a_deal_beyond_the_training_rows_keeps_limit_over_days_of_its_odds():
    scorer = _hand_scorer()
    assert scorer.stage_days_prior.limits == {"P": 30.0}
    # By hand (pseudo-count 20): all rows 3/8; stage A (3 + 20 x 3/8)/28 = 3/8; cell A x 30-59
    # days (1 + 20 x 3/8)/24 = 8.5/24; cell A x 0-29 (2 + 7.5)/24 = 9.5/24 -- already falling
    # with age, so pool-adjacent-violators leaves them.
    old_cell = 8.5 / 24
    deals = pd.DataFrame(
        {
            "deal_id": ["fresh", "at_limit", "stale"],
            "pipeline": ["P"] * 3,
            "stage": ["A"] * 3,
            "age_days": [40.0, 40.0, 130.0],
            "days_in_stage": [20.0, 30.0, 120.0],
        }
    )
    p = scorer.predict_proba(deals)
    assert p[0] == pytest.approx(old_cell) and p[1] == pytest.approx(old_cell)
    # "stale" has sat 120 days, 90 past the limit: scored as it stood at 30 days in stage and 40
    # days old (the 30-59 day cell, 8.5/24), then its odds x 30/120:
    # (8.5/15.5) x 1/4 = 8.5/62 -> probability 8.5/70.5.
    assert p[2] == pytest.approx(8.5 / 70.5)
    # Without the prior the 130-day-old deal would get the rate of the oldest cell seen in its
    # stage (the 30-59 day cell carried forward), never the stage's pooled rate.
    scorer.stage_days_prior = None
    assert scorer.predict_proba(deals)[2] == pytest.approx(old_cell)


def test_the_long_stay_is_explained_as_lowering_the_score():
    scorer = _hand_scorer()
    deal = pd.DataFrame(
        {"deal_id": ["stale"], "pipeline": ["P"], "stage": ["A"], "age_days": [130.0], "days_in_stage": [120.0]}
    )
    factors = {f["feature"]: f for f in json.loads(explain(scorer, deal).loc[0, "top_factors"])}
    # Days in stage set to the typical 25 (the scorer's fallback without per-stage medians): within
    # the limit, so no odds factor and age stays 130 (the 30-59 day cell carried forward, 8.5/24).
    assert factors["days_in_stage"]["effect"] == pytest.approx(8.5 / 70.5 - 8.5 / 24, abs=1e-4)
    assert factors["days_in_stage"]["text"].startswith("in A for 120 days")
    assert all(f["effect"] < 0 for f in factors.values())


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_stale")
    generate_sample(out, n_deals=720, seed=2, end_date=dt.date(2026, 11, 15), profile="messy")
    project = load_project_config()
    export = read_exports(out, project)
    history = prepare_history(export.deals, export.history, export.stages)
    return export, history, project


def test_deals_far_beyond_the_training_rows_are_not_scored_like_fresh_ones_on_a_messy_org(messy):
    """A messy org as of the eve of 2026-Q3 (data from February): no training row sat more than a
    few weeks in its stage, while dozens of open deals have sat three months or more."""
    export, history, project = messy
    as_of = dt.date(2026, 6, 30)
    training = build_training_set(export.deals, history, export.stages, as_of)
    result = train_scorer(training, project.model, as_of)
    scorer = result.scorer
    prior = scorer.stage_days_prior
    assert prior is not None
    features = snapshot_features(export.deals, history, export.stages, as_of)
    limit = prior.limit_of(features)
    far = features.loc[features["days_in_stage"].to_numpy() > 2 * limit].reset_index(drop=True)
    assert len(far) >= 10
    # The same deals as if they had just entered their stage (days in stage 0, age moved back by
    # the same amount): what a fresh deal in their stage and pipeline would be scored.
    fresh = far.assign(days_in_stage=0.0, age_days=(far["age_days"] - far["days_in_stage"]).clip(lower=0.0))
    p_far, p_fresh = scorer.predict_proba(far), scorer.predict_proba(fresh)
    # Each is the deal as it stood at its limit, with its odds x limit / days (< 1/2 here).
    factor = prior.limit_of(far) / far["days_in_stage"].to_numpy()
    p_limit = scorer.predict_proba(prior.moved_back(far))
    odds = lambda p: p / (1 - p)  # noqa: E731
    unclipped = p_far > 0.001
    assert unclipped.any()
    assert np.allclose(odds(p_far[unclipped]), (odds(p_limit) * factor)[unclipped], rtol=1e-9)
    # At its limit a deal is older than the fresh one, which never raises its score, so its odds
    # are at most half a fresh deal's in the same stage.
    assert (odds(p_far) <= odds(p_fresh) * factor + 1e-9).all()
    assert (p_far < p_fresh).all()
    # Their explanations never call the long stay or the age a plus.
    explained = explain(scorer, far)
    for text in explained["top_factors"]:
        for factor in json.loads(text):
            if factor["feature"] in ("days_in_stage", "age_days"):
                assert factor["effect"] < 0, factor
