"""Honest test metrics for win probabilities: discrimination, log loss, Brier score, calibration.

Data engineers read these in `model_runs` to judge whether a probability of 0.7 wins about 70% of
the time, and whether the model does better than the CRM's stage probabilities.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

RELIABILITY_BINS = 10
RELIABILITY_COLUMNS = ["bin", "lower", "upper", "count", "mean_predicted", "observed_rate"]


def _arrays(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape}) and probabilities ({p.shape}) differ in length")
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} probabilities are missing (NaN); every row needs one")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def binary_metrics(labels, probabilities) -> dict[str, float | None]:
    """AUC (None with one class), log loss and Brier score of win probabilities against outcomes
    (1 won, 0 lost). All None for zero rows."""
    y, p = _arrays(labels, probabilities)
    if len(y) == 0:
        return {"auc": None, "log_loss": None, "brier": None}
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else None,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
    }


def base_rate_brier(labels, rate: float | None = None) -> float | None:
    """Brier score of forecasting the same win rate for every row: `rate` (in model_runs, the
    training slice's win rate), or the rows' own observed rate when not given. A useful model's
    Brier score is well below it."""
    y = np.asarray(labels, dtype=float)
    if len(y) == 0:
        return None
    constant = float(y.mean()) if rate is None else float(rate)
    return float(np.mean((y - constant) ** 2))


def reliability_table(labels, probabilities, bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Equal-width probability bins (0-0.1, ..., 0.9-1.0): rows in the bin, mean predicted
    probability and observed win rate (NaN for empty bins). A probability of exactly 1 falls in
    the last bin."""
    y, p = _arrays(labels, probabilities)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=p, minlength=bins)
    won = np.bincount(index, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, predicted / np.maximum(count, 1), np.nan)
        observed = np.where(count > 0, won / np.maximum(count, 1), np.nan)
    return pd.DataFrame(
        {
            "bin": np.arange(1, bins + 1),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype("int64"),
            "mean_predicted": mean_predicted,
            "observed_rate": observed,
        },
        columns=RELIABILITY_COLUMNS,
    )


def expected_calibration_error(table: pd.DataFrame) -> float | None:
    """Row-weighted mean gap between predicted and observed win rate over the bins of a
    `reliability_table`; None when the table has no rows."""
    total = int(table["count"].sum())
    if total == 0:
        return None
    filled = table.loc[table["count"] > 0]
    gaps = (filled["mean_predicted"] - filled["observed_rate"]).abs()
    return float((filled["count"] * gaps).sum() / total)


def reliability_records(table: pd.DataFrame) -> list[dict]:
    """The reliability table as JSON-ready dicts (empty bins carry None, not NaN)."""

    def number(value) -> float | None:
        value = float(value)
        return None if math.isnan(value) else value

    return [
        {
            "bin": int(row["bin"]),
            "lower": float(row["lower"]),
            "upper": float(row["upper"]),
            "count": int(row["count"]),
            "mean_predicted": number(row["mean_predicted"]),
            "observed_rate": number(row["observed_rate"]),
        }
        for row in table.to_dict(orient="records")
    ]
