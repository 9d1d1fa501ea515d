"""The `deal_scores` table: every deal open at the end of as_of, with its calibrated win probability,
its probability of winning within the current quarter, its expected value and its reasons."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from etl.pipeline_state import as_of_end, pipeline_at
from etl.stages import STATUS_OPEN, StageCatalog
from etl.tables import TABLES
from models.explain import explain
from models.registry import SCORED_WITH_EARLIER, SCORED_WITH_FALLBACK, SCORED_WITH_THIS_RUN
from models.scoring import METHOD_LOGISTIC, METHOD_MODEL, Scorer, score_bands
from models.timing import CloseTiming, win_at_all_probability, win_this_quarter_probability
from models.training_set import features_from_states

DEAL_SCORE_COLUMNS = [c for c in TABLES["deal_scores"].columns if c != "as_of"]
SCORED_WITH_VALUES = (SCORED_WITH_THIS_RUN, SCORED_WITH_EARLIER, SCORED_WITH_FALLBACK)


def build_deal_scores(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    scorer: Scorer,
    timing: CloseTiming,
    fiscal_year_start_month: int = 1,
    *,
    scored_with: str | None = None,
    scoring_reason: str | None = None,
    label_horizon_days: float | None = None,
) -> pd.DataFrame:
    """Score every deal open at the end of `as_of`, as it stood then (one rebuild of the pipeline
    serves the features, the close timing and the table's descriptive columns).

    expected_value = amount (reporting currency) x win probability. win_this_quarter_probability
    is the chance of winning at all (the score, a chance of winning within the scorer's label
    horizon `label_horizon_days`, `models.timing.win_at_all_probability`) times the chance of
    closing inside the quarter if it wins, as the forecast counts it. `scored_with` and
    `scoring_reason` come from `models.registry.choose_scorer`; by default `scored_with` is
    `this_run_model` for a fitted model (gradient boosting or logistic) and `this_run_fallback` for
    a rate scorer (constant, CRM probability, stage rates).
    """
    if scored_with is None:
        scored_with = SCORED_WITH_THIS_RUN if scorer.scoring_method in (METHOD_MODEL, METHOD_LOGISTIC) else SCORED_WITH_FALLBACK
    if scored_with not in SCORED_WITH_VALUES:
        raise ValueError(f"deal_scores.scored_with must be one of {SCORED_WITH_VALUES}, got {scored_with!r}")
    states = pipeline_at(deals, history, as_of_end(as_of)).sort_values("deal_id", kind="stable").reset_index(drop=True)
    open_deals = states[states["status"] == STATUS_OPEN].reset_index(drop=True)
    # Every deal's state goes in, not just the open ones: the owner, product and account win rates
    # count the deals closed before as_of, exactly as in the training set.
    features = features_from_states(states, stages, None, fiscal_year_start_month)
    if not features["deal_id"].astype(str).equals(open_deals["deal_id"].astype(str)):
        raise RuntimeError("deal_scores: features and open deals are not aligned by deal_id")

    win = np.asarray(scorer.predict_proba(features), dtype="float64")
    win_at_all = win_at_all_probability(open_deals, win, timing, label_horizon_days)
    this_quarter = win_this_quarter_probability(open_deals, win_at_all, timing, as_of, fiscal_year_start_month)
    reasons = explain(scorer, features).set_index("deal_id")

    amount = open_deals["amount_reporting"].astype("float64")
    frame = pd.DataFrame(
        {
            "deal_id": open_deals["deal_id"],
            "pipeline": open_deals["pipeline"],
            "stage": open_deals["stage"],
            "owner": open_deals["owner"],
            "amount_reporting": amount,
            "expected_close_date": open_deals["expected_close_date"],
            "win_probability": win,
            "win_this_quarter_probability": this_quarter,
            "expected_value": amount.fillna(0.0) * win,
            "score_band": score_bands(win),
            "top_factors": reasons["top_factors"].reindex(open_deals["deal_id"]).to_numpy(),
            "top_factors_text": reasons["top_factors_text"].reindex(open_deals["deal_id"]).to_numpy(),
            "model_version": scorer.version,
            "scoring_method": scorer.scoring_method,
            "scored_with": scored_with,
            "scoring_reason": pd.Series(scoring_reason, index=open_deals.index, dtype=object),
        }
    )
    return frame[DEAL_SCORE_COLUMNS]
