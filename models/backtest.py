"""Forecast backtest: how good were past quarters' forecasts, made with only what was known then?

For each past fiscal quarter that has finished by `as_of` and has at least one full quarter of data
before it (`models.forecast.backtest_quarters`; a young CRM can be backtested after its second full
quarter) the forecast is re-run at three checkpoints. When no quarter qualifies (or every one is
skipped), the table holds one status row (status not_backtested, status_reason in words) and the
nightly forecast carries not_yet_backtested = True.

- `start`: the quarter's first day; `week4` and `week8`: 28 and 56 days later.
- The instant a checkpoint sees is the end of the day before its date (00:00 of the checkpoint
  date, minus a microsecond): what the nightly run of that day before wrote. The pipeline is rebuilt
  as it stood then with `etl.pipeline_state`, and every model is trained with that day as its
  `as_of`: the deal scorer (`build_training_set` + `train_scorer`, labels read at that day: won
  within the label horizon or not, so a deal still open then counts as not won), the empirical
  stage-rate scorer and the close-timing model.
  Nothing dated after that instant is used. Deal attributes that the CRM does not version (owner,
  team, product, ...) are the export's current values, as everywhere else in Dealcast.
- `retrain`: `"quarter"` (default) trains once, at the `start` checkpoint, and reuses those models
  at weeks 4 and 8 (a model that knew even less, and 3x cheaper); `"checkpoint"` retrains at every
  checkpoint, as the nightly run would have.

Three methods per checkpoint, each per segment (every segment type of `etl.schema.SEGMENT_COLUMNS`):

- `ours`: `models.forecast.forecast_quarterly` with the scorer `train_scorer` chose then
  (`scoring_method` records which), its visible revenue calibration (`models.revenue_calibration`,
  learnt on the open deals at that scorer's held-out dates) and the close-timing model of then:
  mean, P10, P50, P90.
  This is what the nightly `forecast_quarterly` asset does.
- `stage_rate`: the same timing + Monte Carlo path with the empirical stage-rate scorer
  (`models.scoring.StageRateScorer`, win rate by pipeline x stage x age bucket) fitted on every
  labelled snapshot known at the checkpoint, so it has an interval too.
- `crm_weighted`: closed won to date + sum over the quarter's open pipeline (`etl.quarter_pipeline`:
  the deals the CRM expects to close in the quarter, and the overdue ones) of amount x CRM probability (the stage's default where missing) + the expected revenue of
  deals not yet created (the same historical run-rate the other methods use). The run-rate is
  included so that the comparison is about the open pipeline (per-deal probabilities and timing),
  not about one method ignoring next month's new deals. A point forecast: `p10`, `p90` and
  `within_interval` are NULL.

`actual` is the amount (reporting currency) of deals won with a booking date (`etl.bookings`: by
default the CRM's close date) inside the quarter, as known at `as_of`. Segments that the forecast did not know at the checkpoint (say, a rep hired
later) are forecast 0 (every simulated draw put 0 there); segments without wins have actual 0.
Forecast quarters use one seed for `ours` and `stage_rate` (common random numbers), so their
difference is the scorers', not the dice's.

Each quarter is computed once (`backtest_quarter`, the unit; `run_backtest`, the night): its forecasts
are kept as `forecast_backtest_cache` rows under `quarter_cache_key` (code version, settings, and a
fingerprint of the deals and history known at the quarter's end) and reused while the key holds; the
actuals are joined every night. A night computes at most `new_quarters` missing quarters, newest first.

Accuracy (`backtest_summary`, definitions from docs/metrics): WAPE = sum |actual - P50| / sum actual;
bias = sum (P50 - actual) / sum actual; interval coverage = share of rows whose actual lies in
[P10, P90] (target 80%).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import pandas as pd
import sklearn

from etl.config import ForecastConfig, ModelConfig
from etl.periods import period_bounds, quarter_label, quarter_labels
from etl.bookings import booking_anchor, state_booking_dates
from etl.pipeline_state import DEAL_ATTRIBUTES, as_of_end, pipeline_at, reusing_states
from etl.schema import SEGMENT_COLUMNS, segment_values
from etl.stages import STATUS_WON, StageCatalog
from etl.tables import TABLES
from models.forecast import (
    DEFAULT_LOOKBACK_QUARTERS,
    DEFAULT_MIN_HISTORY_QUARTERS,
    backtest_quarters,
    first_backtest_quarter_start,
    forecast_quarterly,
)
from models.scoring import (
    METHOD_CRM,
    METHOD_STAGE_RATE,
    InsufficientHistoryError,
    Scorer,
    StageRateScorer,
    train_scorer,
    typical_days_in_stage,
)
from models.revenue_calibration import RevenueCalibration
from models.timing import CloseTiming, prepared_history
from models.training_set import TrainingSet, build_training_set, snapshot_features

logger = logging.getLogger(__name__)

BACKTEST_COLUMNS: list[str] = TABLES["forecast_backtest"].columns
CACHE_COLUMNS: list[str] = TABLES["forecast_backtest_cache"].columns
# Raise when a change to the backtest's code changes its numbers for the same inputs: every cached
# past quarter is then computed again (the key of `quarter_cache_key` includes it).
BACKTEST_CODE_VERSION = "2026.12.12"
_FORECAST_VALUES = ("expected", "forecast_p50", "p10", "p90")
# The prepared-history columns a point-in-time rebuild reads (the running counts follow from them).
_HISTORY_KEY_COLUMNS = (
    "deal_id", "changed_at", "source_row", "pipeline", "stage", "amount", "amount_reporting",
    "expected_close_date", "crm_probability", "forecast_category",
)
# Checkpoint name -> days after the quarter's first day.
CHECKPOINTS: dict[str, int] = {"start": 0, "week4": 28, "week8": 56}
METHOD_OURS = "ours"
METHOD_CRM_WEIGHTED = "crm_weighted"
METHOD_STAGE_RATE_FORECAST = "stage_rate"
METHODS = (METHOD_OURS, METHOD_CRM_WEIGHTED, METHOD_STAGE_RATE_FORECAST)
RETRAIN_QUARTER = "quarter"
RETRAIN_CHECKPOINT = "checkpoint"
RETRAIN_MODES = (RETRAIN_QUARTER, RETRAIN_CHECKPOINT)
STATUS_BACKTESTED = "backtested"
STATUS_NOT_BACKTESTED = "not_backtested"
# Actuals are compared with the interval at cent precision (money is NUMERIC(18,2)).
CENT = 0.005
_DEFAULTS = ForecastConfig()


@dataclass(frozen=True)
class Checkpoint:
    """One moment a past quarter is forecast from: `date` is the checkpoint day (midnight); the
    forecast sees what was known at the end of `as_of`, the day before."""

    quarter: str
    name: str
    date: pd.Timestamp

    @property
    def as_of(self) -> dt.date:
        return (self.date - pd.Timedelta(days=1)).date()


@dataclass(frozen=True)
class CheckpointModels:
    """What a checkpoint forecasts with: the chosen scorer with its revenue calibration, the
    stage-rate scorer and the close timing, all trained at the end of `as_of`."""

    as_of: dt.date
    scorer: Scorer
    calibration: RevenueCalibration
    stage_rate: StageRateScorer
    timing: CloseTiming
    label_horizon_days: float | None = None


# --- Which quarters -----------------------------------------------------------------------------


def quarter_checkpoints(quarter: str, fiscal_year_start_month: int = 1) -> list[Checkpoint]:
    """The `start`, `week4` and `week8` checkpoints of `quarter`."""
    start, _ = period_bounds(quarter, fiscal_year_start_month)
    return [Checkpoint(quarter, name, start + pd.Timedelta(days=days)) for name, days in CHECKPOINTS.items()]


# --- Models as they were ------------------------------------------------------------------------


def stage_rate_scorer(training: TrainingSet, version: str) -> StageRateScorer:
    """The empirical stage-rate scorer fitted on every labelled snapshot of `training`."""
    frame = training.frame
    scorer = StageRateScorer(
        use_stage=training.has_history,
        feature_names=["stage", "age_days"] if training.has_history else ["age_days"],
        version=version,
        typical={},
        typical_stage_days=typical_days_in_stage(frame),
    )
    return scorer.fit(frame, frame["label"].astype(int))


def models_at(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    model_config: ModelConfig,
    fiscal_year_start_month: int = 1,
) -> CheckpointModels:
    """Train the deal scorer, the stage-rate scorer and the close timing as a nightly run for
    `as_of` would have (raises `InsufficientHistoryError` when no scorer can be trained)."""
    training = build_training_set(
        deals, history, stages, as_of, frequency=model_config.snapshot_frequency,
        fiscal_year_start_month=fiscal_year_start_month,
    )
    result = train_scorer(training, model_config, as_of)
    timing = CloseTiming.fit(deals, history, stages, as_of, frequency=model_config.snapshot_frequency)
    calibration = RevenueCalibration.fit(result, deals, history, stages, timing, as_of, fiscal_year_start_month)
    return CheckpointModels(
        as_of, result.scorer, calibration, stage_rate_scorer(training, result.scorer.version), timing,
        result.label_horizon_days,
    )


# --- Actuals ------------------------------------------------------------------------------------


def quarter_actuals(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    quarters: Sequence[str],
    fiscal_year_start_month: int = 1,
) -> pd.DataFrame:
    """Won amount (reporting currency) with a booking date (`etl.bookings`) inside each quarter,
    per segment, as known at the end of `as_of`: columns quarter, segment_type, segment, actual."""
    state = pipeline_at(deals, history, as_of_end(as_of))
    won = state.loc[state["status"] == STATUS_WON]
    # Actuals count by booking date (etl.bookings), as closed won to date does.
    quarter = quarter_labels(state_booking_dates(won, deals, as_of_end(as_of)), fiscal_year_start_month)
    won = won.loc[quarter.isin(list(quarters)).fillna(False).to_numpy(dtype=bool)]
    quarter = quarter.loc[won.index]
    amount = won["amount_reporting"].astype("float64").fillna(0.0)
    parts = []
    for segment_type in SEGMENT_COLUMNS:
        part = (
            pd.DataFrame({"quarter": quarter, "segment": segment_values(won, segment_type), "actual": amount})
            .groupby(["quarter", "segment"], observed=True)["actual"]
            .sum()
            .reset_index()
        )
        part.insert(1, "segment_type", segment_type)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return frame.astype({"quarter": "string", "segment_type": "string", "segment": "string", "actual": "float64"})


# --- The backtest -------------------------------------------------------------------------------


def _scores(features: pd.DataFrame, scorer: Scorer) -> pd.DataFrame:
    """deal_id, win_probability of the open deals in `features`, as the scorer gives them."""
    return pd.DataFrame({"deal_id": features["deal_id"], "win_probability": scorer.predict_proba(features)})


def _on_keys(values: pd.Series | None, keys: pd.MultiIndex) -> np.ndarray:
    """`values` (indexed by segment_type, segment) on `keys`: 0 for a segment the forecast did not
    know (every draw put 0 there), NaN throughout for a forecast without this column (None)."""
    if values is None:
        return np.full(len(keys), np.nan)
    return values.reindex(keys).fillna(0.0).to_numpy(dtype="float64")


def _checkpoint_rows(
    checkpoint: Checkpoint,
    models: CheckpointModels,
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    fiscal_year_start_month: int,
    draws: int,
    seed: int,
    lookback_quarters: int,
    workers: int | None,
) -> pd.DataFrame:
    """The forecast rows of one checkpoint: every method x segment the checkpoint's forecasts know
    (the actuals are added each night by `_with_actuals`)."""
    features = snapshot_features(deals, history, stages, checkpoint.as_of, fiscal_year_start_month=fiscal_year_start_month)
    # Only the checkpoint's quarter is read (the next quarter's forecast and the P90 without outliers
    # are not): the other simulations are not run; the quarter's draws are those of a full forecast.
    common = dict(
        quotas=None, fiscal_year_start_month=fiscal_year_start_month, draws=draws, seed=seed,
        lookback_quarters=lookback_quarters, workers=workers, only_quarter=checkpoint.quarter, outlier_ranges=False,
        label_horizon_days=models.label_horizon_days,
    )
    forecasts = {}
    for method, scorer, calibration in (
        (METHOD_OURS, models.scorer, models.calibration),
        (METHOD_STAGE_RATE_FORECAST, models.stage_rate, None),
    ):
        frame = forecast_quarterly(
            deals, history, stages, checkpoint.as_of, scores=_scores(features, scorer), timing=models.timing,
            model_version=scorer.version, not_yet_backtested=False, revenue_calibration=calibration, **common,
        )
        forecasts[method] = frame.loc[frame["quarter"] == checkpoint.quarter].set_index(["segment_type", "segment"])
    ours = forecasts[METHOD_OURS]
    keys = ours.index.union(forecasts[METHOD_STAGE_RATE_FORECAST].index)
    crm_point = ours["closed_won_to_date"] + ours["weighted_pipeline_crm"] + ours["new_deals_expected"]

    method_frames = []
    for method, expected, p10, p50, p90, version, scoring in (
        (METHOD_OURS, ours["expected"], ours["p10"], ours["p50"], ours["p90"], models.scorer.version, models.scorer.scoring_method),
        (METHOD_CRM_WEIGHTED, crm_point, None, crm_point, None, None, METHOD_CRM),
        (
            METHOD_STAGE_RATE_FORECAST,
            *(forecasts[METHOD_STAGE_RATE_FORECAST][c] for c in ("expected", "p10", "p50", "p90")),
            models.stage_rate.version,
            METHOD_STAGE_RATE,
        ),
    ):
        column = partial(_on_keys, keys=keys)
        method_frames.append(
            pd.DataFrame(
                {
                    "segment_type": keys.get_level_values(0),
                    "segment": keys.get_level_values(1),
                    "method": method,
                    "expected": column(expected),
                    "forecast_p50": column(p50),
                    "p10": column(p10),
                    "p90": column(p90),
                    "model_version": version,
                    "scoring_method": scoring,
                }
            )
        )
    rows = pd.concat(method_frames, ignore_index=True)
    rows["skip_reason"] = None
    rows["quarter"] = checkpoint.quarter
    rows["checkpoint"] = checkpoint.name
    rows["checkpoint_date"] = checkpoint.date
    rows["model_as_of"] = pd.Timestamp(models.as_of)
    return rows


@dataclass(frozen=True)
class BacktestRun:
    """One night's backtest: `frame` the `forecast_backtest` rows; `cache_rows` the
    `forecast_backtest_cache` rows of the quarters computed this night (to store); which eligible
    quarters were `reused` from the cache, `computed`, or left `pending` for a later night (beyond
    the night's budget of new quarters), each oldest first."""

    frame: pd.DataFrame
    cache_rows: pd.DataFrame
    reused: tuple[str, ...]
    computed: tuple[str, ...]
    pending: tuple[str, ...]


def settings_version(
    model_config: ModelConfig,
    forecast_config: ForecastConfig,
    fiscal_year_start_month: int,
    retrain: str,
    draws: int,
    lookback_quarters: int,
) -> str:
    """The code and settings a past quarter's forecasts depend on, as canonical JSON: the backtest
    code version, the library versions, `[model]` (less where artifacts are kept), the seed,
    draws, retrain mode, lookback and fiscal year. How many quarters are backtested is not part of
    it: that picks quarters, it does not change one."""
    model = {k: v for k, v in asdict(model_config).items() if k != "artifact_dir"}
    payload = {
        "code": BACKTEST_CODE_VERSION,
        "libraries": {"numpy": np.__version__, "pandas": pd.__version__, "scikit-learn": sklearn.__version__},
        "model": model,
        "seed": forecast_config.seed,
        "draws": draws,
        "retrain": retrain,
        "lookback_quarters": lookback_quarters,
        "fiscal_year_start_month": fiscal_year_start_month,
    }
    return json.dumps(payload, sort_keys=True, default=str)


def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One uint64 per row of `frame`, changing with any of its values."""
    if frame.empty:
        return np.zeros(0, dtype="uint64")
    return pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False, categorize=True).to_numpy(dtype="uint64")


class HistoryFingerprint:
    """Row hashes of the prepared history and of the deals, computed once per night, from which
    `key` gives each quarter's cache key by selecting the rows known at the quarter's end."""

    def __init__(self, settings: str, deals: pd.DataFrame, history: pd.DataFrame, stages: StageCatalog) -> None:
        self._base = hashlib.sha256()
        self._base.update(settings.encode())
        self._base.update(repr(sorted(repr(p) for p in stages)).encode())
        # Whether any deal has recorded history decides the training features (models.training_set).
        has_history = deals["has_history"].fillna(False).astype(bool).any() if "has_history" in deals.columns else None
        self._base.update(str(has_history).encode())
        self._changed_at = history["changed_at"].to_numpy(dtype="datetime64[us]")
        self._history = _row_hashes(history[[c for c in _HISTORY_KEY_COLUMNS if c in history.columns]])
        self._created_at = deals["created_at"].to_numpy(dtype="datetime64[us]")
        closed = deals["closed_at"] if "closed_at" in deals.columns else pd.Series(pd.NaT, index=deals.index)
        self._closed_at = closed.to_numpy(dtype="datetime64[us]")
        self._deals = _row_hashes(deals[["deal_id", *(c for c in DEAL_ATTRIBUTES if c in deals.columns)]])
        self._booking = _row_hashes(pd.DataFrame({"booking": booking_anchor(deals)}))

    def key(self, quarter: str, fiscal_year_start_month: int = 1) -> str:
        """SHA-256 of the settings, the stage catalogue, the prepared history rows dated up to the
        quarter's end (synthesised and reconciled rows included, so the deal records' part in the
        rebuild counts too) and, for the deals created by then, the attributes every rebuild carries
        (`etl.pipeline_state.DEAL_ATTRIBUTES`) and the booking date of those closed by then. Each
        checkpoint sees the end of a day inside the quarter, so history dated after the quarter's
        end cannot change the quarter's forecasts, and does not change its key."""
        _, stop = period_bounds(quarter, fiscal_year_start_month)
        end = np.datetime64(stop - pd.Timedelta(microseconds=1), "us")
        digest = self._base.copy()
        digest.update(self._history[self._changed_at <= end].tobytes())
        created = self._created_at <= end
        closed = (self._closed_at <= end)[created]
        digest.update(b"deals")
        digest.update(self._deals[created].tobytes())
        digest.update(b"booking")
        digest.update(np.where(closed, self._booking[created], np.uint64(0)).tobytes())
        return digest.hexdigest()


