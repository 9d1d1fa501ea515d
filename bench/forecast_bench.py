"""Benchmark the forecast's Monte Carlo and the forecast backtest.

    python bench/forecast_bench.py simulate --open-deals 100000 1000000 [--draws 10000]
    python bench/forecast_bench.py backtest --deals 10000 [--quarters 8] [--retrain quarter]

`simulate` times `models.forecast.simulate_quarter` alone (random amounts and probabilities, every
segment type's codes as in a real forecast: 8 columns). `backtest` generates the sample CRM, reads it
and runs `models.backtest.forecast_backtest` with the project's settings, then prints the accuracy
table (WAPE, bias, interval coverage per method and checkpoint). Each step prints wall time and peak
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _peak_rss_mb, _reset_peak  # noqa: E402  (bench/bench.py, next to this script)
from etl.config import load_project_config  # noqa: E402
from etl.ingest import read_exports  # noqa: E402
from etl.pipeline_state import prepare_history  # noqa: E402
from etl.report import markdown_table  # noqa: E402
from etl.sample_crm import generate_sample  # noqa: E402
from models.backtest import backtest_summary, forecast_backtest  # noqa: E402
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.command == "simulate":
        simulate(args.open_deals, args.draws)
    else:
        backtest(args.deals, args.seed, args.end, args.quarters, args.retrain, args.draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
