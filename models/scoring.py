"""The deal-scoring model: a calibrated win probability for every open deal, checked against two
baselines, with an honest fallback when the history is too thin.

How a scorer is trained (`train_scorer`):
1. Time split by prediction date: the earliest dates train the model, the next `calibration_share`
   calibrate it, the latest `test_share` test it. Never random across one deal's snapshots.
   Boundary rule: a deal whose snapshots fall in two slices keeps only its rows in the later
   slice (its earlier rows are dropped, "purged"), so no deal is both learnt from and tested on.
   Because the training set waits `maturity_days` for outcomes, the same wait is left between the
   end of one slice and the start of the next ("embargo", at most half of the slice), so a slice's
   last rows are not limited to the deals that happened to close before the next slice began.
2. Model: a scikit-learn Pipeline (categorical encoding + HistGradientBoostingClassifier with
   native categorical support, parameters from `dealcast.toml [model.params]`), fitted on the
   training slice and calibrated on the calibration slice: isotonic when the slice holds at least
   `ISOTONIC_MIN_DEALS` distinct deals, Platt/sigmoid below (a deal's weekly snapshots share one
   outcome, so the number of independent outcomes is the number of deals, not of rows). `max_iter` is a ceiling: the number of boosting rounds is the one
   with the lowest log loss on the calibration slice (early stopping in time order; recorded as
   `boosting_rounds` in the run's params). Probabilities are kept within [0.001, 0.999].
3. Test slice: AUC, log loss, Brier, base-rate Brier, ECE and a 10-bin reliability table for the
   model and, on the same rows, for (a) the CRM's stage probability and (b) the empirical win rate
   by pipeline x stage x age bucket learnt on the training slice.
4. The model scores deals only if it beats the better baseline on log loss; otherwise that
   baseline scores them and the run says why. The evaluated model is kept as is: it is not refit
   on the calibration and test slices, so the published metrics describe exactly the model in use.
   The headline metrics (auc, log_loss, brier, ece, reliability) are the fitted model's; when no
   model is fitted they are the stage-rate scorer's, the scorer then in use.
5. Eligibility: with fewer than `min_won` won or `min_lost` lost closed deals (or a slice missing
   an outcome) no model is fitted and the stage-rate scorer is used, flagged with the reason. With
   no lost (or no won) deal at all nothing can be estimated and `InsufficientHistoryError` is raised.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

from etl.config import ModelConfig
from models.evaluation import (
    base_rate_brier,
    binary_metrics,
    expected_calibration_error,
    reliability_records,
    reliability_table,
)
from models.registry import model_version
from models.training_set import CATEGORICAL_FEATURES, LEAKY_FEATURES, LeakageError, TrainingSet

logger = logging.getLogger(__name__)

METHOD_MODEL = "calibrated_model"
METHOD_STAGE_RATE = "stage_rate"
METHOD_CRM = "crm_probability"

# Probabilities are kept inside [0.1%, 99.9%]: no deal is certain before it closes, and a 0 or 1
# would make a single surprise cost an infinite log loss.
PROBABILITY_FLOOR = 0.001
PROBABILITY_CEILING = 0.999
# Isotonic calibration fits a free step function and needs many independent outcomes: below this
# many distinct deals in the calibration slice, Platt (sigmoid) scaling is used. Counting rows
# would overstate the evidence about sevenfold (each deal appears in about seven weekly
# snapshots with the same outcome); on the 10,000-deal sample (about 1,300 calibration deals, 9,000
# rows) isotonic was worse than Platt on held-out log loss and ECE for every seed tried.
ISOTONIC_MIN_DEALS = 5_000
# At least this many calibration rows too (the rule of thumb for independent rows).
ISOTONIC_MIN_ROWS = 1_000
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

    @property
    def factor_groups(self) -> dict[str, list[str]]:
        groups = {name: [name] for name in self.feature_names}
        if "stage" in groups and "stage_order" in groups:
            groups["stage"] = ["stage", "stage_order"]
            del groups["stage_order"]
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
        return _clip(self._probabilities(features_frame))

    @property
    def required_columns(self) -> list[str]:
        return list(self.feature_names)

    @abc.abstractmethod
    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """Unclipped win probabilities of the rows of `frame`."""


def _model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as objects with NaN for blanks, numbers as floats: what the encoder expects."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column in CATEGORICAL_FEATURES:
            values = frame[column].astype(object)
            out[column] = values.where(frame[column].notna(), np.nan)
        else:
            out[column] = frame[column].astype(float)
    return out


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
            ("tidy", FunctionTransformer(_model_input, feature_names_out="one-to-one")),
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


class StageRateScorer(Scorer):
    """Empirical win rate of past snapshots by pipeline x stage x age bucket, each cell pulled
    towards its parent (pipeline x stage, then pipeline, then all) by `STAGE_RATE_PSEUDO_COUNT`.
    Without stage history the stage is unknown at past snapshots, so only pipeline x age is used."""

    scoring_method = METHOD_STAGE_RATE

    def __init__(self, use_stage: bool, **kwargs):
        super().__init__(**kwargs)
        self.use_stage = use_stage
        self.overall_rate = float("nan")
        self.rates: dict[str, pd.DataFrame] = {}

    @property
    def required_columns(self) -> list[str]:
        return ["pipeline", "stage", "age_days"]

    def _keys(self, frame: pd.DataFrame) -> pd.DataFrame:
        stage = frame["stage"].astype("string") if self.use_stage else pd.Series(pd.NA, index=frame.index, dtype="string")
        return pd.DataFrame(
            {
                "pipeline": frame["pipeline"].astype("string").fillna(UNKNOWN),
                "stage": stage.fillna(UNKNOWN),
                "age_bucket": age_buckets(frame["age_days"]),
            },
            index=frame.index,
        )

    def fit(self, frame: pd.DataFrame, labels: pd.Series) -> "StageRateScorer":
        keys = self._keys(frame)
        keys["won"] = labels.to_numpy(dtype=float)
        self.overall_rate = float(keys["won"].mean())
        m = STAGE_RATE_PSEUDO_COUNT
        parent = pd.Series(self.overall_rate, index=keys.index)
        self.rates = {}
        for level, columns in (
            ("pipeline", ["pipeline"]),
            ("stage", ["pipeline", "stage"]),
            ("cell", ["pipeline", "stage", "age_bucket"]),
        ):
            keys["parent"] = parent
            table = keys.groupby(columns, observed=True).agg(won=("won", "sum"), rows=("won", "size"), parent=("parent", "first"))
            table["rate"] = (table["won"] + m * table["parent"]) / (table["rows"] + m)
            table = table.reset_index()
            self.rates[level] = table[[*columns, "rows", "rate"]]
            parent = keys[columns].merge(table[[*columns, "rate"]], on=columns, how="left")["rate"]
            parent.index = keys.index
        return self

    def _probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        keys = self._keys(frame).reset_index(drop=True)
        rate = pd.Series(np.nan, index=keys.index)
        for level, columns in (
            ("cell", ["pipeline", "stage", "age_bucket"]),
            ("stage", ["pipeline", "stage"]),
            ("pipeline", ["pipeline"]),
        ):
            found = keys[columns].merge(self.rates[level][[*columns, "rate"]], on=columns, how="left")["rate"]
            rate = rate.fillna(found)
        return rate.fillna(self.overall_rate).to_numpy(dtype=float)


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
    test-slice predictions (label, model, crm_baseline, stage_rate_baseline per test row)."""

    scorer: Scorer
    metrics: dict
    reliability: pd.DataFrame
    test_predictions: pd.DataFrame

    @property
    def version(self) -> str:
        return self.scorer.version


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