def quarter_cache_key(
    settings: str,
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    quarter: str,
    fiscal_year_start_month: int = 1,
) -> str:
    """The cache key of one quarter (`HistoryFingerprint.key`); `history` is `prepared_history` output."""
    return HistoryFingerprint(settings, deals, history, stages).key(quarter, fiscal_year_start_month)


def backtest_quarter(
    quarter: str,
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    model_config: ModelConfig,
    fiscal_year_start_month: int = 1,
    *,
    retrain: str = RETRAIN_QUARTER,
    draws: int = _DEFAULTS.draws,
    seed: int = _DEFAULTS.seed,
    lookback_quarters: int = DEFAULT_LOOKBACK_QUARTERS,
    workers: int | None = None,
) -> pd.DataFrame:
    """One past quarter's forecasts at its checkpoints, without actuals: the unit the backtest
    computes once and keeps (`forecast_backtest_cache` columns less cache_key and computed_as_of).
    `history` is `prepared_history` output. Depends only on what was known at the quarter's
    checkpoints. When no scorer can be trained at a checkpoint, the quarter stops there with one
    row (segment all, method ours) whose skip_reason says why."""
    parts = []
    models: CheckpointModels | None = None
    # A checkpoint's models and forecasts all read the pipeline at the end of its day: rebuilt once.
    with reusing_states():
        for checkpoint in quarter_checkpoints(quarter, fiscal_year_start_month):
            if models is None or retrain == RETRAIN_CHECKPOINT:
                try:
                    models = models_at(deals, history, stages, checkpoint.as_of, model_config, fiscal_year_start_month)
                except InsufficientHistoryError as error:
                    logger.warning("forecast backtest: quarter %s skipped at %s: %s", quarter, checkpoint.name, error)
                    parts.append(_skip_row(checkpoint, f"{quarter} (at its {checkpoint.name}: {error})"))
                    break
            parts.append(
                _checkpoint_rows(
                    checkpoint, models, deals, history, stages, fiscal_year_start_month, draws, seed,
                    lookback_quarters, workers,
                )
            )
    rows = pd.concat(parts, ignore_index=True)
    # Money is kept at cent precision (NUMERIC(18,2)): a quarter read back from the cache is then
    # the very rows computed, and a reused quarter equals a fresh one.
    rows[list(_FORECAST_VALUES)] = rows[list(_FORECAST_VALUES)].astype("float64").round(2)
    return rows[[c for c in CACHE_COLUMNS if c not in ("cache_key", "computed_as_of")]]


