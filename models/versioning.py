"""A model version: a stable hash of what a model was trained on (its prediction dates, the date outcomes
were read at, the labelled rows, the features) and how (its parameters). The same data and settings give
the same version. Scoring stamps every scorer with it; the registry files artifacts and `model_runs`
rows under it."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from models.training_set import TrainingSet

VERSION_LENGTH = 16


def canonical_json(value) -> str:
    """`value` as JSON with sorted keys (anything else as its text): the same value gives the same text."""
    return json.dumps(value, sort_keys=True, default=str)


def model_version(training: "TrainingSet", params: dict) -> str:
    """Hex digest (16 characters) of the training window, the labelled rows and the parameters."""
    frame = training.frame
    if frame.empty:
        rows_digest = "0"
    else:
        keys = frame[["deal_id", "snapshot_at", "label"]].astype({"deal_id": str, "label": "int64"})
        rows_digest = str(int(pd.util.hash_pandas_object(keys, index=False).sum()))
    payload = {
        "data_window": training.data_window,
        "as_of": training.as_of.isoformat(),
        "frequency": training.frequency,
        "maturity_days": training.maturity_days,
        "has_history": training.has_history,
        "features": list(training.feature_names),
        "rows": len(frame),
        "rows_digest": rows_digest,
        "params": params,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:VERSION_LENGTH]
