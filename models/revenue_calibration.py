"""Win chances calibrated per unit of revenue: a visible factor per amount band.

The deal scorer is calibrated per deal: of the deals it gives 40%, about 40% win. A revenue forecast
needs more: of the *money* it gives 40%, about 40% must be won inside the quarter. When large deals
win less often than small deals with the same score, a per-deal calibrated score over-forecasts
revenue: on the simulator the open deals at a quarter's start were expected to bring 1.46 times what
they won inside it, all of it in the largest deals, while the mean score matched the deal win rate.

`RevenueCalibration.fit` measures it the way the forecast is used, on dates the published scorer
never learnt from:

- The dates are the scorer's held-out prediction dates (`ScorerResult.test_predictions`: later than
  every row it was fitted on) that lie at least `HORIZON_DAYS` (a quarter) before `as_of`, at most
  `MAX_DATES` of them spread evenly (fewer for a large CRM, so that at most `MAX_STATE_ROWS` deal x
  date rows are rebuilt). Without such a date (a young CRM), `fit_on_held_out_rows` learns the
  factors from the scorer's held-out rows themselves (resolved deals only, terciles of the amounts;
  the weaker evidence, used only when there is no other), and without those every factor is 1.
  `source` says which.
- At each date every deal then open is rebuilt as it stood (`etl.pipeline_state.pipeline_at_many`),
  scored by the published scorer and given the close-timing model's chance of closing within the
  next `HORIZON_DAYS` if it wins: its expected in-horizon win is amount x P(win) x P(closes within
  the horizon | wins), as a forecast made that day would have counted it (P(win) the score turned
  from a chance of winning within the scorer's label horizon into a chance of winning at all,
  `models.timing.horizon_factor`). What it did is the amount
  it won with a booking date (`etl.bookings`) inside that horizon, as known at `as_of`: a deal still
  open then, or lost, won nothing inside it. So, unlike the scorer's own held-out rows, no open deal
  is left out because its outcome is not known yet.
- Deals are put in amount bands holding equal shares of the money (the first band's deals together
  hold a third of the amount, and so on), because the error sits where the money is: the largest
  deals. The factors correct money relative to deals: the scorer is calibrated per deal on its own
  held-out rows, while how many deals won inside these particular 91-day windows also carries the
  season of the dates and any close-timing error, which every band shares. So, with L the deals
  won inside the horizon over the deals expected to (the sum of P(win) x P(closes within the
  horizon | wins)), and per band won W, expected E over its rows and n distinct deals in it,

      factor = (n x W / (L x E) + k) / (n + k),    k = PSEUDO_DEALS

  the band's money ratio against the deals' ratio, shrunk towards 1 as if k more deals had been
  exactly on target; a band with no expected revenue keeps 1.

The close-timing model used here is the one fitted at `as_of`, which has seen how these deals'
wins were timed; the scorer has not seen their outcomes (with a purged split; a widened split,
`model_runs.split_rule`, lets a few deals have earlier rows on its training side).

Nothing here is hidden: the forecast writes each deal's factor (`forecast_contributions.revenue_factor`)
and what the factors changed (`forecast_quarterly.revenue_calibration`), and the asset's metadata
lists the bands (`RevenueCalibration.table`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.bookings import state_booking_dates
from etl.pipeline_state import as_of_end, pipeline_at, pipeline_at_many
from etl.stages import STATUS_OPEN, STATUS_WON, StageCatalog
from models.scoring import PROBABILITY_CEILING
from models.timing import prepared_history, win_at_all_probability
from models.training_set import features_from_states

logger = logging.getLogger(__name__)

BANDS = 3
PSEUDO_DEALS = 20.0
# The fallback on the scorer's held-out rows: 10 deals' worth of the mean amount, on target.
PSEUDO_WINS = 10.0
# Where the factors come from (`RevenueCalibration.source`).
SOURCE_WINDOWS = "held_out_windows"
SOURCE_ROWS = "held_out_rows"
SOURCE_NONE = "none"
# Column of the chosen scorer's held-out predictions, and older names by scoring method.
PUBLISHED_COLUMN = "published"
LEGACY_COLUMNS = {"calibrated_model": "model", "stage_rate": "stage_rate_baseline", "crm_probability": "crm_baseline"}
HORIZON_DAYS = 91
MAX_DATES = 8
# Deal x date rows rebuilt at most (every deal that existed at a date is a row): a CRM of a million
# deals is calibrated on 2 dates rather than 8.
MAX_STATE_ROWS = 2_000_000
# A calibrated probability stays below 1, as the scorer's own probabilities do.
CEILING = PROBABILITY_CEILING


def money_band_edges(amount: np.ndarray, bands: int = BANDS) -> tuple[float, ...]:
    """Inner edges (ascending, distinct) that split `amount` into `bands` groups holding about
    equal shares of the total, the lower ones at most their share: with the amounts sorted
    ascending, edge i is the amount of the last deal whose running total stays below i / bands of
    the total. A deal at or below an edge belongs to the band below it; an edge equal to the
    largest amount (it would leave the band above empty) is dropped."""
    a = np.sort(np.asarray(amount, dtype="float64"))
    total = a.sum()
    if len(a) == 0 or total <= 0:
        return ()
    share = np.cumsum(a) / total
    positions = np.searchsorted(share, np.arange(1, bands) / bands, side="left") - 1
    edges = np.unique(a[positions[positions >= 0]])
    return tuple(float(e) for e in edges if e < a[-1])


def band_of(amount: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Band number (0 = smallest amounts) of each amount; a missing amount is in band 0."""
    a = np.nan_to_num(np.asarray(amount, dtype="float64"), nan=0.0)
    return np.searchsorted(np.asarray(edges, dtype="float64"), a, side="left")


