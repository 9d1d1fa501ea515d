"""The scoring model on real CRM exports from ../shared/data."""

import datetime as dt
from pathlib import Path

import pytest

from etl.config import load_project_config
from etl.ingest import read_exports
from etl.pipeline_state import prepare_history
from models.scoring import InsufficientHistoryError, train_scorer
from models.training_set import build_training_set

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
