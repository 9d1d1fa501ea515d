"""Model versions, saved scorers and the `model_runs` row that records every training run.

A model version is a stable hash of what the model was trained on (its prediction dates, the
date outcomes were read at, the labelled rows, the features) and how (its parameters): the same
data and settings give the same version, so re-running a night replaces that night's
`model_runs` row instead of adding another. Artifacts are joblib files in the configured
`artifact_dir` (outside git).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import pandas as pd

from etl.tables import TABLES

if TYPE_CHECKING:
    from models.scoring import Scorer, ScorerResult
    from models.training_set import TrainingSet

logger = logging.getLogger(__name__)

ARTIFACT_PREFIX = "deal-scorer-"
ARTIFACT_SUFFIX = ".joblib"
VERSION_LENGTH = 16


def _json(value) -> str:
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
    return hashlib.sha256(_json(payload).encode("utf-8")).hexdigest()[:VERSION_LENGTH]


def save_artifact(scorer: "Scorer", directory: str | Path) -> Path:
    """Write `scorer` to `<directory>/deal-scorer-<version>.joblib` (atomically: a reader never
    sees a half-written file) and return the path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ARTIFACT_PREFIX}{scorer.version}{ARTIFACT_SUFFIX}"
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=ARTIFACT_SUFFIX, dir=folder)
    os.close(handle)
    try:
        joblib.dump(scorer, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    logger.info("saved deal scorer %s (%s) to %s", scorer.version, scorer.scoring_method, path)
    return path


def load_artifact(path: str | Path) -> "Scorer":
    """Read a scorer written by `save_artifact`."""
    from models.scoring import Scorer

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no saved deal scorer there (expected a {ARTIFACT_SUFFIX} file from save_artifact)")
    scorer = joblib.load(file)
    if not isinstance(scorer, Scorer):
        raise TypeError(f"{file}: holds a {type(scorer).__name__}, expected a deal scorer saved by save_artifact")
    return scorer


MODEL_RUNS_COLUMNS: list[str] = TABLES["model_runs"].columns


def model_runs_row(
    result: "ScorerResult",
    as_of: dt.date,
    trained_at: dt.datetime,
    artifact_path: str | Path | None = None,
) -> dict:
    """One `model_runs` row (exactly its columns) describing `result`."""
    metrics = result.metrics
    stamp = pd.Timestamp(trained_at)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    values = {
        **{column: metrics.get(column) for column in MODEL_RUNS_COLUMNS},
        "model_version": result.scorer.version,
        "as_of": as_of,
        "trained_at": stamp.to_pydatetime(),
        "scoring_method": result.scorer.scoring_method,
        "reliability": _json(metrics["reliability"]),
        "features": _json(metrics["features"]),
        "params": _json(metrics["params"]),
        "artifact_path": None if artifact_path is None else str(artifact_path),
    }
    return {column: values[column] for column in MODEL_RUNS_COLUMNS}
