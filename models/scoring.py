"""The deal scorer: a ladder of candidate scorers fitted on the past and compared on the same
held-out rows, the best published (docs/modeling.md, "Scoring").

How a scorer is chosen (`train_scorer`):
1. Time cut (`time_split`): the latest `test_share` of the scheduled prediction dates are held out.
   Every labelled row before the cut trains, except the rows of deals also tested (purge) and the
   `maturity_days` before the cut (embargo) -- as long as both keep at least `MIN_KEPT_SHARE` of the
   rows, won deals and lost deals before the cut; otherwise the window is widened to every row before
   the cut. `model_runs.split_rule` says which. Never random across one deal's snapshots.
2. Candidates (the `LADDER`), each fitted on those same training rows: the constant win rate; the
   CRM probability (else the stage default); the win rate by pipeline x stage; by pipeline x stage x
   age bucket (never rising with age); a regularised logistic model (from `logistic_min_won` /
   `logistic_min_lost` deals); gradient boosting (from `min_won` / `min_lost`), fitted on the earlier
   part of the training rows and calibrated and early-stopped on the later `calibration_share` of the
   dates (isotonic with at least `ISOTONIC_MIN_DEALS` deals and more than `CROSS_FIT_MAX_ROWS`
   training rows, else a logistic calibration on the score and days in stage, cross-fitted over
   every training deal with recency weights and bent at the score's quartiles from
   `CALIBRATION_KNOTS_MIN_DEALS` deals of each outcome,
   `DaysInStageCalibration`, `CALIBRATION_HALF_LIFE_DAYS`). Probabilities stay within
   [0.001, 0.999].
   Every candidate but the constant rate scores a deal that has sat in its stage longer than any
   training row of its pipeline with the stated prior of `StageDaysPrior`.
3. Every fitted candidate scores the held-out rows: AUC, log loss, Brier, ECE. The lowest log loss is
   published (ties: the simpler tier); since the constant rate always competes, the published scorer is
   never worse than it. It is published as evaluated, not refit, so the metrics describe the scorer in
   use. The headline metrics (auc, log_loss, brier, ece, reliability) are the published scorer's.
4. With no held-out rows, or training rows holding one outcome, the constant rate of every labelled row
   is published and the run says why; with no lost (or no won) deal at all nothing can be estimated and
   `InsufficientHistoryError` is raised.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from etl.config import ModelConfig
from models.evaluation import (
    base_rate_brier,
    binary_metrics,
    expected_calibration_error,
    reliability_records,
    reliability_table,
)
from models.versioning import model_version
from models.training_set import CATEGORICAL_FEATURES, LEAKY_FEATURES, LeakageError, TrainingSet

logger = logging.getLogger(__name__)

METHOD_CONSTANT = "constant_rate"
METHOD_CRM = "crm_probability"
METHOD_STAGE_ONLY = "stage_only_rate"
METHOD_STAGE_RATE = "stage_rate"
METHOD_LOGISTIC = "logistic"
METHOD_MODEL = "calibrated_model"
# The scorer ladder, simplest first: a scorer's tier is its position here.
LADDER = (METHOD_CONSTANT, METHOD_CRM, METHOD_STAGE_ONLY, METHOD_STAGE_RATE, METHOD_LOGISTIC, METHOD_MODEL)


def tier(method: str) -> int:
    """Position of a scoring method on the ladder (0 the constant rate, 5 gradient boosting)."""
    return LADDER.index(method)

# Probabilities are kept inside [0.1%, 99.9%]: no deal is certain before it closes, and a 0 or 1
# would make a single surprise cost an infinite log loss.
PROBABILITY_FLOOR = 0.001
PROBABILITY_CEILING = 0.999
# Isotonic calibration fits a free step function and needs many independent outcomes: below this
# many distinct deals in the calibration slice, the calibration is cross-fitted (below). Counting rows
# would overstate the evidence about sevenfold (each deal appears in about seven weekly
# snapshots with the same outcome); on the 10,000-deal sample (about 1,300 calibration deals, 9,000
# rows) isotonic was worse than Platt on held-out log loss and ECE for every seed tried.
ISOTONIC_MIN_DEALS = 5_000
# At least this many calibration rows too (the rule of thumb for independent rows).
ISOTONIC_MIN_ROWS = 1_000
# Below `ISOTONIC_MIN_DEALS` calibration deals, the Platt scaling is cross-fitted instead of fitted
# on the latest slice alone: each deal's training rows are scored by a model fitted on the other
# folds' deals (never on its own outcome), the sigmoid is fitted on those out-of-fold scores of every
# training deal, and the published model is refitted on all training rows. Fitted on the latest
# `calibration_share` of the dates only (about 1,900 deals on a 10,000-deal CRM), the sigmoid's
# intercept carries the outcome noise of those few deals (a win rate over 1,900 deals has a standard
# error of about 0.011), more than the calibration it corrects; over every training deal (about
# 6,000) the noise is about half as large and the model learns from every row. Five folds cost five
# more fits of the model; beyond `CROSS_FIT_MAX_ROWS` they are not run.
CROSS_FIT_FOLDS = 5
# Up to this many training rows the calibration is cross-fitted even when the calibration slice holds
# enough deals for isotonic. On 21 simulator seeds of 30,000 deals (about 5,700 calibration deals,
# 175,000 training rows), isotonic on the slice left the published scores 0.53 points below the truth
# on average (the slice's half-year of outcomes and seasons set their level, and its model learnt from
# the earlier 80% of the rows) with a held-out log loss 1.0146 times the truth's; cross-fitted, 0.26
# points and 1.0084 times. Beyond it (a CRM of about 45,000 deals; the training set holds at most
# `max_rows_per_snapshot` rows a date) the five extra fits would be the night's largest cost, and a
# slice of that many deals is calibrated on by itself.
CROSS_FIT_MAX_ROWS = 250_000
# The cross-fitted sigmoid weighs each training row by its recency: a row loses half its weight per
# `CALIBRATION_HALF_LIFE_DAYS` before the latest training prediction date (`recency_weights`).
# Fitted with equal weights over the whole history, its level carried the first year's outcomes
# as much as the last year's; on simulator seeds whose first year happened to win 2-4 points more
# than the true probabilities, the published scores stayed about a point too high on the held-out
# rows. One year keeps every season of the last year at more than half the weight of the latest
# rows; over 2.5 years of prediction dates the first year holds 16% of the weight (31% of the rows)
# and the weights' effective sample size is about 84% of the rows.
# The model itself is fitted on every row with equal weight: only the calibration follows the
# recent past. None gives every row the same weight.
CALIBRATION_HALF_LIFE_DAYS: float | None = 365.0
# The cross-fitted calibration's line in the score's log odds bends at these quantiles of the
# training rows' out-of-fold log odds (`DaysInStageCalibration`): one more coefficient each, the
# change of slope beyond the knot. The boosting model spaces its scores too closely at the low end
# and too widely in the middle: on 21 simulator seeds of 30,000 deals the fitted slope was 1.04-1.29
# below the first quartile (a score of about 0.22), 0.83-0.98 between the quartiles and 0.97-1.13
# above the third, the same shape on every seed, which a straight line splits the difference of.
# With the bends the ECE target held on 17 of the 21 seeds instead of 14 (mean gap 0.0038 to 0.0018)
# and the log loss fell from 1.0082 to 1.0078 times the truth's (docs/modeling.md, "The
# calibration's bends").
CALIBRATION_KNOT_QUANTILES = (0.25, 0.5, 0.75)
# The bends are fitted from this many training deals of each outcome; below it the line stays
# straight. Below about 20,000 deals what the bends change is small beside the level's noise, which
# they cannot touch: at 5,000 deals the mean ECE gap over 21 seeds went from 0.0109 to 0.0096, at
# 10,000 (2,100-2,600 won training deals) from 0.0038 to 0.0035 over 21 unseen seeds and from 0.0045
# to 0.0048 over the four of tests/models/test_sample_model.py (seed 7: 0.0068 to 0.0117), with the
# log loss within 0.0007 times the truth's; at 20,000 (4,300-5,300 won) 0.0023 to 0.0017, and at
# 30,000 (6,500-7,700 won) they halved it.
CALIBRATION_KNOTS_MIN_DEALS = 4_000
# What the cross-fitted calibration reads (`DaysInStageCalibration`), as
# `model_runs.params.calibration_terms` records it.
CALIBRATION_KNOT_TERMS = tuple(f"log_odds_of_score_beyond_q{round(q * 100)}" for q in CALIBRATION_KNOT_QUANTILES)
CALIBRATION_DAYS_TERMS = ("log1p_days_in_stage", "log1p_days_in_stage_squared", "log1p_days_in_stage_x_stage_order")
CALIBRATION_TERMS = ("log_odds_of_score", *CALIBRATION_KNOT_TERMS, *CALIBRATION_DAYS_TERMS)
# Age buckets (days since creation) of the stage-rate baseline.
AGE_BUCKET_EDGES = (0.0, 30.0, 60.0, 90.0, 180.0, 365.0, np.inf)
AGE_BUCKET_LABELS = ("0-29 days", "30-59 days", "60-89 days", "90-179 days", "180-364 days", "365+ days")
# Pseudo-count (snapshot rows) that pulls a thin stage-rate cell towards its parent cell
# (pipeline x stage, then pipeline, then all deals); an empty cell takes the parent's rate.
STAGE_RATE_PSEUDO_COUNT = 20.0
UNKNOWN = "(unknown)"
# Categorical values kept per feature by the encoder (rarer ones share one "other" code); the
# gradient-boosting model accepts at most 255 categories.
MAX_CATEGORIES = 250
# Parameters that make the model reproducible and keep its validation honest: gradient boosting's
# own early stopping would hold out a random sample of rows, i.e. random across one deal's
# snapshots, so it is off unless `[model.params]` turns it on.
DEFAULT_MODEL_PARAMS = {"random_state": 0, "early_stopping": False}

SCORE_BANDS = ((0.1, "very low"), (0.3, "low"), (0.6, "medium"), (0.85, "high"))
TOP_BAND = "very high"


class InsufficientHistoryError(ValueError):
    """The closed-deal history cannot support any win probability (for example no lost deals)."""


def score_band(p: float) -> str:
    """A win probability in words: very low (< 10%), low (< 30%), medium (< 60%), high (< 85%),
    very high."""
    value = float(p)
    if np.isnan(value):
        raise ValueError("score_band needs a probability, got NaN")
    for upper, band in SCORE_BANDS:
        if value < upper:
            return band
    return TOP_BAND


def score_bands(probabilities) -> np.ndarray:
    """`score_band` for an array of probabilities."""
    p = np.asarray(probabilities, dtype=float)
    if np.isnan(p).any():
        raise ValueError("score_bands needs probabilities, got NaN")
    conditions = [p < upper for upper, _ in SCORE_BANDS]
    return np.select(conditions, [band for _, band in SCORE_BANDS], default=TOP_BAND).astype(object)


def _clip(p) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=float), PROBABILITY_FLOOR, PROBABILITY_CEILING)


def age_buckets(age_days: pd.Series) -> pd.Series:
    """The stage-rate baseline's age bucket of each deal (`(unknown)` when age is missing)."""
    buckets = pd.cut(age_days.astype(float), bins=list(AGE_BUCKET_EDGES), labels=list(AGE_BUCKET_LABELS), right=False)
    return buckets.astype("string").fillna(UNKNOWN)


