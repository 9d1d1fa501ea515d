"""The scoring model on real CRM exports from ../shared/data."""

import datetime as dt
from pathlib import Path

import pytest

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history
from models.scoring import InsufficientHistoryError, train_scorer
from models.training_set import NO_HISTORY_FEATURES, build_training_set

DEVORG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "salesforce_devorg_sample"


def test_salesforce_devorg_sample_without_lost_deals_is_refused_clearly():
    """18 won, 13 open and no lost deal: a model would have one class only, so training must refuse
    with a message that says why, never predict certainty for every deal."""
    project = load_project_config()
    export = read_exports(DEVORG, project)
    assert (export.deals["status"] == "lost").sum() == 0 and (export.deals["status"] == "won").sum() == 18
    history = prepare_history(export.deals, export.history, export.stages)
    as_of = dt.date(2020, 3, 24)
    training = build_training_set(export.deals, history, export.stages, as_of)
    with pytest.raises(InsufficientHistoryError, match="both outcomes are needed"):
        train_scorer(training, project.model, as_of)


MAVEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "maven_crm"
MAVEN_MAPPING = Path(__file__).resolve().parents[2] / "examples" / "maven_crm" / "mapping.toml"


@pytest.mark.slow
def test_maven_crm_without_history_trains_on_creation_attributes_and_reports_honest_metrics(tmp_path):
    """Maven CRM has no stage history (only each deal's current stage): the model is flagged
    no-history, learns from creation-time attributes and closed-before rates only, and the final
    stage is neither a feature nor a value in any training row; its held-out metrics are real."""
    text = (Path(__file__).resolve().parents[2] / "dealcast.toml").read_text(encoding="utf-8")
    config = tmp_path / "dealcast.toml"
    config.write_text(text.replace("[validation]", f'[sources]\nmappings = ["{MAVEN_MAPPING.as_posix()}"]\n\n[validation]', 1))
    project = load_project_config(config)
    as_of = dt.date(2017, 12, 31)
    export = read_exports(MAVEN, project, as_of=as_of)
    assert not export.deals["has_history"].any()
    history = prepare_history(export.deals, export.history, export.stages)
    training = build_training_set(export.deals, history, export.stages, as_of)
    assert training.has_history is False
    assert set(training.feature_names) <= set(NO_HISTORY_FEATURES)
    assert not {"stage", "stage_order", "days_in_stage", "crm_probability", "forecast_category"} & set(training.feature_names)
    # The closed deals' final stage (Won / Lost) never reaches a training row.
    assert training.frame["stage"].isna().all()
    result = train_scorer(training, project.model, as_of)
    m = result.metrics
    assert m["has_history"] is False and "stage" not in result.scorer.feature_names
    # Honest held-out metrics: later prediction dates than any row learnt from, both classes.
    assert m["test_rows"] > 0 and m["log_loss"] is not None and m["auc"] is not None
    assert 0.0 < m["log_loss"] < 1.0 and 0.4 < m["auc"] < 0.9
    test = result.test_predictions
    assert test["label"].nunique() == 2 and len(test) == m["test_rows"]
