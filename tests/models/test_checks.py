"""The warnings on what the models publish, each with a good and a bad example worked out by hand."""

from __future__ import annotations

import math

import pandas as pd

from models.checks import forecast_ordered, model_beats_baseline


def test_a_scorer_below_the_constant_rate_log_loss_passes():
    check = model_beats_baseline({"scoring_method": "logistic", "log_loss": 0.60, "constant_log_loss": 0.65})
    assert check.passed
    assert check.observed == "logistic: held-out log loss 0.6000; constant win rate 0.6500"


def test_a_scorer_worse_than_the_constant_rate_fails():
    check = model_beats_baseline({"scoring_method": "gradient_boosting", "log_loss": 0.70, "constant_log_loss": 0.65})
    assert not check.passed
    assert "0.7000" in check.observed and "0.6500" in check.observed


def test_equal_losses_pass_and_the_constant_rate_itself_passes():
    # ln 2: a coin-flip scorer against a 50% base rate; the same number reached two ways.
    assert model_beats_baseline({"scoring_method": "stage_rate", "log_loss": math.log(2), "constant_log_loss": -math.log(0.5)}).passed
    assert model_beats_baseline({"scoring_method": "constant_rate", "log_loss": None, "constant_log_loss": None}).passed


def test_a_scorer_without_held_out_losses_fails_saying_so():
    check = model_beats_baseline({"scoring_method": "logistic", "log_loss": None, "constant_log_loss": 0.65})
    assert not check.passed and "no held-out log loss" in check.observed


def _forecast(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["quarter", "segment_type", "segment", "p10", "p50", "p90"])


def test_ordered_quantiles_pass():
    frame = _forecast([("2026-Q4", "all", "all", 100.0, 120.0, 150.0), ("2026-Q4", "team", "EMEA", 5.0, 5.0, 5.0)])
    check = forecast_ordered(frame)
    assert check.passed and check.failing.empty and check.observed == "all 2 rows ordered"


def test_out_of_order_or_blank_quantiles_fail_row_by_row():
    frame = _forecast(
        [
            ("2026-Q4", "all", "all", 100.0, 120.0, 150.0),
            ("2026-Q4", "team", "EMEA", 50.0, 40.0, 60.0),  # P10 > P50
            ("2027-Q1", "all", "all", 10.0, 30.0, 20.0),  # P50 > P90
            ("2027-Q1", "team", "EMEA", None, 30.0, 40.0),  # no P10
        ]
    )
    check = forecast_ordered(frame)
    assert not check.passed and check.observed == "3 of 4 rows out of order"
    assert list(zip(check.failing["quarter"], check.failing["segment"])) == [
        ("2026-Q4", "EMEA"), ("2027-Q1", "all"), ("2027-Q1", "EMEA"),
    ]  # fmt: skip
