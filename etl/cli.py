"""`dealcast` command line: summarise a run from the warehouse, export a table as a spreadsheet-safe
CSV, and release the claim of a run that died mid-night. (The sample CRM has its own command,
`dealcast-sample`, in the `sample_crm` package, which the production packages never import.)

`dealcast summary` reads the warehouse only: it never creates a database, and it exits non-zero
when the run it describes was blocked by the data-quality checks or did not finish. Every message
is one line naming what is wrong; no database error reaches the terminal unexplained.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etl.config import ConfigError, default_warehouse_url, resolve_settings
from etl.periods import quarter_label
from etl.quality_warnings import WARNINGS
from etl.charts import write_spreadsheet_csv
from etl.cli_arguments import OneLineParser, iso_date, one_line_error
from etl.warehouse import Warehouse, WarehouseError

# The table a complete nightly run writes last: a run whose as_of has rows here finished.
FINAL_TABLE = "forecast_quarterly"
# Tables `dealcast summary` needs before it can say anything.
REQUIRED_TABLES = ("data_quality_results", "reconciliation", "run_claims")


def _money(value: float | None, currency: str) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:,.0f} {currency}"


def _number(value: float | None, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None or pd.isna(value) else pattern.format(value)


# --------------------------------------------------------------------------------------------
# The summary


@dataclass
class RunSummary:
    """What `dealcast summary` says about one as_of: the lines to print and whether the run is one
    to rely on (False: blocked, not finished, or no run at all)."""

    warehouse: Warehouse
    as_of: dt.date | None
    currency: str
    fiscal_year_start_month: int
    warn_backward_share: float = 0.2
    tables: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def read(self, table: str, as_of: dt.date | None = None) -> pd.DataFrame | None:
        """`table`'s rows (of `as_of` if given), None when the warehouse has no such table."""
        return self.warehouse.read(table, as_of=as_of) if table in self.tables else None


def _input_lines(run: RunSummary) -> list[str]:
    recon = run.read("reconciliation", run.as_of)
    if recon is None or recon.empty:
        return ["  no input reconciliation for this as_of"]
    quarantined = int(recon["quarantined"].sum())
    # Rows left out on purpose (deleted in the CRM, filtered out) are said apart; a warehouse written
    # before the column existed has it empty.
    excluded = int(recon["excluded"].fillna(0).sum()) if "excluded" in recon.columns else 0
    parts = f" + quarantined {quarantined - excluded:,} + excluded {excluded:,}" if excluded else f" + quarantined {quarantined:,}"
    return [f"  input rows read {int(recon['rows_read'].sum()):,} = accepted {int(recon['accepted'].sum()):,}{parts} (in {len(recon)} files)"]


def _deal_lines(run: RunSummary) -> list[str]:
    deals = run.read("deals")
    if deals is None or deals.empty:
        return ["  no deals published"]
    kept_for = pd.to_datetime(deals["as_of"]).dt.date.iloc[0]
    if kept_for != run.as_of:
        return [f"  deal statuses are kept for the latest published run only (as_of {kept_for})"]
    closed = deals[deals["status"].isin(["won", "lost"])]
    won = int((closed["status"] == "won").sum())
    if closed.empty:
        return [f"  deals accepted {len(deals):,}: all open, no closed deals"]
    return [
        f"  deals accepted {len(deals):,}: {int((deals['status'] == 'open').sum()):,} open, {won:,} won,"
        f" {len(closed) - won:,} lost; win rate {won / len(closed):.1%}"
    ]


