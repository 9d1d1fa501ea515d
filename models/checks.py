"""Checks on what the models publish, reported as warnings (they block nothing):

- `model_beats_baseline`: the published scorer's held-out log loss is at most the constant win rate's,
  fitted on the same training rows and measured on the same held-out rows;
- `forecast_ordered`: every forecast row has P10 <= P50 <= P90.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from models.scoring import METHOD_CONSTANT

# Log losses are compared with this much slack, so two equal losses computed in a different order pass.
LOG_LOSS_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ModelCheck:
    """A check's outcome: passed, what was observed and what was expected, and the failing rows."""

    passed: bool
    observed: str
    expected: str
    failing: pd.DataFrame


def model_beats_baseline(metrics: dict) -> ModelCheck:
    """Whether the published scorer (`ScorerResult.metrics`: scoring_method, log_loss, constant_log_loss)
    does at least as well as the constant win rate on the held-out rows. The constant rate published
    passes by definition; a scorer without both held-out losses fails, saying so."""
    method = metrics.get("scoring_method")
    loss, constant = metrics.get("log_loss"), metrics.get("constant_log_loss")
    expected = "held-out log loss at most the constant win rate's"
    if method == METHOD_CONSTANT:
        return ModelCheck(True, "the published scorer is the constant win rate", expected, pd.DataFrame())
    if loss is None or constant is None or pd.isna(loss) or pd.isna(constant):
        observed = f"{method}: no held-out log loss to compare (scorer {loss}, constant rate {constant})"
        return ModelCheck(False, observed, expected, pd.DataFrame())
    passed = float(loss) <= float(constant) + LOG_LOSS_TOLERANCE
    observed = f"{method}: held-out log loss {float(loss):.4f}; constant win rate {float(constant):.4f}"
    return ModelCheck(passed, observed, expected, pd.DataFrame())


def forecast_ordered(quarterly: pd.DataFrame) -> ModelCheck:
    """Whether every row of `quarterly` (the `forecast_quarterly` frame) has P10 <= P50 <= P90; a blank
    quantile fails its row. The failing rows keep quarter, segment and the three quantiles."""
    p10, p50, p90 = (pd.to_numeric(quarterly[c], errors="coerce") for c in ("p10", "p50", "p90"))
    ordered = (p10 <= p50) & (p50 <= p90)
    keep = [c for c in ("quarter", "segment_type", "segment", "p10", "p50", "p90") if c in quarterly.columns]
    failing = quarterly.loc[~ordered.to_numpy(dtype=bool), keep].reset_index(drop=True)
    observed = f"{len(failing):,} of {len(quarterly):,} rows out of order" if len(failing) else f"all {len(quarterly):,} rows ordered"
    return ModelCheck(failing.empty, observed, "P10 <= P50 <= P90 on every row", failing)
