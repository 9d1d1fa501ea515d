"""Benchmark the forecast's Monte Carlo and the forecast backtest.

    python bench/forecast_bench.py simulate --open-deals 100000 1000000 [--draws 10000]
    python bench/forecast_bench.py backtest --deals 10000 [--quarters 8] [--retrain quarter] [--truth]
    python bench/forecast_bench.py messy --seeds 1 2 3 4 5 [--deals 720] [--years 1.5] [--option NAME=VALUE]
    python bench/forecast_bench.py factors --seeds 1 2 3 [--deals 720]

`simulate` times `models.forecast.simulate_quarter` alone (random amounts and probabilities, every
segment type's codes as in a real forecast: 8 columns). `backtest` generates the sample CRM, reads it
and runs `models.backtest.forecast_backtest` with the project's settings, then prints the accuracy
table (WAPE, bias, interval coverage per method and checkpoint); with `--truth` also, per quarter at
its start, the simulator's own expectation of the company total (closed won + each open deal's
amount x its true chance of winning before the quarter ends + the revenue the hidden parameters
expect from deals not yet created) and its WAPE: the error a forecast that knew the parameters
would still make, as the quarters' outcomes vary around their expectation. `messy` does the same on messy-org
samples (`generate_sample(profile="messy")`, one per seed), backtesting every quarter that has a full
quarter of data before it, and prints per seed and pooled: the backtested quarter x segment rows of
`ours` and the share whose actual lies inside P10-P90 (target 70-90%), and the company-total WAPE
at the quarter's start against the CRM-weighted pipeline's. `factors` takes the same messy samples
(or `--profile clean` simulator samples) and, for the first backtested quarter (or `--quarter`),
trains the models as the night before the quarter would and splits the open deals' expected
in-quarter wins into their factors, each against what happened by `--end`: amount x P(win) against
the amount won by then, amount x P(closes in the quarter | wins) over the deals that won against the
amount won inside the quarter, and the product (also with the forecast's revenue calibration) against
the latter; per group of deals (all, overdue or not, more or fewer than 90 days in their stage,
terciles of the amount), with the CRM-weighted amount and the training rows' win rate beside them.
The other commands print each step's wall time, CPU time and peak resident memory (Linux: the
high-water mark is reset before each step).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _peak_rss_mb, _reset_peak  # noqa: E402  (bench/bench.py, next to this script)
from etl.bookings import state_booking_dates  # noqa: E402
from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.periods import period_bounds  # noqa: E402
from etl.pipeline_state import as_of_end, pipeline_at, prepare_history, reusing_states  # noqa: E402
from etl.charts import markdown_table  # noqa: E402
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402
from sample_crm.messy import MessyOptions  # noqa: E402
from sample_crm.quotas import expected_new_deal_revenue  # noqa: E402
from sample_crm.world import SampleWorld  # noqa: E402
from models.backtest import backtest_summary, backtested_rows, forecast_backtest, models_at, quarter_actuals  # noqa: E402
from models.forecast import backtest_quarters, simulate_quarter  # noqa: E402
from models.revenue_calibration import CEILING  # noqa: E402
from models.timing import win_in_quarter_probability  # noqa: E402
from models.training_set import build_training_set, snapshot_features  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(name: str, action):
    """Run `action`, printing wall time, CPU time (all threads; on a busy machine wall time
    includes waiting for a core) and peak resident memory."""
    _reset_peak()
    start, cpu = time.perf_counter(), _cpu_seconds()
    value = action()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    print(f"  {name:<60} {seconds:8.1f} s wall  {cpu:8.1f} s CPU  {_peak_rss_mb():8.0f} MB peak RSS", flush=True)
    return value


def simulate(open_deals: list[int], draws: int) -> None:
    rng = np.random.default_rng(0)
    for n in open_deals:
        amounts = rng.lognormal(10.0, 1.0, n)
        probabilities = rng.uniform(0.0, 0.6, n)
        # Eight segment types as the forecast has them, sized like the sample CRM: all, pipeline (3),
        # owner (12 + n/2500 reps, at most 500), team, product, region, lead source, deal type.
        sizes = [1, 3, min(12 + n // 2500, 500), 20, 4, 4, 11, 4]
        offsets = np.cumsum([0, *sizes[:-1]])
        codes = np.stack([offsets[i] + rng.integers(0, s, n) for i, s in enumerate(sizes)], axis=1)
        _timed(
            f"simulate_quarter {n:,} open deals x {draws:,} draws",
            lambda: simulate_quarter(amounts, probabilities, codes, int(sum(sizes)), draws, seed=1),
        )


def truth_at_start(export, history, seed: int, deals: int, end: dt.date, quarters: list[str], fy: int) -> pd.DataFrame:
    """The simulator's own expectation of each quarter's company-total revenue at the quarter's
    start, as a forecast that knew the hidden parameters would give it: closed won to date + each
    open deal's amount x its true chance of being won before the quarter ends
    (`SampleWorld.true_win_within_probability`) + the revenue the parameters expect from deals
    created and won inside the quarter (`sample_crm.quotas.expected_new_deal_revenue`)."""
    world = SampleWorld.build(seed=seed, n_deals=deals, end_date=end)
    rows = []
    for quarter in quarters:
        start, stop = period_bounds(quarter, fy)
        as_of = (start - pd.Timedelta(days=1)).date()
        # The open deals and the wins booked so far both read the pipeline at the end of as_of: built once.
        with reusing_states():
            state = pipeline_at(export.deals, history, as_of_end(as_of))
            closed = quarter_actuals(export.deals, history, as_of, [quarter], fy)
        open_deals = state.loc[state["status"] == STATUS_OPEN].assign(snapshot_at=as_of_end(as_of))
        days_left = (stop - as_of_end(as_of)).total_seconds() / 86_400
        chance = world.true_win_within_probability(open_deals, days_left).to_numpy()
        amount = open_deals["amount_reporting"].astype("float64").fillna(0.0).to_numpy()
        closed = closed.loc[closed["segment_type"] == "all", "actual"].sum()
        rows.append({
            "quarter": quarter,
            "truth_closed_won": float(closed),
            "truth_open": float(amount @ chance),
            "truth_new_deals": expected_new_deal_revenue(world, start.date(), stop.date()),
        })
    frame = pd.DataFrame(rows)
    frame["truth_expected"] = frame["truth_closed_won"] + frame["truth_open"] + frame["truth_new_deals"]
    return frame


def _print_truth(frame: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Per quarter at its start, company total: our expected and P50, the truth's expectation and
    the actual; then WAPE and bias of each against the actual."""
    ours = frame[(frame["method"] == "ours") & (frame["checkpoint"] == "start") & (frame["segment_type"] == "all")]
    table = truth.merge(ours[["quarter", "expected", "forecast_p50", "actual"]], on="quarter", how="inner")
    print("\nCompany total at the quarter's start against the simulator's truth (millions):\n")
    shown = table[["quarter", "expected", "forecast_p50", "truth_closed_won", "truth_open", "truth_new_deals", "truth_expected", "actual"]]
    print(markdown_table(shown.assign(**{c: shown[c] / 1e6 for c in shown.columns if c != "quarter"}), floatfmt="{:,.3f}"))
    actual = table["actual"].sum()
    print()
    for name, column in (("ours, P50", "forecast_p50"), ("ours, expected", "expected"), ("truth, expected", "truth_expected")):
        error = table[column] - table["actual"]
        print(f"  {name:<16} WAPE {error.abs().sum() / actual:6.1%}  bias {error.sum() / actual:+6.1%}")