def typical_values(frame: pd.DataFrame, columns: list[str]) -> dict[str, object]:
    """Median of each numeric column, most frequent value of each text column (ties: the first
    in sort order), over `frame`'s rows."""
    typical: dict[str, object] = {}
    for column in columns:
        values = frame[column]
        if column in CATEGORICAL_FEATURES or not pd.api.types.is_numeric_dtype(values):
            counts = values.dropna().astype(str).value_counts()
            if counts.empty:
                typical[column] = None
            else:
                top = counts[counts == counts.max()].index
                typical[column] = sorted(top)[0]
        else:
            median = values.astype(float).median()
            typical[column] = None if pd.isna(median) else float(median)
    return typical


def typical_days_in_stage(frame: pd.DataFrame) -> pd.DataFrame:
    """Median days in stage per pipeline and stage over `frame`'s rows."""
    if not {"pipeline", "stage", "days_in_stage"} <= set(frame.columns):
        return pd.DataFrame({"pipeline": [], "stage": [], "typical_days_in_stage": []})
    medians = (
        frame.dropna(subset=["pipeline", "stage", "days_in_stage"])
        .groupby(["pipeline", "stage"], observed=True)["days_in_stage"]
        .median()
        .rename("typical_days_in_stage")
        .reset_index()
    )
    return medians.astype({"pipeline": "string", "stage": "string"})