def _skip_row(checkpoint: Checkpoint, reason: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "quarter": [checkpoint.quarter], "checkpoint": [checkpoint.name], "segment_type": ["all"],
            "segment": ["all"], "method": [METHOD_OURS], "checkpoint_date": [checkpoint.date],
            "model_as_of": [pd.Timestamp(checkpoint.as_of)], **{c: [np.nan] for c in _FORECAST_VALUES},
            "model_version": [None], "scoring_method": ["none"], "skip_reason": [reason],
        }
    )


def _with_actuals(rows: pd.DataFrame, actuals: pd.DataFrame) -> pd.DataFrame:
    """Forecast rows (one checkpoint's methods share their segments) with each night's `actual`;
    a segment that won in the quarter but that the forecast did not know at the checkpoint gets a
    row per method with the forecast 0 (every draw put 0 there; p10/p90 NULL for crm_weighted)."""
    parts = []
    for (quarter, checkpoint), group in rows.groupby(["quarter", "checkpoint"], sort=False):
        actual = actuals.loc[actuals["quarter"] == quarter].set_index(["segment_type", "segment"])["actual"]
        known = pd.MultiIndex.from_frame(group[["segment_type", "segment"]].astype(object))
        missing = actual.index.difference(known)
        if len(missing):
            extra = []
            for method, per_method in group.groupby("method", sort=False):
                first = per_method.iloc[0]
                interval = np.nan if method == METHOD_CRM_WEIGHTED else 0.0
                extra.append(
                    pd.DataFrame(
                        {
                            "quarter": quarter, "checkpoint": checkpoint,
                            "segment_type": missing.get_level_values(0), "segment": missing.get_level_values(1),
                            "method": method, "checkpoint_date": first["checkpoint_date"],
                            "model_as_of": first["model_as_of"], "expected": 0.0, "forecast_p50": 0.0,
                            "p10": interval, "p90": interval, "model_version": first["model_version"],
                            "scoring_method": first["scoring_method"],
                        }
                    )
                )
            group = pd.concat([group, *extra], ignore_index=True)
        keys = pd.MultiIndex.from_frame(group[["segment_type", "segment"]].astype(object))
        group = group.assign(actual=actual.reindex(keys).fillna(0.0).to_numpy(dtype="float64"))
        parts.append(group)
    return pd.concat(parts, ignore_index=True)