def backtest(deals: int, seed: int, end: dt.date, quarters: int, retrain: str, draws: int | None, truth: bool = False) -> None:
    project = load_project_config()
    forecast = replace(project.forecast, backtest_quarters=quarters, backtest_retrain=retrain)
    if draws is not None:
        forecast = replace(forecast, draws=draws)
    out = Path(tempfile.mkdtemp(prefix="dealcast-backtest-"))
    _timed(f"generate {deals:,} deals", lambda: generate_sample(out, n_deals=deals, seed=seed, end_date=end))
    export = _timed("read + prepare history", lambda: read_exports(out, project))
    history = prepare_history(export.deals, export.history, export.stages)
    frame = _timed(
        f"forecast_backtest ({quarters} quarters, retrain per {retrain}, {forecast.draws:,} draws)",
        lambda: forecast_backtest(
            export.deals, history, export.stages, end, project.model, forecast, project.fiscal_year_start_month
        ),
    )
    print(f"\n{frame['quarter'].nunique()} quarters ({frame['quarter'].min()}..{frame['quarter'].max()}), {len(frame):,} rows\n")
    print("All segment types (quarter x segment rows):\n")
    print(markdown_table(backtest_summary(frame, by=("method", "checkpoint")), floatfmt="{:,.3f}"))
    print("\nCompany total (segment_type all):\n")
    print(markdown_table(backtest_summary(frame[frame["segment_type"] == "all"], by=("method", "checkpoint")), floatfmt="{:,.3f}"))
    if truth:
        backtested = sorted(backtested_rows(frame)["quarter"].unique())
        _print_truth(frame, truth_at_start(export, history, seed, deals, end, backtested, project.fiscal_year_start_month))