class StageDaysPrior:
    """How a deal that has sat in its stage longer than any training row is scored.

    No training row of a pipeline was more than `limit` days in its stage, so no scorer has seen
    how such deals end, and a rate learnt on fresher deals would be carried over unchanged. A deal
    sitting d > limit days is scored as it stood when it had sat `limit` days (days in stage and
    age moved back by d - limit), and its odds of winning are multiplied by limit / d: a deal that
    has sat three times as long as any training row keeps a third of the odds. By Bayes' rule the
    factor is the chance that a deal which will be won sits d days given it sat `limit` days,
    against deals that will not be won, which a CRM nobody cleans up keeps open (taken as 1); the
    stated assumption is a waiting-time tail of index 1 (P(stay >= d | stay >= limit) = limit / d),
    the slowest decay in common use, because the history at hand holds no won deal's stay that long
    to measure it with. A pipeline without training rows uses the largest limit of all; a row
    without a known days in stage is left as it is."""

    def __init__(self, limits: dict[str, float], overall_limit: float):
        self.limits = dict(limits)
        self.overall_limit = float(overall_limit)

    @classmethod
    def fit(cls, train: pd.DataFrame) -> "StageDaysPrior | None":
        """The prior for a scorer fitted on `train` (None without days in stage in the rows)."""
        if "days_in_stage" not in train.columns or not train["days_in_stage"].notna().any():
            return None
        days = train["days_in_stage"].astype(float)
        limits = days.groupby(train["pipeline"].astype("string").fillna(UNKNOWN)).max().dropna()
        return cls({str(k): float(v) for k, v in limits.items()}, float(days.max()))

    def limit_of(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's limit: its pipeline's largest days in stage among the training rows."""
        pipeline = frame["pipeline"].astype("string").fillna(UNKNOWN)
        return pipeline.map(self.limits).astype(float).fillna(self.overall_limit).to_numpy(dtype=float)

    def odds_factor(self, frame: pd.DataFrame) -> np.ndarray:
        """The factor on each row's odds: limit / days in stage beyond the limit, else 1."""
        days = frame["days_in_stage"].astype(float).to_numpy()
        limit = self.limit_of(frame)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(days > limit, limit / days, 1.0)

    def moved_back(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with the rows beyond their limit as they stood when they had sat `limit` days."""
        days = frame["days_in_stage"].astype(float)
        excess = (days - self.limit_of(frame)).clip(lower=0.0).fillna(0.0)
        if not bool((excess > 0).any()):
            return frame
        out = frame.copy()
        out["days_in_stage"] = days - excess
        if "age_days" in out.columns:
            out["age_days"] = (out["age_days"].astype(float) - excess).clip(lower=0.0)
        return out


class Scorer(abc.ABC):
    """Turns a features frame (from `snapshot_features` or a training set) into win probabilities.

    `feature_names`: the columns it reads; `factor_groups`: the columns explanations vary together
    (name -> columns); `typical`: each column's typical value over the rows it learnt from.
    """

    scoring_method: str = ""

    def __init__(self, version: str, feature_names: list[str], typical: dict[str, object], typical_stage_days: pd.DataFrame):
        self.version = version
        self.feature_names = list(feature_names)
        self.typical = dict(typical)
        self.typical_stage_days = typical_stage_days
        # Set by `train_scorer`: how deals beyond the training rows' days in stage are scored.
        self.stage_days_prior: StageDaysPrior | None = None

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        groups = {name: [name] for name in self.feature_names}
        if "stage" in groups and "stage_order" in groups:
            groups["stage"] = ["stage", "stage_order"]
            del groups["stage_order"]
        return groups

    def explained_groups(self) -> dict[str, list[str]]:
        """`factor_groups`, plus days in stage when the stage-days prior can move a score."""
        groups = self.factor_groups
        if getattr(self, "stage_days_prior", None) is not None and "days_in_stage" not in groups:
            groups = {**groups, "days_in_stage": ["days_in_stage"]}
        return groups

    def predict_proba(self, features_frame: pd.DataFrame) -> np.ndarray:
        """Win probability of each row (1-D array, within [0.001, 0.999])."""
        missing = [c for c in self.required_columns if c not in features_frame.columns]
        if missing:
            raise ValueError(
                f"features frame lacks column(s) {missing} needed by the {self.scoring_method} scorer "
                f"(version {self.version}); build it with models.training_set.snapshot_features"
            )
        if features_frame.empty:
            return np.zeros(0, dtype=float)
        prior = getattr(self, "stage_days_prior", None)
        if prior is None or "days_in_stage" not in features_frame.columns:
            return _clip(self._probabilities(features_frame))
        p = _clip(self._probabilities(prior.moved_back(features_frame)))
        odds = p / (1.0 - p) * prior.odds_factor(features_frame)
        return _clip(odds / (1.0 + odds))

    @property
    def required_columns(self) -> list[str]:
        return list(self.feature_names)

    @abc.abstractmethod
    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """Unclipped win probabilities of the rows of `frame`."""


def _model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as objects with NaN for blanks, numbers as floats: the input step of the models
    saved before `ModelInput` (kept so that their artifacts still load and score)."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column in CATEGORICAL_FEATURES:
            values = frame[column].astype(object)
            out[column] = values.where(frame[column].notna(), np.nan)
        else:
            out[column] = frame[column].astype(float)
    return out


# A text value the model did not see when it was fitted: not a category of the encoder (which maps
# it to NaN, as an unknown category).
UNSEEN_TEXT = -1.0


class ModelInput(TransformerMixin, BaseEstimator):
    """The model's input step: numbers as floats, and each text column (`CATEGORICAL_FEATURES`) as
    the rank of its value among the distinct values seen when fitted (in Python's string order,
    the order the ordinal encoder sorts text in), NaN for a blank, `UNSEEN_TEXT` for a value not
    seen then. The encoder that follows finds the same categories, counts and order as it would
    on the text itself, so the encoded values are the same; it counts numbers in compiled code,
    where text is counted value by value in Python (seconds per fit on a million rows)."""

    def fit(self, frame: pd.DataFrame, y=None) -> "ModelInput":
        self.feature_names_in_ = np.asarray(list(frame.columns), dtype=object)
        self.vocabulary_ = {
            column: pd.Index(sorted(pd.unique(frame[column].dropna().astype(object).to_numpy())), dtype=object)
            for column in frame.columns
            if column in CATEGORICAL_FEATURES
        }
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for column in frame.columns:
            if column in self.vocabulary_:
                values = frame[column]
                rank = self.vocabulary_[column].get_indexer(values.astype(object).to_numpy()).astype("float64")
                rank[rank < 0] = UNSEEN_TEXT
                rank[values.isna().to_numpy()] = np.nan
                out[column] = rank
            else:
                out[column] = frame[column].astype(float).to_numpy()
        return pd.DataFrame(out, index=frame.index)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_in_, dtype=object)


def build_model_pipeline(feature_names: list[str], params: dict) -> Pipeline:
    """Encoding + gradient boosting with native categorical support, as one scikit-learn Pipeline."""
    categorical = [c for c in feature_names if c in CATEGORICAL_FEATURES]
    encoder = ColumnTransformer(
        [
            (
                "categories",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                    max_categories=MAX_CATEGORIES,
                ),
                categorical,
            )
        ],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    classifier = HistGradientBoostingClassifier(categorical_features=categorical or None, **params)
    pipeline = Pipeline(
        [
            ("tidy", ModelInput()),
            ("encode", encoder),
            ("classifier", classifier),
        ]
    )
    return pipeline.set_output(transform="pandas")


class CalibratedModelScorer(Scorer):
    """The gradient-boosting model, calibrated on data it was not fitted on."""

    scoring_method = METHOD_MODEL

    def __init__(self, estimator, calibration_method: str, **kwargs):
        super().__init__(**kwargs)
        self.estimator = estimator
        self.calibration_method = calibration_method

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(frame[self.feature_names])[:, 1]


class DaysInStageCalibration:
    """Platt scaling cross-fitted by deal, bent at the score's quartiles, with days in stage beside
    the model's score.

    Each fold's rows are scored by a clone of `estimator` fitted on the other folds (no deal is
    scored by a model that learnt its outcome); a logistic regression is fitted, with `sample_weight`,
    on those out-of-fold scores' log odds, their excess over each of `knots` (the
    `CALIBRATION_KNOT_QUANTILES` of the out-of-fold log odds, when `bends`) and each row's
    days-in-stage terms (`terms`); the published model is `estimator` refitted on every row. Without a
    `days_in_stage` column it reads the score alone.

    The bends let the calibration follow a score whose spacing is wrong in one part of its range and
    right in another (the boosting model squeezes its low scores towards the middle). They are kept
    only when the fitted line rises in every piece: a calibration that gave a higher score a lower
    probability would be fitting noise, so then the line is refitted straight (`bends_kept_` False).

    The days terms correct what the gradient-boosting model under-learns: with small trees, large
    leaves and early stopping it learns the first weeks' fall in the win chance but flattens out
    beyond them, where few rows sit, so deals that have sat long in their stage keep too high a score
    (docs/modeling.md, "Days in stage in the calibration"). The calibration learns how much the score
    should still fall with log days in stage, how that bends, and how it differs by stage order, from
    every training deal's out-of-fold score, a handful of coefficients where the trees have none."""

    def __init__(self, estimator, folds: list[tuple[np.ndarray, np.ndarray]], bends: bool = True):
        self.estimator = estimator
        self.folds = folds
        self.bends = bends

    @property
    def terms(self) -> list[str]:
        """The `CALIBRATION_TERMS` this fitted calibration reads, in the order of its columns."""
        days = CALIBRATION_DAYS_TERMS[: 2 * self.uses_days_ + self.uses_stage_order_]
        return ["log_odds_of_score", *CALIBRATION_KNOT_TERMS[: len(self.knots_)], *days]

    @staticmethod
    def _log_odds(scores: np.ndarray) -> np.ndarray:
        return logit(np.clip(np.asarray(scores, dtype=float), 1e-6, 1.0 - 1e-6))

    def _design(self, frame: pd.DataFrame, log_odds: np.ndarray) -> np.ndarray:
        """The columns of `terms`: the score's log odds and its excess over each knot; log(1 + days in
        stage) and its square; its product with the stage order (a missing value takes the training
        median)."""
        columns = [log_odds, *(np.clip(log_odds - knot, 0.0, None) for knot in self.knots_)]
        if self.uses_days_:
            days = frame["days_in_stage"].to_numpy(dtype=float)
            log_days = np.log1p(np.clip(np.where(np.isnan(days), self.typical_days_, days), 0.0, None))
            columns += [log_days, log_days**2]
            if self.uses_stage_order_:
                order = frame["stage_order"].to_numpy(dtype=float)
                columns.append(log_days * np.where(np.isnan(order), self.typical_stage_order_, order))
        return np.column_stack(columns)

    def _fit_calibrator(self, frame: pd.DataFrame, log_odds: np.ndarray, y: np.ndarray, sample_weight) -> None:
        design = self._design(frame, log_odds)
        # Each column on the scale of its spread (one of about constant spread stays as it is).
        spread = design.std(axis=0)
        self.scale_ = np.where(spread > 1e-6, spread, 1.0)
        self.calibrator_ = LogisticRegression(C=1e6, max_iter=1000).fit(
            design / self.scale_, y, sample_weight=sample_weight
        )

    @property
    def slopes_(self) -> np.ndarray:
        """The fitted line's slope in the score's log odds, piece by piece (below the first knot,
        then beyond each)."""
        coefficients = self.calibrator_.coef_[0] / self.scale_
        return np.cumsum(coefficients[: 1 + len(self.knots_)])

    def fit(self, frame: pd.DataFrame, labels, sample_weight=None) -> "DaysInStageCalibration":
        y = np.asarray(labels, dtype=int)
        self.uses_days_ = bool("days_in_stage" in frame.columns and frame["days_in_stage"].notna().any())
        self.uses_stage_order_ = bool(
            self.uses_days_ and "stage_order" in frame.columns and frame["stage_order"].notna().any()
        )
        if self.uses_days_:
            self.typical_days_ = float(frame["days_in_stage"].median())
        if self.uses_stage_order_:
            self.typical_stage_order_ = float(frame["stage_order"].median())
        out_of_fold = np.empty(len(frame))
        for fit_rows, held_rows in self.folds:
            model = clone(self.estimator).fit(frame.iloc[fit_rows], y[fit_rows])
            out_of_fold[held_rows] = model.predict_proba(frame.iloc[held_rows])[:, 1]
        log_odds = self._log_odds(out_of_fold)
        self.knots_: tuple[float, ...] = ()
        if self.bends:
            knots = np.unique(np.quantile(log_odds, CALIBRATION_KNOT_QUANTILES))
            # Knots that coincide (a score with few distinct values) cannot bend it.
            self.knots_ = tuple(float(k) for k in knots) if len(knots) == len(CALIBRATION_KNOT_QUANTILES) else ()
        self._fit_calibrator(frame, log_odds, y, sample_weight)
        if self.knots_ and not (self.slopes_ > 0).all():
            self.knots_ = ()
            self._fit_calibrator(frame, log_odds, y, sample_weight)
        self.model_ = clone(self.estimator).fit(frame, y)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        design = self._design(frame, self._log_odds(self.model_.predict_proba(frame)[:, 1]))
        return self.calibrator_.predict_proba(design / self.scale_)

    @property
    def bends_kept_(self) -> bool:
        """Whether the fitted line bends (False when `bends` was off, the knots coincided or a bent
        line would have fallen somewhere)."""
        return bool(self.knots_)

    def __setstate__(self, state: dict) -> None:
        # An artifact saved by a version whose calibration could not bend (an earlier night's model,
        # which a run may score its held-out rows with) reads its line straight, as it was fitted.
        state.setdefault("bends", False)
        state.setdefault("knots_", ())
        self.__dict__.update(state)


