"""Saved scorers and the `model_runs` row that records every training run.

Every model is filed under its version (`models.versioning`): the same data and settings give the
same version, so re-running a night replaces that night's `model_runs` row instead of adding another. Artifacts are joblib files in the configured
`artifact_dir` (outside git): a local folder, or an object-store URL that every machine running
steps can read.

Scoring uses the latest model eligible for scoring (`eligible_models`, `choose_scorer`): this
run's calibrated model when it qualified, else the newest earlier one trained on data that ends
on or before the run's as_of, else this run's flagged fallback scorer.
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from etl.storage import location, write_atomic
from etl.tables import TABLES
from models.evaluation import binary_metrics
from models.scoring import METHOD_LOGISTIC, METHOD_MODEL, Scorer, ScorerResult, tier
from models.versioning import canonical_json


logger = logging.getLogger(__name__)

ARTIFACT_PREFIX = "deal-scorer-"
ARTIFACT_SUFFIX = ".joblib"


def artifact_file(directory: str | Path, version: str) -> Path:
    """Where the artifact of model `version` is kept: `<directory>/deal-scorer-<version>.joblib`
    (`directory` a local folder or an object-store URL, see etl.storage)."""
    return location(directory) / f"{ARTIFACT_PREFIX}{version}{ARTIFACT_SUFFIX}"


def save_artifact(scorer: Scorer, directory: str | Path) -> Path:
    """Write `scorer` to `<directory>/deal-scorer-<version>.joblib` (atomically: a reader never
    sees a half-written file) and return the path."""
    path = artifact_file(directory, scorer.version)
    write_atomic(path, lambda out: joblib.dump(scorer, out))
    logger.info("saved deal scorer %s (%s) to %s", scorer.version, scorer.scoring_method, path)
    return path


def load_artifact(path: str | Path) -> Scorer:
    """Read a scorer written by `save_artifact`."""
    file = location(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no saved deal scorer there (expected a {ARTIFACT_SUFFIX} file from save_artifact)")
    with file.open("rb") as handle:
        scorer = joblib.load(handle)
    if not isinstance(scorer, Scorer):
        raise TypeError(f"{file}: holds a {type(scorer).__name__}, expected a deal scorer saved by save_artifact")
    return scorer


MODEL_RUNS_COLUMNS: list[str] = TABLES["model_runs"].columns


def model_runs_row(
    result: ScorerResult,
    as_of: dt.date,
    trained_at: dt.datetime,
    artifact_path: str | Path | None = None,
    tier_change: str | None = None,
) -> dict:
    """One `model_runs` row (exactly its columns) describing `result`; `tier_change` from
    `published_tier_change`."""
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
        "reliability": canonical_json(metrics["reliability"]),
        "features": canonical_json(metrics["features"]),
        "params": canonical_json(metrics["params"]),
        "candidates": canonical_json(metrics["candidates"]) if metrics.get("candidates") is not None else None,
        "artifact_path": None if artifact_path is None else str(artifact_path),
        "tier_change": tier_change,
    }
    return {column: values[column] for column in MODEL_RUNS_COLUMNS}


def published_tier_change(runs: pd.DataFrame, as_of: dt.date, scoring_method: str) -> str | None:
    """In words, how the published scorer's tier moved since the latest earlier run in `runs`
    (the `model_runs` table), e.g. `stage_rate (tier 3, as_of 2026-11-14) -> logistic (tier 4)`;
    None for the first run or when the tier is the same. A tier change is the one reason an
    unchanged deal's score may move by more than 0.10 between consecutive nights."""
    if runs.empty or "scoring_method" not in runs.columns:
        return None
    earlier = runs.loc[pd.to_datetime(runs["as_of"]) < pd.Timestamp(as_of)]
    if earlier.empty:
        return None
    latest = earlier.assign(_as_of=pd.to_datetime(earlier["as_of"]), _trained=pd.to_datetime(earlier["trained_at"]))
    latest = latest.sort_values(["_as_of", "_trained"], kind="stable").iloc[-1]
    before = str(latest["scoring_method"])
    if before == scoring_method:
        return None
    try:
        before_tier = f"tier {tier(before)}"
    except ValueError:
        before_tier = "no tier"
    return (
        f"{before} ({before_tier}, as_of {latest['_as_of']:%Y-%m-%d}) -> {scoring_method} "
        f"(tier {tier(scoring_method)}) since as_of {as_of:%Y-%m-%d}"
    )