def messy(seeds: list[int], deals: int | None, years: float | None, end: dt.date, draws: int, options: list[str]) -> None:
    project = load_project_config()
    forecast = replace(project.forecast, backtest_quarters=None, draws=draws)
    frames = []
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"dealcast-messy-{seed}-"))
        summary = _timed(
            f"seed {seed}: generate messy sample",
            lambda: generate_sample(
                out, n_deals=deals, seed=seed, end_date=end, years=years, profile="messy",
                messy=MessyOptions().with_assignments(options),
            ),
        )
        export = read_exports(out, project)
        history = prepare_history(export.deals, export.history, export.stages)
        frame = _timed(
            f"seed {seed}: forecast_backtest ({len(export.deals):,} deals in the export)",
            lambda: forecast_backtest(
                export.deals, history, export.stages, end, project.model, forecast, project.fiscal_year_start_month
            ),
        )
        frames.append(frame.assign(seed=seed))
        _print_messy(f"seed {seed} ({summary.n_deals:,} deals exported)", frame)
    pooled = pd.concat(frames, ignore_index=True)
    _print_messy(f"all {len(seeds)} seeds", pooled)


def _print_messy(title: str, frame: pd.DataFrame) -> None:
    rows = backtested_rows(frame)
    if rows.empty:
        print(f"{title}: nothing backtested: {frame['status_reason'].iloc[0]}", flush=True)
        return
    ours = rows[rows["method"] == "ours"]
    inside = ours["within_interval"].astype(bool)
    start = rows[(rows["checkpoint"] == "start") & (rows["segment_type"] == "all")]
    wape = backtest_summary(start, by=("method",)).set_index("method")["wape"]
    print(
        f"{title}: quarters {sorted(rows['quarter'].unique())}; ours P10-P90 covers {int(inside.sum()):,} of "
        f"{len(ours):,} quarter x segment x checkpoint rows = {inside.mean():.1%}; company total at quarter start: "
        f"WAPE ours {wape.get('ours', float('nan')):.1%}, crm_weighted {wape.get('crm_weighted', float('nan')):.1%}, "
        f"stage_rate {wape.get('stage_rate', float('nan')):.1%}",
        flush=True,
    )


STALE_STAGE_DAYS = 90