class StageRateScorer(Scorer):
    """Empirical win rate of past snapshots by pipeline x stage (x age bucket when `use_age`),
    each cell pulled towards its parent (pipeline x stage, then pipeline, then all) by
    `STAGE_RATE_PSEUDO_COUNT`. Without stage history the stage is unknown at past snapshots, so
    only pipeline (x age) is used.

    Age never raises a deal's rate: within a pipeline x stage, the age buckets' rates are made
    non-increasing with age (weighted pool-adjacent-violators over the buckets' rows), so a deal
    open 200 days in an early stage never looks better than a fresh one in that stage. Where the
    data show older deals winning more, the buckets are pooled and age has no effect."""

    def __init__(self, use_stage: bool, use_age: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.use_stage = use_stage
        self.use_age = use_age
        self.overall_rate = float("nan")
        self.rates: dict[str, pd.DataFrame] = {}

    @property
    def scoring_method(self) -> str:  # type: ignore[override]
        return METHOD_STAGE_RATE if getattr(self, "use_age", True) else METHOD_STAGE_ONLY

    @property
    def required_columns(self) -> list[str]:
        return ["pipeline", "stage", "age_days"]

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        groups = {}
        if self.use_stage:
            groups["stage"] = ["stage"]
        if self.use_age:
            groups["age_days"] = ["age_days"]
        return groups

    def _keys(self, frame: pd.DataFrame) -> pd.DataFrame:
        stage = frame["stage"].astype("string") if self.use_stage else pd.Series(pd.NA, index=frame.index, dtype="string")
        age = age_buckets(frame["age_days"]) if self.use_age else pd.Series(UNKNOWN, index=frame.index, dtype="string")
        return pd.DataFrame(
            {
                "pipeline": frame["pipeline"].astype("string").fillna(UNKNOWN),
                "stage": stage.fillna(UNKNOWN),
                "age_bucket": age,
            },
            index=frame.index,
        )

    def _levels(self) -> list[tuple[str, list[str]]]:
        """The cells from the finest to the coarsest."""
        levels = [("stage", ["pipeline", "stage"]), ("pipeline", ["pipeline"])]
        if getattr(self, "use_age", True):
            levels.insert(0, ("cell", ["pipeline", "stage", "age_bucket"]))
        return levels

    def fit(self, frame: pd.DataFrame, labels: pd.Series) -> "StageRateScorer":
        keys = self._keys(frame)
        keys["won"] = labels.to_numpy(dtype=float)
        self.overall_rate = float(keys["won"].mean())
        m = STAGE_RATE_PSEUDO_COUNT
        parent = pd.Series(self.overall_rate, index=keys.index)
        self.rates = {}
        for level, columns in self._levels()[::-1]:
            keys["parent"] = parent
            table = keys.groupby(columns, observed=True).agg(won=("won", "sum"), rows=("won", "size"), parent=("parent", "first"))
            table["rate"] = (table["won"] + m * table["parent"]) / (table["rows"] + m)
            table = table.reset_index()
            if level == "cell":
                table = _older_buckets_extended(_non_increasing_with_age(table))
            self.rates[level] = table[[*columns, "rows", "rate"]]
            parent = keys[columns].merge(table[[*columns, "rate"]], on=columns, how="left")["rate"]
            parent.index = keys.index
        return self

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        keys = self._keys(frame).reset_index(drop=True)
        rate = pd.Series(np.nan, index=keys.index)
        for level, columns in self._levels():
            found = keys[columns].merge(self.rates[level][[*columns, "rate"]], on=columns, how="left")["rate"]
            rate = rate.fillna(found)
        return rate.fillna(self.overall_rate).to_numpy(dtype=float)


def _non_increasing_with_age(table: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline x stage, the age buckets' rates made non-increasing with age by weighted
    pool-adjacent-violators (weights: the buckets' rows); `(unknown)` ages are left as they are."""
    order = {label: i for i, label in enumerate(AGE_BUCKET_LABELS)}
    table = table.copy()
    table["position"] = table["age_bucket"].map(order)
    known = table["position"].notna()
    for _, group in table.loc[known].sort_values("position").groupby(["pipeline", "stage"], sort=False):
        if len(group) < 2:
            continue
        fitted = IsotonicRegression(increasing=False).fit(
            group["position"].to_numpy(dtype=float), group["rate"].to_numpy(dtype=float),
            sample_weight=group["rows"].to_numpy(dtype=float),
        )
        table.loc[group.index, "rate"] = fitted.predict(group["position"].to_numpy(dtype=float))
    return table.drop(columns=["position"])


def _older_buckets_extended(table: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline x stage, every age bucket older than the oldest one with rows gets that
    bucket's rate (no rows of its own): without evidence about older deals a stage's rate is not
    allowed to climb back to the stage's pooled rate, which the younger buckets dominate."""
    order = {label: i for i, label in enumerate(AGE_BUCKET_LABELS)}
    position = table["age_bucket"].map(order)
    known = table.loc[position.notna()].assign(position=position[position.notna()])
    if known.empty:
        return table
    oldest = known.sort_values("position").groupby(["pipeline", "stage"], sort=False).tail(1)
    extra = []
    for _, row in oldest.iterrows():
        for label in AGE_BUCKET_LABELS[int(row["position"]) + 1:]:
            extra.append({"pipeline": row["pipeline"], "stage": row["stage"], "age_bucket": label, "rows": 0, "rate": row["rate"]})
    if not extra:
        return table
    return pd.concat([table, pd.DataFrame(extra).astype({c: table[c].dtype for c in ("pipeline", "stage", "age_bucket")})], ignore_index=True)


class ConstantRateScorer(Scorer):
    """The same win probability for every deal: the win rate of the training rows."""

    scoring_method = METHOD_CONSTANT

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        return {}

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.rate, dtype=float)


# The regularised logistic model's inputs (read from the features frame) and its regularisation
# strength (scikit-learn's C: smaller is stronger; 1.0 on standardised inputs).
LOGISTIC_FEATURES = ["pipeline", "stage", "days_in_stage", "age_days", "close_pushes", "log_amount_reporting"]
LOGISTIC_C = 1.0
# Amount bands of the logistic model: quartiles of the training rows' amounts.
AMOUNT_BANDS = 4
# A model with a few dozen coefficients needs no more rows than this: above it, every k-th
# training row (in time order) is used.
LOGISTIC_MAX_ROWS = 200_000
# Validation rows the gradient-boosting model's number of rounds is chosen on (every k-th row above).
ROUND_SELECTION_ROWS = 50_000


class LogisticScorer(Scorer):
    """A regularised (L2) logistic regression on stage (per pipeline), log days in stage, log age,
    close-date pushes (capped at 5) and amount band (quartiles of the training amounts). Age enters
    only when its fitted coefficient is not positive: older never reads as better for age alone."""

    scoring_method = METHOD_LOGISTIC

    def __init__(self, **kwargs):
        super().__init__(feature_names=LOGISTIC_FEATURES, **kwargs)
        self.amount_edges: np.ndarray = np.zeros(0)
        self.estimator: Pipeline | None = None
        # Age is left out (held constant) when its fitted coefficient would make older deals look
        # better: see `fit`.
        self.uses_age = True

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        return {
            "stage": ["stage"],
            "days_in_stage": ["days_in_stage"],
            "age_days": ["age_days"],
            "close_pushes": ["close_pushes"],
            "log_amount_reporting": ["log_amount_reporting"],
        }

    def _design(self, frame: pd.DataFrame) -> pd.DataFrame:
        amount = frame["log_amount_reporting"].astype(float).to_numpy()
        band = np.searchsorted(self.amount_edges, amount, side="right").astype(float)
        band = np.where(np.isnan(amount), np.nan, band)
        stage_key = frame["pipeline"].astype("string").fillna(UNKNOWN) + " | " + frame["stage"].astype("string").fillna(UNKNOWN)
        return pd.DataFrame(
            {
                "stage_key": stage_key.astype(object).to_numpy(),
                "amount_band": np.where(np.isnan(band), UNKNOWN, np.char.add("band ", np.nan_to_num(band).astype(int).astype(str))).astype(object),
                "log_days_in_stage": np.log1p(frame["days_in_stage"].astype(float).clip(lower=0.0)).to_numpy(),
                "log_age": (
                    np.log1p(frame["age_days"].astype(float).clip(lower=0.0)).to_numpy()
                    if self.uses_age else np.zeros(len(frame))
                ),
                "pushes": frame["close_pushes"].astype(float).clip(upper=5.0).to_numpy(),
            }
        )

    def fit(self, frame: pd.DataFrame, labels: pd.Series) -> "LogisticScorer":
        step = max(1, int(np.ceil(len(frame) / LOGISTIC_MAX_ROWS)))
        frame, labels = frame.iloc[::step], labels.iloc[::step]
        amount = frame["log_amount_reporting"].astype(float).dropna().to_numpy()
        quantiles = np.arange(1, AMOUNT_BANDS) / AMOUNT_BANDS
        self.amount_edges = np.unique(np.quantile(amount, quantiles)) if len(amount) else np.zeros(0)
        numeric = ["log_days_in_stage", "log_age", "pushes"]
        encode = ColumnTransformer(
            [
                ("categories", OneHotEncoder(handle_unknown="ignore"), ["stage_key", "amount_band"]),
                ("numbers", Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler())]), numeric),
            ]
        )
        self.uses_age = True
        for _ in range(2):
            self.estimator = Pipeline(
                [("encode", clone(encode)), ("classifier", LogisticRegression(C=LOGISTIC_C, max_iter=2000))]
            )
            self.estimator.fit(self._design(frame), labels.to_numpy(dtype=int))
            if not self.uses_age or self.age_coefficient() <= 0.0:
                break
            # Older deals never look better for their age alone: a positive coefficient on age
            # (beside days in stage and stage) is dropped and the model refitted without it.
            self.uses_age = False
        return self

    def age_coefficient(self) -> float:
        """The fitted coefficient of log age (on standardised inputs; 0 when age is left out)."""
        names = list(self.estimator.named_steps["encode"].get_feature_names_out())
        coefficients = self.estimator.named_steps["classifier"].coef_[0]
        return float(coefficients[names.index("numbers__log_age")]) if self.uses_age else 0.0

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(self._design(frame))[:, 1]