def _stage_order_lines(run: RunSummary) -> list[str]:
    stages = run.read("pipeline_stages")
    if stages is None or stages.empty or "order_source" not in stages.columns:
        return []
    if pd.to_datetime(stages["as_of"]).dt.date.iloc[0] != run.as_of:
        return []
    lines = []
    for pipeline, rows in stages.sort_values(["pipeline", "stage_order"]).groupby("pipeline", sort=True):
        first = rows.iloc[0]
        order = " > ".join(rows.loc[rows["stage_status"] == "open", "stage"].astype(str))
        fit = (
            f"{int(first['backward_moves']):,} of {int(first['stage_moves']):,} stage moves backward"
            f" ({first['backward_share']:.1%})" if pd.notna(first["backward_share"]) else "no stage moves to check it"
        )
        # A configured order is the user's own; an order taken from the export is shown.
        shown = "" if first["order_source"] == "configured" else f": {order}"
        line = f"  stage order of {pipeline!r}: {first['order_source']} ({first['order_basis']}); {fit}{shown}"
        if first["order_source"] == "inferred" and pd.isna(first["backward_share"]):
            line += " [a guess: set it under [[pipelines]] in dealcast.toml]"
        elif pd.notna(first["backward_share"]) and first["backward_share"] > run.warn_backward_share:
            line += f" [above {run.warn_backward_share:.0%}: the deals do not follow this order]"
        lines.append(line)
    return lines


def _forecast_lines(run: RunSummary) -> list[str]:
    forecast = run.read("forecast_quarterly", run.as_of)
    if forecast is None:
        return []
    this_quarter = forecast[
        (forecast["segment_type"] == "all") & (forecast["quarter"] == quarter_label(run.as_of, run.fiscal_year_start_month))
    ]
    if this_quarter.empty:
        return []
    row = this_quarter.iloc[0]
    lines = [
        f"  forecast {row['quarter']}: P10 {_money(row['p10'], run.currency)} | P50 {_money(row['p50'], run.currency)}"
        f" | P90 {_money(row['p90'], run.currency)} (closed won so far {_money(row['closed_won_to_date'], run.currency)},"
        f" quota {_money(row['quota'], run.currency)})"
    ]
    if "overdue_deals" in row.index and pd.notna(row["overdue_deals"]) and row["overdue_deals"] > 0:
        lines.append(
            f"  open pipeline {_money(row['open_pipeline'], run.currency)} includes {int(row['overdue_deals']):,} overdue"
            f" deal(s) worth {_money(row['overdue_pipeline'], run.currency)} (expected close date already past),"
            f" expected to bring {_money(row['overdue_expected'], run.currency)}"
        )
    if "outlier_deals" in row.index and pd.notna(row["outlier_deals"]) and row["outlier_deals"] > 0:
        lines.append(
            f"  {int(row['outlier_deals']):,} outlier deal(s) ({_money(row['outlier_pipeline'], run.currency)}) raise P90 from"
            f" {_money(row['p90_without_outliers'], run.currency)} to {_money(row['p90'], run.currency)}"
        )
    backtest = run.read("forecast_backtest", run.as_of)
    if backtest is not None and "status" in backtest.columns:
        status = backtest.loc[backtest["status"] == "not_backtested"]
        if len(status):
            lines.append(f"  forecast not yet backtested: {status['status_reason'].iloc[0]}")
    elif "not_yet_backtested" in row.index and pd.notna(row["not_yet_backtested"]) and bool(row["not_yet_backtested"]):
        lines.append("  forecast not yet backtested: no past quarter has a full quarter of history before it")
    return lines


def _deals_text(won, lost) -> str:
    if pd.isna(won) or pd.isna(lost):
        return "deals not recorded"
    return f"{int(won) + int(lost):,} deals ({int(won):,} won / {int(lost):,} lost)"


def _ladder_lines(model: pd.Series) -> list[str]:
    """Every candidate of the scorer ladder with its held-out log loss (or why it was not fitted),
    simplest first, the published one marked."""
    text = model.get("candidates")
    if text is None or pd.isna(text):
        return []
    candidates = sorted(json.loads(text), key=lambda c: c["tier"])
    width = max(len(c["method"]) for c in candidates)
    lines = []
    for c in candidates:
        mark = "*" if c["method"] == model["scoring_method"] else " "
        if c["fitted"] and c.get("log_loss") is not None:
            detail = f"log loss {_number(c['log_loss'], '{:.4f}')}, AUC {_number(c.get('auc'))}, ECE {_number(c.get('ece'))}"
        elif c["fitted"]:
            detail = "fitted, not evaluated (no held-out rows)"
        else:
            detail = f"not fitted: {c.get('reason') or 'no reason recorded'}"
        lines.append(f"   {mark} tier {c['tier']} {c['method']:<{width}}  {detail}")
    return lines


