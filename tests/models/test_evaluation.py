"""Test metrics on a four-row example worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation import (
    base_rate_brier,
    binary_metrics,
    expected_calibration_error,
    reliability_records,
    reliability_table,
)

Y = [1, 0, 1, 1]
P = [0.05, 0.15, 0.15, 0.95]


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P)
    # log loss: -(ln .05 + ln .85 + ln .15 + ln .95) / 4
    assert m["log_loss"] == pytest.approx(-(math.log(0.05) + math.log(0.85) + math.log(0.15) + math.log(0.95)) / 4)
    # Brier: (.95^2 + .15^2 + .85^2 + .05^2) / 4 = 1.65 / 4
    assert m["brier"] == pytest.approx(0.4125)
    # AUC: the lost deal (0.15) against the won ones (0.05, 0.15, 0.95): 0 + 0.5 + 1 over 3 pairs
    assert m["auc"] == pytest.approx(0.5)
    assert binary_metrics([1, 1], [0.4, 0.6])["auc"] is None
    assert binary_metrics([], [])["log_loss"] is None


def test_base_rate_brier():
    # observed rate 0.75: 0.75 x 0.25
    assert base_rate_brier(Y) == pytest.approx(0.1875)
    # a training rate of 0.5 on these rows: (0.25 x 4) / 4
    assert base_rate_brier(Y, rate=0.5) == pytest.approx(0.25)


def test_reliability_table_and_ece_by_hand():
    table = reliability_table(Y, P)
    assert table["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table.loc[0, "mean_predicted"] == pytest.approx(0.05) and table.loc[0, "observed_rate"] == 1.0
    assert table.loc[1, "mean_predicted"] == pytest.approx(0.15) and table.loc[1, "observed_rate"] == 0.5
    assert np.isnan(table.loc[2, "mean_predicted"])
    # ECE = (1 x .95 + 2 x .35 + 1 x .05) / 4
    assert expected_calibration_error(table) == pytest.approx(0.425)
    records = reliability_records(table)
    assert records[2]["mean_predicted"] is None and records[9]["count"] == 1


def test_a_probability_of_one_falls_in_the_last_bin():
    table = reliability_table([1], [1.0])
    assert table["count"].tolist()[-1] == 1


def test_missing_probabilities_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([1, 0], [0.5, float("nan")])
