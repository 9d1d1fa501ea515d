"""Model versions, saved scorers and the model_runs row."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json

import joblib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from etl import tables
from models.deal_scores import build_deal_scores
from models.registry import (
    choose_scorer,
    published_tier_change,
    eligible_models,
    load_artifact,
    model_runs_row,
    save_artifact,
)
from models.versioning import model_version
from models.evaluation import binary_metrics
from models.scoring import METHOD_STAGE_RATE, StageRateScorer
from models.timing import CloseTiming
from models.training_set import build_training_set, snapshot_features
from tests.models.conftest import AS_OF
from tests.models.synthetic import CATALOG


def test_version_is_stable_and_follows_data_and_parameters(training, world):
    params = {"learning_rate": 0.1}
    assert model_version(training, params) == model_version(training, dict(params))
    assert model_version(training, params) != model_version(training, {"learning_rate": 0.2})
    deals, history = world
    earlier = build_training_set(deals, history, CATALOG, AS_OF - dt.timedelta(days=60))
    assert model_version(earlier, params) != model_version(training, params)
    one_label_flipped = training.frame.copy()
    one_label_flipped.loc[0, "label"] = 1 - one_label_flipped.loc[0, "label"]
    changed = dataclasses.replace(training, frame=one_label_flipped)
    assert model_version(changed, params) != model_version(training, params)


def test_saved_scorer_predicts_the_same(trained, training, tmp_path):
    path = save_artifact(trained.scorer, tmp_path / "store")
    assert path.name == f"deal-scorer-{trained.scorer.version}.joblib"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    loaded = load_artifact(path)
    rows = training.frame.head(200)
    np.testing.assert_array_equal(loaded.predict_proba(rows), trained.scorer.predict_proba(rows))
    assert (loaded.version, loaded.scoring_method) == (trained.scorer.version, trained.scorer.scoring_method)


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved deal scorer"):
        load_artifact(tmp_path / "missing.joblib")
    other = tmp_path / "other.joblib"
    joblib.dump({"not": "a scorer"}, other)
    with pytest.raises(TypeError, match="other.joblib"):
        load_artifact(other)


def test_model_runs_row_has_exactly_the_table_columns_and_loads(trained):
    trained_at = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    row = model_runs_row(trained, AS_OF, trained_at, artifact_path="/store/x.joblib")
    assert list(row) == [column.name for column in tables.model_runs.columns]
    assert row["trained_at"] == dt.datetime(2025, 1, 1, 10, 0)  # UTC, timezone-naive
    assert row["model_version"] == trained.scorer.version
    assert row["log_loss"] == trained.metrics["log_loss"]
    assert row["has_history"] is True and row["eligible"] is True
    reliability = json.loads(row["reliability"])
    assert len(reliability) == 10 and sum(b["count"] for b in reliability) == row["test_rows"]
    assert "owner" in json.loads(row["features"])
    assert json.loads(row["params"])["model"]["learning_rate"] == 0.08
    candidates = json.loads(row["candidates"])
    assert [c["method"] for c in candidates] == ["constant_rate", "crm_probability", "stage_only_rate", "stage_rate", "logistic", "calibrated_model"]
    assert min(c["log_loss"] for c in candidates if c["log_loss"] is not None) == row["log_loss"] <= row["constant_log_loss"]
    assert row["selection_reason"].startswith("calibrated_model has the lowest held-out log loss")
    assert row["train_won_deals"] + row["test_won_deals"] >= 1 and row["tier_change"] is None
    engine = sa.create_engine("sqlite://")
    tables.metadata.create_all(engine, tables=[tables.model_runs])
    with engine.begin() as connection:
        connection.execute(tables.model_runs.insert(), [row])
        stored = connection.execute(sa.select(tables.model_runs.c.scoring_method, tables.model_runs.c.auc)).one()
    assert stored.scoring_method == "calibrated_model"
    assert stored.auc == pytest.approx(trained.metrics["auc"])


# ------------------------------------------------------------------------------------------------
# Which scorer scores a run: the latest model eligible for scoring


def _stage_rate_fallback(trained, training):
    """This run's result when its model did not qualify: the stage-rate scorer, flagged."""
    stage = StageRateScorer(
        use_stage=True, version="tonight", feature_names=["stage", "age_days"], typical={}, typical_stage_days=pd.DataFrame()
    ).fit(training.frame, training.frame["label"])
    own_loss = binary_metrics(trained.test_predictions["label"], stage.predict_proba(trained.test_frame))["log_loss"]
    metrics = {**trained.metrics, "scoring_method": METHOD_STAGE_RATE, "eligible": False, "log_loss": own_loss,
               "fallback_reason": "only 150 won and 90 lost closed deal(s)"}
    return dataclasses.replace(trained, scorer=stage, metrics=metrics)