def _model_lines(run: RunSummary) -> list[str]:
    """The published scorer, the rows and deals it was chosen on, and the whole ladder: every
    candidate's held-out log loss beside the constant rate's, and why the winner won."""
    runs = run.read("model_runs")
    if runs is None:
        return []
    runs = runs[pd.to_datetime(runs["as_of"]).dt.date == run.as_of]
    if runs.empty:
        return []
    model = runs.sort_values("trained_at").iloc[-1]
    get = model.get
    lines = [
        f"  deal-scoring model {model['model_version']}: published {model['scoring_method']}, held-out log loss"
        f" {_number(model['log_loss'], '{:.4f}')} (constant rate {_number(get('constant_log_loss'), '{:.4f}')}),"
        f" AUC {_number(model['auc'])}, ECE {_number(get('ece'))}"
    ]
    split = get("split_rule")
    lines.append(
        f"  trained on {int(model['train_rows']):,} rows of {_deals_text(get('train_won_deals'), get('train_lost_deals'))}"
        f"{'' if split is None or pd.isna(split) else f' ({split} split)'}; compared on {int(model['test_rows']):,}"
        f" held-out rows of {_deals_text(get('test_won_deals'), get('test_lost_deals'))}"
    )
    ladder = _ladder_lines(model)
    if ladder:
        lines.append("  scorer ladder (* published):")
        lines += ladder
    reason = get("selection_reason")
    if reason is not None and not pd.isna(reason):
        lines.append(f"  why: {reason}")
    elif not model["eligible"]:
        lines.append(f"  (no model trained: {model['fallback_reason']})")
    return lines


def _warning_lines(run: RunSummary) -> list[str]:
    """The data-quality warnings of the run that fired for the whole CRM, one line each."""
    warnings = run.read("data_quality_warnings", run.as_of)
    if warnings is None or warnings.empty:
        return []
    fired = warnings[warnings["fired"] & (warnings["pipeline"] == "all")]
    if fired.empty:
        return ["  data-quality warnings: none fired"]
    order = {name: i for i, name in enumerate(WARNINGS)}
    fired = fired.iloc[sorted(range(len(fired)), key=lambda i: order.get(fired["check_name"].iloc[i], len(order)))]
    return [
        f"  data-quality warnings ({len(fired)} fired; counts and examples in data_quality_warnings):",
        *(f"    {row.check_name}: {row.message}" for row in fired.itertuples()),
    ]


# The sections of a finished run's summary, in order; each returns its lines (none when it has
# nothing to say). A new section is a function of `RunSummary` added here.
SECTIONS: list[Callable[[RunSummary], list[str]]] = [
    _input_lines,
    _deal_lines,
    _stage_order_lines,
    _forecast_lines,
    _model_lines,
    _warning_lines,
]


def _latest_as_of(run: RunSummary, claims: pd.DataFrame) -> dt.date | None:
    dates = [run.warehouse.latest_as_of("data_quality_results")]
    if not claims.empty:
        dates.append(pd.to_datetime(claims["as_of"]).dt.date.max())
    dates = [d for d in dates if d is not None]
    return max(dates) if dates else None


def _blocked_lines(run: RunSummary, results: pd.DataFrame) -> list[str]:
    failed = results[(results["severity"] == "error") & ~results["passed"].astype(bool)]
    if failed.empty:
        return []
    lines = [
        f"  BLOCKED: the run for as_of {run.as_of} failed {len(failed)} blocking data-quality check(s); its deals "
        "and every table after them were not written:"
    ]
    lines += [f"    {r.check_name}: {r.observed} (expected {r.expected})" for r in failed.itertuples(index=False)]
    quarantine = run.read("quarantine", run.as_of)
    if quarantine is not None and not quarantine.empty:
        reasons = quarantine["reason_code"].value_counts().head(5)
        lines.append("    quarantined rows by reason: " + ", ".join(f"{code} {n:,}" for code, n in reasons.items()))
    return lines


