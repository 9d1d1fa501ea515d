"""`dealcast summary` on warehouses written by real Dagster runs: a finished night, a night blocked
by the data-quality checks, a night that stopped after ingest, one that failed while reading, and
warehouses that are missing or empty. Plus the one-line errors of bad arguments."""

from __future__ import annotations

import csv
import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from assets.definitions import ALL_ASSETS
from assets.ingest import crm_exports, crm_tables
from etl.cli import _parser, main
from etl.warehouse import Warehouse

from .conftest import AS_OF, materialize_graph

pytestmark = pytest.mark.slow

NIGHT = dt.date(2024, 6, 30)
CONFIG = """
[reporting]
currency = "USD"

[sources.pipedrive]
stage_order = { "Sales" = ["Qualified", "Proposal"] }
"""
HEADER = "Deal - ID,Deal - Title,Deal - Value,Deal - Stage,Deal - Pipeline,Deal - Status,Deal - Won time,Deal - Deal created\n"
GOOD = HEADER + (
    "1,A,100,Qualified,Sales,open,,2024-03-01 09:00:00\n"
    "2,B,200,Proposal,Sales,won,2024-04-02 10:00:00,2024-03-02 09:00:00\n"
    "3,C,300,Proposal,Sales,open,,2024-03-03 09:00:00\n"
)
# Rows 3 and 4 have impossible creation dates: 2 of 4 deal rows quarantined, far above 5%.
BAD = HEADER + (
    "1,A,100,Qualified,Sales,open,,2024-03-01 09:00:00\n"
    "2,B,200,Proposal,Sales,won,2024-04-02 10:00:00,2024-03-02 09:00:00\n"
    "3,C,300,Proposal,Sales,open,,yesterday\n"
    "4,D,400,Proposal,Sales,open,,sometime\n"
)


