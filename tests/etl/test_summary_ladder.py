"""`dealcast summary` prints the scorer ladder of the run: every candidate with its held-out log
loss (the constant rate's among them), the rows and deals behind the training and held-out slices,
the published scorer and why it won. The `model_runs` row is written by hand, so every printed
figure is known in advance."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd

from etl.cli import RunSummary, _model_lines
from etl.tables import TABLES

AS_OF = dt.date(2026, 3, 31)

# A small org: 120 won / 130 lost training deals, enough for the logistic model (50/50), not for
# gradient boosting (200/200). Log losses chosen by hand; logistic is the lowest, so it is published.
CANDIDATES = [
    {"method": "constant_rate", "tier": 0, "fitted": True, "reason": None, "log_loss": 0.6931, "auc": 0.5, "brier": 0.25, "ece": 0.012},
    {"method": "crm_probability", "tier": 1, "fitted": True, "reason": None, "log_loss": 0.81, "auc": 0.61, "brier": 0.29, "ece": 0.21},
    {"method": "stage_only_rate", "tier": 2, "fitted": True, "reason": None, "log_loss": 0.65, "auc": 0.66, "brier": 0.23, "ece": 0.04},
    {"method": "stage_rate", "tier": 3, "fitted": True, "reason": None, "log_loss": 0.64, "auc": 0.68, "brier": 0.225, "ece": 0.035},
    {"method": "logistic", "tier": 4, "fitted": True, "reason": None, "log_loss": 0.621, "auc": 0.71, "brier": 0.216, "ece": 0.03},
    {"method": "calibrated_model", "tier": 5, "fitted": False,
     "reason": "the training rows hold 120 won and 130 lost closed deal(s); it needs 200 won and 200 lost", "log_loss": None,
     "auc": None, "brier": None, "ece": None},
]
REASON = "logistic has the lowest held-out log loss, 0.6210, on 400 rows of 90 deals (40 won / 50 lost)"


def _model_runs_row(**overrides) -> pd.DataFrame:
    columns = [c for c in TABLES["model_runs"].columns if c != "run_id"]
    row = dict.fromkeys(columns)
    row.update(
        model_version="v-small", as_of=AS_OF, trained_at=pd.Timestamp("2026-04-01 01:00"), scoring_method="logistic",
        eligible=False, has_history=True, data_window="2025-06-02..2026-02-23, outcomes at 2026-03-31",
        train_rows=1500, calibration_rows=0, test_rows=400, auc=0.71, log_loss=0.621, brier=0.216, ece=0.03,
        constant_log_loss=0.6931, reliability="[]", features="[]", params="{}", candidates=json.dumps(CANDIDATES),
        selection_reason=REASON, split_rule="widened", train_won_deals=120, train_lost_deals=130,
        test_won_deals=40, test_lost_deals=50, fallback_reason="gradient boosting not fitted",
    )
    row.update(overrides)
    return pd.DataFrame([row])


def _lines(warehouse) -> list[str]:
    return _model_lines(RunSummary(warehouse, AS_OF, "USD", 1, tables=warehouse.table_names()))


def test_summary_prints_every_candidate_with_its_log_loss_and_why_the_winner_won(warehouse):
    warehouse.claim(AS_OF, "run-ladder")
    assert warehouse.write("model_runs", _model_runs_row(), as_of=AS_OF, run_id="run-ladder") == 1
    assert _lines(warehouse) == [
        "  deal-scoring model v-small: published logistic, held-out log loss 0.6210 (constant rate 0.6931), AUC 0.710, ECE 0.030",
        "  trained on 1,500 rows of 250 deals (120 won / 130 lost) (widened split); compared on 400 held-out rows of 90 deals (40 won / 50 lost)",
        "  scorer ladder (* published):",
        "     tier 0 constant_rate     log loss 0.6931, AUC 0.500, ECE 0.012",
        "     tier 1 crm_probability   log loss 0.8100, AUC 0.610, ECE 0.210",
        "     tier 2 stage_only_rate   log loss 0.6500, AUC 0.660, ECE 0.040",
        "     tier 3 stage_rate        log loss 0.6400, AUC 0.680, ECE 0.035",
        "   * tier 4 logistic          log loss 0.6210, AUC 0.710, ECE 0.030",
        "     tier 5 calibrated_model  not fitted: the training rows hold 120 won and 130 lost closed deal(s); it needs 200 won and 200 lost",
        f"  why: {REASON}",
    ]


def test_summary_of_a_run_with_no_held_out_rows_says_the_candidates_were_not_evaluated(warehouse):
    # Too little history for a test cut: only the constant rate (fitted on every labelled row) is
    # published; the rate scorers were fitted but there is nothing to compare them on.
    candidates = [
        {"method": "constant_rate", "tier": 0, "fitted": True, "reason": None, "log_loss": None, "auc": None, "brier": None, "ece": None},
        {"method": "stage_rate", "tier": 3, "fitted": True, "reason": None, "log_loss": None, "auc": None, "brier": None, "ece": None},
        {"method": "logistic", "tier": 4, "fitted": False, "reason": "no held-out rows to compare it on", "log_loss": None, "auc": None, "brier": None, "ece": None},
    ]
    why = "no held-out rows with a training slice holding both outcomes (only 1 prediction date(s))"
    row = _model_runs_row(
        scoring_method="constant_rate", candidates=json.dumps(candidates), selection_reason=why, split_rule=None,
        log_loss=None, auc=None, ece=None, constant_log_loss=None, test_rows=0, test_won_deals=0, test_lost_deals=0,
    )
    warehouse.claim(AS_OF, "run-none")
    warehouse.write("model_runs", row, as_of=AS_OF, run_id="run-none")
    lines = _lines(warehouse)
    assert lines[0] == "  deal-scoring model v-small: published constant_rate, held-out log loss n/a (constant rate n/a), AUC n/a, ECE n/a"
    assert lines[1] == "  trained on 1,500 rows of 250 deals (120 won / 130 lost); compared on 0 held-out rows of 0 deals (0 won / 0 lost)"
    assert lines[3:] == [
        "   * tier 0 constant_rate  fitted, not evaluated (no held-out rows)",
        "     tier 3 stage_rate     fitted, not evaluated (no held-out rows)",
        "     tier 4 logistic       not fitted: no held-out rows to compare it on",
        f"  why: {why}",
    ]