def _copy_with_version(scorer, version):
    other = copy.copy(scorer)
    other.version = version
    return other


RUN_AS_OF = dt.date(2024, 12, 31)
# (version, as_of, scoring_method, eligible, beats_baselines, has_history, artifact saved)
RUNS = [
    ("old", "2024-06-30", "calibrated_model", True, True, True, True),
    ("mid", "2024-09-30", "calibrated_model", True, True, True, True),
    ("no_file", "2024-10-31", "calibrated_model", True, True, True, False),
    ("no_history", "2024-11-15", "calibrated_model", True, True, False, True),
    ("baseline", "2024-11-30", "stage_rate", True, False, True, True),
    ("thin", "2024-12-15", "stage_rate", False, None, True, True),
    ("later_data", "2025-03-31", "calibrated_model", True, True, True, True),
]


@pytest.fixture()
def registry(trained, tmp_path):
    store = tmp_path / "store"
    rows = []
    for version, as_of, method, eligible, beats, has_history, saved in RUNS:
        if saved:
            save_artifact(_copy_with_version(trained.scorer, version), store)
        rows.append(
            {"model_version": version, "as_of": pd.Timestamp(as_of), "trained_at": pd.Timestamp(as_of) + pd.Timedelta(hours=3),
             "scoring_method": method, "eligible": eligible, "beats_baselines": beats, "has_history": has_history}
        )
    frame = pd.DataFrame(rows).astype({"scoring_method": "string", "beats_baselines": "boolean"})
    return frame, store


def test_eligible_models_newest_first_by_the_rule(registry):
    runs, store = registry
    # Left out: no_file (no artifact), no_history (other kind of source), baseline and thin (not a
    # calibrated model), later_data (trained on data after 2024-12-31).
    eligible = eligible_models(runs, RUN_AS_OF, store, has_history=True)
    assert eligible["model_version"].tolist() == ["mid", "old"]
    assert eligible["artifact"].tolist() == [store / "deal-scorer-mid.joblib", store / "deal-scorer-old.joblib"]
    # A backfill for 2024-08-01 may use only the model trained for 06-30; on 06-30 itself it may too.
    assert eligible_models(runs, dt.date(2024, 8, 1), store, True)["model_version"].tolist() == ["old"]
    assert eligible_models(runs, dt.date(2024, 6, 30), store, True)["model_version"].tolist() == ["old"]
    assert eligible_models(runs, dt.date(2024, 6, 29), store, True).empty
    # A no-history source may use only the no-history model.
    assert eligible_models(runs, RUN_AS_OF, store, has_history=False)["model_version"].tolist() == ["no_history"]
    # Same as_of: the one trained last wins.
    twin = runs.iloc[[0]].assign(model_version="old_retrained", trained_at=pd.Timestamp("2024-06-30 09:00"))
    save_artifact(_copy_with_version(load_artifact(store / "deal-scorer-old.joblib"), "old_retrained"), store)
    both = pd.concat([runs, twin], ignore_index=True)
    assert eligible_models(both, dt.date(2024, 8, 1), store, True)["model_version"].tolist() == ["old_retrained", "old"]


def test_this_runs_model_is_used_when_it_qualifies(trained, registry):
    runs, store = registry
    choice = choose_scorer(trained, RUN_AS_OF, runs, store)
    assert choice.scorer is trained.scorer
    assert (choice.scored_with, choice.reason, choice.model_as_of) == ("this_run_model", None, RUN_AS_OF)


def test_a_run_whose_model_did_not_qualify_uses_the_latest_earlier_eligible_model(trained, training, registry):
    runs, store = registry
    current = _stage_rate_fallback(trained, training)
    choice = choose_scorer(current, RUN_AS_OF, runs, store)
    assert (choice.scored_with, choice.model_version, choice.model_as_of) == ("earlier_model", "mid", dt.date(2024, 9, 30))
    assert "only 150 won and 90 lost" in choice.reason and "mid" in choice.reason
    assert f"({current.metrics['log_loss']:.4f})" in choice.reason and "beats this run's stage_rate" in choice.reason
    rows = training.frame.head(50)
    np.testing.assert_array_equal(choice.scorer.predict_proba(rows), trained.scorer.predict_proba(rows))
    # Backfill for 2024-08-01: "mid" was trained on later data, so "old" is used.
    assert choose_scorer(current, dt.date(2024, 8, 1), runs, store).model_version == "old"
    # Nothing eligible on or before 2024-06-29: this run's stage-rate scorer, flagged.
    fallback = choose_scorer(current, dt.date(2024, 6, 29), runs, store)
    assert fallback.scorer is current.scorer and fallback.scored_with == "this_run_fallback"
    assert "only 150 won and 90 lost" in fallback.reason and "no earlier eligible model" in fallback.reason
    # An empty registry (first run) falls back the same way.
    assert choose_scorer(current, RUN_AS_OF, runs.iloc[0:0], store).scored_with == "this_run_fallback"