def _run(tmp_path: Path, files: dict[str, str], assets=ALL_ASSETS, as_of: dt.date = NIGHT, config: Path | None = None) -> str:
    exports = tmp_path / f"exports-{as_of}"
    exports.mkdir()
    for name, text in files.items():
        (exports / name).write_text(text, encoding="utf-8")
    if config is None:
        config = tmp_path / "dealcast.toml"
        config.write_text(CONFIG, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    materialize_graph(exports, as_of, config, url, assets=assets, raise_on_error=False)
    return url


def _summary(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["summary", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def check_finished_night_summary(url: str, config: Path, exports: Path, capsys, monkeypatch) -> None:
    """`dealcast summary` on the warehouse of a finished night (the whole graph on the sample CRM,
    materialised by tests/e2e/test_full_graph.py, which calls this)."""
    monkeypatch.setenv("DEALCAST_CONFIG", str(config))
    capsys.readouterr()
    code, lines, err = _summary(capsys, "--warehouse", url)
    assert code == 0 and err == ""
    assert lines[0] == f"Dealcast run for as_of {AS_OF}"
    # Rows read, counted straight from the export files (records after each header).
    rows = 0
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "User.csv", "Account.csv"):
        if (exports / name).is_file():
            with open(exports / name, newline="", encoding="utf-8-sig") as handle:
                rows += sum(1 for _ in csv.reader(handle)) - 1
    assert lines[1].startswith(f"  input rows read {rows:,} = accepted ")
    warehouse = Warehouse(url)
    try:
        stages = warehouse.read("pipeline_stages").drop_duplicates("pipeline").set_index("pipeline")
    finally:
        warehouse.dispose()
    moves = stages.loc["New Business"]
    new_business = next(line for line in lines if line.startswith("  stage order of 'New Business'"))
    assert new_business == (
        f"  stage order of 'New Business': configured (dealcast.toml [[pipelines]]); {moves['backward_moves']:,} of "
        f"{moves['stage_moves']:,} stage moves backward ({moves['backward_share']:.1%})"
    )
    assert any(line.startswith("  forecast 2026-Q4: P10 ") for line in lines)
    code, lines, _ = _summary(capsys, "--warehouse", url, "--as-of", "2026-01-01")
    assert code == 1 and lines == [f"No run for as_of 2026-01-01 in the warehouse at {url} (the latest is {AS_OF})."]


def test_a_blocked_night_says_why_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    url = _run(tmp_path, {"deals.csv": BAD})
    monkeypatch.setenv("DEALCAST_CONFIG", str(tmp_path / "dealcast.toml"))
    code, lines, _ = _summary(capsys, "--warehouse", url)
    assert code == 1
    assert lines[0] == f"Dealcast run for as_of {NIGHT}"
    assert lines[1].startswith(f"  BLOCKED: the run for as_of {NIGHT} failed 1 blocking data-quality check(s)")
    assert lines[2] == (
        "    deals.quarantine_share: 50.00% (2 of 4 deal rows quarantined) (expected at most 5.00% of deal rows quarantined)"
    )
    assert lines[3] == "    quarantined rows by reason: unparseable_date 2"


def test_a_night_that_stopped_after_ingest_and_one_that_failed_reading(tmp_path, capsys, monkeypatch):
    url = _run(tmp_path, {"deals.csv": GOOD}, assets=[crm_exports, crm_tables])
    monkeypatch.setenv("DEALCAST_CONFIG", str(tmp_path / "dealcast.toml"))
    code, lines, _ = _summary(capsys, "--warehouse", url)
    assert code == 1 and lines[1].startswith("  NOT FINISHED: run ")
    assert f"for as_of {NIGHT} wrote its ingest tables but no forecast_quarterly" in lines[1]
    # The next night the exports folder holds nothing Dealcast can read: the run fails after claiming.
    later = NIGHT + dt.timedelta(days=1)
    _run(tmp_path, {"notes.csv": "when,who\n2024-07-01,Ann\n"}, as_of=later)
    code, lines, _ = _summary(capsys, "--warehouse", url)
    assert code == 1 and lines[0] == f"Dealcast run for as_of {later}"
    assert lines[1].startswith("  FAILED: run ") and "stopped before its data-quality results were written" in lines[1]
    code, lines, _ = _summary(capsys, "--warehouse", url, "--as-of", NIGHT.isoformat())
    assert code == 1 and "NOT FINISHED" in lines[1]


def test_missing_and_empty_warehouses(tmp_path, capsys, monkeypatch):
    (tmp_path / "dealcast.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv("DEALCAST_CONFIG", str(tmp_path / "dealcast.toml"))
    missing = tmp_path / "nowhere" / "dealcast.sqlite"
    code, lines, err = _summary(capsys, "--warehouse", f"sqlite:///{missing}")
    assert code == 1 and lines == []
    assert err == (
        f"dealcast summary: no warehouse at {missing} (the SQLite file does not exist): run the pipeline first "
        "(`make demo`, or the Dagster job), or pass --warehouse\n"
    )
    assert not missing.exists() and not missing.parent.exists()
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    code, lines, _ = _summary(capsys, "--warehouse", f"sqlite:///{empty}")
    assert code == 1 and "has no Dealcast tables" in lines[0]
    code, _, err = _summary(capsys, "--warehouse", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    assert code == 1 and err.count("\n") == 1 and err.startswith("dealcast summary: listing the warehouse tables failed on ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "--as-of", "yesterday"], "dealcast summary: error: argument --as-of: expected a date as YYYY-MM-DD, got 'yesterday'"),
        (["forecast"], "dealcast: error: argument COMMAND: invalid choice: 'forecast' (choose from 'summary', 'release', 'export')"),
        (["sample", "--out", "x"], "dealcast: error: sample exports are written by the dealcast-sample command (dealcast-sample --out DIR)"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(message)


def test_every_option_has_help_text():
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in [("dealcast", parser), *subparsers.items()]:
        for action in sub._actions:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help text"