def run_backtest(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    model_config: ModelConfig,
    forecast_config: ForecastConfig = _DEFAULTS,
    fiscal_year_start_month: int = 1,
    *,
    cache: pd.DataFrame | None = None,
    new_quarters: int | None = None,
    quarters: int | None = None,
    retrain: str | None = None,
    min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS,
    draws: int | None = None,
    lookback_quarters: int = DEFAULT_LOOKBACK_QUARTERS,
    workers: int | None = None,
) -> BacktestRun:
    """The night's backtest (see the module docstring), reusing past quarters from `cache`
    (`forecast_backtest_cache` rows, any quarters): an eligible quarter whose cached rows carry the
    quarter's `quarter_cache_key` of tonight is reused, any other is computed with
    `backtest_quarter`, at most `new_quarters` of them (newest first; None for all). Quarters
    beyond that budget are `pending`: not in tonight's rows, computed on a later night.
    The actuals are always tonight's (as known at the end of `as_of`).

    `quarters` (default `forecast_config.backtest_quarters`): how many of the latest eligible
    quarters to backtest, None for all; `retrain` (default `forecast_config.backtest_retrain`):
    "quarter" or "checkpoint"; `draws` (default `forecast_config.draws`) Monte Carlo draws per
    forecast; the seed is `forecast_config.seed`. A quarter whose checkpoint has no won or no lost
    deal to learn from is skipped with a warning. When no quarter is backtested, the result is one
    status row (`status_row`) saying why, instead of nothing.
    """
    retrain = forecast_config.backtest_retrain if retrain is None else retrain
    if retrain not in RETRAIN_MODES:
        raise ValueError(
            f"forecast_backtest: retrain (dealcast.toml [forecast] backtest_retrain) must be one of {list(RETRAIN_MODES)}, got {retrain!r}"
        )
    if new_quarters is not None and (isinstance(new_quarters, bool) or not isinstance(new_quarters, int) or new_quarters < 1):
        raise ValueError(
            f"forecast_backtest: new quarters per night (dealcast.toml [forecast] backtest_new_quarters) must be a whole number of at least 1, got {new_quarters!r}"
        )
    if quarters is None:
        quarters = forecast_config.backtest_quarters
    draws = forecast_config.draws if draws is None else draws
    history = prepared_history(deals, history, stages)
    labels = backtest_quarters(deals, as_of, fiscal_year_start_month, quarters, min_history_quarters)
    settings = settings_version(model_config, forecast_config, fiscal_year_start_month, retrain, draws, lookback_quarters)
    fingerprint = HistoryFingerprint(settings, deals, history, stages) if labels else None
    keys = {q: fingerprint.key(q, fiscal_year_start_month) for q in labels}
    cached: dict[str, pd.DataFrame] = {}
    if cache is not None and len(cache):
        for quarter, group in cache.groupby("quarter", sort=False):
            if quarter in keys and (group["cache_key"] == keys[quarter]).all():
                cached[str(quarter)] = group
    missing = [q for q in labels if q not in cached]
    budget = len(missing) if new_quarters is None else new_quarters
    to_compute = missing[len(missing) - min(budget, len(missing)):]
    pending = [q for q in missing if q not in to_compute]
    logger.info(
        "forecast backtest as of %s: quarters %s, retrain per %s; reused %s, computing %s, pending %s",
        as_of, labels, retrain, sorted(cached), to_compute, pending,
    )
    computed: dict[str, pd.DataFrame] = {}
    for quarter in to_compute:
        rows = backtest_quarter(
            quarter, deals, history, stages, model_config, fiscal_year_start_month, retrain=retrain,
            draws=draws, seed=forecast_config.seed, lookback_quarters=lookback_quarters, workers=workers,
        )
        computed[quarter] = rows.assign(cache_key=keys[quarter], computed_as_of=pd.Timestamp(as_of).normalize())[CACHE_COLUMNS]
    shown = [q for q in labels if q in cached or q in computed]
    cache_rows = (
        pd.concat(list(computed.values()), ignore_index=True) if computed else pd.DataFrame(columns=CACHE_COLUMNS)
    )
    run = partial(BacktestRun, cache_rows=cache_rows, reused=tuple(q for q in labels if q in cached),
                  computed=tuple(to_compute), pending=tuple(pending))
    rows = pd.concat([(cached.get(q) if q in cached else computed[q]) for q in shown], ignore_index=True) if shown else None
    skipped: list[str] = []
    if rows is not None:
        skip = rows["skip_reason"].notna().to_numpy(dtype=bool)
        skipped = [str(r) for r in rows.loc[skip, "skip_reason"]]
        rows = rows.loc[~skip]
    if rows is None or rows.empty:
        row = status_row(deals, as_of, fiscal_year_start_month, quarters, min_history_quarters, labels, skipped)
        logger.warning("forecast backtest as of %s: nothing backtested: %s", as_of, row["status_reason"].iloc[0])
        return run(frame=_typed(row, as_of))
    actuals = quarter_actuals(deals, history, as_of, shown, fiscal_year_start_month)
    frame = _with_actuals(rows.drop(columns=["cache_key", "computed_as_of", "skip_reason"]).astype({c: "float64" for c in _FORECAST_VALUES}), actuals)
    frame["status"] = STATUS_BACKTESTED
    frame["status_reason"] = None
    frame["error"] = frame["forecast_p50"] - frame["actual"]
    frame["abs_error"] = frame["error"].abs()
    inside = (frame["p10"] - CENT <= frame["actual"]) & (frame["actual"] <= frame["p90"] + CENT)
    frame["within_interval"] = pd.array(inside.to_numpy(), dtype="boolean")
    frame.loc[frame["p10"].isna() | frame["p90"].isna(), "within_interval"] = pd.NA
    return run(frame=_typed(frame, as_of))