def _unfinished_lines(run: RunSummary, claims: pd.DataFrame, results: pd.DataFrame) -> list[str]:
    claim = claims[pd.to_datetime(claims["as_of"]).dt.date == run.as_of]
    final = run.read(FINAL_TABLE, run.as_of)
    if final is not None and not final.empty:
        return []
    who = f"run {claim['run_id'].iloc[0]} (started writing at {claim['claimed_at'].iloc[0]:%Y-%m-%d %H:%M} UTC)" if not claim.empty else "the run"
    if results.empty:
        return [
            f"  FAILED: {who} for as_of {run.as_of} stopped before its data-quality results were written (for example "
            "an export file it could not read, or a configuration error); its log in the Dagster UI says why"
        ]
    return [
        f"  NOT FINISHED: {who} for as_of {run.as_of} wrote its ingest tables but no {FINAL_TABLE}: it failed or is "
        "still running; its log in the Dagster UI says which"
    ]


def summarise(
    warehouse: Warehouse,
    currency: str,
    fiscal_year_start_month: int,
    as_of: dt.date | None = None,
    warn_backward_share: float = 0.2,
) -> RunSummary:
    """The summary of the run for `as_of` (default: the latest run that started writing)."""
    run = RunSummary(warehouse, None, currency, fiscal_year_start_month, warn_backward_share)
    run.tables = warehouse.table_names()
    missing = [t for t in REQUIRED_TABLES if t not in run.tables]
    if missing:
        run.ok = False
        run.lines = [
            f"The warehouse at {warehouse.safe_url} has no Dealcast tables ({', '.join(missing)} missing): run the "
            "pipeline first (`make demo`, or the Dagster job), or point --warehouse at the warehouse it wrote."
        ]
        return run
    claims = warehouse.claims()
    latest = _latest_as_of(run, claims)
    if latest is None:
        run.ok = False
        run.lines = [f"The warehouse at {warehouse.safe_url} has no run yet: run `make demo` (or the Dagster job) first."]
        return run
    run.as_of = as_of or latest
    results = warehouse.read("data_quality_results", as_of=run.as_of)
    known = set(pd.to_datetime(claims["as_of"]).dt.date) | ({run.as_of} if not results.empty else set())
    if run.as_of not in known:
        run.ok = False
        run.lines = [f"No run for as_of {run.as_of} in the warehouse at {warehouse.safe_url} (the latest is {latest})."]
        return run
    run.lines = [f"Dealcast run for as_of {run.as_of}"]
    problems = _blocked_lines(run, results) or _unfinished_lines(run, claims, results)
    if problems:
        run.ok = False
        run.lines += problems
        finished = warehouse.latest_as_of(FINAL_TABLE) if FINAL_TABLE in run.tables else None
        if finished is not None and finished != run.as_of:
            run.lines.append(f"  the latest finished run is for as_of {finished}: dealcast summary --as-of {finished}")
        run.lines.append(f"  warehouse: {warehouse.safe_url}")
        return run
    for section in SECTIONS:
        run.lines += section(run)
    run.lines += [
        f"  warehouse: {warehouse.safe_url}",
        "  open the Dagster UI with `make ui`, then http://127.0.0.1:3000",
    ]
    return run


def summary_lines(
    warehouse: Warehouse, currency: str, fiscal_year_start_month: int, as_of: dt.date | None = None
) -> list[str]:
    """What the run for `as_of` (default the latest) produced, in a few lines a data engineer reads
    after `make demo` (see `summarise`)."""
    return summarise(warehouse, currency, fiscal_year_start_month, as_of).lines