class CrmProbabilityScorer(Scorer):
    """The CRM's own probability at the snapshot, else the stage's configured default, else the
    training win rate."""

    scoring_method = METHOD_CRM

    def __init__(self, fill_rate: float, **kwargs):
        super().__init__(**kwargs)
        self.fill_rate = fill_rate

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        return {"crm_probability": ["crm_probability", "stage_probability"]}

    def crm_probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """CRM probability, else stage default, NaN where neither is known."""
        p = frame["crm_probability"].astype(float).fillna(frame["stage_probability"].astype(float))
        return p.to_numpy(dtype=float)

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        p = self.crm_probabilities(frame)
        return np.where(np.isnan(p), self.fill_rate, p)


@dataclass
class ScorerResult:
    """A trained scorer with its test metrics (the `model_runs` columns), reliability table and
    test-slice predictions (deal_id, snapshot_at, label, then one column per candidate scorer
    evaluated, `published` for the scorer chosen, and the historical names `crm_baseline`,
    `stage_rate_baseline` (stage x age) and `model` (gradient boosting, when fitted)).
    `test_frame`: the test rows' features, for scoring other scorers (an earlier night's model)
    on the same rows."""

    scorer: Scorer
    metrics: dict
    reliability: pd.DataFrame
    test_predictions: pd.DataFrame
    test_frame: pd.DataFrame | None = None

    @property
    def version(self) -> str:
        return self.scorer.version

    @property
    def label_horizon_days(self) -> float | None:
        """The label horizon H its scores are chances of winning within (`maturity_days` of the
        training set, as model_runs.params records it); None when the run did not record one."""
        value = (self.metrics.get("params") or {}).get("maturity_days")
        return None if value is None or pd.isna(value) else float(value)


def model_params(params: dict) -> dict:
    """`[model.params]` with the defaults that keep training reproducible; unknown names are an error."""
    known = set(HistGradientBoostingClassifier().get_params())
    unknown = sorted(set(params) - known - {"categorical_features"})
    if unknown or "categorical_features" in params:
        bad = unknown or ["categorical_features"]
        raise ValueError(
            f"dealcast.toml [model.params]: unsupported setting(s) {bad}; expected HistGradientBoostingClassifier "
            f"parameters other than categorical_features: {sorted(known - {'categorical_features'})}"
        )
    return {**DEFAULT_MODEL_PARAMS, **params}