def forecast_backtest(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    model_config: ModelConfig,
    forecast_config: ForecastConfig = _DEFAULTS,
    fiscal_year_start_month: int = 1,
    **options,
) -> pd.DataFrame:
    """The `forecast_backtest` rows of every eligible quarter, each computed now (no cache, no
    budget): `run_backtest(...).frame`; `options` as `run_backtest` takes them."""
    return run_backtest(deals, history, stages, as_of, model_config, forecast_config, fiscal_year_start_month, **options).frame


def not_backtested_reason(
    deals: pd.DataFrame,
    as_of: dt.date,
    fiscal_year_start_month: int = 1,
    quarters: int | None = None,
    min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS,
    skipped: Sequence[str] = (),
) -> tuple[str, str]:
    """(the quarter the status row names, why nothing was backtested in words)."""
    current = quarter_label(as_of, fiscal_year_start_month)
    if quarters == 0:
        return current, "dealcast.toml [forecast] backtest_quarters = 0 turns the backtest off"
    created = deals["created_at"].dropna()
    if created.empty:
        return current, "there are no deals yet"
    if skipped:
        first = str(skipped[0]).split(" ", 1)[0]
        return first, "every eligible quarter was skipped, no scorer could be trained then: " + "; ".join(skipped)
    start = first_backtest_quarter_start(deals, fiscal_year_start_month, min_history_quarters)
    stop = start + pd.DateOffset(months=3)
    label = quarter_label(start, fiscal_year_start_month)
    plural = "s" if min_history_quarters > 1 else ""
    return label, (
        f"the data start on {created.min():%Y-%m-%d}; a quarter is backtested once it has finished and has "
        f"{min_history_quarters} full quarter{plural} of history before it; the first such quarter is {label} "
        f"({start:%Y-%m-%d} to {stop - pd.Timedelta(days=1):%Y-%m-%d}), not finished by as_of {pd.Timestamp(as_of):%Y-%m-%d}"
    )