# ------------------------------------------------------------------------------------------------
# Which scorer scores tonight's deals

# `deal_scores.scored_with`: which scorer produced the scores.
SCORED_WITH_THIS_RUN = "this_run_model"
SCORED_WITH_EARLIER = "earlier_model"
SCORED_WITH_FALLBACK = "this_run_fallback"

# What can go wrong reading a saved artifact that is there but unusable (truncated, written by an
# incompatible version of a library, or not a scorer at all).
_UNREADABLE_ARTIFACT = (
    OSError, EOFError, TypeError, ValueError, KeyError, IndexError, AttributeError, ImportError, pickle.UnpicklingError,
)


@dataclass(frozen=True)
class ScorerChoice:
    """The scorer that scores a run's open deals and why.

    `scored_with`: `this_run_model`, `earlier_model` or `this_run_fallback`; `reason`: why this
    run's own model is not used, in words (None when it is); `model_as_of`: the as_of the scorer
    was trained for.
    """

    scorer: Scorer
    scored_with: str
    model_as_of: dt.date
    reason: str | None

    @property
    def model_version(self) -> str:
        return self.scorer.version


def eligible_models(
    runs: pd.DataFrame,
    as_of: dt.date,
    artifact_dir: str | Path,
    has_history: bool,
) -> pd.DataFrame:
    """The `model_runs` rows a run for `as_of` may score with, newest first.

    A model run is *eligible for scoring* when all of these hold:
    - it is a calibrated model that scored its own run: `scoring_method` is `calibrated_model`, which
      `train_scorer` sets only when there was enough closed history (`eligible`) and the model beat
      the better baseline on held-out log loss (`beats_baselines`);
    - its data window ends on or before `as_of`: it was trained for an `as_of` no later than this
      run's (outcomes read up to then), so a backfill never uses a model that saw later data;
    - it was trained on the same kind of source (`has_history` equal to this run's): a model
      trained on stage history needs stage features a no-history source does not have;
    - its artifact `<artifact_dir>/deal-scorer-<model_version>.joblib` exists.
    Newest means the latest `as_of`, then the latest `trained_at`. Adds the column `artifact`.
    """
    needed = ["model_version", "as_of", "trained_at", "scoring_method", "eligible", "beats_baselines", "has_history"]
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise ValueError(f"model_runs frame lacks column(s) {missing}; read it with Warehouse.read('model_runs')")
    if runs.empty:
        return runs.assign(artifact=pd.Series(dtype=object))
    trained_for = pd.to_datetime(runs["as_of"])
    usable = (
        (runs["scoring_method"].astype("string") == METHOD_MODEL).fillna(False).to_numpy(dtype=bool)
        & runs["eligible"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        & runs["beats_baselines"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        & (trained_for <= pd.Timestamp(as_of)).fillna(False).to_numpy(dtype=bool)
        & (runs["has_history"].astype("boolean") == bool(has_history)).fillna(False).to_numpy(dtype=bool)
    )
    candidates = runs.loc[usable].copy()
    candidates["artifact"] = [artifact_file(artifact_dir, str(v)) for v in candidates["model_version"]]
    exists = np.array([path.is_file() for path in candidates["artifact"]], dtype=bool)
    candidates = candidates.loc[exists]
    order = candidates.assign(_as_of=pd.to_datetime(candidates["as_of"]), _trained=pd.to_datetime(candidates["trained_at"]))
    order = order.sort_values(["_as_of", "_trained", "model_version"], ascending=[False, False, False], kind="stable")
    return order.drop(columns=["_as_of", "_trained"]).reset_index(drop=True)


def _held_out_log_loss(scorer: Scorer, current: ScorerResult) -> float | None:
    frame = current.test_frame
    if frame is None or frame.empty:
        return None
    return binary_metrics(current.test_predictions["label"], scorer.predict_proba(frame))["log_loss"]


def choose_scorer(
    current: ScorerResult,
    as_of: dt.date,
    runs: pd.DataFrame,
    artifact_dir: str | Path,
) -> ScorerChoice:
    """The scorer for a run's open deals.

    - This run's published scorer when it is the gradient-boosting model.
    - Otherwise the newest earlier model eligible for scoring (`eligible_models`) whose artifact
      loads from `artifact_dir`, but only when its log loss on this run's held-out rows is lower
      than this run's published scorer's (an earlier model is never trusted without evidence); an
      artifact that cannot be read is skipped with a warning.
    - Otherwise this run's published scorer (the winner of its ladder).
    """
    this_version = current.scorer.version
    if current.scorer.scoring_method == METHOD_MODEL:
        return ScorerChoice(current.scorer, SCORED_WITH_THIS_RUN, as_of, None)
    published = current.scorer.scoring_method
    why = current.metrics.get("fallback_reason") or f"this run published {published}"
    own_loss = current.metrics.get("log_loss")
    has_history = bool(current.metrics.get("has_history", True))
    others = runs.loc[runs["model_version"].astype(str) != this_version] if not runs.empty else runs
    for row in eligible_models(others, as_of, artifact_dir, has_history).itertuples(index=False):
        try:
            scorer = load_artifact(row.artifact)
        except _UNREADABLE_ARTIFACT as exc:
            logger.warning("model %s: artifact %s cannot be read (%s); trying an older model", row.model_version, row.artifact, exc)
            continue
        if scorer.version != row.model_version or scorer.scoring_method != METHOD_MODEL:
            logger.warning(
                "model %s: artifact %s holds %s version %s, expected calibrated_model version %s; trying an older model",
                row.model_version, row.artifact, scorer.scoring_method, scorer.version, row.model_version,
            )
            continue
        try:
            loss = _held_out_log_loss(scorer, current)
        except _UNREADABLE_ARTIFACT as exc:
            # Read, but unable to score this run's rows (saved by a version that kept other state).
            logger.warning(
                "model %s: artifact %s cannot score this run's held-out rows (%s); trying an older model",
                row.model_version, row.artifact, exc,
            )
            continue
        if loss is None or own_loss is None or not loss < own_loss:
            logger.info(
                "earlier model %s: held-out log loss %s does not beat this run's %s (%s); not used",
                row.model_version, loss, published, own_loss,
            )
            break
        trained_for = pd.Timestamp(row.as_of).date()
        reason = (
            f"this run's model is not used ({why}); scored with the latest earlier eligible model "
            f"{row.model_version}, trained for as_of {trained_for:%Y-%m-%d}, whose log loss on this run's "
            f"held-out rows, {loss:.4f}, beats this run's {published} ({own_loss:.4f})"
        )
        return ScorerChoice(scorer, SCORED_WITH_EARLIER, trained_for, reason)
    reason = (
        f"{why}; no earlier eligible model (a calibrated model trained for an as_of on or before "
        f"{as_of:%Y-%m-%d}, with its artifact in {artifact_dir}, that beats it on this run's held-out rows), "
        f"so this run's {published} scorer is used"
    )
    fitted = published in (METHOD_MODEL, METHOD_LOGISTIC)
    return ScorerChoice(current.scorer, SCORED_WITH_THIS_RUN if fitted else SCORED_WITH_FALLBACK, as_of, reason)
