"""Win probabilities calibrated per unit of revenue, from the scorer's held-out rows, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from types import SimpleNamespace

from models.revenue_calibration import PSEUDO_WINS, RevenueCalibration
from tests.models.hand_crm import make_crm

SNAPSHOT = pd.Timestamp("2024-03-04")
AMOUNTS = {"A": 100.0, "B": 100.0, "C": 200.0, "D": 200.0, "E": 1000.0, "F": 1000.0}
WON = {"A": 1, "B": 1, "C": 1, "D": 0, "E": 0, "F": 0}


def result(predictions: pd.DataFrame):
    """What the calibration reads of a `models.scoring.ScorerResult`: the scorer's method and its
    held-out predictions (`published`: the chosen scorer's)."""
    return SimpleNamespace(scorer=SimpleNamespace(scoring_method="stage_rate"), test_predictions=predictions)


def world():
    deals = [{"deal_id": d, "created_at": "2024-03-01 09:00", "amount": a} for d, a in AMOUNTS.items()]
    events = [(d, "2024-03-01 09:00", "Qualify") for d in AMOUNTS]
    events += [(d, "2024-04-01 10:00", "Closed Won" if WON[d] else "Closed Lost") for d in AMOUNTS]
    deals_frame, history = make_crm(deals, events)
    predictions = pd.DataFrame(
        {
            "deal_id": list(AMOUNTS),
            "snapshot_at": SNAPSHOT,
            "label": [WON[d] for d in AMOUNTS],
            "published": 0.5,
        }
    )
    return deals_frame, history, predictions


def test_factors_per_amount_band_by_hand():
    deals, history, predictions = world()
    calibration = RevenueCalibration.fit(result(predictions), deals, history)
    # Terciles of 100, 100, 200, 200, 1000, 1000 (linear interpolation): 166.67 and 466.67.
    assert calibration.edges == pytest.approx((100 + 200 / 3, 200 + 800 / 3))
    prior = PSEUDO_WINS * 2600 / 6
    # Band 1: won 200 of 200 predicted at 0.5 (expected 100); band 2: won 200, expected 200;
    # band 3: won 0, expected 1000.
    assert calibration.factors == pytest.approx(((200 + prior) / (100 + prior), 1.0, prior / (1000 + prior)))
    assert calibration.rows == 6

    assert calibration.factor([150.0, 300.0, 5000.0, np.nan]) == pytest.approx(
        [calibration.factors[0], 1.0, calibration.factors[2], calibration.factors[0]]
    )
    table = calibration.table()
    assert table["factor"].tolist() == pytest.approx(list(calibration.factors)) and (table["held_out_rows"] == 6).all()
    # An older scorer result without `published` is read by its method's column.
    legacy = RevenueCalibration.fit(result(predictions.rename(columns={"published": "stage_rate_baseline"})), deals, history)
    assert legacy == calibration


def test_without_held_out_rows_nothing_changes():
    deals, history, predictions = world()
    calibration = RevenueCalibration.fit(result(predictions.iloc[0:0]), deals, history)
    assert calibration.factors == (1.0,) and calibration.edges == ()
    assert calibration.factor([10.0, 1e6]) == pytest.approx([1.0, 1.0])