def status_row(
    deals: pd.DataFrame,
    as_of: dt.date,
    fiscal_year_start_month: int = 1,
    quarters: int | None = None,
    min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS,
    labels: Sequence[str] = (),
    skipped: Sequence[str] = (),
) -> pd.DataFrame:
    """The single `forecast_backtest` row written when nothing was backtested: status
    not_backtested, status_reason in words, quarter the first quarter that will qualify (or was
    skipped), checkpoint start, segment all, method ours, every number NULL."""
    quarter, reason = not_backtested_reason(deals, as_of, fiscal_year_start_month, quarters, min_history_quarters, skipped)
    start, _ = period_bounds(quarter, fiscal_year_start_month)
    values = {c: [np.nan] for c in ("expected", "forecast_p50", "p10", "p90", "actual", "abs_error", "error")}
    return pd.DataFrame(
        {
            "quarter": [quarter], "checkpoint": ["start"], "segment_type": ["all"], "segment": ["all"],
            "method": [METHOD_OURS], "checkpoint_date": [start], "model_as_of": [start - pd.Timedelta(days=1)],
            **values, "within_interval": pd.array([pd.NA], dtype="boolean"), "model_version": [None],
            "scoring_method": ["none"], "status": [STATUS_NOT_BACKTESTED], "status_reason": [reason],
        }
    )


