"""The scorer ladder on small, messy real orgs (the sample CRM's messy profile: wins keyed in at
close, stale deals, bulk purges, a bulk import): the published scorer is never worse on held-out
log loss than the constant win rate or the CRM probability, and model_runs' counts are those of
the held-out rows themselves."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history
from sample_crm.generate import generate_sample
from models.scoring import train_scorer
from models.training_set import build_training_set

END = dt.date(2026, 11, 15)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("seed, n_deals", [(203, 400), (204, 1200)])
def test_the_published_scorer_beats_the_constant_rate_and_the_crm_on_a_messy_org(tmp_path, seed, n_deals):
    generate_sample(tmp_path, n_deals=n_deals, seed=seed, end_date=END, profile="messy")
    project = load_project_config()
    export = read_exports(tmp_path, project, as_of=END)
    history = prepare_history(export.deals, export.history, export.stages)
    training = build_training_set(export.deals, history, export.stages, END)
    with threadpool_limits(limits=1, user_api="openmp"):
        result = train_scorer(training, project.model, END)
    m = result.metrics
    test = result.test_predictions
    y = test["label"].to_numpy(dtype=float)
    assert len(test) == m["test_rows"] > 0
    # Recomputed here from the held-out rows: the constant rate is the training rows' win rate.
    train_rate = training.frame.loc[training.frame["snapshot_at"] < test["snapshot_at"].min(), "label"].mean()
    constant = _log_loss(y, np.full(len(y), train_rate))
    published = _log_loss(y, np.clip(test["published"].to_numpy(dtype=float), 0.001, 0.999))
    assert m["constant_log_loss"] == pytest.approx(constant)
    assert m["log_loss"] == pytest.approx(published)
    assert published <= constant
    if "crm_probability" in test:
        assert published <= _log_loss(y, test["crm_probability"].to_numpy(dtype=float))
    # Every candidate that was fitted was scored on exactly these rows, and the published one is
    # the best of them.
    fitted = [c for c in m["candidates"] if c["fitted"]]
    for c in fitted:
        assert c["log_loss"] == pytest.approx(_log_loss(y, test[c["method"]].to_numpy(dtype=float)))
    assert m["scoring_method"] == min(fitted, key=lambda c: (c["log_loss"], c["tier"]))["method"]
    assert (m["test_won_deals"], m["test_lost_deals"]) == (
        test.loc[test["label"] == 1, "deal_id"].nunique(), test.loc[test["label"] == 0, "deal_id"].nunique()
    )