def fit_model(
    feature_names: list[str],
    params: dict,
    train: pd.DataFrame,
    train_labels: pd.Series,
    validation: pd.DataFrame,
    validation_labels: pd.Series,
) -> tuple[Pipeline, int]:
    """Fit the model pipeline on `train` with at most `max_iter` boosting rounds, keeping the
    number of rounds with the lowest log loss on `validation` (the later, calibration slice):
    early stopping in time order, unlike the estimator's own random hold-out.

    Boosting is deterministic here (fixed random_state, no row sampling), so the model with fewer
    rounds is exactly the first trees of the longer fit: they are kept and the rest dropped, which
    is checked against the staged predictions (if that check ever fails, e.g. with another
    scikit-learn version, the model is refitted with `best` rounds instead). Returns the pipeline
    and rounds.
    """
    pipeline = build_model_pipeline(feature_names, params)
    pipeline.fit(train[feature_names], train_labels)
    classifier = pipeline.named_steps["classifier"]
    if classifier.do_early_stopping_:
        return pipeline, int(classifier.n_iter_)
    # The rounds are chosen on at most `ROUND_SELECTION_ROWS` validation rows (every k-th row).
    step = max(1, int(np.ceil(len(validation) / ROUND_SELECTION_ROWS)))
    validation, validation_labels = validation.iloc[::step], validation_labels.iloc[::step]
    encoded = pipeline[:-1].transform(validation[feature_names])
    y = validation_labels.to_numpy(dtype=float)
    best, best_loss, best_p = 0, np.inf, None
    for rounds, stage in enumerate(classifier.staged_predict_proba(encoded), start=1):
        p = _clip(stage[:, 1])
        loss = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
        if loss < best_loss:
            best, best_loss, best_p = rounds, loss, stage[:, 1]
    if best < classifier.n_iter_:
        predictors = getattr(classifier, "_predictors", None)
        if isinstance(predictors, list) and len(predictors) == classifier.n_iter_:
            classifier._predictors = predictors[:best]
            if np.array_equal(classifier.predict_proba(encoded)[:, 1], best_p):
                return pipeline, best
            logger.info("dropping boosting rounds did not reproduce the staged predictions; refitting")
        pipeline = build_model_pipeline(feature_names, {**params, "max_iter": best})
        pipeline.fit(train[feature_names], train_labels)
    return pipeline, best


SLICES = ("train", "calibration", "test")
# How the rows before the test cut are kept: `purged` (deals with rows after the cut and the
# embargo's last days before it are left out) or `widened` (every row before the cut).
SPLIT_PURGED = "purged"
SPLIT_WIDENED = "widened"
# The purge and embargo are applied only while they keep at least this share of the rows before
# the cut, of its won deals and of its lost deals; otherwise the training window is widened to
# every row before the cut. On a small org with long-lived or stale
# deals, the purge would otherwise leave a few dozen rows of the deals that closed fastest.
MIN_KEPT_SHARE = 0.9


@dataclass(frozen=True)
class Split:
    """Slice of each row (`train`, `test`, `purged`, `embargo`, or `after_cut` for creation rows at
    or after the cut, which are neither fitted on nor scored) and how the cut was kept."""

    slices: pd.Series
    rule: str
    note: str
    test_start: pd.Timestamp


def _deals_by_label(frame: pd.DataFrame, mask) -> tuple[int, int]:
    rows = frame.loc[np.asarray(mask, dtype=bool), ["deal_id", "label"]]
    return int(rows.loc[rows["label"] == 1, "deal_id"].nunique()), int(rows.loc[rows["label"] == 0, "deal_id"].nunique())


def time_split(frame: pd.DataFrame, test_share: float, embargo_days: float = 0.0) -> Split | None:
    """Split `frame` (a training set's rows) at one date: the latest `test_share` of the scheduled
    prediction dates are held out (`test`: scheduled rows only, the population a nightly run
    scores); every labelled row before the cut trains, except:

    - purge: rows of deals that also have a test row (no deal is both learnt from and tested on);
    - embargo: rows within `embargo_days` (at most half the span before the cut) before the cut,
      which would hold only the deals that happened to close before it.

    When purge and embargo would keep less than `MIN_KEPT_SHARE` of the rows before the cut, of
    its won deals or of its lost deals, neither is applied: the window is widened to every row before the cut (`rule` `widened`), and the deals
    seen on both sides are counted in `note`. None with fewer than two scheduled dates.
    """
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"dealcast.toml [model] test_share must be between 0 and 1, got {test_share}")
    from models.training_set import KIND_CREATION

    kind = frame["snapshot_kind"] if "snapshot_kind" in frame.columns else pd.Series("scheduled", index=frame.index)
    scheduled = (kind != KIND_CREATION).to_numpy(dtype=bool)
    dates = np.sort(frame.loc[scheduled, "snapshot_at"].unique())
    n = len(dates)
    if n < 2:
        return None
    n_test = min(max(1, int(round(n * test_share))), n - 1)
    first, test_start = pd.Timestamp(dates[0]), pd.Timestamp(dates[n - n_test])
    at = frame["snapshot_at"]
    is_test = scheduled & (at >= test_start).to_numpy(dtype=bool)
    before = (at < test_start).to_numpy(dtype=bool)
    test_deals = pd.Index(frame.loc[is_test, "deal_id"].unique())
    in_test = test_deals.get_indexer(frame["deal_id"]) >= 0
    purged = before & in_test
    wait = min(pd.Timedelta(days=float(embargo_days)), (test_start - first) / 2)
    embargo = before & ~purged & (at > test_start - wait).to_numpy(dtype=bool) & (wait > pd.Timedelta(0))
    kept = before & ~purged & ~embargo
    won_before, lost_before = _deals_by_label(frame, before)
    won_kept, lost_kept = _deals_by_label(frame, kept)
    enough = (
        kept.sum() >= MIN_KEPT_SHARE * before.sum()
        and won_kept >= MIN_KEPT_SHARE * won_before
        and lost_kept >= MIN_KEPT_SHARE * lost_before
    )
    slices = np.full(len(frame), "after_cut", dtype=object)
    slices[is_test] = "test"
    if enough:
        slices[kept] = "train"
        slices[purged] = "purged"
        slices[embargo] = "embargo"
        rule = SPLIT_PURGED
        note = (
            f"test cut {test_start:%Y-%m-%d}: {int(purged.sum())} rows of deals also tested purged, "
            f"{int(embargo.sum())} rows in the {wait / pd.Timedelta(days=1):.0f}-day embargo left out; "
            f"{int(kept.sum())} of {int(before.sum())} rows before the cut train ({won_kept} won / {lost_kept} lost deals)"
        )
    else:
        slices[before] = "train"
        rule = SPLIT_WIDENED
        both = int(pd.Index(frame.loc[before, "deal_id"].unique()).isin(test_deals).sum())
        note = (
            f"test cut {test_start:%Y-%m-%d}: purge and embargo would keep only {int(kept.sum())} of "
            f"{int(before.sum())} rows before the cut ({won_kept} won / {lost_kept} lost deals), so the "
            f"training window is widened to all {int(before.sum())} ({won_before} won / {lost_before} lost "
            f"deals); {both} deals have rows on both sides of the cut"
        )
    return Split(pd.Series(slices, index=frame.index, dtype=object), rule, note, test_start)


def _guard_leakage(feature_names: list[str]) -> None:
    leaky = [name for name in feature_names if name in LEAKY_FEATURES]
    if leaky:
        raise LeakageError(f"training set uses feature(s) {leaky} known only at close; refusing to train")


def _both_classes(labels: pd.Series) -> bool:
    return labels.nunique() == 2


def _describe_deals(won: int, lost: int) -> str:
    return f"{won} won and {lost} lost closed deal(s)"


def _evaluate(labels: pd.Series, probabilities) -> dict:
    values = binary_metrics(labels, probabilities)
    table = reliability_table(labels, probabilities)
    return {**values, "ece": expected_calibration_error(table)}


