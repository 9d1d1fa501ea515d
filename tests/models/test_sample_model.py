"""The deal model on the realistic sample CRM, against its ground truth (slow: about 15 s per seed).

The sample (sample_crm) knows every open deal's true probability of a win within the label horizon at
every Monday 00:00.
On the latest, held-out prediction dates the true probabilities' log loss is the best any model
can reach; the trained model must come within 3% of it, be as calibrated as the truth itself on
those rows (ECE within `ECE_MARGIN` of the true probabilities' ECE: a finite sample gives even the
truth some ECE, the noise floor) and beat both baselines, all with the project's own settings from dealcast.toml, for several independent
samples (seeds), not one lucky draw.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import pipeline_at_many, prepare_history
from sample_crm.generate import generate_sample
from sample_crm.world import SampleWorld
from models.evaluation import expected_calibration_error, reliability_table
from models.scoring import METHOD_MODEL, time_split, train_scorer
from models.training_set import build_training_set

pytestmark = pytest.mark.slow

# How far above the true probabilities' ECE on the same held-out rows the published scorer may be.
# With the calibration cross-fitted by deal, the gap on these four samples is -0.0002 (seed 3), 0.0072
# (7), 0.0008 (11) and 0.0089 (42); with the day of the year among the features 0.0005, 0.0068, 0.0014
# and 0.0091. (Against the earlier truth, which left out the wins of the week holding the horizon's
# end and so had a larger ECE of its own, they read 0.0055, 0.0053, 0.0009 and 0.0042.) On seeds 7 and 42 the
# held-out outcomes came in 0.7 and 0.9 points above the truth, which no scorer can know. Calibrated
# on the latest slice's deals alone the gap was 0.0135 on seed 3 and 0.014 on seed 7 against the
# earlier truth, which this bound fails.
ECE_MARGIN = 0.010
# Log loss within 3% of the truth's (1.000-1.025 on these samples; 1.037 on seed 3 before the
# cross-fitted calibration).
LOG_LOSS_RATIO = 1.03

N_DEALS, END, YEARS = 10_000, dt.date(2025, 12, 31), 3.5
# Seed 3 is the hardest sample measured (its stage-rate baseline comes closest to the truth).
SEEDS = (3, 7, 11, 42)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def sample_run(request, tmp_path_factory):
    seed = request.param
    out = tmp_path_factory.mktemp(f"sample_crm_{seed}")
    generate_sample(out, n_deals=N_DEALS, seed=seed, end_date=END, years=YEARS)
    project = load_project_config()
    export = read_exports(out, project)
    history = prepare_history(export.deals, export.history, export.stages)
    training = build_training_set(export.deals, history, export.stages, END)
    with threadpool_limits(limits=1, user_api="openmp"):
        result = train_scorer(training, project.model, END)
    return seed, export, history, training, result


def test_model_is_close_to_the_truth_and_calibrated(sample_run):
    seed, export, history, training, result = sample_run
    m = result.metrics
    assert m["eligible"] is True and m["scoring_method"] == METHOD_MODEL
    assert m["beats_baselines"] is True
    assert m["log_loss"] < m["crm_baseline_log_loss"] and m["log_loss"] < m["stage_rate_baseline_log_loss"]

    test = result.test_predictions
    states = pipeline_at_many(export.deals, history, sorted(test["snapshot_at"].unique()))
    world = SampleWorld.build(seed=seed, n_deals=N_DEALS, end_date=END, years=YEARS)
    # The truth of the event the labels record: won within the label horizon.
    states["truth"] = world.true_win_within_probability(states, training.maturity_days)
    test = test.merge(states[["snapshot_at", "deal_id", "truth"]], on=["snapshot_at", "deal_id"], how="left")
    assert test["truth"].notna().all()
    y = test["label"].to_numpy(dtype=float)
    truth = np.clip(test["truth"].to_numpy(dtype=float), 1e-6, 1 - 1e-6)
    true_log_loss = float(-np.mean(y * np.log(truth) + (1 - y) * np.log(1 - truth)))
    assert m["log_loss"] <= LOG_LOSS_RATIO * true_log_loss, (seed, m["log_loss"], true_log_loss)
    truth_ece = expected_calibration_error(reliability_table(y, truth))
    assert m["ece"] <= truth_ece + ECE_MARGIN, (seed, m["ece"], truth_ece)
    # The test rows are later than every row the model was fitted or calibrated on.
    project = load_project_config()
    split = time_split(training.frame, project.model.test_share, training.maturity_days)
    learnt = training.frame.loc[(split.slices == "train").to_numpy()]
    assert test["snapshot_at"].min() > learnt["snapshot_at"].max()
    assert m["split_rule"] == split.rule and len(learnt) == m["train_rows"]
