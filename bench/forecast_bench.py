"""Benchmark the forecast's Monte Carlo and the forecast backtest.

    python bench/forecast_bench.py simulate --open-deals 100000 1000000 [--draws 10000]
    python bench/forecast_bench.py backtest --deals 10000 [--quarters 8] [--retrain quarter]
    python bench/forecast_bench.py messy --seeds 1 2 3 4 5 [--deals 720] [--years 1.5]

`simulate` times `models.forecast.simulate_quarter` alone (random amounts and probabilities, every
segment type's codes as in a real forecast: 8 columns). `backtest` generates the sample CRM, reads it
and runs `models.backtest.forecast_backtest` with the project's settings, then prints the accuracy
table (WAPE, bias, interval coverage per method and checkpoint). `messy` does the same on messy-org
samples (`generate_sample(profile="messy")`, one per seed), backtesting every quarter that has a full
quarter of data before it, and prints per seed and pooled: the backtested quarter x segment rows of
`ours` and the share whose actual lies inside P10-P90 (target 70-90%), and the company-total WAPE
at the quarter's start against the CRM-weighted pipeline's. Each step prints wall time and peak
resident memory (Linux: the high-water mark is reset before each step).
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
from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import prepare_history  # noqa: E402
from etl.charts import markdown_table  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402
from models.backtest import backtest_summary, backtested_rows, forecast_backtest  # noqa: E402
from models.forecast import simulate_quarter  # noqa: E402


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


def backtest(deals: int, seed: int, end: dt.date, quarters: int, retrain: str, draws: int | None) -> None:
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


def messy(seeds: list[int], deals: int | None, years: float | None, end: dt.date, draws: int) -> None:
    project = load_project_config()
    forecast = replace(project.forecast, backtest_quarters=None, draws=draws)
    frames = []
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"dealcast-messy-{seed}-"))
        summary = _timed(
            f"seed {seed}: generate messy sample",
            lambda: generate_sample(out, n_deals=deals, seed=seed, end_date=end, years=years, profile="messy"),
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
    me = sub.add_parser("messy")
    me.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    me.add_argument("--deals", type=int, default=None, help="simulated deals per sample (default: the messy profile's 720)")
    me.add_argument("--years", type=float, default=None, help="years of data (default: the messy profile's)")
    me.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15))
    me.add_argument("--draws", type=int, default=2_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.command == "simulate":
        simulate(args.open_deals, args.draws)
    elif args.command == "messy":
        messy(args.seeds, args.deals, args.years, args.end, args.draws)
    else:
        backtest(args.deals, args.seed, args.end, args.quarters, args.retrain, args.draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
