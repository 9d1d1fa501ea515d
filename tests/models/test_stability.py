"""Scores of deals that did not change stay put between consecutive nightly runs.

Two nightly runs, for as_of D-1 and D, each train and publish a scorer and score the deals open at
the end of their day. A deal whose stage, amount, expected close date and age bucket are the same
in both must not move by more than 0.10, unless the published scorer changed tier, which
`published_tier_change` then names (model_runs.tier_change). Checked on the sample CRM (clean
profile) and on its messy real-org profile.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history
from sample_crm.generate import generate_sample
from models.registry import published_tier_change
from models.scoring import age_buckets, train_scorer
from models.training_set import build_training_set, snapshot_features

END = dt.date(2026, 11, 15)
MAX_MOVE = 0.10


def _nightly(export, history, project, as_of: dt.date) -> tuple[str, pd.DataFrame]:
    training = build_training_set(export.deals, history, export.stages, as_of, frequency=project.model.snapshot_frequency)
    with threadpool_limits(limits=1, user_api="openmp"):
        result = train_scorer(training, project.model, as_of)
    features = snapshot_features(export.deals, history, export.stages, as_of)
    features["p"] = result.scorer.predict_proba(features)
    features["close"] = (features["snapshot_at"] + pd.to_timedelta(features["days_to_expected_close"], unit="D")).dt.normalize()
    features["bucket"] = age_buckets(features["age_days"])
    return result.scorer.scoring_method, features


def _unchanged(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    keys = ["deal_id", "stage", "log_amount_reporting", "close", "bucket", "p"]
    both = before[keys].merge(after[keys], on="deal_id", suffixes=("_0", "_1"))
    same = np.ones(len(both), dtype=bool)
    for column in ("stage", "log_amount_reporting", "close", "bucket"):
        same &= (both[f"{column}_0"] == both[f"{column}_1"]).fillna(False).to_numpy(dtype=bool)
    return both.loc[same]


def _check_consecutive_nights(out, kwargs):
    generate_sample(out, end_date=END, **kwargs)
    project = load_project_config()
    export = read_exports(out, project, as_of=END)
    history = prepare_history(export.deals, export.history, export.stages)
    method_0, night_0 = _nightly(export, history, project, END - dt.timedelta(days=1))
    method_1, night_1 = _nightly(export, history, project, END)
    unchanged = _unchanged(night_0, night_1)
    assert len(unchanged) >= 50
    moves = (unchanged["p_1"] - unchanged["p_0"]).abs()
    runs = pd.DataFrame({"model_version": ["v0"], "as_of": [pd.Timestamp(END - dt.timedelta(days=1))],
                         "trained_at": [pd.Timestamp(END)], "scoring_method": [method_0]})
    change = published_tier_change(runs, END, method_1)
    if method_0 == method_1:
        assert change is None
        assert moves.max() <= MAX_MOVE, unchanged.loc[moves.idxmax()]
    else:
        assert change is not None and method_0 in change and method_1 in change


def test_unchanged_deals_keep_their_scores_overnight_on_a_messy_org(tmp_path):
    _check_consecutive_nights(tmp_path / "messy", dict(n_deals=900, seed=302, profile="messy"))


@pytest.mark.slow
def test_unchanged_deals_keep_their_scores_overnight_on_the_simulator(tmp_path):
    _check_consecutive_nights(tmp_path / "sim", dict(n_deals=5000, seed=301, years=3.5))
