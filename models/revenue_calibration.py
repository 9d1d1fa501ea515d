"""Win probabilities calibrated per unit of revenue: a visible factor per amount band.

The deal scorer is calibrated per deal: of the deals it gives 40%, about 40% win. A revenue forecast
needs more: of the *money* it gives 40%, about 40% must be won. When large deals win less often than
small deals with the same score (as they usually do), a per-deal calibrated score over-forecasts
revenue: on the simulator the scorer's probabilities over-predicted the open pipeline's won revenue
by 15-65% at quarter starts.

`RevenueCalibration.fit` measures it where it can be measured honestly: on the scorer's held-out test
rows (`ScorerResult.test_predictions`: later prediction dates than any row it learnt from, labelled
with outcomes known at the scorer's as_of; the `published` column, the chosen scorer's predictions).
Deals are put in amount bands (terciles of the test rows' amounts at their snapshot), and in each band

    factor = (sum amount x won + k x mean amount) / (sum amount x predicted + k x mean amount)

with k = `PSEUDO_WINS` (a band with little evidence keeps a factor near 1). Without held-out rows (a
young CRM) every factor is 1.

Nothing here is hidden: the forecast writes each deal's factor (`forecast_contributions.revenue_factor`)
and what the factors changed (`forecast_quarterly.revenue_calibration`), and the asset's metadata
lists the bands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.pipeline_state import pipeline_at_many

logger = logging.getLogger(__name__)

BANDS = 3
PSEUDO_WINS = 10.0
# A calibrated probability stays below 1 (as the scorer's own probabilities do).
CEILING = 0.999
# Column of the chosen scorer's held-out predictions, and older names by scoring method.
PUBLISHED_COLUMN = "published"
LEGACY_COLUMNS = {"calibrated_model": "model", "stage_rate": "stage_rate_baseline", "crm_probability": "crm_baseline"}


@dataclass(frozen=True)
class RevenueCalibration:
    """Amount band edges (inner edges, ascending), one factor per band, and the held-out rows behind them."""

    edges: tuple[float, ...] = ()
    factors: tuple[float, ...] = (1.0,)
    rows: int = 0

    @classmethod
    def fit(cls, result, deals: pd.DataFrame, history: pd.DataFrame, bands: int = BANDS) -> "RevenueCalibration":
        """Learn the factors from `result`'s (a `models.scoring.ScorerResult`) held-out test rows;
        `history` as `prepare_history` returns it."""
        predictions = result.test_predictions
        column = PUBLISHED_COLUMN if PUBLISHED_COLUMN in predictions.columns else LEGACY_COLUMNS.get(result.scorer.scoring_method)
        if predictions.empty or column not in predictions.columns or predictions[column].isna().all():
            logger.info("revenue calibration: no held-out predictions for %s, factors 1", result.scorer.scoring_method)
            return cls()
        ids = pd.Index(predictions["deal_id"].astype("string").unique())
        in_test = ids.get_indexer(deals["deal_id"].astype("string")) >= 0
        in_test_history = ids.get_indexer(history["deal_id"].astype("string")) >= 0
        states = pipeline_at_many(
            deals.loc[in_test], history.loc[in_test_history], sorted(predictions["snapshot_at"].unique())
        )[["snapshot_at", "deal_id", "amount_reporting"]]
        rows = predictions[["snapshot_at", "deal_id", "label", column]].dropna(subset=[column]).merge(
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

    def factor(self, amount: np.ndarray | pd.Series) -> np.ndarray:
        """Each deal's factor, by the amount band its amount falls in."""
        a = np.nan_to_num(np.asarray(amount, dtype="float64"), nan=0.0)
        band = np.searchsorted(np.asarray(self.edges, dtype="float64"), a, side="right")
        return np.asarray(self.factors, dtype="float64")[band]

    def table(self) -> pd.DataFrame:
        """The bands as a small table: amount_from, amount_to (NaN: no bound), factor."""
        lows = [0.0, *self.edges]
        highs = [*self.edges, np.nan]
        return pd.DataFrame({"amount_from": lows, "amount_to": highs, "factor": list(self.factors), "held_out_rows": self.rows})
