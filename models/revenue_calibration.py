"""Win probabilities calibrated per unit of revenue, for the forecast.

The deal scorer is calibrated per deal: of the deals it gives 40%, about 40% win. A revenue forecast
needs more: of the *money* it gives 40%, about 40% must be won. When large deals win less often than
small deals in the same stage (as they usually do), a per-deal calibrated score over-forecasts
revenue. The backtest showed exactly that on the sample CRM: amount-weighted, the empirical stage
rate over-predicted the open pipeline's wins by 15-30%, concentrated in the largest third of deals.

`RevenueCalibration.fit` measures it where it can be measured honestly: on the scorer's held-out
test rows (`ScorerResult.test_predictions`: later prediction dates than any row it learnt from,
labelled with outcomes known at the scorer's as_of). Deals are put in amount bands (terciles of the
test rows' amounts at their snapshot), and in each band

    factor = (sum amount x won + k x mean amount) / (sum amount x predicted + k x mean amount)

with k = `PSEUDO_WINS` (a band with little evidence keeps a factor near 1). The forecast multiplies
each open deal's win probability by its band's factor (capped at `PROBABILITY_CEILING`). Without
held-out rows (a young CRM) every factor is 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.pipeline_state import pipeline_at_many
from models.scoring import METHOD_CRM, METHOD_MODEL, METHOD_STAGE_RATE, PROBABILITY_CEILING, ScorerResult

logger = logging.getLogger(__name__)

BANDS = 3
PSEUDO_WINS = 10.0
# The test-prediction column holding each scoring method's probabilities.
PREDICTION_COLUMN = {METHOD_MODEL: "model", METHOD_STAGE_RATE: "stage_rate_baseline", METHOD_CRM: "crm_baseline"}


@dataclass(frozen=True)
class RevenueCalibration:
    """Amount band edges (inner edges, ascending) and one factor per band."""

    edges: tuple[float, ...] = ()
    factors: tuple[float, ...] = (1.0,)
    rows: int = 0

    @classmethod
    def fit(cls, result: ScorerResult, deals: pd.DataFrame, history: pd.DataFrame, bands: int = BANDS) -> "RevenueCalibration":
        """Learn the factors from `result`'s held-out test rows; `history` as `prepare_history` returns it."""
        predictions = result.test_predictions
        column = PREDICTION_COLUMN.get(result.scorer.scoring_method)
        if predictions.empty or column not in predictions.columns or predictions[column].isna().all():
            logger.info("revenue calibration: no held-out predictions for %s, factors 1", result.scorer.scoring_method)
            return cls()
        ids = pd.Index(predictions["deal_id"].astype("string").unique())
        in_test = ids.get_indexer(deals["deal_id"].astype("string")) >= 0
        in_test_history = ids.get_indexer(history["deal_id"].astype("string")) >= 0
        states = pipeline_at_many(
            deals.loc[in_test], history.loc[in_test_history], sorted(predictions["snapshot_at"].unique())
        )[["snapshot_at", "deal_id", "amount_reporting"]]
        rows = predictions[["snapshot_at", "deal_id", "label", column]].merge(
            states, on=["snapshot_at", "deal_id"], how="inner", validate="one_to_one"
        )
        amount = rows["amount_reporting"].astype("float64").fillna(0.0).clip(lower=0.0).to_numpy()
        won = rows["label"].to_numpy(dtype="float64")
        predicted = rows[column].to_numpy(dtype="float64")
        if len(rows) == 0 or amount.sum() <= 0:
            return cls()
        edges = tuple(float(e) for e in np.unique(np.quantile(amount, np.arange(1, bands) / bands)))
        band = np.searchsorted(np.asarray(edges), amount, side="right")
        n_bands = len(edges) + 1
        prior = PSEUDO_WINS * float(amount.mean())
        observed = np.bincount(band, weights=amount * won, minlength=n_bands)
        expected = np.bincount(band, weights=amount * predicted, minlength=n_bands)
        factors = tuple(float(f) for f in (observed + prior) / (expected + prior))
        logger.info("revenue calibration on %d held-out rows: amount bands %s, factors %s", len(rows), edges, factors)
        return cls(edges=edges, factors=factors, rows=len(rows))

    def apply(self, win_probability: np.ndarray | pd.Series, amount: np.ndarray | pd.Series) -> np.ndarray:
        """Each deal's win probability times its amount band's factor (at most PROBABILITY_CEILING)."""
        p = np.asarray(win_probability, dtype="float64")
        a = np.asarray(amount, dtype="float64")
        band = np.searchsorted(np.asarray(self.edges, dtype="float64"), np.nan_to_num(a, nan=0.0), side="right")
        return np.clip(p * np.asarray(self.factors)[band], 0.0, PROBABILITY_CEILING)


def calibrated_scores(scores: pd.DataFrame, calibration: RevenueCalibration) -> pd.DataFrame:
    """`scores` (deal_id, win_probability, amount_reporting) with the win probability calibrated per
    unit of revenue: deal_id, win_probability."""
    return pd.DataFrame(
        {
            "deal_id": scores["deal_id"],
            "win_probability": calibration.apply(scores["win_probability"], scores["amount_reporting"]),
        }
    )