def time_split(
    frame: pd.DataFrame,
    test_share: float,
    calibration_share: float,
    embargo_days: float = 0.0,
) -> pd.Series | None:
    """Slice of each row: train, calibration, test, or `purged` / `embargo` (not used).

    Prediction dates are split in time order (the latest `test_share` of dates test, the
    `calibration_share` before them calibrate, the rest train). A deal seen in two slices keeps
    only its rows in the later one. Rows within `embargo_days` before the next slice starts are
    left out (the wait is capped at half of the slice's span). None when there are fewer than three
    prediction dates.
    """
    for name, share in (("test_share", test_share), ("calibration_share", calibration_share)):
        if not 0.0 < share < 1.0:
            raise ValueError(f"dealcast.toml [model] {name} must be between 0 and 1, got {share}")
    if test_share + calibration_share >= 1.0:
        raise ValueError(
            f"dealcast.toml [model] test_share + calibration_share must leave dates to train on, "
            f"got {test_share} + {calibration_share}"
        )
    dates = np.sort(frame["snapshot_at"].unique())
    n = len(dates)
    if n < 3:
        return None
    n_test = max(1, int(round(n * test_share)))
    n_cal = max(1, int(round(n * calibration_share)))
    n_train = n - n_test - n_cal
    if n_train < 1:
        return None
    first, cal_start, test_start = pd.Timestamp(dates[0]), pd.Timestamp(dates[n_train]), pd.Timestamp(dates[n_train + n_cal])
    at = frame["snapshot_at"]
    rank = np.where(at >= test_start, 2, np.where(at >= cal_start, 1, 0))
    latest = pd.Series(rank, index=frame.index).groupby(frame["deal_id"]).transform("max").to_numpy()
    slice_name = np.array(SLICES, dtype=object)[rank]
    slice_name = np.where(rank < latest, "purged", slice_name)
    wait = pd.Timedelta(days=float(embargo_days))
    train_wait = min(wait, (cal_start - first) / 2)
    cal_wait = min(wait, (test_start - cal_start) / 2)
    in_train_gap = (rank == 0) & (at > cal_start - train_wait).to_numpy() & (train_wait > pd.Timedelta(0))
    in_cal_gap = (rank == 1) & (at > test_start - cal_wait).to_numpy() & (cal_wait > pd.Timedelta(0))
    slice_name = np.where((in_train_gap | in_cal_gap) & (slice_name != "purged"), "embargo", slice_name)
    return pd.Series(slice_name, index=frame.index, dtype=object)


