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
  `as_of`: the deal scorer (`build_training_set` + `train_scorer`, labels read at that day, so
  deals still open then are censored), the empirical stage-rate scorer and the close-timing model.
  Nothing dated after that instant is used. Deal attributes that the CRM does not version (owner,
  team, product, ...) are the export's current values, as everywhere else in Dealcast.
- `retrain`: `"quarter"` (default) trains once, at the `start` checkpoint, and reuses those models
  at weeks 4 and 8 (a model that knew even less, and 3x cheaper); `"checkpoint"` retrains at every
  checkpoint, as the nightly run would have.

Three methods per checkpoint, each per segment (every segment type of `etl.schema.SEGMENT_COLUMNS`):

- `ours`: `models.forecast.forecast_quarterly` with the scorer `train_scorer` chose then
  (`scoring_method` records which), its visible revenue calibration (`models.revenue_calibration`,
  learnt on that scorer's held-out rows) and the close-timing model of then: mean, P10, P50, P90.
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

Accuracy (`backtest_summary`, definitions from docs/metrics): WAPE = sum |actual - P50| / sum actual;
bias = sum (P50 - actual) / sum actual; interval coverage = share of rows whose actual lies in
[P10, P90] (target 80%).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from etl.config import ForecastConfig, ModelConfig
from etl.periods import period_bounds, quarter_label, quarter_labels
from etl.bookings import state_booking_dates
from etl.pipeline_state import as_of_end, pipeline_at
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
    return CheckpointModels(
        as_of, result.scorer, RevenueCalibration.fit(result, deals, history),
        stage_rate_scorer(training, result.scorer.version), timing,
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
    actuals: pd.DataFrame,
    fiscal_year_start_month: int,
    draws: int,
    seed: int,
    lookback_quarters: int,
    workers: int | None,
) -> pd.DataFrame:
    """The rows of one checkpoint: every method x segment of the checkpoint's quarter."""
    features = snapshot_features(deals, history, stages, checkpoint.as_of, fiscal_year_start_month=fiscal_year_start_month)
    common = dict(
        quotas=None, fiscal_year_start_month=fiscal_year_start_month, draws=draws, seed=seed,
        lookback_quarters=lookback_quarters, workers=workers,
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
    actual = actuals.loc[actuals["quarter"] == checkpoint.quarter].set_index(["segment_type", "segment"])["actual"]
    keys = ours.index.union(forecasts[METHOD_STAGE_RATE_FORECAST].index).union(actual.index)
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
    rows["actual"] = actual.reindex(pd.MultiIndex.from_frame(rows[["segment_type", "segment"]])).fillna(0.0).to_numpy()
    rows["quarter"] = checkpoint.quarter
    rows["checkpoint"] = checkpoint.name
    rows["checkpoint_date"] = checkpoint.date
    rows["model_as_of"] = pd.Timestamp(models.as_of)
    return rows


def forecast_backtest(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date,
    model_config: ModelConfig,
    forecast_config: ForecastConfig = _DEFAULTS,
    fiscal_year_start_month: int = 1,
    *,
    quarters: int | None = None,
    retrain: str | None = None,
    min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS,
    draws: int | None = None,
    lookback_quarters: int = DEFAULT_LOOKBACK_QUARTERS,
    workers: int | None = None,
) -> pd.DataFrame:
    """The `forecast_backtest` rows (see the module docstring): for each backtested quarter,
    checkpoint, segment and method, the forecast made then against the actual.

    `quarters` (default `forecast_config.backtest_quarters`): how many of the latest eligible
    quarters to backtest, None for all; `retrain` (default `forecast_config.backtest_retrain`):
    "quarter" or "checkpoint"; `draws` (default `forecast_config.draws`) Monte Carlo draws per
    forecast; the seed is `forecast_config.seed`. A quarter whose start has no won or no lost deal
    to learn from is skipped with a warning. When no quarter is backtested, the result is one
    status row (`status_row`) saying why, instead of nothing.
    """
    retrain = forecast_config.backtest_retrain if retrain is None else retrain
    if retrain not in RETRAIN_MODES:
        raise ValueError(
            f"forecast_backtest: retrain (dealcast.toml [forecast] backtest_retrain) must be one of {list(RETRAIN_MODES)}, got {retrain!r}"
        )
    if quarters is None:
        quarters = forecast_config.backtest_quarters
    draws = forecast_config.draws if draws is None else draws
    history = prepared_history(deals, history, stages)
    labels = backtest_quarters(deals, as_of, fiscal_year_start_month, quarters, min_history_quarters)
    logger.info("forecast backtest as of %s: quarters %s, retrain per %s", as_of, labels, retrain)
    actuals = quarter_actuals(deals, history, as_of, labels, fiscal_year_start_month)

    parts = []
    skipped: list[str] = []
    for quarter in labels:
        models: CheckpointModels | None = None
        for checkpoint in quarter_checkpoints(quarter, fiscal_year_start_month):
            if models is None or retrain == RETRAIN_CHECKPOINT:
                try:
                    models = models_at(deals, history, stages, checkpoint.as_of, model_config, fiscal_year_start_month)
                except InsufficientHistoryError as error:
                    logger.warning("forecast backtest: quarter %s skipped at %s: %s", quarter, checkpoint.name, error)
                    skipped.append(f"{quarter} (at its {checkpoint.name}: {error})")
                    break
            parts.append(
                _checkpoint_rows(
                    checkpoint, models, deals, history, stages, actuals, fiscal_year_start_month, draws,
                    forecast_config.seed, lookback_quarters, workers,
                )
            )
    if not parts:
        row = status_row(deals, as_of, fiscal_year_start_month, quarters, min_history_quarters, labels, skipped)
        logger.warning("forecast backtest as of %s: nothing backtested: %s", as_of, row["status_reason"].iloc[0])
        return _typed(row, as_of)
    frame = pd.concat(parts, ignore_index=True)
    frame["status"] = STATUS_BACKTESTED
    frame["status_reason"] = None
    frame["error"] = frame["forecast_p50"] - frame["actual"]
    frame["abs_error"] = frame["error"].abs()
    inside = (frame["p10"] - CENT <= frame["actual"]) & (frame["actual"] <= frame["p90"] + CENT)
    frame["within_interval"] = pd.array(inside.to_numpy(), dtype="boolean")
    frame.loc[frame["p10"].isna() | frame["p90"].isna(), "within_interval"] = pd.NA
    return _typed(frame, as_of)


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
