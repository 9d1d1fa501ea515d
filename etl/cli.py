"""`dealcast` command line: generate the sample CRM, and summarise the latest run from the warehouse."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import pandas as pd

from etl.config import default_warehouse_url, resolve_settings
from etl.periods import quarter_label
from etl.quality_warnings import WARNINGS
from etl.sample_crm import add_sample_arguments, messy_options_from
from etl.warehouse import Warehouse, WarehouseError


def _money(value: float | None, currency: str) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:,.0f} {currency}"


def _number(value: float | None, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None or pd.isna(value) else pattern.format(value)


def summary_lines(warehouse: Warehouse, currency: str, fiscal_year_start_month: int) -> list[str]:
    """What the latest run produced, in a few lines a data engineer reads after `make demo`."""
    as_of = warehouse.latest_as_of("forecast_quarterly") or warehouse.latest_as_of("data_quality_results")
    if as_of is None:
        return [f"The warehouse at {warehouse.safe_url} has no run yet: run `make demo` first."]
    recon = warehouse.read("reconciliation", as_of=as_of)
    deals = warehouse.read("deals")
    closed = deals[deals["status"].isin(["won", "lost"])]
    won = int((closed["status"] == "won").sum())
    lines = [
        f"Dealcast run for as_of {as_of}",
        f"  input rows read {int(recon['rows_read'].sum()):,} = accepted {int(recon['accepted'].sum()):,}"
        f" + quarantined {int(recon['quarantined'].sum()):,} (in {len(recon)} files)",
        f"  deals accepted {len(deals):,}: {int((deals['status'] == 'open').sum()):,} open, {won:,} won,"
        f" {len(closed) - won:,} lost; win rate {won / len(closed):.1%}" if len(closed) else "  no closed deals",
    ]
    forecast = warehouse.read("forecast_quarterly", as_of=as_of)
    this_quarter = forecast[
        (forecast["segment_type"] == "all") & (forecast["quarter"] == quarter_label(as_of, fiscal_year_start_month))
    ]
    if not this_quarter.empty:
        row = this_quarter.iloc[0]
        lines.append(
            f"  forecast {row['quarter']}: P10 {_money(row['p10'], currency)} | P50 {_money(row['p50'], currency)}"
            f" | P90 {_money(row['p90'], currency)} (closed won so far {_money(row['closed_won_to_date'], currency)},"
            f" quota {_money(row['quota'], currency)})"
        )
    runs = warehouse.read("model_runs")
    if not runs.empty:
        run = runs.sort_values("trained_at").iloc[-1]
        lines.append(
            f"  deal-scoring model {run['model_version']} ({run['scoring_method']}): held-out log loss"
            f" {_number(run['log_loss'])}, AUC {_number(run['auc'])}; stage-rate baseline log loss"
            f" {_number(run['stage_rate_baseline_log_loss'])}, AUC {_number(run['stage_rate_baseline_auc'])}"
        )
        if not run["eligible"]:
            lines.append(f"  (no model trained: {run['fallback_reason']})")
    lines += warning_lines(warehouse, as_of)
    lines += [
        f"  warehouse: {warehouse.safe_url}",
        "  open the Dagster UI with `make ui`, then http://127.0.0.1:3000",
    ]
    return lines


def warning_lines(warehouse: Warehouse, as_of: dt.date) -> list[str]:
    """The data-quality warnings of `as_of` that fired for the whole CRM, one line each."""
    try:
        warnings = warehouse.read("data_quality_warnings", as_of=as_of)
    except WarehouseError:
        return ["  data-quality warnings: not in this warehouse yet (the next run writes them)"]
    if warnings.empty:
        return []
    fired = warnings[warnings["fired"] & (warnings["pipeline"] == "all")]
    order = {name: i for i, name in enumerate(WARNINGS)}
    fired = fired.iloc[sorted(range(len(fired)), key=lambda i: order.get(fired["check_name"].iloc[i], len(order)))]
    if fired.empty:
        return ["  data-quality warnings: none fired"]
    return [
        f"  data-quality warnings ({len(fired)} fired; counts and examples in data_quality_warnings):",
        *(f"    {row.check_name}: {row.message}" for row in fired.itertuples()),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dealcast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="summarise the latest run in the warehouse")
    sample = commands.add_parser("sample", help="write the sample CRM exports")
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--deals", type=int, default=None, help="number of deals (default 10,000; 600 with --profile messy)")
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--end-date", type=dt.date.fromisoformat, default=None)
    sample.add_argument("--years", type=float, default=None, help="years of history (default 3.5; 1 with --profile messy)")
    add_sample_arguments(sample)
    args = parser.parse_args(argv)

    if args.command == "sample":
        from etl.sample_crm import generate_sample

        try:
            result = generate_sample(
                args.out, n_deals=args.deals, seed=args.seed, end_date=args.end_date, years=args.years,
                profile=args.profile, messy=messy_options_from(args),
            )  # fmt: skip
        except ValueError as exc:
            sample.error(str(exc))
        print(
            f"wrote {result.n_deals:,} deals and {result.n_history_rows:,} history rows to {result.out_dir}"
            f" ({result.won:,} won, {result.lost:,} lost, {result.open:,} open)"
        )
        if result.shapes:
            print("messy shapes: " + ", ".join(f"{name} {count:,}" for name, count in result.shapes.items()))
        return 0

    settings = resolve_settings()
    warehouse = Warehouse(default_warehouse_url())
    try:
        for line in summary_lines(warehouse, settings.project.reporting_currency, settings.project.fiscal_year_start_month):
            print(line)
    except WarehouseError as exc:
        print(f"dealcast: {exc}", file=sys.stderr)
        return 1
    finally:
        warehouse.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