def _guard_leakage(feature_names: list[str]) -> None:
    leaky = [name for name in feature_names if name in LEAKY_FEATURES]
    if leaky:
        raise LeakageError(f"training set uses feature(s) {leaky} known only at close; refusing to train")


def _metrics_block(prefix: str, labels, probabilities) -> dict:
    values = binary_metrics(labels, probabilities)
    return {f"{prefix}{key}": value for key, value in values.items()}


def _both_classes(labels: pd.Series) -> bool:
    return labels.nunique() == 2


def _describe_deals(won: int, lost: int) -> str:
    return f"{won} won and {lost} lost closed deal(s)"


def train_scorer(training: TrainingSet, config: ModelConfig, as_of: dt.date) -> ScorerResult:
    """Train, calibrate and test the deal scorer on `training` (see the module docstring)."""
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
    params = model_params(dict(config.params))
    run_params = {
        "model": params,
        "snapshot_frequency": training.frequency,
        "test_share": config.test_share,
        "calibration_share": config.calibration_share,
        "min_won": config.min_won,
        "min_lost": config.min_lost,
        "maturity_days": training.maturity_days,
    }
    version = model_version(training, run_params)
    slices = time_split(frame, config.test_share, config.calibration_share, training.maturity_days)
    labels = frame["label"].astype(int)

    reasons: list[str] = []
    if won < config.min_won or lost < config.min_lost:
        reasons.append(
            f"only {_describe_deals(won, lost)}; a model needs at least {config.min_won} won and "
            f"{config.min_lost} lost (dealcast.toml [model] min_won / min_lost)"
        )
    if slices is None:
        reasons.append(
            f"only {frame['snapshot_at'].nunique()} prediction date(s); at least 3 are needed to "
            "train, calibrate and test in time order"
        )
    else:
        for name in SLICES:
            part = labels[slices == name]
            if part.empty:
                reasons.append(f"the {name} slice has no rows")
            elif name != "test" and not _both_classes(part):
                outcome = "won" if part.iloc[0] == 1 else "lost"
                reasons.append(f"every deal in the {name} slice was {outcome}")
    eligible = not reasons
    if slices is None:
        slices = pd.Series("train", index=frame.index, dtype=object)
    is_train, is_cal, is_test = (slices == "train"), (slices == "calibration"), (slices == "test")

    # The stage-rate rows: the training slice when it has both outcomes, else everything (then
    # the test metrics would not be out of sample and are left empty).
    stage_rows = is_train if _both_classes(labels[is_train]) else pd.Series(True, index=frame.index)
    out_of_sample = not bool(stage_rows.all()) and bool(is_test.any())
    fit_rows = frame.loc[stage_rows]
    common = {
        "version": version,
        "typical": typical_values(fit_rows, [c for c in frame.columns if c not in ("deal_id", "snapshot_at", "label")]),
        "typical_stage_days": typical_days_in_stage(fit_rows),
    }
    stage_scorer = StageRateScorer(
        use_stage=training.has_history,
        feature_names=["stage", "age_days"] if training.has_history else ["age_days"],
        **common,
    ).fit(fit_rows, labels[stage_rows])
    crm_scorer = CrmProbabilityScorer(
        fill_rate=stage_scorer.overall_rate,
        feature_names=["crm_probability", "stage_probability"],
        **common,
    )

    test = frame.loc[is_test] if out_of_sample else frame.iloc[0:0]
    counts = {
        "train_rows": int(stage_rows.sum()) if not eligible else int(is_train.sum()),
        "calibration_rows": int(is_cal.sum()) if eligible else 0,
        "test_rows": len(test),
    }
    y_test = labels.loc[test.index]
    predictions = pd.DataFrame(
        {
            "deal_id": test["deal_id"],
            "snapshot_at": test["snapshot_at"],
            "label": y_test,
            "stage_rate_baseline": stage_scorer.predict_proba(test) if len(test) else np.zeros(0),
        }
    ).reset_index(drop=True)
    crm_raw = crm_scorer.crm_probabilities(test) if len(test) else np.zeros(0)
    crm_known = bool(len(test)) and not bool(np.isnan(crm_raw).all())
    predictions["crm_baseline"] = crm_scorer.predict_proba(test) if crm_known else np.nan
    baseline_metrics = {
        **_metrics_block("stage_rate_baseline_", y_test, predictions["stage_rate_baseline"]),
        **(
            _metrics_block("crm_baseline_", y_test, predictions["crm_baseline"])
            if crm_known
            else {"crm_baseline_auc": None, "crm_baseline_log_loss": None, "crm_baseline_brier": None}
        ),
    }

    scorer: Scorer
    calibration_method = None
    fallback_reason = None
    beats_baselines = None
    if eligible:
        train_part, cal_part = frame.loc[is_train], frame.loc[is_cal]
        # A feature with no value at all in the training slice carries nothing to learn (e.g. the
        # account win rate of a source without accounts); the model leaves it out and says so.
        model_features = [f for f in training.feature_names if train_part[f].notna().any()]
        empty_features = [f for f in training.feature_names if f not in model_features]
        if empty_features:
            logger.warning("features without any value in the training slice, left out: %s", empty_features)
            run_params["features_without_values"] = empty_features
        logger.info("fitting the deal model on %d rows, calibrating on %d", len(train_part), len(cal_part))
        pipeline, rounds = fit_model(
            model_features, params,
            train_part, labels[is_train], cal_part, labels[is_cal],
        )
        run_params["boosting_rounds"] = rounds
        enough = len(cal_part) >= ISOTONIC_MIN_ROWS and cal_part["deal_id"].nunique() >= ISOTONIC_MIN_DEALS
        calibration_method = "isotonic" if enough else "sigmoid"
        calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=calibration_method)
        calibrated.fit(cal_part[model_features], labels[is_cal])
        # Eligible implies the training slice holds both outcomes, so `common` was learnt on it.
        model_scorer = CalibratedModelScorer(
            estimator=calibrated,
            calibration_method=calibration_method,
            feature_names=model_features,
            **common,
        )
        predictions["model"] = model_scorer.predict_proba(test)
        main = predictions["model"]
        baselines = {
            METHOD_CRM: baseline_metrics["crm_baseline_log_loss"],
            METHOD_STAGE_RATE: baseline_metrics["stage_rate_baseline_log_loss"],
        }
        available = {k: v for k, v in baselines.items() if v is not None}
        model_loss = binary_metrics(y_test, main)["log_loss"]
        best_method = min(available, key=available.get)
        beats_baselines = bool(model_loss < min(available.values()))
        if beats_baselines:
            scorer = model_scorer
        else:
            scorer = crm_scorer if best_method == METHOD_CRM else stage_scorer
            fallback_reason = (
                f"the model's test log loss {model_loss:.4f} does not beat the "
                f"{best_method.replace('_', ' ')} baseline's {available[best_method]:.4f}; "
                f"deals are scored with that baseline"
            )
    else:
        scorer = stage_scorer
        fallback_reason = "; ".join(reasons) + "; deals are scored with the empirical stage win rate"
        if not out_of_sample:
            fallback_reason += " (no out-of-sample test rows, so no test metrics)"
        main = predictions["stage_rate_baseline"]

    if len(test):
        headline = binary_metrics(y_test, main)
        table = reliability_table(y_test, main)
        ece = expected_calibration_error(table)
        base_brier = base_rate_brier(y_test, rate=stage_scorer.overall_rate)
    else:
        headline = {"auc": None, "log_loss": None, "brier": None}
        table = reliability_table([], [])
        ece, base_brier = None, None

    metrics = {
        "model_version": version,
        "scoring_method": scorer.scoring_method,
        **headline,
        "base_rate_brier": base_brier,
        "ece": ece,
        **baseline_metrics,
        "beats_baselines": beats_baselines,
        "eligible": eligible,
        "fallback_reason": fallback_reason,
        "has_history": training.has_history,
        **counts,
        "data_window": training.data_window,
        "reliability": reliability_records(table),
        "features": list(training.feature_names),
        "params": {**run_params, "calibration_method": calibration_method},
        "won_deals": won,
        "lost_deals": lost,
        "censored_deals": training.censored_deals,
    }
    if fallback_reason:
        logger.warning("deal scoring as of %s: %s", as_of, fallback_reason)
    logger.info(
        "deal scorer %s (%s): test log loss %s, CRM baseline %s, stage-rate baseline %s",
        version, scorer.scoring_method, headline["log_loss"],
        baseline_metrics["crm_baseline_log_loss"], baseline_metrics["stage_rate_baseline_log_loss"],
    )
    return ScorerResult(scorer=scorer, metrics=metrics, reliability=table, test_predictions=predictions)