def backtested_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a `forecast_backtest` frame that are backtests (not the status row)."""
    return frame.loc[(frame["status"] == STATUS_BACKTESTED).fillna(False).to_numpy(dtype=bool)]


def _typed(frame: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    frame = frame.assign(as_of=pd.Timestamp(as_of).normalize())
    frame = frame.astype(
        {
            "quarter": "string", "checkpoint": "string", "segment_type": "string", "segment": "string",
            "method": "string", "model_version": "string", "scoring_method": "string",
            "status": "string", "status_reason": "string", "within_interval": "boolean",
            **{c: "float64" for c in ("expected", "forecast_p50", "p10", "p90", "actual", "abs_error", "error")},
            **{c: "datetime64[us]" for c in ("checkpoint_date", "model_as_of", "as_of")},
        }
    )
    order = {
        "checkpoint": {name: i for i, name in enumerate(CHECKPOINTS)},
        "method": {name: i for i, name in enumerate(METHODS)},
        "segment_type": {name: i for i, name in enumerate(SEGMENT_COLUMNS)},
    }
    frame = frame.sort_values(
        ["quarter", "checkpoint", "method", "segment_type", "segment"],
        key=lambda s: s.map(order[s.name]) if s.name in order else s,
        kind="stable",
    )
    return frame[BACKTEST_COLUMNS].reset_index(drop=True)


# --- Accuracy -----------------------------------------------------------------------------------


def backtest_summary(frame: pd.DataFrame, by: Sequence[str] = ("method", "checkpoint", "segment_type")) -> pd.DataFrame:
    """Accuracy of the backtest rows per group (`by`: any of method, checkpoint, segment_type,
    quarter): quarters, rows, actual (sum), WAPE, bias and interval coverage (NULL for point
    forecasts). WAPE and bias are NULL where nothing was won."""
    by = list(by)
    if "status" in frame.columns:
        frame = backtested_rows(frame)
    unknown = [c for c in by if c not in frame.columns]
    if unknown:
        raise ValueError(f"backtest_summary: unknown grouping column(s) {unknown}; expected columns of forecast_backtest")
    work = frame.assign(
        _inside=frame["within_interval"].astype("Float64"),
        _signed=frame["forecast_p50"] - frame["actual"],
        _abs=(frame["forecast_p50"] - frame["actual"]).abs(),
    )
    grouped = work.groupby(by, observed=True, sort=False)
    summary = grouped.agg(
        quarters=("quarter", "nunique"),
        rows=("quarter", "size"),
        actual=("actual", "sum"),
        abs_error=("_abs", "sum"),
        error=("_signed", "sum"),
        coverage=("_inside", "mean"),
    ).reset_index()
    denominator = summary["actual"].where(summary["actual"] > 0)
    summary["wape"] = summary["abs_error"] / denominator
    summary["bias"] = summary["error"] / denominator
    summary["coverage"] = summary["coverage"].astype("float64")
    return summary[[*by, "quarters", "rows", "actual", "wape", "bias", "coverage"]]


# --- Fan chart data -----------------------------------------------------------------------------


def forecast_fan(
    forecasts: pd.DataFrame,
    quarter: str,
    fiscal_year_start_month: int = 1,
    segment_type: str = "all",
    segment: str = "all",
) -> pd.DataFrame:
    """A quarter's forecast over the nightly as_of dates, from `forecast_quarterly` rows (several
    as_ofs): as_of, p10, p50, p90, closed_won_to_date, quota, from the night before the quarter
    started on, oldest first."""
    start, _ = period_bounds(quarter, fiscal_year_start_month)
    rows = forecasts.loc[
        (forecasts["quarter"] == quarter)
        & (forecasts["segment_type"] == segment_type)
        & (forecasts["segment"] == segment)
        & (pd.to_datetime(forecasts["as_of"]) >= start - pd.Timedelta(days=1))
    ]
    columns = ["as_of", "p10", "p50", "p90", "closed_won_to_date", "quota"]
    rows = rows.assign(as_of=pd.to_datetime(rows["as_of"])).drop_duplicates("as_of", keep="last")
    return rows[columns].sort_values("as_of").reset_index(drop=True)


def backtest_fan(frame: pd.DataFrame, quarter: str, method: str = METHOD_OURS, segment_type: str = "all", segment: str = "all") -> pd.DataFrame:
    """One backtested quarter's forecasts at its checkpoints: as_of (the checkpoint date), p10,
    p50, p90, actual."""
    rows = frame.loc[
        (frame["quarter"] == quarter)
        & (frame["method"] == method)
        & (frame["segment_type"] == segment_type)
        & (frame["segment"] == segment)
    ]
    out = rows.drop(columns="as_of").rename(columns={"checkpoint_date": "as_of", "forecast_p50": "p50"})
    return out[["as_of", "p10", "p50", "p90", "actual"]].sort_values("as_of").reset_index(drop=True)


def quota_of(quotas: pd.DataFrame | None, quarter: str, segment_type: str = "all", segment: str = "all") -> float | None:
    """The quota of one quarter and segment from a quota table (quarter, segment_type, segment,
    amount), None when it has none."""
    if quotas is None or quotas.empty:
        return None
    match = quotas.loc[
        (quotas["quarter"] == quarter) & (quotas["segment_type"] == segment_type) & (quotas["segment"] == segment),
        "amount",
    ]
    return float(match.iloc[0]) if len(match) else None