def _fit_boosting(
    train: pd.DataFrame,
    y_train: pd.Series,
    feature_names: list[str],
    params: dict,
    config: ModelConfig,
    embargo_days: float,
    common: dict,
    run_params: dict,
) -> tuple[Scorer | None, str | None, int]:
    """The gradient-boosting candidate: fitted on the earlier part of the training rows and
    calibrated (and early-stopped) on the later `calibration_share` of the prediction dates, split
    as the test cut is. Returns (scorer or None, why not, calibration rows)."""
    share = config.calibration_share / (1.0 - config.test_share)
    inner = time_split(train, min(max(share, 0.01), 0.99), embargo_days)
    if inner is None:
        return None, "fewer than 3 prediction dates to fit, calibrate and test in time order", 0
    fit_mask, cal_mask = inner.slices == "train", inner.slices == "test"
    for name, mask in (("fitting", fit_mask), ("calibration", cal_mask)):
        part = y_train[mask]
        if part.empty:
            return None, f"the {name} part of the training rows is empty", 0
        if not _both_classes(part):
            outcome = "won" if part.iloc[0] == 1 else "lost"
            return None, f"every deal in the {name} part of the training rows was {outcome}", 0
    fit_part, cal_part = train.loc[fit_mask], train.loc[cal_mask]
    model_features = [f for f in feature_names if fit_part[f].notna().any()]
    empty_features = [f for f in feature_names if f not in model_features]
    if empty_features:
        logger.warning("features without any value in the training slice, left out: %s", empty_features)
        run_params["features_without_values"] = empty_features
    logger.info("fitting the deal model on %d rows, calibrating on %d", len(fit_part), len(cal_part))
    pipeline, rounds = fit_model(model_features, params, fit_part, y_train[fit_mask], cal_part, y_train[cal_mask])
    run_params["boosting_rounds"] = rounds
    run_params["boosting_split"] = inner.rule
    enough = len(cal_part) >= ISOTONIC_MIN_ROWS and cal_part["deal_id"].nunique() >= ISOTONIC_MIN_DEALS
    folds = None if enough and len(train) > CROSS_FIT_MAX_ROWS else _deal_folds(train, y_train)
    if folds is not None:
        # Too few calibration deals for their outcomes alone to set the calibration, or few enough
        # training rows to afford it (`CROSS_FIT_MAX_ROWS`): cross-fitted Platt scaling over every
        # training deal (see `CROSS_FIT_FOLDS`), the model refitted on all training rows with the
        # rounds chosen above.
        method = "sigmoid_cross_fitted"
        estimator = build_model_pipeline(model_features, {**params, "max_iter": rounds})
        won_deals, lost_deals = _deals_by_label(train, np.ones(len(train), dtype=bool))
        bends = min(won_deals, lost_deals) >= CALIBRATION_KNOTS_MIN_DEALS
        calibrated = DaysInStageCalibration(estimator, folds, bends=bends)
        # The recency weights apply to the calibration only: the model learns from every row alike.
        weights = recency_weights(train["snapshot_at"], CALIBRATION_HALF_LIFE_DAYS)
        calibrated.fit(train[model_features], y_train, sample_weight=weights)
        run_params["calibration_terms"] = calibrated.terms
        if bends:
            run_params["calibration_knots"] = [round(float(expit(k)), 4) for k in calibrated.knots_]
            if not calibrated.bends_kept_:
                logger.info("the calibration stays straight: its knots coincide or a bent line would fall somewhere")
        calibration_rows = len(train)
    else:
        method = "isotonic" if enough else "sigmoid"
        calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
        calibrated.fit(cal_part[model_features], y_train[cal_mask])
        run_params["calibration_terms"] = list(CALIBRATION_TERMS[:1])
        calibration_rows = len(cal_part)
    run_params["calibration_method"] = method
    scorer = CalibratedModelScorer(estimator=calibrated, calibration_method=method, feature_names=model_features, **common)
    return scorer, None, calibration_rows