def test_an_unreadable_artifact_is_skipped_for_the_next_older_model(trained, training, registry, caplog):
    runs, store = registry
    (store / "deal-scorer-mid.joblib").write_bytes(b"not a joblib file")
    current = _stage_rate_fallback(trained, training)
    choice = choose_scorer(current, RUN_AS_OF, runs, store)
    assert choice.model_version == "old"
    assert "deal-scorer-mid.joblib" in caplog.text


def test_an_artifact_that_loads_but_cannot_score_is_skipped_for_the_next_older_model(trained, training, registry, caplog):
    # "mid" loads, but its calibration lacks what this version's scoring reads (as an artifact
    # written by another version of the code might): the night goes on with "old".
    runs, store = registry
    broken = load_artifact(store / "deal-scorer-mid.joblib")
    del broken.estimator.__dict__["calibrator_"]
    (store / "deal-scorer-mid.joblib").unlink()
    save_artifact(broken, store)
    current = _stage_rate_fallback(trained, training)
    choice = choose_scorer(current, RUN_AS_OF, runs, store)
    assert choice.model_version == "old" and choice.scored_with == "earlier_model"
    assert "deal-scorer-mid.joblib" in caplog.text and "cannot score this run's held-out rows" in caplog.text


def test_deal_scores_say_which_scorer_produced_them(trained, training, registry, world):
    runs, store = registry
    deals, history = world
    current = _stage_rate_fallback(trained, training)
    choice = choose_scorer(current, RUN_AS_OF, runs, store)
    timing = CloseTiming.fit(deals, history, CATALOG, RUN_AS_OF)
    scores = build_deal_scores(deals, history, CATALOG, RUN_AS_OF, choice.scorer, timing,
                               scored_with=choice.scored_with, scoring_reason=choice.reason)
    open_ids = sorted(deals.loc[deals["status"] == "open", "deal_id"])
    assert scores["deal_id"].tolist() == open_ids
    assert set(scores["model_version"]) == {"mid"} and set(scores["scoring_method"]) == {"calibrated_model"}
    assert set(scores["scored_with"]) == {"earlier_model"} and set(scores["scoring_reason"]) == {choice.reason}
    features = snapshot_features(deals, history, CATALOG, RUN_AS_OF)
    np.testing.assert_allclose(scores["win_probability"], trained.scorer.predict_proba(features))
    # Defaults without a choice: this run's scorer, flagged by its kind.
    plain = build_deal_scores(deals, history, CATALOG, RUN_AS_OF, current.scorer, timing)
    assert set(plain["scored_with"]) == {"this_run_fallback"} and plain["scoring_reason"].isna().all()
    with pytest.raises(ValueError, match="scored_with"):
        build_deal_scores(deals, history, CATALOG, RUN_AS_OF, current.scorer, timing, scored_with="guess")


def test_an_earlier_model_that_does_not_beat_tonights_scorer_on_its_held_out_rows_is_not_used(trained, training, registry):
    runs, store = registry
    current = _stage_rate_fallback(trained, training)
    # Tonight's published scorer made no held-out error at all: no earlier model can beat it.
    perfect = dataclasses.replace(current, metrics={**current.metrics, "log_loss": 0.0})
    choice = choose_scorer(perfect, RUN_AS_OF, runs, store)
    assert choice.scorer is current.scorer and choice.scored_with == "this_run_fallback"
    assert "that beats it on this run's held-out rows" in choice.reason


def test_a_tier_change_is_named_with_the_night_it_happened():
    runs = pd.DataFrame(
        {"model_version": ["a", "b", "c"], "as_of": pd.to_datetime(["2026-11-12", "2026-11-13", "2026-11-14"]),
         "trained_at": pd.to_datetime(["2026-11-13 02:00", "2026-11-14 02:00", "2026-11-15 02:00"]),
         "scoring_method": ["logistic", "logistic", "stage_rate"]}
    )
    # The latest earlier run (11-14) published stage_rate (tier 3); tonight logistic (tier 4).
    assert published_tier_change(runs, dt.date(2026, 11, 15), "logistic") == (
        "stage_rate (tier 3, as_of 2026-11-14) -> logistic (tier 4) since as_of 2026-11-15"
    )
    assert published_tier_change(runs, dt.date(2026, 11, 15), "stage_rate") is None
    # A re-run of 11-14 compares with 11-13, never with itself.
    assert published_tier_change(runs, dt.date(2026, 11, 14), "stage_rate").startswith("logistic (tier 4, as_of 2026-11-13)")
    assert published_tier_change(runs.iloc[0:0], dt.date(2026, 11, 15), "logistic") is None
