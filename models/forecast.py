"""The quarterly revenue forecast finance plans with: P10/P50/P90 revenue per quarter and segment.

Revenue(quarter) = closed won so far in the quarter
                 + the open deals that win inside the quarter
                 + deals not yet created that will be created and won inside the quarter.

- Open deals: each wins inside the quarter with probability P(win) x revenue factor x P(closes
  inside the quarter | wins): the deal's score (`deal_scores`), its amount band's visible revenue
  calibration factor (`models.revenue_calibration`, 1 without one) and `models.timing.CloseTiming`. Wins are drawn independently per
  deal (`simulate_quarter`). A deal's contribution is its amount times that probability
  (`forecast_contributions`).
- Deals not yet created: the historical run-rate at this point of the quarter (`new_deal_stream`).
  For each of the last `lookback_quarters` finished quarters, the deals won inside that quarter
  that were created after the same point relative to the quarter's start as `as_of` is now,
  scaled by how many times more deals are being created now than before that point
  (`creation_growth`: a year's creations against a year's, so a growing CRM's older quarters are
  not read at their old volume). Each Monte Carlo draw picks one of those quarters at random and
  takes each of its wins a random number of times with mean 1 (`simulate_new_deals`: Poisson
  noise plus the uncertainty of a run-rate read from few quarters), segment by segment, so
  segments stay consistent with the total. A copy of a win keeps its segments, or, with the
  share `stream_mix_share` (large when a quarter holds few such wins), takes those of one of the
  last year's wins, drawn by amount: a small org's owner with no new-deal win last quarter can
  still win one. No finished past quarter means no stream (zero).
- Every segment type (all, pipeline, owner, team, product, region, lead_source, deal_type) is
  summed from the same draws, so in every draw the segments of a type add up to the `all` total.
- The open pipeline of a quarter (open_deals, open_pipeline, overdue_*) follows
  `etl.quarter_pipeline`, the definition `pipeline_coverage` and `pipeline_waterfall` share.

P10/P50/P90 are quantiles of the draws with the inverted-CDF definition (the smallest drawn
revenue with at least 10%, 50%, 90% of draws at or below it), so they are revenues that can
actually happen and P10 <= P50 <= P90. `expected` is the exact mean of the law the draws sample:
closed won + the open deals' contributions + the mean new-deal run-rate.

Every "as it stood" value comes from `etl.pipeline_state.pipeline_at` at the end of `as_of`, so
the backtest can call `forecast_quarterly` with a past `as_of` and see only what was known then.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from etl.bookings import state_booking_dates
from etl.config import ForecastConfig, WarningsConfig
from etl.periods import period_bounds, quarter_end, quarter_label, quarter_start
from etl.pipeline_state import as_of_end, pipeline_at
from etl.quarter_pipeline import in_quarter_pipeline, overdue
from etl.schema import SEGMENT_COLUMNS, segment_values
from etl.stages import STATUS_OPEN, STATUS_WON, StageCatalog
from etl.tables import TABLES
from models.keying import KeyingLag, keyed_at_close_share
from models.revenue_calibration import CEILING, RevenueCalibration
from models.timing import CloseTiming, prepared_history, win_at_all_probability

logger = logging.getLogger(__name__)

FORECAST_COLUMNS: list[str] = TABLES["forecast_quarterly"].columns
CONTRIBUTION_COLUMNS: list[str] = TABLES["forecast_contributions"].columns
_CONTRIBUTION_SEGMENTS = ("pipeline", "owner", "team", "product", "region", "lead_source", "deal_type")
QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_METHOD = "inverted_cdf"
# Uniform draws held in memory at once by `simulate_quarter` (float32 draws plus a float64 copy of
# the outcomes: about 48 MB at this size).
DEFAULT_CHUNK_SIZE = 1 << 22
# Draws simulated together: long enough rows for fast sparse sums, short enough that the
# per-segment accumulator (segments x draws) stays small.
DRAW_BLOCK = 1000
# Threads simulating blocks of draws at once (each holds one chunk of draws in memory).
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)
DEFAULT_LOOKBACK_QUARTERS = 8
# The new-deal run-rate follows the deal creation volume (`creation_growth`): a year's creations
# now against the year before each past quarter's matching point (at least half a year of data,
# else no trend is read), shrunk by 10 deals' worth of evidence and kept within a factor of 2
# either way.
GROWTH_WINDOW_DAYS = 365
MIN_GROWTH_WINDOW_DAYS = 182
GROWTH_PSEUDO_DEALS = 10.0
MAX_GROWTH = 2.0
# Where the new-deal run-rate's wins land (`stream_mix_share`): the segments of the wins booked in
# the last year, as if 10 wins' worth of evidence spread like them.
MIX_WINDOW_DAYS = 365
MIX_PSEUDO_WINS = 10.0
# The new-deal run-rate's level between quarters (`run_rate_level_sd`): the prior's spread of the
# log of a quarter's new-deal revenue around the business's level, beyond the count noise, and how
# many past quarters it weighs as.
LEVEL_PRIOR_SD = 0.25
LEVEL_PRIOR_QUARTERS = 4.0
_DEFAULTS = ForecastConfig()
_WARNINGS = WarningsConfig()
# Whole quarters of data needed before a quarter's start for it to be backtested.
DEFAULT_MIN_HISTORY_QUARTERS = 1
_PREPARED_COLUMNS = ("valid_to", "stage_status", "stage_entered_at")


# --- Monte Carlo ---------------------------------------------------------------------------------


def simulate_quarter(
    amounts: np.ndarray,
    probabilities: np.ndarray,
    segment_codes: np.ndarray,
    n_segments: int,
    draws: int,
    seed: int | np.random.SeedSequence,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> np.ndarray:
    """Revenue won by the open deals in each draw, summed per segment: a (draws, n_segments) float64 array.

    Deal i wins in a draw with probability `probabilities[i]` (independently of other deals and
    draws) and then adds `amounts[i]` to every segment in `segment_codes[i]`. `segment_codes` is
    (n,) for one segment per deal or (n, k) for k segment types at once (codes in
    0..n_segments-1; e.g. column 0 the `all` segment, column 1 the deal's pipeline, ...).

    Uniform draws are float32 compared with the probability rounded to float32 (a deal's win
    chance is off by about 1e-7 at most); sums are float64. Work proceeds in blocks of
    about `chunk_size` deal-draws; each block of draws has its own numpy Generator seeded from
    `seed`, and blocks run on `workers` threads (default DEFAULT_WORKERS: the machine's cores,
    at most 4). The same inputs, seed and chunk_size give the same draws whatever `workers`.
    """
    amounts = np.asarray(amounts, dtype="float64")
    probabilities = np.asarray(probabilities, dtype="float64")
    codes = np.asarray(segment_codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    n = len(amounts)
    if probabilities.shape != (n,) or codes.ndim != 2 or codes.shape[0] != n:
        raise ValueError(
            f"simulate_quarter: amounts {amounts.shape}, probabilities {probabilities.shape} and "
            f"segment_codes {np.shape(segment_codes)} must describe the same deals"
        )
    if draws < 1 or chunk_size < 1 or n_segments < 1:
        raise ValueError(
            f"simulate_quarter: draws ({draws}), chunk_size ({chunk_size}) and n_segments ({n_segments}) must be positive"
        )
    if n and not np.isfinite(amounts).all():
        bad = int(np.flatnonzero(~np.isfinite(amounts))[0])
        raise ValueError(f"simulate_quarter: amounts[{bad}] is {amounts[bad]}, expected a finite amount")
    if n and not ((probabilities >= 0) & (probabilities <= 1)).all():
        bad = int(np.flatnonzero(~((probabilities >= 0) & (probabilities <= 1)))[0])
        raise ValueError(f"simulate_quarter: probabilities[{bad}] is {probabilities[bad]}, expected 0..1")
    if codes.size and (codes.min() < 0 or codes.max() >= n_segments):
        raise ValueError(f"simulate_quarter: segment codes must be in 0..{n_segments - 1}")

    totals = np.zeros((n_segments, draws), dtype="float64")
    active = (probabilities > 0) & (amounts != 0)
    amounts, probabilities, codes = amounts[active], probabilities[active], codes[active].astype("int64")
    n = len(amounts)
    if n == 0:
        return totals.T

    k = codes.shape[1]
    # Column i holds deal i's amount in each of its segments' rows: totals += matrix @ outcomes.
    matrix = sp.csc_matrix(
        (np.repeat(amounts, k), codes.ravel(), np.arange(0, n * k + 1, k)), shape=(n_segments, n)
    )
    thresholds = probabilities.astype("float32")
    draw_block = int(min(draws, max(DRAW_BLOCK, chunk_size // n)))
    deal_block = int(max(1, min(n, chunk_size // draw_block)))
    deal_blocks = [(start, min(n, start + deal_block)) for start in range(0, n, deal_block)]
    draw_starts = list(range(0, draws, draw_block))
    # One generator per block of draws, derived from the seed, so the draws do not depend on how
    # many threads run the blocks.
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    block_seeds = [
        np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, index)) for index in range(len(draw_starts))
    ]

    def simulate_block(index: int) -> None:
        first_draw = draw_starts[index]
        width = min(draw_block, draws - first_draw)
        rng = np.random.default_rng(block_seeds[index])
        uniform_buffer = np.empty(deal_block * width, dtype="float32")
        outcome_buffer = np.empty(deal_block * width, dtype="float64")
        block_totals = np.zeros((n_segments, width), dtype="float64")
        for start, stop in deal_blocks:
            size = (stop - start) * width
            uniform = uniform_buffer[:size].reshape(stop - start, width)
            rng.random(out=uniform, dtype="float32")
            won = outcome_buffer[:size].reshape(stop - start, width)
            np.less(uniform, thresholds[start:stop, None], out=won)
            block_totals += matrix[:, start:stop] @ won
        totals[:, first_draw : first_draw + width] = block_totals

    threads = max(1, min(workers if workers is not None else DEFAULT_WORKERS, len(draw_starts)))
    if threads == 1:
        for index in range(len(draw_starts)):
            simulate_block(index)
    else:
        # numpy's generators, its comparisons and scipy's sparse products release the GIL.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(simulate_block, range(len(draw_starts))))
    return totals.T


def simulate_new_deals(
    amounts: np.ndarray,
    quarter_of: np.ndarray,
    segment_codes: np.ndarray,
    n_quarters: int,
    n_segments: int,
    draws: int,
    seed: int | np.random.SeedSequence,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    mix_share: float = 0.0,
    mix_codes: np.ndarray | None = None,
    mix_weights: np.ndarray | None = None,
    amount_share: float = 0.0,
) -> np.ndarray:
    """Revenue from deals not yet created in each draw, per segment: a (draws, n_segments) array.

    `amounts[i]` is a win of past quarter `quarter_of[i]` (0..n_quarters-1) by a deal created after
    that quarter's matching point, in the segments `segment_codes[i]` ((n,) or (n, k)). Each draw
    picks one past quarter uniformly at random (quarter-to-quarter variation), then takes each of
    its wins K times (how many such deals and which ones), K ~ NegativeBinomial(L, L / (L + 1))
    with L = `n_quarters`: mean 1, variance 1 + 1/L. That is a Poisson(rate) count whose rate is
    itself uncertain, Gamma(L, 1/L), as a rate read from L quarters is: the Poisson noise of the
    quarter ahead plus the error of the run-rate, which a young CRM with one past quarter cannot
    average away (L = 1: variance 2), and which shrinks as quarters accumulate. The mean over draws
    is the mean of the past quarters' totals, as with a plain bootstrap.

    Which segments the wins land in: each of the K copies of a win keeps the win's segments with
    probability 1 - `mix_share`; otherwise it keeps its amount and takes the segments of one row of
    `mix_codes` (the mix: (m,) or (m, k) codes, the same segment types as `segment_codes`), row j
    with probability proportional to `mix_weights[j]`. The amounts drawn, and so the `all` total
    of every draw, do not depend on `mix_share`; a segment's mean is (1 - mix_share) x its share of
    the past wins + mix_share x its share of the mix, times the total's mean (`mix_revenue_shares`).

    Which amount each copy has: independently of where it lands, a copy keeps its win's amount with
    probability 1 - `amount_share` and otherwise takes the amount of one of the picked quarter's
    wins (those with an amount), each as likely: a segment's next new deals are as large as its own
    few past wins with that probability, and as large as anyone's otherwise. The `all` total's mean
    is unchanged; a segment's is `new_deal_segment_means`'s.
    """
    amounts = np.asarray(amounts, dtype="float64")
    codes = np.asarray(segment_codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    totals = np.zeros((draws, n_segments), dtype="float64")
    if n_quarters < 1:
        return totals
    k = codes.shape[1]
    mixing = mix_share > 0
    if mixing:
        if not 0.0 < mix_share <= 1.0:
            raise ValueError(f"simulate_new_deals: mix_share must be in 0..1, got {mix_share}")
        mix_codes = np.asarray(mix_codes, dtype="int64")
        if mix_codes.ndim == 1:
            mix_codes = mix_codes[:, None]
        mix_weights = np.asarray(mix_weights, dtype="float64")
        if mix_codes.shape[1] != k or mix_weights.shape != (len(mix_codes),) or not (mix_weights >= 0).all() or mix_weights.sum() <= 0:
            raise ValueError(
                f"simulate_new_deals: the mix needs codes for the same {k} segment type(s) and non-negative "
                f"weights, one per row, not all 0 (got codes {mix_codes.shape}, weights {mix_weights.shape})"
            )
        mix_probability = mix_weights / mix_weights.sum()
    if not 0.0 <= amount_share <= 1.0:
        raise ValueError(f"simulate_new_deals: amount_share must be in 0..1, got {amount_share}")
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, n_quarters, size=draws)
    for quarter in range(n_quarters):
        rows = np.flatnonzero(picked == quarter)
        items = np.flatnonzero((quarter_of == quarter) & (amounts != 0))
        if len(rows) == 0 or len(items) == 0:
            continue
        n = len(items)
        matrix = sp.csc_matrix(
            (np.repeat(amounts[items], k), codes[items].astype("int64").ravel(), np.arange(0, n * k + 1, k)),
            shape=(n_segments, n),
        )
        step = max(1, chunk_size // n)
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            counts = rng.negative_binomial(n_quarters, n_quarters / (n_quarters + 1.0), size=(n, len(block)))
            moved = _move_copies(counts, mix_share, rng) if mixing else None
            redrawn = _move_copies(counts, amount_share, rng) if amount_share > 0 else None
            totals[block] = (matrix @ counts.astype("float64")).T
            pool = amounts[items]
            if redrawn is not None:
                # Each copy whose amount is redrawn: in its win's segments, any win's amount.
                win, column = redrawn
                value = pool[rng.integers(0, n, size=len(win))]
                totals[block] += _copy_sums(codes[items][win], column, value, n_segments, len(block))
            if moved is None:
                continue
            # Each moved copy: in the segments of a row of the mix, its win's amount or (with
            # probability amount_share) any win's.
            win, column = moved
            value = pool[win]
            if amount_share > 0:
                value = np.where(rng.random(len(win)) < amount_share, pool[rng.integers(0, n, size=len(win))], value)
            target = rng.choice(len(mix_codes), size=len(win), p=mix_probability)
            totals[block] += _copy_sums(mix_codes[target], column, value, n_segments, len(block))
    return totals


def _copy_sums(codes: np.ndarray, column: np.ndarray, value: np.ndarray, n_segments: int, width: int) -> np.ndarray:
    """A (width, n_segments) block of totals: copy j adds `value[j]` to each of its segments
    `codes[j]` ((m, k) codes) in draw `column[j]` of the block."""
    cells = (codes.astype("int64") * width + column[:, None]).ravel()
    sums = np.bincount(cells, weights=np.repeat(value, codes.shape[1]), minlength=n_segments * width)
    return sums.reshape(n_segments, width).T


def _move_copies(
    counts: np.ndarray, mix_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Take the copies that move out of `counts` (wins x draws, changed in place): every copy moves
    with probability `mix_share`, independently; in each draw, as many moves as Binomial(copies,
    mix_share), the copies that move picked at random. Returns each moved copy's (win, draw), or None
    when none moves."""
    copies = counts.sum(axis=0)
    moves = rng.binomial(copies, mix_share)
    columns = np.flatnonzero(moves)
    if len(columns) == 0:
        return None
    ends = np.cumsum(counts[:, columns], axis=0)
    win = np.concatenate(
        [
            np.searchsorted(ends[:, j], rng.choice(copies[d], size=moves[d], replace=False), side="right")
            for j, d in enumerate(columns)
        ]
    )
    column = np.repeat(columns, moves[columns])
    np.subtract.at(counts, (win, column), 1)
    return win, column


def new_deal_segment_means(
    values: np.ndarray,
    quarter_of: np.ndarray,
    segment_codes: np.ndarray,
    n_quarters: int,
    n_segments: int,
    *,
    drawn: np.ndarray | None = None,
    mix_share: float = 0.0,
    mix_shares: np.ndarray | None = None,
    amount_share: float = 0.0,
) -> np.ndarray:
    """The mean over `simulate_new_deals`'s draws, per segment, of what `values` (one per win, as
    `amounts` there, or any part of them) add up to. `drawn` marks the wins the draws copy (those
    with an amount; default every win with a nonzero value).

    Per past quarter q and segment g, with A the sum of the values of q's wins in g, c their count
    and m_q the mean value of q's wins: (1 - amount_share) A + amount_share c m_q (a copy keeps its
    amount or takes any of the quarter's), averaged over the quarters; then (1 - mix_share) x that +
    mix_share x the quarters' mean total x the segment's share of the mix (`mix_shares`)."""
    values = np.asarray(values, dtype="float64")
    quarter_of = np.asarray(quarter_of, dtype="int64")
    codes = np.asarray(segment_codes, dtype="int64")
    if codes.ndim == 1:
        codes = codes[:, None]
    drawn = values != 0 if drawn is None else np.asarray(drawn, dtype=bool)
    values = np.where(drawn, values, 0.0)

    def per_quarter_sums(weights: np.ndarray) -> np.ndarray:
        return np.bincount(
            (quarter_of[:, None] * n_segments + codes).ravel(),
            weights=np.repeat(weights, codes.shape[1]),
            minlength=n_quarters * n_segments,
        ).reshape(n_quarters, n_segments)

    own = per_quarter_sums(values)
    if amount_share > 0:
        count = np.bincount(quarter_of, weights=drawn.astype("float64"), minlength=n_quarters)
        mean = np.bincount(quarter_of, weights=values, minlength=n_quarters) / np.maximum(count, 1.0)
        own = (1.0 - amount_share) * own + amount_share * per_quarter_sums(drawn * mean[quarter_of])
    means = own.mean(axis=0)
    if mix_share == 0.0 or mix_shares is None:
        return means
    return (1.0 - mix_share) * means + mix_share * (values.sum() / n_quarters) * np.asarray(mix_shares, dtype="float64")


def mix_revenue_shares(mix_codes: np.ndarray, mix_weights: np.ndarray, n_segments: int) -> np.ndarray:
    """Per segment, the share of the mix's weight whose rows are in it (per segment type the
    shares add up to 1): where `simulate_new_deals` puts a moved copy, on average."""
    mix_codes = np.asarray(mix_codes, dtype="int64")
    if mix_codes.ndim == 1:
        mix_codes = mix_codes[:, None]
    weights = np.asarray(mix_weights, dtype="float64")
    sums = np.bincount(mix_codes.ravel(), weights=np.repeat(weights, mix_codes.shape[1]), minlength=n_segments)
    return sums / weights.sum()


def summarise_draws(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and P10/P50/P90 (inverted-CDF quantiles) of each column of a (draws, segments) array."""
    p10, p50, p90 = np.quantile(draws, QUANTILES, axis=0, method=QUANTILE_METHOD)
    return {"expected": draws.mean(axis=0), "p10": p10, "p50": p50, "p90": p90}


# --- Deals not yet created --------------------------------------------------------------------


def _require_prepared(history: pd.DataFrame, where: str) -> None:
    missing = [c for c in _PREPARED_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(
            f"{where}: history lacks column(s) {missing}; expected the output of etl.pipeline_state.prepare_history"
        )


@dataclass(frozen=True)
class _StreamWins:
    """The won deals the new-deal run-rate reads, as known at `end`, with what every past quarter
    shares: each one's booking date, whether it came with the data's first day (a go-live import),
    its keying-lag weight, and the share of the other wins keyed in at close."""

    won: pd.DataFrame
    booked: pd.Series
    data_start: pd.Timestamp
    imported: np.ndarray
    keyed_share: float
    lag_weight: pd.Series

    @classmethod
    def at(cls, state: pd.DataFrame, deals: pd.DataFrame, end: pd.Timestamp) -> "_StreamWins":
        """From `state`, the pipeline at `end` (every deal as then known)."""
        won = state.loc[state["status"] == STATUS_WON]
        booked = state_booking_dates(won, deals, end)
        data_start = state["created_at"].min()
        if pd.isna(data_start):
            return cls(won, booked, data_start, np.zeros(len(won), dtype=bool), 0.0, pd.Series(1.0, index=won.index))
        first_day_end = data_start.normalize() + pd.Timedelta(days=1)
        imported = (won["created_at"] < first_day_end).to_numpy(dtype=bool)
        # Deals the import brought in already closed carry the import as the moment they were marked won.
        keyed_live = (won["closed_at"] >= first_day_end).to_numpy(dtype=bool)
        lag = KeyingLag.fit(won["closed_at"].loc[keyed_live], booked.loc[keyed_live], end)
        return cls(
            won, booked, data_start, imported, keyed_at_close_share(won.loc[~imported]),
            pd.Series(lag.weights(booked, end), index=won.index),
        )


def _new_deal_wins(
    stream: _StreamWins,
    end: pd.Timestamp,
    quarter: str,
    fiscal_year_start_month: int,
    lookback_quarters: int,
) -> tuple[list[str], pd.DataFrame]:
    """The past quarters that stand in for `quarter`, and the deals won inside each of them (by
    booking date, `etl.bookings`, as the actuals count them) after being created past the point
    that matches `end`.

    `stream` holds the won deals as known at `end` (`_StreamWins.at`). The matching point of a past
    quarter is its start plus (`end` - `quarter`'s start): for the current quarter a point inside
    the quarter, for the next quarter a point that many days before it starts. A past quarter
    qualifies when it had finished by `end` and the data already existed at its matching point.

    The deals of the data's first day (where a CRM's go-live import puts every deal open then, with
    the import as their creation) are the exception: their CRM creation says nothing of when the
    org would have entered them. One won inside the quarter after the matching point counts with
    weight `keyed_at_close_share` of the other won deals: an org that keys in most deals only once
    they are won would have entered that share of them after the point, as new deals. Every other
    win has weight 1. Each win also counts `lag_weight` times (`models.keying.KeyingLag`, 1 for
    wins booked long enough before `end`): the wins of the same days not keyed in yet.
    Returns (past quarter labels, oldest first; the won rows of `state` with columns
    `past_quarter`, `weight`, `imported` and `lag_weight`).
    """
    target_start, _ = period_bounds(quarter, fiscal_year_start_month)
    offset = end - target_start
    won, booked, imported, keyed_share, lag_weight = (
        stream.won, stream.booked, stream.imported, stream.keyed_share, stream.lag_weight
    )
    quarters: list[str] = []
    frames: list[pd.DataFrame] = []
    if pd.isna(stream.data_start):
        return quarters, won.iloc[0:0].assign(past_quarter="", weight=1.0, imported=False, lag_weight=1.0)
    back = 1
    while len(quarters) < lookback_quarters:
        start = target_start - pd.DateOffset(months=3 * back)
        stop = start + pd.DateOffset(months=3)
        cut = start + offset
        back += 1
        if cut < stream.data_start:
            break
        # Finished by `end`: its last instant (stop - 1 microsecond, as `end` is a day's last
        # instant) is at or before `end`.
        if stop - pd.Timedelta(microseconds=1) > end:
            continue
        label = quarter_label(start, fiscal_year_start_month)
        in_quarter = ((booked >= start) & (booked < stop)).to_numpy(dtype=bool)
        created_after = (won["created_at"] > cut).to_numpy(dtype=bool)
        # A deal of the go-live import won after the point was open in the CRM then only because
        # it was imported: under the org's habit it would have been keyed in at its win (after
        # the point) with the share of wins keyed in at close.
        won_after = (booked > cut).to_numpy(dtype=bool)
        take_imported = in_quarter & imported & won_after & (keyed_share > 0)
        quarters.append(label)
        for rows, weight, is_imported in ((in_quarter & created_after, 1.0, False), (take_imported, keyed_share, True)):
            frames.append(
                won.loc[rows].assign(past_quarter=label, weight=weight, imported=is_imported, lag_weight=lag_weight.loc[rows])
            )
    quarters.reverse()
    if frames:
        wins = pd.concat(frames, ignore_index=True)
    else:
        wins = won.iloc[0:0].assign(past_quarter="", weight=1.0, imported=False, lag_weight=1.0)
    return quarters, wins


def stream_mix_share(amounts: np.ndarray, n_quarters: int, pseudo_wins: float = MIX_PSEUDO_WINS) -> float:
    """The share of the new-deal run-rate's wins `simulate_new_deals` moves to the segments of the
    recent wins (`MIX_WINDOW_DAYS`): k / (n + k), n the past quarters' wins per quarter (those with
    an amount), k = `pseudo_wins`. Which owner, product or region the next quarter's new deals
    come from is read from n wins a quarter; with few of them (a small org: one or two a quarter
    per owner) a rep with none last quarter would be forecast none, and one with a lucky quarter
    that much again, while the mix moves from quarter to quarter. As in a Dirichlet prior of k
    pseudo-wins spread like the last year's won money, the mix of the few wins is drawn towards
    that of all recent wins, and hardly at all once a quarter holds hundreds."""
    if n_quarters < 1:
        return 0.0
    wins = np.count_nonzero(np.asarray(amounts) != 0) / n_quarters
    return float(pseudo_wins / (wins + pseudo_wins)) if pseudo_wins > 0 else 0.0


def run_rate_level_sd(
    amounts: np.ndarray,
    quarter_of: np.ndarray,
    n_quarters: int,
    prior_sd: float = LEVEL_PRIOR_SD,
    prior_quarters: float = LEVEL_PRIOR_QUARTERS,
) -> float:
    """The spread (standard deviation of the log) of a common factor on every draw of
    `simulate_new_deals`'s revenue, for what L = `n_quarters` past quarters cannot show of the
    next quarter's level.

    Each draw takes one past quarter's wins: across draws the level varies as the L past quarters
    did, about sigma^2 (L - 1) / L in the log for quarters spread sigma^2 around the business's
    level, while the next quarter's level is one more such quarter around a level read from L of
    them: sigma^2 (1 + 1 / L). The factor adds the difference, sigma^2 x 2 / L: with L = 1 (a CRM
    with one past quarter) every draw would otherwise repeat that quarter's level, and with 8 the
    addition is small. sigma^2 is the past quarters' variance of the log of their revenue (those
    with any; `amounts`, `quarter_of` as in `simulate_new_deals`) less the part the count noise of
    their wins already explains (a quarter of wins a_i: sum a_i^2 / (sum a_i)^2, which the draws
    simulate), pooled with a prior of `prior_sd` weighing as `prior_quarters` quarters: a small
    org's quarters are too few to tell their spread, so a new CRM's next quarter is taken to move
    by about a quarter (exp 0.25 = 1.28) in the log either way unless its quarters show otherwise."""
    if n_quarters < 1:
        return 0.0
    amounts = np.asarray(amounts, dtype="float64")
    quarter_of = np.asarray(quarter_of)
    totals = np.bincount(quarter_of, weights=amounts, minlength=n_quarters)
    squares = np.bincount(quarter_of, weights=amounts**2, minlength=n_quarters)
    seen = totals > 0
    spread, freedom = 0.0, 0
    if np.count_nonzero(seen) >= 2:
        logs = np.log(totals[seen])
        freedom = len(logs) - 1
        count_noise = float(np.mean(squares[seen] / totals[seen] ** 2))
        spread = max(0.0, float(np.sum((logs - logs.mean()) ** 2)) - freedom * count_noise)
    variance = (prior_quarters * prior_sd**2 + spread) / (prior_quarters + freedom)
    return float(np.sqrt(variance * 2.0 / n_quarters))


def level_factors(draws: int, sd: float, seed: int | np.random.SeedSequence) -> np.ndarray:
    """One factor per draw, exp(sd Z - sd^2 / 2) with Z standard normal: log-normal with mean 1."""
    if sd <= 0:
        return np.ones(draws)
    z = np.random.default_rng(seed).standard_normal(draws)
    return np.exp(sd * z - sd * sd / 2.0)


def creation_growth(
    created: pd.Series,
    end: pd.Timestamp,
    cuts: list[pd.Timestamp],
    window_days: int = GROWTH_WINDOW_DAYS,
    min_window_days: int = MIN_GROWTH_WINDOW_DAYS,
    pseudo_deals: float = GROWTH_PSEUDO_DEALS,
    max_growth: float = MAX_GROWTH,
) -> np.ndarray:
    """How many times more deals are being created now than before each past quarter's matching
    point: for each cut c in `cuts`,

        index = (N(end - w, end] + k) / (N(c - w, c] + k),   clipped to [1 / max_growth, max_growth]

    with N(a, b] the deals created in that span (`created`: every deal's creation instant, as known
    at `end`), w = min(`window_days`, c - the end of the data's first day) and k = `pseudo_deals`.
    A whole year by default, so the season is the same in both windows and under steady growth the
    index is exactly the growth between c and `end`. Deals created on the data's first day are not
    counted: that is where a bulk import or a CRM's go-live puts every earlier deal. Where less than
    `min_window_days` (half a year) of data precede c the index is 1: a shorter window compares
    different seasons, and in a CRM's first months the creations ramp up with its adoption (deals
    keyed in only when decided arrive weeks after they began), which is not growth. The
    pseudo-count keeps a small org's index near 1, and the clip keeps a change in how the CRM is
    used (a migration, an import) from being read as a doubling or halving of the business.
    """
    times = pd.to_datetime(created.dropna()).to_numpy(dtype="datetime64[us]")
    index = np.ones(len(cuts), dtype="float64")
    if len(times) == 0:
        return index
    times = np.sort(times)
    first_day_end = pd.Timestamp(times[0]).normalize() + pd.Timedelta(days=1)
    end64 = np.datetime64(pd.Timestamp(end), "us")

    def count(low: pd.Timestamp, high: pd.Timestamp) -> int:
        return int(
            np.searchsorted(times, np.datetime64(high, "us"), side="right")
            - np.searchsorted(times, np.datetime64(low, "us"), side="right")
        )

    for i, cut in enumerate(cuts):
        window = min(pd.Timedelta(days=window_days), pd.Timestamp(cut) - first_day_end)
        if window < pd.Timedelta(days=min_window_days):
            continue
        now = count(pd.Timestamp(end64) - window, pd.Timestamp(end64))
        then = count(pd.Timestamp(cut) - window, pd.Timestamp(cut))
        index[i] = float(np.clip((now + pseudo_deals) / (then + pseudo_deals), 1.0 / max_growth, max_growth))
    return index


def _stream_growth(
    state: pd.DataFrame, end: pd.Timestamp, quarter: str, past_quarters: list[str], fiscal_year_start_month: int
) -> np.ndarray:
    """`creation_growth` of each past quarter of `_new_deal_wins` (at its matching point)."""
    target_start, _ = period_bounds(quarter, fiscal_year_start_month)
    offset = end - target_start
    cuts = [period_bounds(q, fiscal_year_start_month)[0] + offset for q in past_quarters]
    return creation_growth(state["created_at"], end, cuts)


def new_deal_stream(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    quarter: str,
    fiscal_year_start_month: int = 1,
    segment_type: str = "all",
    *,
    lookback_quarters: int = DEFAULT_LOOKBACK_QUARTERS,
) -> pd.DataFrame:
    """Revenue from deals not yet created at `as_of`, as past quarters delivered it: one row per
    past quarter (index `past_quarter`, oldest first), one column per segment of `segment_type`,
    values the amount (reporting currency) won inside that quarter by deals created after the
    point matching `as_of` (the go-live import's deals weighted as `_new_deal_wins` says), times
    that quarter's `creation_growth` (how many
    times more deals are being created now than before its matching point). Zero rows when no past
    quarter qualifies.

    `history` is the output of `etl.pipeline_state.prepare_history`; everything is as known at the
    end of `as_of`. The forecast draws one row per Monte Carlo draw.
    """
    if segment_type not in SEGMENT_COLUMNS:
        raise ValueError(f"new_deal_stream: segment_type must be one of {list(SEGMENT_COLUMNS)}, got {segment_type!r}")
    _require_prepared(history, "new_deal_stream")
    end = as_of_end(as_of)
    state = pipeline_at(deals, history, end)
    quarters, wins = _new_deal_wins(_StreamWins.at(state, deals, end), end, quarter, fiscal_year_start_month, lookback_quarters)
    growth = pd.Series(_stream_growth(state, end, quarter, quarters, fiscal_year_start_month), index=quarters, dtype="float64")
    segment = segment_values(wins, segment_type)
    amount = (
        wins["amount_reporting"].astype("float64").fillna(0.0)
        * wins["weight"].astype("float64")
        * wins["lag_weight"].astype("float64")
        * wins["past_quarter"].map(growth).astype("float64")
    )
    table = (
        pd.DataFrame({"past_quarter": wins["past_quarter"], "segment": segment, "amount": amount})
        .groupby(["past_quarter", "segment"])["amount"]
        .sum()
        .unstack("segment", fill_value=0.0)
    )
    table = table.reindex(pd.Index(quarters, name="past_quarter"), fill_value=0.0)
    table.columns.name = segment_type
    return table.astype("float64")


# --- Inputs: scores, CRM probabilities, quotas, segments ------------------------------------------


def _win_probabilities(open_deals: pd.DataFrame, scores: pd.DataFrame) -> np.ndarray:
    """The scoring model's win probability of each open deal; the CRM's (else the stage's default)
    probability for deals the scores do not cover, with a warning."""
    missing = [c for c in ("deal_id", "win_probability") if c not in scores.columns]
    if missing:
        raise ValueError(f"forecast_quarterly: scores lack column(s) {missing}; expected deal_id, win_probability")
    duplicated = scores["deal_id"].duplicated()
    if duplicated.any():
        raise ValueError(
            f"forecast_quarterly: scores row {int(np.flatnonzero(duplicated)[0])}, column deal_id: "
            f"deal {scores.loc[duplicated, 'deal_id'].iloc[0]!r} is scored more than once"
        )
    probability = pd.to_numeric(scores["win_probability"], errors="coerce")
    bad = ~probability.between(0.0, 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"forecast_quarterly: scores row {row}, column win_probability: expected a probability 0..1 for deal "
            f"{scores['deal_id'].iloc[row]!r}, got {scores['win_probability'].iloc[row]!r}"
        )
    lookup = pd.Series(probability.to_numpy(), index=scores["deal_id"].astype("string").to_numpy())
    win = np.array(open_deals["deal_id"].astype("string").map(lookup), dtype="float64")
    unscored = np.isnan(win)
    if unscored.any():
        fallback = open_deals["crm_probability"].astype("float64").fillna(open_deals["stage_probability"]).to_numpy()
        win[unscored] = fallback[unscored]
        examples = open_deals.loc[unscored, "deal_id"].head(5).tolist()
        logger.warning(
            "forecast: %d open deal(s) have no model score; using their CRM probability instead (e.g. %s)",
            int(unscored.sum()), examples,
        )
        still = np.isnan(win)
        if still.any():
            raise ValueError(
                f"forecast_quarterly: open deal(s) {open_deals.loc[still, 'deal_id'].head(5).tolist()} have no score, "
                "no CRM probability and a stage without a configured probability; expected a win_probability in scores"
            )
    return np.clip(win, 0.0, 1.0)


def _quota_table(quotas: pd.DataFrame | None) -> pd.DataFrame:
    """Quotas keyed by (quarter, segment_type, segment), checked."""
    columns = ["quarter", "segment_type", "segment", "amount"]
    if quotas is None or quotas.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "amount" else "string") for c in columns})
    missing = [c for c in columns if c not in quotas.columns]
    if missing:
        raise ValueError(f"forecast_quarterly: quotas lack column(s) {missing}; expected {columns}")
    table = pd.DataFrame(
        {
            "quarter": quotas["quarter"].astype("string").str.strip(),
            "segment_type": quotas["segment_type"].astype("string").str.strip(),
            "segment": quotas["segment"].astype("string").str.strip(),
            "amount": pd.to_numeric(quotas["amount"], errors="coerce").astype("float64"),
        }
    ).reset_index(drop=True)
    unknown = ~table["segment_type"].isin(list(SEGMENT_COLUMNS))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(
            f"forecast_quarterly: quotas row {row}, column segment_type: expected one of {list(SEGMENT_COLUMNS)}, "
            f"got {table['segment_type'].iloc[row]!r}"
        )
    if table["amount"].isna().any():
        row = int(np.flatnonzero(table["amount"].isna().to_numpy())[0])
        raise ValueError(f"forecast_quarterly: quotas row {row}, column amount: expected a number, got {quotas['amount'].iloc[row]!r}")
    duplicated = table.duplicated(["quarter", "segment_type", "segment"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ValueError(
            f"forecast_quarterly: quotas row {row}: quarter {table['quarter'].iloc[row]} / "
            f"{table['segment_type'].iloc[row]} {table['segment'].iloc[row]!r} appears more than once"
        )
    return table


class SegmentIndex:
    """Every (segment_type, segment) the forecast reports, numbered 0..n-1 type by type, and the
    code of each deal's segment for every type."""

    def __init__(self, frames: list[pd.DataFrame], quotas: pd.DataFrame) -> None:
        types, values = [], []
        self.categories: dict[str, pd.Index] = {}
        self.offsets: dict[str, int] = {}
        for segment_type in SEGMENT_COLUMNS:
            seen = [segment_values(f, segment_type) for f in frames if len(f)]
            seen.append(quotas.loc[quotas["segment_type"] == segment_type, "segment"].astype("string"))
            if segment_type == "all":
                seen.append(pd.Series(["all"], dtype="string"))
            unique = pd.Index(pd.concat(seen, ignore_index=True).dropna().unique()).sort_values()
            self.categories[segment_type] = unique
            self.offsets[segment_type] = len(types)
            types.extend([segment_type] * len(unique))
            values.extend(unique.tolist())
        self.segment_type = np.array(types, dtype=object)
        self.segment = np.array(values, dtype=object)

    def __len__(self) -> int:
        return len(self.segment)

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """(rows, segment types) codes of each row's segments."""
        columns = []
        for segment_type, categories in self.categories.items():
            local = pd.Categorical(segment_values(frame, segment_type), categories=categories).codes
            columns.append(local.astype("int64") + self.offsets[segment_type])
        return np.stack(columns, axis=1) if columns else np.empty((len(frame), 0), dtype="int64")

    def sums(self, frame: pd.DataFrame, values: np.ndarray | None = None) -> np.ndarray:
        """Per segment: the sum of `values` over `frame`'s rows (their count when `values` is None)."""
        codes = self.codes(frame)
        weights = np.ones(len(frame)) if values is None else np.asarray(values, dtype="float64")
        return np.bincount(codes.ravel(), weights=np.repeat(weights, codes.shape[1]), minlength=len(self))


# --- Outliers ------------------------------------------------------------------------------------


def outlier_flags(
    open_deals: pd.DataFrame, won: pd.DataFrame, outlier_factor: float = _WARNINGS.outlier_factor
) -> tuple[np.ndarray, np.ndarray]:
    """Which open deals are outliers, and why in words (None where not): an amount above
    `outlier_factor` x the largest amount won by the same instant (`won`: the won rows of the same
    rebuild), or an expected close date before the day the deal was created. The same rules and
    factor ([warnings] outlier_factor) as the data-quality warnings `outlier_amounts` and
    `close_date_before_creation`."""
    amounts = open_deals["amount_reporting"].astype("float64").to_numpy()
    won_amounts = won["amount_reporting"].astype("float64").dropna()
    largest = float(won_amounts.max()) if len(won_amounts) else np.nan
    with np.errstate(invalid="ignore"):
        big = ~np.isnan(amounts) & (amounts > outlier_factor * largest)
    expected = pd.to_datetime(open_deals["expected_close_date"])
    created = pd.to_datetime(open_deals["created_at"]).dt.normalize()
    before = (expected < created).fillna(False).to_numpy(dtype=bool)
    reasons = np.full(len(open_deals), None, dtype=object)
    for i in np.flatnonzero(big | before):
        parts = []
        if big[i]:
            parts.append(f"amount {amounts[i]:,.0f} is {amounts[i] / largest:,.1f}x the largest win ({largest:,.0f})")
        if before[i]:
            parts.append(f"expected to close {expected.iloc[i]:%Y-%m-%d}, before it was created on {created.iloc[i]:%Y-%m-%d}")
        reasons[i] = "; ".join(parts)
    return big | before, reasons


# --- Which quarters can be backtested -----------------------------------------------------------


def backtest_quarters(
    deals: pd.DataFrame,
    as_of: dt.date | pd.Timestamp,
    fiscal_year_start_month: int = 1,
    quarters: int | None = None,
    min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS,
) -> list[str]:
    """The quarters a backtest at `as_of` forecasts again, oldest first: those that ended by the
    end of `as_of` and start at least `min_history_quarters` whole quarters after the quarter of
    the first deal's creation (the history before them holds that many full quarters); only the
    latest `quarters` of them (all when None)."""
    if quarters is not None and quarters < 0:
        raise ValueError(f"forecast_backtest: quarters must be 0 or more (dealcast.toml [forecast] backtest_quarters), got {quarters}")
    if min_history_quarters < 1:
        raise ValueError(f"forecast_backtest: min_history_quarters must be at least 1, got {min_history_quarters}")
    created = deals["created_at"].dropna()
    if created.empty or quarters == 0:
        return []
    first = first_backtest_quarter_start(deals, fiscal_year_start_month, min_history_quarters)
    # The quarter containing the instant just after as_of's end has not finished; the one before has.
    stop = quarter_start(as_of_end(as_of) + pd.Timedelta(microseconds=1), fiscal_year_start_month)
    labels: list[str] = []
    while quarters is None or len(labels) < quarters:
        start = stop - pd.DateOffset(months=3)
        if start < first:
            break
        labels.append(quarter_label(start, fiscal_year_start_month))
        stop = start
    return labels[::-1]


def first_backtest_quarter_start(
    deals: pd.DataFrame, fiscal_year_start_month: int = 1, min_history_quarters: int = DEFAULT_MIN_HISTORY_QUARTERS
) -> pd.Timestamp:
    """The first day of the first quarter with `min_history_quarters` full quarters of data before
    it: a full quarter starts on or after the first deal's creation (the data's first quarter counts
    when the first deal was created on its first day)."""
    data_start = deals["created_at"].dropna().min().normalize()
    first_full = quarter_start(data_start, fiscal_year_start_month)
    if first_full < data_start:
        first_full = first_full + pd.DateOffset(months=3)
    return first_full + pd.DateOffset(months=3 * min_history_quarters)


# --- The forecast -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """The `forecast_quarterly` rows and the `forecast_contributions` rows of one as_of."""

    quarterly: pd.DataFrame
    contributions: pd.DataFrame


def forecast_quarterly(*args, **kwargs) -> pd.DataFrame:
    """The `forecast_quarterly` rows of `build_forecast` (same arguments)."""
    return build_forecast(*args, **kwargs).quarterly


def build_forecast(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    stages: StageCatalog,
    as_of: dt.date | pd.Timestamp,
    scores: pd.DataFrame,
    timing: CloseTiming,
    quotas: pd.DataFrame | None,
    fiscal_year_start_month: int = 1,
    draws: int = _DEFAULTS.draws,
    seed: int = _DEFAULTS.seed,
    model_version: str = "",
    *,
    lookback_quarters: int = DEFAULT_LOOKBACK_QUARTERS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    outlier_factor: float = _WARNINGS.outlier_factor,
    not_yet_backtested: bool | None = None,
    revenue_calibration: RevenueCalibration | None = None,
    only_quarter: str | None = None,
    outlier_ranges: bool = True,
    label_horizon_days: float | None = None,
) -> Forecast:
    """The forecast for the quarter containing `as_of` and the next one, for every segment type
    and value: the `forecast_quarterly` rows and the per-deal `forecast_contributions` rows
    (columns exactly those of the warehouse tables).

    Per quarter and segment:
    - closed_won_to_date: amount of the deals won by the end of `as_of` whose booking date
      (`etl.bookings`: by default the CRM's close date) is in the quarter (0 for the next quarter);
    - open_deals, open_pipeline: the quarter's open pipeline (`etl.quarter_pipeline`: open deals
      expected to close in the quarter, for the current quarter also the overdue ones), with
      overdue_deals / overdue_pipeline the overdue part and weighted_pipeline_crm its amount x
      CRM probability (the stage's default where the deal has none);
    - every open deal (in the pipeline or not) wins inside the quarter with probability
      win_probability x horizon_factor x revenue_factor x P(closes inside the quarter | wins)
      (`models.timing`); its contribution is amount x that probability. horizon_factor turns the
      score, a chance of winning within the scorer's label horizon `label_horizon_days`, into a
      chance of winning at all (`models.timing.horizon_factor`; 1 without a horizon), capped so the
      probability stays below 1. revenue_factor is the deal's amount band's factor
      of `revenue_calibration` (`models.revenue_calibration`; 1 without one), capped so the
      probability stays below 1; revenue_calibration (the column) is what the factors changed; pipeline_expected (overdue_expected its overdue part) sums the
      contributions of the open pipeline, other_open_expected those of the other open deals;
    - new_deals_expected: the mean over past quarters of the new-deal run-rate (`new_deal_stream`),
      each scaled by its `creation_growth`; new_deals_trend: what that scaling added;
      new_deals_imported: the part of new_deals_expected from wins of the data's first-day import,
      each weighted by the share of wins keyed in at close (`_new_deal_wins`); new_deals_keying_lag:
      what counting the past quarters' wins not keyed in yet added (`models.keying.KeyingLag`);
    - expected = closed_won_to_date + pipeline_expected + other_open_expected + new_deals_expected,
      exactly (the mean of the law the draws sample); p10, p50, p90: quantiles of the draws;
    - outlier_deals / outlier_pipeline: open deals that can win in the quarter flagged by
      `outlier_flags`; p90_without_outliers: the P90 of the same draws (same seed) without them;
    - quota (NULL without one), gap = quota - p50, coverage = open_pipeline / (quota - closed
      won), NULL when that denominator is not positive (nothing left to cover);
    - not_yet_backtested: True when no quarter can be backtested yet (`backtest_quarters` with
      one quarter of history), unless the caller says otherwise.

    `scores` has deal_id and win_probability for the open deals at `as_of` (the only further
    change is the visible revenue calibration); `timing` is a `CloseTiming` fitted at the same `as_of`; `quotas` has
    quarter, segment_type, segment, amount.

    `only_quarter` (the current or the next quarter's label) forecasts that quarter alone, with
    the very draws it gets when both are forecast (each quarter's draws have their own seed);
    `outlier_ranges=False` leaves p90_without_outliers NULL instead of simulating the quarter a
    second time without the outliers. The backtest uses both: it reads one quarter's P10/P50/P90.
    """
    if draws < 1:
        raise ValueError(f"forecast_quarterly: draws must be at least 1, got {draws}")
    history = prepared_history(deals, history, stages)
    end = as_of_end(as_of)
    as_of_day = end.normalize()
    state = stages.annotate(pipeline_at(deals, history, end))
    open_deals = state.loc[state["status"] == STATUS_OPEN].reset_index(drop=True)
    stream = _StreamWins.at(state, deals, end)
    won = stream.won
    amounts = open_deals["amount_reporting"].astype("float64").fillna(0.0).to_numpy()
    win = _win_probabilities(open_deals, scores)
    # Only a score is a chance within the label horizon: the CRM probability standing in for a deal
    # without one is taken as it is.
    scored = open_deals["deal_id"].astype("string").isin(scores["deal_id"].astype("string")).to_numpy(dtype=bool)
    win_at_all = np.where(scored, win_at_all_probability(open_deals, win, timing, label_horizon_days), win)
    band_factor = np.ones(len(open_deals)) if revenue_calibration is None else revenue_calibration.factor(amounts)
    win_revenue = np.where(band_factor == 1.0, win_at_all, np.clip(win_at_all * band_factor, 0.0, CEILING))
    with np.errstate(divide="ignore", invalid="ignore"):
        to_win = np.where(win > 0, win_at_all / win, 1.0)
        revenue_factor = np.where(win_at_all > 0, win_revenue / win_at_all, 1.0)
    crm = open_deals["crm_probability"].astype("float64").fillna(open_deals["stage_probability"]).fillna(0.0).to_numpy()
    quota_table = _quota_table(quotas)
    is_outlier, outlier_reason = outlier_flags(open_deals, won, outlier_factor)
    is_overdue = overdue(open_deals["expected_close_date"], as_of_day)
    if not_yet_backtested is None:
        not_yet_backtested = not backtest_quarters(deals, as_of_day, fiscal_year_start_month, None, 1)

    current = quarter_label(end, fiscal_year_start_month)
    following = quarter_label(quarter_end(end, fiscal_year_start_month), fiscal_year_start_month)
    quarters = (current, following)
    if only_quarter is not None and only_quarter not in quarters:
        raise ValueError(
            f"forecast_quarterly: only_quarter must be the current quarter {current} or the next {following} "
            f"of as_of {end.date()}, got {only_quarter!r}"
        )
    current_start, _ = period_bounds(current, fiscal_year_start_month)
    booked = stream.booked  # closed won counts by booking date (etl.bookings)
    closed_won = won.loc[((booked >= current_start) & (booked <= end)).to_numpy(dtype=bool)]
    streams = {q: _new_deal_wins(stream, end, q, fiscal_year_start_month, lookback_quarters) for q in quarters}
    mix = stream.won.loc[((booked > end - pd.Timedelta(days=MIX_WINDOW_DAYS)) & (booked <= end)).to_numpy(dtype=bool)]
    mix_weights = mix["amount_reporting"].astype("float64").fillna(0.0).clip(lower=0.0).to_numpy()

    segments = SegmentIndex(
        [open_deals, closed_won, *(wins for _, wins in streams.values()), mix],
        quota_table.loc[quota_table["quarter"].isin(quarters)],
    )
    mix_codes = segments.codes(mix)
    mix_shares = mix_revenue_shares(mix_codes, mix_weights, len(segments)) if mix_weights.sum() > 0 else None
    open_codes = segments.codes(open_deals)
    closed_won_sums = segments.sums(closed_won, closed_won["amount_reporting"].fillna(0.0).to_numpy())
    logger.info(
        "forecast at %s: %d open deals (%d overdue, %d outliers), %d segments, %d draws per quarter",
        end.date(), len(open_deals), int(is_overdue.sum()), int(is_outlier.sum()), len(segments), draws,
    )

    frames, contributions = [], []
    for index, quarter in enumerate(quarters):
        if only_quarter is not None and quarter != only_quarter:
            continue
        start, stop = period_bounds(quarter, fiscal_year_start_month)
        closes_inside = _close_in_quarter(open_deals, timing, quarter, fiscal_year_start_month)
        probability = win_revenue * closes_inside
        contribution = amounts * probability
        calibration_change = amounts * (win_revenue - win_at_all) * closes_inside
        draw_seed = np.random.SeedSequence(seed, spawn_key=(index, 0))
        totals = simulate_quarter(
            amounts, probability, open_codes, len(segments), draws, draw_seed, chunk_size=chunk_size, workers=workers
        )
        past_quarters, wins = streams[quarter]
        new_deals = np.zeros(len(segments))
        new_deals_trend = np.zeros(len(segments))
        new_deals_imported = np.zeros(len(segments))
        new_deals_keying_lag = np.zeros(len(segments))
        new_draws = np.zeros((draws, len(segments)))
        if past_quarters:
            position = pd.Categorical(wins["past_quarter"], categories=past_quarters).codes.astype("int64")
            codes = segments.codes(wins)
            growth = _stream_growth(state, end, quarter, past_quarters, fiscal_year_start_month)
            weighted = wins["amount_reporting"].fillna(0.0).to_numpy(dtype="float64") * wins["weight"].to_numpy(dtype="float64")
            lag_weight = wins["lag_weight"].to_numpy(dtype="float64")
            recorded = weighted * lag_weight
            # Each past quarter's wins scaled by how much more deals are created now (creation_growth).
            new_amounts = recorded * growth[position]
            imported = wins["imported"].to_numpy(dtype=bool)

            share = stream_mix_share(new_amounts, len(past_quarters))
            mix_share = 0.0 if mix_shares is None else share

            def mean_per_segment(values: np.ndarray) -> np.ndarray:
                """The mean over draws, per segment, of what `values` (one per win) add up to."""
                return new_deal_segment_means(
                    values, position, codes, len(past_quarters), len(segments), drawn=new_amounts != 0,
                    mix_share=mix_share, mix_shares=mix_shares, amount_share=share,
                )

            new_draws = simulate_new_deals(
                new_amounts, position, codes, len(past_quarters), len(segments), draws,
                np.random.SeedSequence(seed, spawn_key=(index, 1)), chunk_size=chunk_size,
                mix_share=mix_share, mix_codes=mix_codes, mix_weights=mix_weights, amount_share=share,
            )
            new_draws *= level_factors(
                draws, run_rate_level_sd(new_amounts, position, len(past_quarters)),
                np.random.SeedSequence(seed, spawn_key=(index, 2)),
            )[:, None]
            new_deals = mean_per_segment(new_amounts)
            new_deals_trend = new_deals - mean_per_segment(recorded)
            new_deals_imported = mean_per_segment(np.where(imported, new_amounts, 0.0))
            new_deals_keying_lag = mean_per_segment(weighted * (lag_weight - 1.0) * growth[position])
        closed = closed_won_sums if quarter == current else np.zeros(len(segments))
        summary = summarise_draws(totals + new_draws + closed)

        can_win = probability > 0
        outliers = is_outlier & can_win
        if not outlier_ranges:
            p90_without = np.full(len(segments), np.nan)
        elif outliers.any():
            # The same draws (same seed, same deal order) with the outliers unable to win.
            without = simulate_quarter(
                amounts, np.where(outliers, 0.0, probability), open_codes, len(segments), draws, draw_seed,
                chunk_size=chunk_size, workers=workers,
            )
            p90_without = summarise_draws(without + new_draws + closed)["p90"]
        else:
            p90_without = summary["p90"]

        in_pipeline = in_quarter_pipeline(open_deals["expected_close_date"], as_of_day, start, stop, fiscal_year_start_month)
        pipeline_deals = open_deals.loc[in_pipeline]
        overdue_in = in_pipeline & is_overdue
        pipeline_expected = segments.sums(pipeline_deals, contribution[in_pipeline])
        other_expected = segments.sums(open_deals.loc[~in_pipeline], contribution[~in_pipeline])
        frames.append(
            pd.DataFrame(
                {
                    "quarter": quarter,
                    "segment_type": segments.segment_type,
                    "segment": segments.segment,
                    "closed_won_to_date": closed,
                    **summary,
                    "expected": closed + pipeline_expected + other_expected + new_deals,
                    "weighted_pipeline_crm": segments.sums(pipeline_deals, amounts[in_pipeline] * crm[in_pipeline]),
                    "open_deals": segments.sums(pipeline_deals).round().astype("int64"),
                    "open_pipeline": segments.sums(pipeline_deals, amounts[in_pipeline]),
                    "overdue_deals": segments.sums(open_deals.loc[overdue_in]).round().astype("int64"),
                    "overdue_pipeline": segments.sums(open_deals.loc[overdue_in], amounts[overdue_in]),
                    "pipeline_expected": pipeline_expected,
                    "overdue_expected": segments.sums(open_deals.loc[overdue_in], contribution[overdue_in]),
                    "other_open_expected": other_expected,
                    "new_deals_expected": new_deals,
                    "new_deals_trend": new_deals_trend,
                    "new_deals_imported": new_deals_imported,
                    "new_deals_keying_lag": new_deals_keying_lag,
                    "revenue_calibration": segments.sums(open_deals, calibration_change),
                    "outlier_deals": segments.sums(open_deals.loc[outliers]).round().astype("int64"),
                    "outlier_pipeline": segments.sums(open_deals.loc[outliers], amounts[outliers]),
                    "p90_without_outliers": p90_without,
                }
            )
        )
        rows = in_pipeline | can_win
        part = open_deals.loc[rows]
        contributions.append(
            pd.DataFrame(
                {
                    "as_of": as_of_day,
                    "quarter": quarter,
                    "deal_id": part["deal_id"].to_numpy(),
                    **{c: part[c].to_numpy() for c in _CONTRIBUTION_SEGMENTS},
                    "stage": part["stage"].to_numpy(),
                    "amount_reporting": part["amount_reporting"].to_numpy(dtype="float64", na_value=np.nan),
                    "expected_close_date": pd.to_datetime(part["expected_close_date"]).to_numpy(),
                    "win_probability": win[rows],
                    "horizon_factor": to_win[rows],
                    "revenue_factor": revenue_factor[rows],
                    "close_in_quarter_probability": closes_inside[rows],
                    "win_in_quarter_probability": probability[rows],
                    "contribution": contribution[rows],
                    "in_open_pipeline": in_pipeline[rows],
                    "overdue": is_overdue[rows],
                    "outlier": is_outlier[rows],
                    "outlier_reason": outlier_reason[rows],
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True).astype(
        {"quarter": "string", "segment_type": "string", "segment": "string"}
    )
    frame = frame.merge(
        quota_table.rename(columns={"amount": "quota"}), on=["quarter", "segment_type", "segment"], how="left",
        validate="one_to_one",
    )
    frame["gap"] = frame["quota"] - frame["p50"]
    remaining = frame["quota"] - frame["closed_won_to_date"]
    frame["coverage"] = (frame["open_pipeline"] / remaining).where(remaining > 0)
    frame["as_of"] = as_of_day
    frame["model_version"] = model_version
    frame["draws"] = draws
    frame["not_yet_backtested"] = bool(not_yet_backtested)
    quarterly = frame[FORECAST_COLUMNS].astype({"model_version": "string", "draws": "int64", "not_yet_backtested": "bool"})
    contribution_frame = pd.concat(contributions, ignore_index=True).astype(
        {"quarter": "string", "deal_id": "string", "stage": "string", "outlier_reason": "string",
         **{c: "string" for c in _CONTRIBUTION_SEGMENTS}}
    )
    return Forecast(quarterly, contribution_frame[CONTRIBUTION_COLUMNS].reset_index(drop=True))


def _close_in_quarter(open_deals: pd.DataFrame, timing: CloseTiming, quarter: str, fiscal_year_start_month: int) -> np.ndarray:
    """P(the deal, if it wins, closes inside `quarter`) from the close-timing model."""
    start, end = period_bounds(quarter, fiscal_year_start_month)
    closed_by = timing.probability_closed_by_many(open_deals, [start, end])
    return np.clip(closed_by[:, 1] - closed_by[:, 0], 0.0, 1.0)