def recency_weights(snapshot_at: pd.Series, half_life_days: float | None) -> np.ndarray | None:
    """Each row's weight 0.5 ** (days before the latest `snapshot_at` / `half_life_days`): 1 for
    the latest prediction date, 0.5 one half-life earlier, 0.25 two. None when `half_life_days` is
    None (every row alike)."""
    if half_life_days is None:
        return None
    if not half_life_days > 0:
        raise ValueError(f"a half-life must be a positive number of days, got {half_life_days}")
    at = pd.to_datetime(snapshot_at)
    days = ((at.max() - at) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    return np.power(0.5, days / float(half_life_days))


def _deal_folds(train: pd.DataFrame, labels: pd.Series) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """`CROSS_FIT_FOLDS` folds of the training rows grouped by deal (a deal's rows are all in one
    fold), as (fit positions, held-out positions); None when some fold's fitting part would hold a
    single outcome."""
    deals = train["deal_id"].to_numpy()
    if pd.unique(deals).size < CROSS_FIT_FOLDS:
        return None
    y = labels.to_numpy(dtype=int)
    folds = list(GroupKFold(n_splits=CROSS_FIT_FOLDS).split(train, y, groups=deals))
    if any(np.unique(y[fit]).size < 2 or np.unique(y[held]).size < 2 for fit, held in folds):
        return None
    return folds


def _loss_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def train_scorer(training: TrainingSet, config: ModelConfig, as_of: dt.date) -> ScorerResult:
    """Fit every eligible scorer of the ladder on the rows before the test cut, score them on the
    same held-out rows and publish the one with the lowest log loss (see the module docstring)."""
    _guard_leakage(training.feature_names)
    frame = training.frame
    won, lost = training.won_deals, training.lost_deals
    if frame.empty or won == 0 or lost == 0:
        missing = "no labelled deals" if frame.empty else ("no lost deals" if lost == 0 else "no won deals")
        raise InsufficientHistoryError(
            f"cannot estimate win probabilities as of {as_of}: the training data has "
            f"{_describe_deals(won, lost)} ({missing}); both outcomes are needed, otherwise every "
            f"deal would get the same certain score. Data window: {training.data_window}."
        )
    if not 0.0 < config.calibration_share < 1.0 or config.test_share + config.calibration_share >= 1.0:
        raise ValueError(
            f"dealcast.toml [model] calibration_share must be between 0 and 1 and leave dates to train on "
            f"with test_share, got calibration_share {config.calibration_share}, test_share {config.test_share}"
        )
    params = model_params(dict(config.params))
    run_params = {
        "model": params,
        "snapshot_frequency": training.frequency,
        "test_share": config.test_share,
        "calibration_share": config.calibration_share,
        "min_won": config.min_won,
        "min_lost": config.min_lost,
        "logistic_min_won": config.logistic_min_won,
        "logistic_min_lost": config.logistic_min_lost,
        "maturity_days": training.maturity_days,
        "unresolved_deals": training.unresolved_deals,
        "censored_deals": training.censored_deals,
        "calibration_half_life_days": CALIBRATION_HALF_LIFE_DAYS,
        "calibration_terms": list(CALIBRATION_TERMS),
    }
    version = model_version(training, run_params)
    labels = frame["label"].astype(int)
    split = time_split(frame, config.test_share, training.maturity_days)
    if split is not None:
        slices = split.slices
    else:
        slices = pd.Series("train", index=frame.index, dtype=object)
    is_train, is_test = (slices == "train").to_numpy(), (slices == "test").to_numpy()
    out_of_sample = bool(is_test.any()) and _both_classes(labels[is_train])
    if not out_of_sample:
        # Nothing can be held out honestly: the constant rate of every labelled row, flagged.
        is_train, is_test = np.ones(len(frame), dtype=bool), np.zeros(len(frame), dtype=bool)
    train, test = frame.loc[is_train], frame.loc[is_test]
    y_train, y_test = labels[is_train], labels[is_test]
    train_won, train_lost = _deals_by_label(frame, is_train)
    test_won, test_lost = _deals_by_label(frame, is_test)
    common = {
        "version": version,
        "typical": typical_values(train, [c for c in frame.columns if c not in ("deal_id", "snapshot_at", "label", "snapshot_kind")]),
        "typical_stage_days": typical_days_in_stage(train),
    }
    constant = float(y_train.mean())
    stage_features = ["stage"] if training.has_history else []
    candidates: dict[str, Scorer] = {
        METHOD_CONSTANT: ConstantRateScorer(rate=constant, feature_names=[], **common),
    }
    skipped: dict[str, str] = {}
    calibration_rows = 0
    crm = CrmProbabilityScorer(fill_rate=constant, feature_names=["crm_probability", "stage_probability"], **common)
    if len(test) and not bool(np.isnan(crm.crm_probabilities(test)).all()):
        candidates[METHOD_CRM] = crm
    else:
        skipped[METHOD_CRM] = "no CRM probability or stage default on the held-out rows"
    candidates[METHOD_STAGE_ONLY] = StageRateScorer(
        use_stage=training.has_history, use_age=False, feature_names=stage_features, **common
    ).fit(train, y_train)
    candidates[METHOD_STAGE_RATE] = StageRateScorer(
        use_stage=training.has_history, use_age=True, feature_names=[*stage_features, "age_days"], **common
    ).fit(train, y_train)
    if not out_of_sample:
        for method in (METHOD_LOGISTIC, METHOD_MODEL):
            skipped[method] = "no held-out rows to compare it on"
    else:
        absent = [c for c in LOGISTIC_FEATURES if c not in frame.columns]
        if not training.has_history:
            skipped[METHOD_LOGISTIC] = "the source has no stage history (stage and days in stage unknown at past dates)"
        elif absent:
            skipped[METHOD_LOGISTIC] = f"its inputs {absent} are not among the training set's features"
        elif train_won < config.logistic_min_won or train_lost < config.logistic_min_lost:
            skipped[METHOD_LOGISTIC] = (
                f"the training rows hold {_describe_deals(train_won, train_lost)}; it needs "
                f"{config.logistic_min_won} won and {config.logistic_min_lost} lost (dealcast.toml [model] "
                "logistic_min_won / logistic_min_lost)"
            )
        else:
            candidates[METHOD_LOGISTIC] = LogisticScorer(**common).fit(train, y_train)
            run_params["logistic_uses_age"] = candidates[METHOD_LOGISTIC].uses_age
        if train_won < config.min_won or train_lost < config.min_lost:
            skipped[METHOD_MODEL] = (
                f"the training rows hold {_describe_deals(train_won, train_lost)}; it needs "
                f"{config.min_won} won and {config.min_lost} lost (dealcast.toml [model] min_won / min_lost)"
            )
        else:
            boosting, why, calibration_rows = _fit_boosting(
                train, y_train, training.feature_names, params, config, training.maturity_days, common, run_params
            )
            if boosting is None:
                skipped[METHOD_MODEL] = why
            else:
                candidates[METHOD_MODEL] = boosting

    # Deals beyond the training rows' days in stage: the same stated prior for every candidate
    # but the constant rate, which stays the plain floor no published scorer may be worse than.
    prior = StageDaysPrior.fit(train) if training.has_history else None
    for method, candidate in candidates.items():
        if method != METHOD_CONSTANT:
            candidate.stage_days_prior = prior
    if prior is not None:
        run_params["stage_days_limits"] = {k: round(v, 1) for k, v in prior.limits.items()}

    predictions = pd.DataFrame(
        {"deal_id": test["deal_id"].to_numpy(), "snapshot_at": test["snapshot_at"].to_numpy(), "label": y_test.to_numpy()}
    )
    evaluated: dict[str, dict] = {}
    for method, scorer in candidates.items():
        if len(test):
            p = scorer.predict_proba(test)
            predictions[method] = p
            evaluated[method] = _evaluate(y_test, p)
    if evaluated:
        ranked = sorted(evaluated, key=lambda m: (round(evaluated[m]["log_loss"], 12), tier(m)))
        winner = ranked[0]
        best = evaluated[winner]
        others = "; ".join(f"{m} {_loss_text(evaluated[m]['log_loss'])}" for m in ranked[1:])
        selection_reason = (
            f"{winner} has the lowest held-out log loss, {_loss_text(best['log_loss'])}, on {len(test)} rows "
            f"of {test_won + test_lost} deals ({test_won} won / {test_lost} lost); the others: {others}"
        )
        if skipped:
            selection_reason += "; not fitted: " + "; ".join(f"{m} ({why})" for m, why in skipped.items())
    else:
        winner = METHOD_CONSTANT
        reason = split.note if split is not None else f"only {frame['snapshot_at'].nunique()} prediction date(s)"
        selection_reason = (
            f"no held-out rows with a training slice holding both outcomes ({reason}); the constant win "
            f"rate of all {len(frame)} labelled rows is published, the only scorer that needs no evidence"
        )
    scorer = candidates[winner]
    if len(test):
        predictions["published"] = predictions[winner]
        predictions["stage_rate_baseline"] = predictions[METHOD_STAGE_RATE]
        predictions["crm_baseline"] = predictions[METHOD_CRM] if METHOD_CRM in predictions else np.nan
        if METHOD_MODEL in predictions:
            predictions["model"] = predictions[METHOD_MODEL]

    def block(prefix: str, method: str) -> dict:
        values = evaluated.get(method, {})
        return {f"{prefix}{k}": values.get(k) for k in ("auc", "log_loss", "brier")}

    if winner == METHOD_MODEL:
        fallback_reason = None
    elif METHOD_MODEL in skipped:
        fallback_reason = f"gradient boosting not fitted: {skipped[METHOD_MODEL]}; deals are scored with {winner}"
    else:
        fallback_reason = (
            f"gradient boosting's held-out log loss {_loss_text(evaluated[METHOD_MODEL]['log_loss'])} does not beat "
            f"{winner}'s {_loss_text(evaluated[winner]['log_loss'])}; deals are scored with {winner}"
        )
    baseline_losses = [evaluated[m]["log_loss"] for m in (METHOD_CRM, METHOD_STAGE_RATE) if m in evaluated]
    published = evaluated.get(winner, {"auc": None, "log_loss": None, "brier": None, "ece": None})
    table = reliability_table(y_test, predictions[winner]) if len(test) else reliability_table([], [])
    candidate_records = [
        {
            "method": method,
            "tier": tier(method),
            "fitted": method in candidates,
            "reason": skipped.get(method),
            **{k: evaluated.get(method, {}).get(k) for k in ("log_loss", "auc", "brier", "ece")},
        }
        for method in LADDER
    ]
    metrics = {
        "model_version": version,
        "scoring_method": scorer.scoring_method,
        "auc": published["auc"],
        "log_loss": published["log_loss"],
        "brier": published["brier"],
        "base_rate_brier": base_rate_brier(y_test, rate=constant) if len(test) else None,
        "ece": published["ece"],
        **block("crm_baseline_", METHOD_CRM),
        **block("stage_rate_baseline_", METHOD_STAGE_RATE),
        "constant_log_loss": evaluated.get(METHOD_CONSTANT, {}).get("log_loss"),
        "beats_baselines": (bool(published["log_loss"] <= min(baseline_losses)) if baseline_losses and published["log_loss"] is not None else None),
        "eligible": METHOD_MODEL in candidates,
        "fallback_reason": fallback_reason,
        "selection_reason": selection_reason,
        "candidates": candidate_records,
        "split_rule": split.rule if (split is not None and out_of_sample) else None,
        "split_note": split.note if split is not None else f"only {frame['snapshot_at'].nunique()} prediction date(s): no test cut",
        "has_history": training.has_history,
        "train_rows": len(train),
        "calibration_rows": calibration_rows,
        "test_rows": len(test),
        "train_won_deals": train_won,
        "train_lost_deals": train_lost,
        "test_won_deals": test_won,
        "test_lost_deals": test_lost,
        "creation_rows": int(training.creation_rows),
        "data_window": training.data_window,
        "reliability": reliability_records(table),
        "features": list(scorer.feature_names),
        "params": {**run_params, "calibration_method": run_params.get("calibration_method")},
        "won_deals": won,
        "lost_deals": lost,
        "unresolved_deals": training.unresolved_deals,
        "censored_deals": training.censored_deals,
    }
    if fallback_reason:
        logger.info("deal scoring as of %s: %s", as_of, fallback_reason)
    logger.info("deal scorer %s (%s): %s", version, scorer.scoring_method, selection_reason)
    return ScorerResult(
        scorer=scorer, metrics=metrics, reliability=table, test_predictions=predictions,
        test_frame=test.reset_index(drop=True) if len(test) else None,
    )