def _amount_terciles(amount: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of the thirds of `amount`, lowest first; a value on an edge is in the lower third."""
    edges = np.quantile(amount, [0, 1 / 3, 2 / 3, 1])
    groups = []
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        above = amount >= low if i == 0 else amount > low
        groups.append((f"amount tercile {i + 1} ({low:,.0f}-{high:,.0f})", above & (amount <= high)))
    return groups


def factors(seeds: list[int], deals: int | None, end: dt.date, profile: str, quarter: str | None) -> None:
    project = load_project_config()
    fy = project.fiscal_year_start_month
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"dealcast-factors-{seed}-"))
        generate_sample(out, n_deals=deals, seed=seed, end_date=end, profile=profile)
        export = read_exports(out, project)
        history = prepare_history(export.deals, export.history, export.stages)
        quarters = backtest_quarters(export.deals, end, fy)
        if not quarters or (quarter is not None and quarter not in quarters):
            print(f"seed {seed}: {quarter or 'no quarter'} is not backtestable (backtestable: {quarters})", flush=True)
            continue
        quarter = quarter or quarters[0]
        start, stop = period_bounds(quarter, fy)
        as_of = (start - pd.Timedelta(days=1)).date()
        training = build_training_set(
            export.deals, history, export.stages, as_of, frequency=project.model.snapshot_frequency, fiscal_year_start_month=fy
        )
        models = models_at(export.deals, history, export.stages, as_of, project.model, fy)
        state = export.stages.annotate(pipeline_at(export.deals, history, as_of_end(as_of)))
        open_deals = state.loc[state["status"] == STATUS_OPEN].reset_index(drop=True)
        features = snapshot_features(export.deals, history, export.stages, as_of, fiscal_year_start_month=fy)
        scores = pd.Series(models.scorer.predict_proba(features), index=features["deal_id"].astype("string").to_numpy())
        ids = open_deals["deal_id"].astype("string")
        win = ids.map(scores).to_numpy(dtype="float64")
        timing = win_in_quarter_probability(open_deals, np.ones(len(open_deals)), models.timing, quarter, fy)
        crm = open_deals["crm_probability"].astype("float64").fillna(open_deals["stage_probability"]).fillna(0.0).to_numpy()
        amount = open_deals["amount_reporting"].astype("float64").fillna(0.0).to_numpy()
        # The revenue calibration as the forecast applies it (models.forecast.build_forecast).
        calibrated = np.clip(win * models.calibration.factor(amount), 0.0, CEILING)
        final = pipeline_at(export.deals, history, as_of_end(end))
        final.index = final["deal_id"].astype("string")
        outcome = ids.map(final["status"]).to_numpy()
        won_final = final.loc[final["status"] == STATUS_WON]
        booked = pd.Series(state_booking_dates(won_final, export.deals, as_of_end(end)).to_numpy(), index=won_final.index)
        booking = pd.to_datetime(ids.map(booked))
        won = outcome == STATUS_WON
        won_inside = won & ((booking >= start) & (booking < stop)).fillna(False).to_numpy(dtype=bool)
        overdue = (pd.to_datetime(open_deals["expected_close_date"]) < pd.Timestamp(as_of)).fillna(False).to_numpy(dtype=bool)
        stale = (pd.to_numeric(open_deals["days_in_stage"], errors="coerce") > STALE_STAGE_DAYS).fillna(False).to_numpy(dtype=bool)
        trained_days = pd.to_numeric(training.frame["days_in_stage"], errors="coerce")
        print(
            f"\nseed {seed}: quarter {quarter}, models as of {as_of}, published scorer {models.scorer.scoring_method}; "
            f"training rows {len(training.frame):,} (win rate {training.frame['label'].mean():.2f}, "
            f"at most {trained_days.max():.0f} days in stage), {training.censored_deals} deals still open left out; "
            f"amounts in millions, outcomes as known at {end}",
            flush=True,
        )
        rows = []
        for name, mask in (
            ("all open", np.ones(len(open_deals), dtype=bool)),
            ("overdue", overdue),
            ("not overdue", ~overdue),
            (f"> {STALE_STAGE_DAYS} days in stage", stale),
            (f"<= {STALE_STAGE_DAYS} days in stage", ~stale),
            *_amount_terciles(amount),
        ):
            a = amount[mask]
            rows.append({
                "deals": int(mask.sum()),
                "group": name,
                "amount": a.sum() / 1e6,
                "x P(win)": (a * win[mask]).sum() / 1e6,
                "x CRM prob.": (a * crm[mask]).sum() / 1e6,
                "won by end": a[won[mask]].sum() / 1e6,
                "still open at end": a[outcome[mask] == STATUS_OPEN].sum() / 1e6,
                "lost by end": a[outcome[mask] == STATUS_LOST].sum() / 1e6,
                "winners x P(in quarter)": (a * timing[mask] * won[mask]).sum() / 1e6,
                "won in quarter": a[won_inside[mask]].sum() / 1e6,
                "x P(win) x P(in quarter)": (a * win[mask] * timing[mask]).sum() / 1e6,
                "same, revenue-calibrated": (a * calibrated[mask] * timing[mask]).sum() / 1e6,
                "mean P(win)": float(win[mask].mean()) if mask.any() else float("nan"),
                "mean P(in quarter | wins)": float(timing[mask].mean()) if mask.any() else float("nan"),
                "deal win rate by end": float(won[mask].mean()) if mask.any() else float("nan"),
            })
        print(markdown_table(pd.DataFrame(rows), floatfmt="{:,.2f}"), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate")
    sim.add_argument("--open-deals", type=int, nargs="+", default=[100_000, 1_000_000])
    sim.add_argument("--draws", type=int, default=10_000)
    bt = sub.add_parser("backtest")
    bt.add_argument("--deals", type=int, default=10_000)
    bt.add_argument("--seed", type=int, default=7)
    bt.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2025, 12, 31))
    bt.add_argument("--quarters", type=int, default=8)
    bt.add_argument("--retrain", choices=["quarter", "checkpoint"], default="quarter")
    bt.add_argument("--draws", type=int, default=None)
    bt.add_argument("--truth", action="store_true", help="also the simulator's own expectation at each quarter's start, and its WAPE")
    me = sub.add_parser("messy")
    me.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    me.add_argument("--deals", type=int, default=None, help="simulated deals per sample (default: the messy profile's 720)")
    me.add_argument("--years", type=float, default=None, help="years of data (default: the messy profile's)")
    me.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15))
    me.add_argument("--draws", type=int, default=2_000)
    me.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE",
        help="a messy-profile option, repeatable (as sample_crm's --option), e.g. import_at=0.625",
    )
    fa = sub.add_parser("factors")
    fa.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    fa.add_argument("--deals", type=int, default=None, help="simulated deals per sample (default: the profile's)")
    fa.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15))
    fa.add_argument("--profile", choices=["messy", "clean"], default="messy")
    fa.add_argument("--quarter", default=None, help="the quarter to split, e.g. 2024-Q3 (default: the first backtestable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.command == "simulate":
        simulate(args.open_deals, args.draws)
    elif args.command == "factors":
        factors(args.seeds, args.deals, args.end, args.profile, args.quarter)
    elif args.command == "messy":
        messy(args.seeds, args.deals, args.years, args.end, args.draws, args.option)
    else:
        backtest(args.deals, args.seed, args.end, args.quarters, args.retrain, args.draws, args.truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