# --------------------------------------------------------------------------------------------
# The command line


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="dealcast", description="Dealcast: summarise a run from the warehouse, export a table, release a run.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="summary, export or release"
    )
    summary = commands.add_parser(
        "summary",
        help="summarise the latest run (or the one of --as-of) from the warehouse",
        description="Summarise a run from the warehouse; exits 1 when that run was blocked or did not finish.",
    )
    summary.add_argument(
        "--as-of", type=iso_date, default=None, metavar="YYYY-MM-DD",
        help="the run date to summarise (default: the latest run in the warehouse)",
    )
    summary.add_argument(
        "--warehouse", default=None, metavar="URL",
        help="SQLAlchemy URL of the warehouse (default: DEALCAST_WAREHOUSE_URL, else the project's SQLite file)",
    )
    release = commands.add_parser(
        "release",
        help="clear the claim of a run that died while writing an as_of, so another run may write it",
        description="Release the claim on an as_of (run_claims); the released run's later writes are refused.",
    )
    release.add_argument("--as-of", type=iso_date, required=True, metavar="YYYY-MM-DD", help="the run date to release")
    release.add_argument("--run-id", default=None, help="release only if this run holds the claim")
    export = commands.add_parser(
        "export",
        help="write a warehouse table as a CSV for spreadsheets (formulas neutralised)",
        description="Write a warehouse table as a CSV people can open in a spreadsheet: every field quoted, "
        "cells starting with =, +, -, @, a tab or a line break prefixed with ' (OWASP's CSV-injection guidance).",
    )
    export.add_argument("--table", required=True, help="the warehouse table, e.g. quarantine")
    export.add_argument("--as-of", type=iso_date, default=None, metavar="YYYY-MM-DD", help="only this as_of's rows")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="the CSV file to write")
    for command in (release, export):
        command.add_argument(
            "--warehouse", default=None, metavar="URL",
            help="SQLAlchemy URL of the warehouse (default: DEALCAST_WAREHOUSE_URL, else the project's SQLite file)",
        )
        command.add_argument("--schema", default="dealcast", help="the warehouse schema on PostgreSQL (default dealcast)")
    return parser


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file `url` names when it does not exist (connecting would create it)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.is_file() else path


def _summary(args: argparse.Namespace) -> int:
    settings = resolve_settings()
    url = args.warehouse or default_warehouse_url()
    missing = _missing_sqlite_file(url)
    if missing is not None:
        print(
            f"dealcast summary: no warehouse at {missing} (the SQLite file does not exist): run the pipeline first "
            "(`make demo`, or the Dagster job), or pass --warehouse",
            file=sys.stderr,
        )
        return 1
    warehouse = Warehouse(url)
    try:
        run = summarise(
            warehouse, settings.project.reporting_currency, settings.project.fiscal_year_start_month, args.as_of,
            settings.project.validation.warn_backward_share,
        )
    finally:
        warehouse.dispose()
    for line in run.lines:
        print(line)
    return 0 if run.ok else 1


def _existing_warehouse(args: argparse.Namespace) -> Warehouse | None:
    """The warehouse `args` name, or None (with the reason printed) when its SQLite file is missing."""
    url = args.warehouse or default_warehouse_url()
    missing = _missing_sqlite_file(url)
    if missing is not None:
        print(f"dealcast {args.command}: no warehouse at {missing} (the SQLite file does not exist)", file=sys.stderr)
        return None
    return Warehouse(url, schema=args.schema)


def _release(args: argparse.Namespace) -> int:
    warehouse = _existing_warehouse(args)
    if warehouse is None:
        return 1
    try:
        claim = warehouse.release(args.as_of, args.run_id)
    finally:
        warehouse.dispose()
    if claim is None:
        print(f"no run has claimed as_of {args.as_of} on {warehouse.safe_url}")
    elif claim.released_at is not None:
        print(f"as_of {args.as_of} was already released (run {claim.run_id}, at {claim.released_at:%Y-%m-%d %H:%M:%S} UTC)")
    else:
        print(f"released as_of {args.as_of} from run {claim.run_id}; its further writes will be refused")
    return 0


def _export(args: argparse.Namespace) -> int:
    warehouse = _existing_warehouse(args)
    if warehouse is None:
        return 1
    try:
        frame = warehouse.read(args.table, as_of=args.as_of)
    finally:
        warehouse.dispose()
    rows = write_spreadsheet_csv(frame, args.out)
    print(f"wrote {rows:,} rows of {args.table} to {args.out} (cells starting =, +, -, @ prefixed with ')")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if argv[:1] == ["sample"]:
        # Sample data is not part of the production command: the simulator has its own.
        parser.error("sample exports are written by the dealcast-sample command (dealcast-sample --out DIR)")
    args = parser.parse_args(argv)
    try:
        commands = {"summary": _summary, "release": _release, "export": _export}
        return commands[args.command](args)
    except (ConfigError, WarehouseError, OSError) as exc:
        print(one_line_error(f"dealcast {args.command}", exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
