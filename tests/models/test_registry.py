"""Model versions, saved scorers and the model_runs row."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import joblib
import numpy as np
import pytest
import sqlalchemy as sa

from etl import tables
from models.registry import load_artifact, model_runs_row, model_version, save_artifact
from models.training_set import build_training_set
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
    engine = sa.create_engine("sqlite://")
    tables.metadata.create_all(engine, tables=[tables.model_runs])
    with engine.begin() as connection:
        connection.execute(tables.model_runs.insert(), [row])
        stored = connection.execute(sa.select(tables.model_runs.c.scoring_method, tables.model_runs.c.auc)).one()
    assert stored.scoring_method == "calibrated_model"
    assert stored.auc == pytest.approx(trained.metrics["auc"])