def shrunk_factor(won: float, expected: float, deals: int, pseudo_deals: float = PSEUDO_DEALS) -> float:
    """(deals x won / expected + pseudo_deals) / (deals + pseudo_deals); 1 when nothing was expected."""
    if expected <= 0 or deals <= 0:
        return 1.0
    return float((deals * won / expected + pseudo_deals) / (deals + pseudo_deals))


@dataclass(frozen=True)
class RevenueCalibration:
    """Amount band edges (inner edges, ascending), one factor per band, and the evidence behind
    them: `rows` (deal x date rows), `dates`, `level` (deals won inside the horizon over deals
    expected to), and per band the distinct `deals`, the `expected` and the `won` in-horizon amounts."""

    edges: tuple[float, ...] = ()
    factors: tuple[float, ...] = (1.0,)
    rows: int = 0
    dates: int = 0
    level: float = 1.0
    source: str = SOURCE_NONE
    deals: tuple[int, ...] = (0,)
    expected: tuple[float, ...] = (0.0,)
    won: tuple[float, ...] = (0.0,)

    @classmethod
    def from_rows(
        cls, amount: np.ndarray, expected: np.ndarray, won: np.ndarray, deal_ids: np.ndarray, dates: int,
        bands: int = BANDS, pseudo_deals: float = PSEUDO_DEALS,
    ) -> "RevenueCalibration":
        """The factors of deal x date rows: each row's amount, its expected in-horizon win
        (amount x P(win) x P(closes within the horizon | wins)) and the amount it won inside the
        horizon (0 or its amount).

        The factors correct money, not deals: `level`, the deals won inside the horizon over the
        deals expected to (sum of P(win) x P(closes within the horizon | wins)), is what every band
        shares, whatever its amounts (the season of these particular dates, a close-timing error),
        so each band's expected amount is multiplied by it before the comparison. A band's factor
        is then `shrunk_factor(won, level x expected, deals)`: below 1 where the band's money wins
        less often than its deals' scores and timing say, relative to all deals."""
        amount = np.nan_to_num(np.asarray(amount, dtype="float64"), nan=0.0).clip(min=0.0)
        expected = np.asarray(expected, dtype="float64")
        won = np.asarray(won, dtype="float64")
        if len(amount) == 0 or amount.sum() <= 0:
            return cls()
        edges = money_band_edges(amount, bands)
        band = band_of(amount, edges)
        n_bands = len(edges) + 1
        expected_sum = np.bincount(band, weights=expected, minlength=n_bands)
        won_sum = np.bincount(band, weights=won, minlength=n_bands)
        distinct = pd.DataFrame({"band": band, "deal": np.asarray(deal_ids)}).drop_duplicates()
        deal_count = np.bincount(distinct["band"].to_numpy(), minlength=n_bands)
        # Deals won inside the horizon over deals expected to: what every band shares (the season of
        # these dates, the close timing), which the factors leave to the per-deal calibration.
        priced = amount > 0
        expected_deals = float((expected[priced] / amount[priced]).sum())
        level = float((won[priced] > 0).sum()) / expected_deals if expected_deals > 0 else 1.0
        if level <= 0:
            level = 1.0
        factors = tuple(
            shrunk_factor(won_sum[b], level * expected_sum[b], int(deal_count[b]), pseudo_deals) for b in range(n_bands)
        )
        return cls(
            edges=edges, factors=factors, rows=len(amount), dates=dates, level=level, source=SOURCE_WINDOWS,
            deals=tuple(int(c) for c in deal_count), expected=tuple(float(e) for e in expected_sum),
            won=tuple(float(w) for w in won_sum),
        )

    @classmethod
    def fit(
        cls,
        result,
        deals: pd.DataFrame,
        history: pd.DataFrame,
        stages: StageCatalog,
        timing,
        as_of: dt.date | pd.Timestamp,
        fiscal_year_start_month: int = 1,
        bands: int = BANDS,
    ) -> "RevenueCalibration":
        """Learn the factors at `as_of` for `result` (a `models.scoring.ScorerResult`: its
        published scorer and held-out prediction dates) and `timing` (the `models.timing.CloseTiming`
        fitted at `as_of`); `history` the canonical deal history or `prepare_history`'s output
        (see the module docstring)."""
        end = as_of_end(as_of)
        predictions = result.test_predictions
        if predictions.empty or "snapshot_at" not in predictions.columns:
            logger.info("revenue calibration at %s: no held-out prediction dates, factors 1", end.date())
            return cls()
        horizon = pd.Timedelta(days=HORIZON_DAYS)
        candidates = pd.DatetimeIndex(sorted(pd.to_datetime(predictions["snapshot_at"]).unique()))
        candidates = candidates[candidates + horizon <= end]
        if len(candidates) == 0:
            logger.info(
                "revenue calibration at %s: no held-out prediction date is %d days before it; "
                "factors from the scorer's held-out rows",
                end.date(), HORIZON_DAYS,
            )
            return cls.fit_on_held_out_rows(result, deals, prepared_history(deals, history, stages), bands)
        wanted = min(MAX_DATES, len(candidates), max(1, MAX_STATE_ROWS // max(len(deals), 1)))
        picked = np.unique(np.round(np.linspace(0, len(candidates) - 1, wanted)).astype(int))
        dates = list(candidates[picked])
        history = prepared_history(deals, history, stages)
        states = pipeline_at_many(deals, history, dates)
        open_rows = states.loc[states["status"] == STATUS_OPEN].reset_index(drop=True)
        if open_rows.empty:
            return cls()
        features = features_from_states(states, stages, None, fiscal_year_start_month)
        scores = pd.DataFrame(
            {
                "snapshot_at": features["snapshot_at"].to_numpy(),
                "deal_id": features["deal_id"].astype("string").to_numpy(),
                "p_win": result.scorer.predict_proba(features),
            }
        )
        keys = pd.DataFrame({"snapshot_at": open_rows["snapshot_at"].to_numpy(), "deal_id": open_rows["deal_id"].astype("string").to_numpy()})
        p_win = keys.merge(scores, on=["snapshot_at", "deal_id"], how="left", validate="one_to_one")["p_win"].to_numpy(dtype="float64")

        final = pipeline_at(deals, history, end)
        won_final = final.loc[final["status"] == STATUS_WON]
        booked = pd.Series(
            state_booking_dates(won_final, deals, end).to_numpy(), index=won_final["deal_id"].astype("string").to_numpy()
        )
        booking = pd.to_datetime(keys["deal_id"].map(booked)).to_numpy()
        snapshot = keys["snapshot_at"].to_numpy()
        with np.errstate(invalid="ignore"):
            won_inside = (booking >= snapshot) & (booking < snapshot + horizon.to_timedelta64())
        p_win = np.nan_to_num(p_win, nan=0.0)
        closes_inside = np.zeros(len(open_rows))
        # As the forecast counts it: the chance of winning at all from the chance of winning within
        # the scorer's label horizon (models.timing.win_at_all_probability), then of closing inside.
        win_at_all = p_win.copy()
        for date in dates:
            rows = np.flatnonzero(snapshot == np.datetime64(date))
            if len(rows):
                at_date = open_rows.iloc[rows]
                closes_inside[rows] = timing.probability_closed_by(at_date, date + horizon)
                win_at_all[rows] = win_at_all_probability(at_date, p_win[rows], timing, result.label_horizon_days)
        amount = open_rows["amount_reporting"].astype("float64").fillna(0.0).clip(lower=0.0).to_numpy()
        expected = amount * win_at_all * closes_inside
        calibration = cls.from_rows(amount, expected, amount * won_inside, keys["deal_id"].to_numpy(), len(dates), bands)
        logger.info(
            "revenue calibration at %s on %d open deal x date rows at %d held-out dates: amount bands %s, "
            "expected %s, won %s, factors %s",
            end.date(), calibration.rows, len(dates), calibration.edges, calibration.expected, calibration.won,
            calibration.factors,
        )
        return calibration

    @classmethod
    def fit_on_held_out_rows(
        cls, result, deals: pd.DataFrame, history: pd.DataFrame, bands: int = BANDS
    ) -> "RevenueCalibration":
        """The fallback of a CRM too young for a held-out date a quarter back: the scorer's own
        held-out rows (resolved deals at its test dates, labelled as known at as_of), in bands of
        equal numbers of rows (terciles of the amounts at the snapshot),

            factor = (sum amount x won + p) / (sum amount x predicted + p),   p = PSEUDO_WINS x mean amount.

        Deals still open at as_of are not among these rows, so this is the weaker evidence; it is
        used only when there is no other. `history` as `prepare_history` returns it."""
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
        band = band_of(amount, edges)
        n_bands = len(edges) + 1
        prior = PSEUDO_WINS * float(amount.mean())
        observed = np.bincount(band, weights=amount * won, minlength=n_bands)
        expected = np.bincount(band, weights=amount * predicted, minlength=n_bands)
        factors = tuple(float(f) for f in (observed + prior) / (expected + prior))
        deal_count = np.bincount(
            pd.DataFrame({"band": band, "deal": rows["deal_id"].astype("string").to_numpy()}).drop_duplicates()["band"].to_numpy(),
            minlength=n_bands,
        )
        logger.info("revenue calibration on %d held-out rows: amount bands %s, factors %s", len(rows), edges, factors)
        return cls(
            edges=edges, factors=factors, rows=len(rows), dates=int(rows["snapshot_at"].nunique()),
            deals=tuple(int(c) for c in deal_count), expected=tuple(float(e) for e in expected),
            won=tuple(float(w) for w in observed), source=SOURCE_ROWS,
        )

    def factor(self, amount: np.ndarray | pd.Series) -> np.ndarray:
        """Each deal's factor, by the amount band its amount falls in."""
        return np.asarray(self.factors, dtype="float64")[band_of(np.asarray(amount, dtype="float64"), self.edges)]

    def table(self) -> pd.DataFrame:
        """The bands as a small table: amount_from (exclusive, 0 for the first), amount_to
        (inclusive, NaN: no bound), the distinct deals, expected and won in-horizon amounts behind
        each band, its factor, and the deals' level, rows and dates they share."""
        lows = [0.0, *self.edges]
        highs = [*self.edges, np.nan]
        n = len(self.factors)
        return pd.DataFrame(
            {
                "amount_from": lows, "amount_to": highs,
                "deals": list(self.deals) if len(self.deals) == n else [0] * n,
                "expected": list(self.expected) if len(self.expected) == n else [0.0] * n,
                "won": list(self.won) if len(self.won) == n else [0.0] * n,
                "factor": list(self.factors), "level": self.level, "rows": self.rows, "dates": self.dates,
                "source": self.source,
            }
        )
